/**
 * The timestep controller: back, play/pause, forward, a scrub slider and a speed choice.
 *
 * Usage: d3.select(host).datum({step, T, playing, speed, speeds, timestep, sigma, stepLabel})
 * (stepLabel: the readout for schedulers with more UNet calls than steps, "call 7 / 99 · step 4 / 50")
 *          .call(timestepController().on("step", s => ...).on("play", bool => ...).on("speed", v => ...))
 * Stepping or dragging pauses playback (the app decides that; this view only reports intent).
 */
import { d3 } from "../lib.js";
import { fmt, fmtTimestep } from "../data.js";

const ICONS = {
  back: "M6 5h2.2v14H6zM19 5v14L9.5 12z",
  forward: "M15.8 5H18v14h-2.2zM5 5v14l9.5-7z",
  play: "M7.5 4.5v15l12-7.5z",
  pause: "M6.5 4.5h4v15h-4zM13.5 4.5h4v15h-4z",
};

/** Put (or replace) an SVG icon inside a button; the button's aria-label names it. */
function icon(button, name) {
  button.selectAll("svg").data([name]).join((enter) => enter.append("svg")
    .attr("viewBox", "0 0 24 24").attr("aria-hidden", "true").attr("focusable", "false")
    .call((svg) => svg.append("path")))
    .select("path").attr("d", ICONS[name]);
}

export function timestepController() {
  const listeners = d3.dispatch("step", "play", "speed");

  function view(selection) {
    const d = selection.datum();
    const root = selection.selectAll(".tc").data([null]).join((enter) => {
      const tc = enter.append("div").attr("class", "tc");
      const buttons = tc.append("div").attr("class", "tc-buttons");
      buttons.append("button").attr("type", "button").attr("class", "tc-back icon-button")
        .attr("aria-label", "Step back").attr("title", "Step back (←)").call(icon, "back")
        .on("click", () => listeners.call("step", null, Math.max(0, selection.datum().step - 1)));
      buttons.append("button").attr("type", "button").attr("class", "tc-play icon-button")
        .on("click", () => listeners.call("play", null, !selection.datum().playing));
      buttons.append("button").attr("type", "button").attr("class", "tc-forward icon-button")
        .attr("aria-label", "Step forward").attr("title", "Step forward (→)").call(icon, "forward")
        .on("click", () => {
          const s = selection.datum();
          listeners.call("step", null, Math.min(s.T, s.step + 1));
        });
      const scrub = tc.append("label").attr("class", "tc-scrub");
      scrub.append("span").attr("class", "visually-hidden").text("Step");
      scrub.append("input").attr("type", "range").attr("class", "tc-slider").attr("min", 0)
        .attr("step", 1)
        .on("input", function onInput() {
          listeners.call("step", null, Number(this.value));
        });
      const readout = tc.append("p").attr("class", "tc-readout");
      readout.append("span").attr("class", "tc-step");
      readout.append("span").attr("class", "tc-timestep");
      const speed = tc.append("label").attr("class", "tc-speed");
      speed.append("span").text("Speed ");
      speed.append("select").attr("class", "tc-speed-select")
        .on("change", function onChange() {
          listeners.call("speed", null, Number(this.value));
        });
      return tc;
    });

    root.select(".tc-play")
      .attr("aria-label", d.playing ? "Pause" : "Play")
      .attr("title", d.playing ? "Pause (space)" : "Play (space)")
      .attr("aria-pressed", String(d.playing))
      .call(icon, d.playing ? "pause" : "play");
    root.select(".tc-back").property("disabled", d.step <= 0);
    root.select(".tc-forward").property("disabled", d.step >= d.T);
    const slider = root.select(".tc-slider")
      .attr("max", d.T)
      .attr("aria-valuetext", d.stepLabel || `step ${d.step} of ${d.T}`);
    if (Number(slider.property("value")) !== d.step) slider.property("value", d.step);
    root.select(".tc-step").text(d.stepLabel || `step ${d.step} / ${d.T}`);
    root.select(".tc-timestep").text(d.timestep === null ? "pure noise" : `timestep ${fmtTimestep(d.timestep)}${d.sigma === null || d.sigma === undefined ? "" : `, σ ${fmt(d.sigma)}`}`);
    root.select(".tc-speed-select").selectAll("option")
      .data(d.speeds, (v) => v)
      .join("option")
      .attr("value", (v) => v)
      .text((v) => `${v} steps/s`)
      .property("selected", (v) => v === d.speed);
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

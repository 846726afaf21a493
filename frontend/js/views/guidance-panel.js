/**
 * Guidance level 3: a slider that snaps to the bundle's guidance scales (hover or drag to
 * preview, release to choose), the guidance formula with this step's numbers, and the
 * same seed's image at every scale.
 *
 * guidanceSlider():  datum {scales, selected, previewed, name (absent: "Guidance scale")}; events
 *                    "commit", "preview", "unpreview"
 * guidanceFormula(): datum {symbol, g, uncond, text, guided, missing} (numbers at one pixel) or
 *                    null; symbol: TeX of what the UNet predicts ("\\epsilon", or "v" for
 *                    v-prediction models)
 * sweep():           datum {items: [{g, frame, selected, previewed, control}], note}; events as
 *                    the slider. With a ControlNet scale chosen the items are the controlled
 *                    runs (js/controlnet-model.js guidanceRowUnderControl): `control` false marks
 *                    one without such a run, and `note` says so in one line (else null)
 */
import { d3, katexIfLoaded, loadKatex } from "../lib.js";
import { fmt } from "../data.js";
import { frame } from "./frame.js";

const nearest = (scales, v) => scales.reduce((a, b) => (Math.abs(b - v) < Math.abs(a - v) ? b : a));

const STOP_GAP = 4; // px between two stops' buttons, at least

/**
 * Each stop sits under its scale's place on the range, unless its button would then touch
 * its neighbour's (0, 0.25 and 0.5 on a range to 2, on a phone: overlapping buttons are
 * buttons a finger cannot tell apart); then neighbours are pushed apart just enough, to the
 * right, and back from the range's end if that runs past it. Stops with room stay exactly
 * at their place (a CSS percentage, so they follow the range as it resizes).
 */
function spreadStops(stops) {
  const width = stops.node().clientWidth;
  const buttons = stops.selectAll("button.gs-stop").nodes();
  if (!width) return; // not laid out yet (a closed level): the resize observer calls again
  const want = buttons.map((b) => (Number(b.dataset.pos) / 100) * width);
  const half = buttons.map((b) => b.offsetWidth / 2);
  const at = want.slice();
  for (let i = 1; i < at.length; i++) {
    at[i] = Math.max(at[i], at[i - 1] + half[i - 1] + half[i] + STOP_GAP);
  }
  for (let i = at.length - 1; i >= 0; i--) {
    const limit = i === at.length - 1 ? width : at[i + 1] - half[i] - half[i + 1] - STOP_GAP;
    at[i] = Math.min(at[i], limit);
  }
  buttons.forEach((b, i) => {
    const shift = Math.round(at[i] - want[i]);
    b.style.left = shift ? `calc(${b.dataset.pos}% + ${shift}px)` : `${b.dataset.pos}%`;
  });
}

export function guidanceSlider() {
  const listeners = d3.dispatch("commit", "preview", "unpreview");

  function view(selection) {
    const d = selection.datum();
    const lo = d3.min(d.scales);
    const hi = d3.max(d.scales);
    const pos = (g) => (hi === lo ? 0 : (100 * (g - lo)) / (hi - lo));
    const root = selection.selectAll(".gs").data([null]).join((enter) => {
      const gs = enter.append("div").attr("class", "gs");
      const label = gs.append("label").attr("class", "gs-label");
      label.append("span").attr("class", "visually-hidden").text("Guidance scale");
      label.append("input").attr("type", "range").attr("class", "gs-range")
        .attr("step", "any")
        .on("input", function onInput() {
          listeners.call("preview", null, nearest(selection.datum().scales, Number(this.value)));
        })
        .on("change", function onChange() {
          const g = nearest(selection.datum().scales, Number(this.value));
          this.value = g; // snap
          listeners.call("commit", null, g);
        })
        .on("keydown", (event) => {
          const delta = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1 }[event.key];
          if (!delta) return;
          event.preventDefault();
          event.stopPropagation();
          const { scales, selected } = selection.datum();
          const i = scales.indexOf(selected);
          listeners.call("commit", null, scales[Math.max(0, Math.min(scales.length - 1, i + delta))]);
        });
      const stops = gs.append("div").attr("class", "gs-stops");
      // a stop's room depends on the range's width: lay them out again when it changes
      if (typeof ResizeObserver !== "undefined") {
        stops.each(function observe() {  // join calls this with an empty enter too
          const node = d3.select(this);
          new ResizeObserver(() => spreadStops(node)).observe(this);
        });
      }
      return gs;
    });
    const shown = d.previewed ?? d.selected;
    const name = d.name || "Guidance scale"; // or "Conditioning scale" (ControlNet's level)
    root.select(".gs-label .visually-hidden").text(name);
    const input = root.select(".gs-range").attr("min", lo).attr("max", hi)
      .attr("aria-valuetext", `${name.toLowerCase()} ${d.selected}`);
    if (document.activeElement !== input.node() || Number(input.property("value")) !== shown) {
      input.property("value", shown);
    }
    root.select(".gs-stops").selectAll("button.gs-stop")
      .data(d.scales, (g) => g)
      .join((enter) => enter.append("button").attr("type", "button").attr("class", "gs-stop")
        .on("click", (event, g) => listeners.call("commit", null, g))
        .on("pointerenter", (event, g) => listeners.call("preview", null, g))
        .on("pointerleave", () => listeners.call("unpreview", null)))
      .attr("data-pos", (g) => pos(g))
      .attr("aria-label", (g) => `${name} ${g}`)
      .attr("aria-pressed", (g) => String(g === d.selected))
      .classed("is-selected", (g) => g === d.selected)
      .classed("is-previewed", (g) => g === d.previewed && g !== d.selected)
      .text((g) => g);
    // lay the stops out when they change (and on resize, above), not on every render: it
    // reads the buttons' widths, a forced layout on each step of playback otherwise
    const stops = root.select(".gs-stops");
    if (stops.attr("data-scales") !== d.scales.join(" ")) {
      stops.attr("data-scales", d.scales.join(" "));
      spreadStops(stops);
    }
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

const tex = (v) => fmt(v).replace("\u2212", "-");
const paren = (v) => (v < 0 ? `(${tex(v)})` : tex(v));

/**
 * The formula's TeX and, for a one-line formula, its bracketed note ({tex, words}: "(g = 0:
 * the prompt's branch is not run)"). The note is set apart from the formula, its words in
 * the formula's font but as text, so on a narrow screen it wraps under the formula and
 * within itself instead of running off the panel's edge.
 */
function formulaTex(d) {
  const o = d && d.symbol ? d.symbol : "\\epsilon";
  const u = d && d.uncondTex ? d.uncondTex : "\\text{empty}"; // or \text{negative}: the run's negative prompt
  if (!d) return { math: "\\text{(this step's numbers are loading)}", note: null };
  if (d.atStart) return { math: "\\text{(step 0 is the starting noise: no UNet call yet, step forward)}", note: null };
  if (d.missing === "text") {
    return { math: `\\hat{${o}} = ${o}_{${u}} = ${tex(d.uncond)}`,
      note: { tex: "g = 0", words: ": the prompt's branch is not run" } };
  }
  if (d.missing === "uncond" && d.mode === "embedding") {  // an LCM: no unconditional branch at all
    return { math: `\\hat{${o}} = ${o}_{\\text{prompt}, w} = ${tex(d.text)}`,
      note: { tex: `w = g - 1 = ${tex(d.g - 1)}`, words: ", in the UNet" } };
  }
  if (d.missing === "uncond" && d.mode === "none") {
    return { math: `\\hat{${o}} = ${o}_{\\text{prompt}} = ${tex(d.text)}`, note: { words: "the prompt's alone" } };
  }
  if (d.missing === "uncond") {
    return { math: `\\hat{${o}} = ${o}_{\\text{prompt}} = ${tex(d.text)}`,
      note: { tex: "g = 1", words: `: the ${u === "\\text{empty}" ? "empty" : "negative"} branch cancels out` } };
  }
  const computed = d.uncond + d.g * (d.text - d.uncond);
  // a negative prompt: say which branch is which before the numbers
  const named = u === "\\text{empty}" ? ""
    : `\\hat{${o}} &= ${o}_{${u}} + g\\,(${o}_{\\text{prompt}} - ${o}_{${u}}) \\\\ `;
  // the number in math mode, so its sign is a minus like the formula's, not a hyphen
  const stored = d.guided === null ? "" : `\\text{(stored: }${tex(d.guided)}\\text{)}`;
  // "(stored: ...)" stays in the formula, on its short last row; with guidance_rescale (Lin
  // et al. 2023: the result scaled by phi * ratio + 1 - phi) the rescaled row is long, so
  // the notes take a row of their own
  const math = `\\begin{aligned}${named}${named ? "" : `\\hat{${o}} `}&= ${tex(d.uncond)} + ${tex(d.g)} \\times (${tex(d.text)} - ${paren(d.uncond)})`
    + ` \\\\ &= ${tex(computed)}`
    + (d.rescale ? ` \\\\ &\\to ${tex(d.rescale.factor)} \\times ${paren(computed)} = ${tex(d.rescale.factor * computed)}`
      + ` \\\\ &\\phantom{=}\\;(\\varphi = ${tex(d.rescale.phi)})` : "")
    + (stored ? `\\quad${stored}` : "")
    + "\\end{aligned}";
  return { math, note: null };
}

export function guidanceFormula() {
  let last = null;
  return function view(selection) {
    const { math, note } = formulaTex(selection.datum());
    const noteText = note ? `(${note.tex || ""}${note.words})` : "";
    const source = `${math} ${noteText}`;
    const katex = katexIfLoaded();
    if (!katex) {
      // empty until KaTeX arrives (the app redraws once it has): no TeX shown raw
      loadKatex();
      selection.text("");
      last = null;
      return;
    }
    if (source === last) return;
    last = source;
    selection.text("");
    katex.render(math, selection.append("span").attr("class", "gf-math").node(),
      { displayMode: true, throwOnError: false });
    if (note) {
      const span = selection.append("span").attr("class", "gf-note").text("(");
      if (note.tex) katex.render(note.tex, span.append("span").node(), { throwOnError: false });
      span.append("span").text(`${note.words})`);
    }
    selection.attr("aria-label", source.replace(/\\[a-z]+|[{}\\_^]/g, " ").replace(/\s+/g, " ").trim());
  };
}

export function sweep() {
  const listeners = d3.dispatch("commit", "preview", "unpreview");
  const draw = frame();

  function view(selection) {
    const d = selection.datum();
    selection.selectAll("p.sweep-control-note").data(d.note ? [d.note] : []).join("p")
      .attr("class", "panel-note sweep-control-note").text((note) => note);
    const items = selection.selectAll("figure.sweep-item")
      .data(d.items, (it) => it.g)
      .join((enter) => {
        const fig = enter.append("figure").attr("class", "sweep-item");
        const button = fig.append("button").attr("type", "button").attr("class", "sweep-button")
          .on("click", (event, it) => listeners.call("commit", null, it.g))
          .on("pointerenter", (event, it) => listeners.call("preview", null, it.g))
          .on("pointerleave", () => listeners.call("unpreview", null));
        button.append("div").attr("class", "frame frame-small");
        fig.append("figcaption");
        return fig;
      })
      .classed("is-selected", (it) => it.selected)
      .classed("is-previewed", (it) => it.previewed);
    items.select(".sweep-button").attr("aria-label", (it) => `Choose guidance scale ${it.g}`)
      .attr("aria-pressed", (it) => String(it.selected));
    items.select(".frame").each(function drawOne(it) {
      d3.select(this).datum(it.frame).call(draw);
    });
    items.select("figcaption").text((it) => (it.control === false ? `g = ${it.g}, no control` : `g = ${it.g}`));
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

/**
 * The ControlNet level of the Architecture View: the control image, the conditioning
 * scale (a slider that snaps to the recorded scales: hover or drag previews, a click or
 * release chooses), how strongly each block's residual acts at this step (the recorded
 * norms), where it acts (the magnitude map of each resolution), and the image with and
 * without control from the same noise. The prose around it lives in index.html.
 *
 * Where the prompt has several control images, a row of their thumbnails under the control
 * image chooses which one the level (and the app) shows.
 *
 * Usage: d3.select("#panel-controlnet").datum(controlnetModel(state))
 *          .call(controlnetLevel().on("commit", c => ...).on("preview", c => ...).on("unpreview", ...)
 *            .on("image", id => ...).on("imagePreview", id => ...).on("imageUnpreview", ...))
 * datum: controlnet-model.js's {scale, slider, image, images, blocks, window, chart, maps,
 * notes, results, sweep, step}, or null (the level is hidden then and nothing is drawn).
 * controlImages(): datum [{id, label, frame, selected, previewed}] (empty: one control image)
 * residualChart(): datum {blocks: [{key, label, name, resolution, channels, peak}], values
 *   (B numbers at this call, or null), max, step, scale, off, atStart}
 * magnitudeMaps(): datum [{key, label, map: {data, shape} | null, max}]
 * scaleSweep():    datum [{c, frame, selected, previewed}] (the row of every scale's image)
 */
import { d3 } from "../lib.js";
import { fmt } from "../data.js";
import { frame } from "./frame.js";
import { guidanceSlider } from "./guidance-panel.js";

const W = 460;
const H = 170;
const M = { top: 22, right: 8, bottom: 38, left: 46 };
const VIRIDIS = d3.range(256).map((j) => d3.rgb(d3.interpolateViridis(j / 255)));

/** The level: the slider's events pass through as "commit", "preview", "unpreview"; the
 * control images' as "image", "imagePreview", "imageUnpreview" (a control_id). */
export function controlnetLevel() {
  const listeners = d3.dispatch("commit", "preview", "unpreview", "image", "imagePreview", "imageUnpreview");
  const slider = guidanceSlider()
    .on("commit", (c) => listeners.call("commit", null, c))
    .on("preview", (c) => listeners.call("preview", null, c))
    .on("unpreview", () => listeners.call("unpreview", null));
  const draw = frame();
  const chart = residualChart();
  const mapView = magnitudeMaps();
  const thumbs = controlImages()
    .on("image", (id) => listeners.call("image", null, id))
    .on("imagePreview", (id) => listeners.call("imagePreview", null, id))
    .on("imageUnpreview", () => listeners.call("imageUnpreview", null));
  const sweep = scaleSweep()
    .on("commit", (c) => listeners.call("commit", null, c))
    .on("preview", (c) => listeners.call("preview", null, c))
    .on("unpreview", () => listeners.call("unpreview", null));

  function view(selection) {
    const d = selection.datum();
    if (!d) return;
    selection.select("#controlnet-slider").datum(d.slider).call(slider);
    selection.select("#controlnet-image").datum(d.image).call(draw);
    const figure = d3.select(selection.select("#controlnet-image").node().parentNode);
    figure.selectAll("div.cn-images").data([null]).join((enter) => enter.append("div")
      .attr("class", "cn-images").attr("role", "group").attr("aria-label", "Control images: choose one"))
      .datum(d.images).call(thumbs);
    selection.select("#controlnet-with").datum(d.results.with).call(draw);
    selection.select("#controlnet-without").datum(d.results.without).call(draw);
    selection.selectAll(".cn-scale").text(fmt(d.scale));
    selection.selectAll(".cn-step").text(String(d.step));
    selection.select(".cn-skips").text(skipsText(d.blocks));
    selection.select(".cn-window").text(windowText(d.window));
    selection.select("#controlnet-note-off").property("hidden", !d.notes.off);
    selection.select("#controlnet-note-start").property("hidden", !d.notes.atStart || d.notes.off);
    selection.select("#controlnet-note-closed").property("hidden", !d.notes.closed);
    if (d.chart) selection.select("#controlnet-norms").datum(d.chart).call(chart);
    selection.select("#controlnet-maps").datum(d.maps).call(mapView);
    selection.select("#controlnet-sweep").datum(d.sweep).call(sweep);
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

/** The prompt's control images, a row of thumbnails (hidden where it has only one): hover
 * previews, a click (or Enter on a focused one) chooses; the shown one is marked.
 * datum [{id, label, frame, selected, previewed}]; events "image", "imagePreview",
 * "imageUnpreview" (id). */
export function controlImages() {
  const listeners = d3.dispatch("image", "imagePreview", "imageUnpreview");
  const draw = frame();

  function view(selection) {
    const items = selection.datum();
    selection.property("hidden", !items.length);
    selection.selectAll("button.cn-thumb").data(items, (it) => it.id)
      .join((enter) => {
        const button = enter.append("button").attr("type", "button").attr("class", "cn-thumb")
          .on("click", (event, it) => listeners.call("image", null, it.id))
          .on("pointerenter", (event, it) => listeners.call("imagePreview", null, it.id))
          .on("pointerleave", () => listeners.call("imageUnpreview", null));
        button.append("div").attr("class", "frame frame-tiny");
        return button;
      })
      .classed("is-selected", (it) => it.selected)
      .classed("is-previewed", (it) => it.previewed)
      .attr("aria-pressed", (it) => String(it.selected))
      .attr("aria-label", (it) => `Choose ${it.label.charAt(0).toLowerCase()}${it.label.slice(1)}`)
      .attr("title", (it) => it.label)
      .each(function drawOne(it) { d3.select(this).select(".frame").datum(it.frame).call(draw); });
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

/** The same noise at every conditioning scale at this step: hover previews, a click chooses.
 * datum [{c, frame, selected, previewed}]; events "commit", "preview", "unpreview" (c). */
export function scaleSweep() {
  const listeners = d3.dispatch("commit", "preview", "unpreview");
  const draw = frame();

  function view(selection) {
    const items = selection.selectAll("figure.sweep-item").data(selection.datum(), (it) => it.c)
      .join((enter) => {
        const fig = enter.append("figure").attr("class", "sweep-item");
        fig.append("button").attr("type", "button").attr("class", "sweep-button")
          .on("click", (event, it) => listeners.call("commit", null, it.c))
          .on("pointerenter", (event, it) => listeners.call("preview", null, it.c))
          .on("pointerleave", () => listeners.call("unpreview", null))
          .append("div").attr("class", "frame frame-small");
        fig.append("figcaption");
        return fig;
      })
      .classed("is-selected", (it) => it.selected)
      .classed("is-previewed", (it) => it.previewed);
    items.select(".sweep-button").attr("aria-label", (it) => `Choose conditioning scale ${it.c}`)
      .attr("aria-pressed", (it) => String(it.selected));
    items.select(".frame").each(function drawOne(it) { d3.select(this).datum(it.frame).call(draw); });
    items.select("figcaption").text((it) => (it.c ? `scale ${fmt(it.c)}` : "0: without control"));
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

/** "13 residuals: 12 skip connections and the mid block" from the run's blocks. */
function skipsText(blocks) {
  if (!blocks.length) return "";
  const skips = blocks.filter((b) => b.name !== "mid_block").length;
  const sizes = [...new Set(blocks.map((b) => b.resolution[0]))].sort((a, b) => b - a);
  return `${skips} skip connections (at ${sizes.map((h) => `${h}×${h}`).join(", ")}) and the mid block`;
}

/** The control window in words, or "" where it spans the whole run. */
function windowText(window) {
  if (!window || (window[0] === 0 && window[1] === 1)) return "";
  return ` This run's ControlNet acts from ${Math.round(100 * window[0])}% to ${Math.round(100 * window[1])}% `
    + "of the UNet calls (control_guidance_start and _end); outside that window it adds nothing.";
}

/** Bars: each block's residual norm at this call, on one axis fixed over every step (so
 * bars grow and shrink as the step moves); a tick marks each block's peak over all steps. */
export function residualChart() {
  let axisKey = null;

  return function view(selection) {
    const d = selection.datum();
    const svg = selection.selectAll("svg.cn-chart").data([null]).join((enter) => {
      const s = enter.append("svg").attr("class", "cn-chart").attr("viewBox", `0 0 ${W} ${H}`)
        .attr("role", "img");
      s.append("g").attr("class", "cn-axis cn-y").attr("transform", `translate(${M.left},0)`);
      s.append("g").attr("class", "cn-bars");
      s.append("g").attr("class", "cn-labels");
      s.append("text").attr("class", "cn-y-title").attr("x", 4).attr("y", 11).text("‖residual‖");
      return s;
    });
    const x = d3.scaleBand().domain(d.blocks.map((b) => b.key)).range([M.left, W - M.right]).padding(0.2);
    const y = d3.scaleLinear().domain([0, d.max]).nice(4).range([H - M.bottom, M.top]);
    const key = `${y.domain()}`;
    if (key !== axisKey) {
      svg.select(".cn-y").call(d3.axisLeft(y).ticks(4).tickFormat((v) => fmt(v, 2)).tickSizeOuter(0));
      axisKey = key;
    }
    const value = (b, k) => (d.values ? d.values[k] : 0);
    const bars = svg.select(".cn-bars").selectAll("g.cn-bar").data(d.blocks, (b) => b.key)
      .join((enter) => {
        const g = enter.append("g").attr("class", "cn-bar");
        g.append("rect").attr("class", "cn-fill");
        g.append("line").attr("class", "cn-peak");
        g.append("title");
        return g;
      })
      .attr("data-block", (b) => b.name)
      .attr("data-value", (b, k) => (d.values ? String(d.values[k]) : null))
      .classed("is-mid", (b) => b.name === "mid_block");
    bars.select(".cn-fill")
      .attr("x", (b) => x(b.key)).attr("width", x.bandwidth())
      .attr("y", (b, k) => y(value(b, k))).attr("height", (b, k) => y(0) - y(value(b, k)));
    bars.select(".cn-peak")
      .attr("x1", (b) => x(b.key)).attr("x2", (b) => x(b.key) + x.bandwidth())
      .attr("y1", (b) => y(b.peak)).attr("y2", (b) => y(b.peak));
    bars.select("title").text((b, k) => `${b.name}: ${b.channels} channels at ${b.resolution.join("×")}; `
      + `‖residual‖ ${d.values ? fmt(d.values[k]) : "–"} at this step, at most ${fmt(b.peak)}`);
    svg.select(".cn-labels").selectAll("text").data(d.blocks, (b) => b.key).join("text")
      .attr("text-anchor", "end")
      .attr("transform", (b) => `translate(${x(b.key) + x.bandwidth() / 2},${H - M.bottom + 10}) rotate(-40)`)
      .text((b) => b.label);
    const total = d.values ? Math.hypot(...d.values) : null;
    svg.attr("aria-label", d.off ? "No residuals: control is off at scale 0"
      : d.atStart ? "Step 0: no UNet call yet, so no residual"
        : `The norm of each of the ControlNet's ${d.blocks.length} residuals at step ${d.step}, scale ${fmt(d.scale)}: `
          + `${d.blocks.map((b, k) => `${b.label} ${fmt(d.values[k])}`).join(", ")} (together ${fmt(total)})`);
  };
}

/** One heat map per resolution (viridis), each on its own peak over every step: bright
 * where the ControlNet's residuals are large. */
export function magnitudeMaps() {
  const painted = new WeakMap();

  return function view(selection) {
    const figs = selection.selectAll("figure.cn-map").data(selection.datum(), (m) => m.key)
      .join((enter) => {
        const fig = enter.append("figure").attr("class", "cn-map");
        fig.append("div").attr("class", "frame frame-small cn-map-frame").attr("role", "img")
          .append("canvas").attr("class", "frame-canvas pixelated").attr("aria-hidden", "true");
        fig.append("figcaption");
        return fig;
      });
    figs.select("figcaption").text((m) => m.label);
    figs.select(".cn-map-frame")
      .classed("is-empty", (m) => !m.map)
      .attr("aria-label", (m) => (m.map ? `Where the ControlNet acts, ${m.label}: bright where its residuals are large` : `${m.label}: loading`))
      .attr("data-max", (m) => (m.map ? fmt(d3.max(m.map.data)) : null));
    figs.select("canvas").each(function paint(m) {
      if (!m.map) { // step 0, or loading: nothing to show
        this.getContext("2d").clearRect(0, 0, this.width, this.height);
        painted.delete(this);
        return;
      }
      if (painted.get(this) === m.map.data) return;
      const [h, w] = m.map.shape;
      this.width = w;
      this.height = h;
      const ctx = this.getContext("2d");
      const img = ctx.createImageData(w, h);
      for (let j = 0; j < w * h; j++) {
        const c = VIRIDIS[Math.max(0, Math.min(255, Math.round((255 * m.map.data[j]) / m.max)))];
        img.data.set([c.r, c.g, c.b, 255], 4 * j);
      }
      ctx.putImageData(img, 0, 0);
      painted.set(this, m.map.data);
    });
  };
}

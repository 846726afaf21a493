/**
 * Image level 2: one real step of the refiner. The latent before the step and the
 * timestep go into the UNet, which predicts the noise for the empty prompt and for your
 * prompt; guidance combines them; the scheduler weakens the result by its factor for
 * this step and subtracts it, giving the latent after the step.
 *
 * Usage: d3.select(panel).datum({atStart, frames: {prev, uncond, text, guided, next},
 *          missing: {uncond, text}, table: {rows, channels} | null, noise}).call(imagePanel())
 * noise: a stochastic step's added noise {values (C*h*w), shape [C, h, w], matrix (C x 3),
 * scale} drawn into #step-noise, or null.
 * history: a multistep solver's {text, bars: [{label, share}]} (scheduler-words.js
 * historyWords) shown in #step-history, or null (hidden).
 * The frames are `frame()` data; the prose and numbers around them live in index.html.
 */
import { d3 } from "../lib.js";
import { fmt } from "../data.js";
import { frame } from "./frame.js";

export function pixelTable() {
  return function view(selection) {
    const d = selection.datum();
    const table = selection;
    table.selectAll("thead").data(d ? [d] : []).join("thead")
      .selectAll("tr").data((t) => [t]).join("tr")
      .selectAll("th").data((t) => ["", ...d3.range(t.channels).map((c) => `channel ${c}`)])
      .join("th").attr("scope", "col").text((x) => x);
    table.selectAll("tbody").data(d ? [d] : []).join("tbody")
      .selectAll("tr").data((t) => t.rows, (r) => r.key)
      .join((enter) => {
        const tr = enter.append("tr");
        tr.append("th").attr("scope", "row");
        return tr;
      })
      .attr("class", (r) => `row-${r.key}`)
      .call((tr) => tr.select("th").text((r) => r.label))
      .selectAll("td").data((r) => r.values || d3.range(d.channels).map(() => null))
      .join("td").text((v) => fmt(v));
  };
}

/**
 * The noise a stochastic step added (noise_scale x z), drawn as the server draws noise
 * predictions (backend/previews.py noise_frames): grey at 0, the bundle's colour map, on
 * the model's fixed noise scale, so it reads against the predictions beside it.
 */
export function noiseCanvas() {
  return function view(selection) {
    const d = selection.datum();
    const canvas = selection.selectAll("canvas").data(d ? [d] : []).join("canvas").node();
    if (!canvas) return;
    const [C, h, w] = d.shape;
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(w, h);
    const plane = h * w;
    for (let p = 0; p < plane; p++) {
      for (let k = 0; k < 3; k++) {
        let v = 0;
        for (let c = 0; c < C; c++) v += d.values[c * plane + p] * d.matrix[c][k];
        image.data[4 * p + k] = Math.round(255 * Math.min(1, Math.max(0, 0.5 + (0.5 * v) / d.scale)));
      }
      image.data[4 * p + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
  };
}

/**
 * A multistep step's sources as signed bars from one zero line: this call's share of the
 * move and each earlier call's (newest first), the share written beside each bar.
 */
export function historyBars() {
  const row = 18;
  const label = 78;
  const width = 300;
  return function view(selection) {
    const d = selection.datum();
    selection.property("hidden", !d);
    selection.select(".history-text").text(d ? d.text : "");
    const bars = d ? d.bars : [];
    const svg = selection.select("svg.history-chart").style("display", bars.length ? null : "none")
      .attr("viewBox", `0 0 ${width} ${row * bars.length + 4}`).attr("height", row * bars.length + 4);
    const lo = Math.min(0, ...bars.map((b) => b.share));
    const hi = Math.max(1, ...bars.map((b) => b.share));
    const x = d3.scaleLinear().domain([lo, hi]).range([label + 4, width - 44]);
    svg.selectAll("line.zero").data(bars.length ? [0] : []).join("line").attr("class", "zero")
      .attr("x1", x(0)).attr("x2", x(0)).attr("y1", 0).attr("y2", row * bars.length + 4);
    const g = svg.selectAll("g.bar").data(bars).join((enter) => {
      const e = enter.append("g").attr("class", "bar");
      e.append("text").attr("class", "bar-label");
      e.append("rect");
      e.append("text").attr("class", "bar-value");
      return e;
    }).attr("transform", (b, k) => `translate(0, ${k * row + 2})`)
      .classed("current", (b, k) => k === 0).classed("negative", (b) => b.share < 0);
    g.select(".bar-label").attr("x", label).attr("y", row * 0.7).attr("text-anchor", "end").text((b) => b.label);
    g.select("rect").attr("x", (b) => Math.min(x(0), x(b.share))).attr("y", 3)
      .attr("width", (b) => Math.abs(x(b.share) - x(0))).attr("height", row - 6);
    g.select(".bar-value").attr("x", (b) => Math.max(x(0), x(b.share)) + 4).attr("y", row * 0.7)
      .text((b) => `${Math.round(b.share * 100)}%`.replace("-", "\u2212"));
  };
}

export function imagePanel() {
  const draw = frame();
  const table = pixelTable();
  const noise = noiseCanvas();
  const history = historyBars();

  return function view(selection) {
    const d = selection.datum();
    selection.select("#image-note-start").property("hidden", !d.atStart);
    selection.select("#step-flow").classed("at-start", d.atStart);
    const slots = {
      prev: "#step-latent-prev", uncond: "#step-uncond", text: "#step-text",
      guided: "#step-guided", next: "#step-latent-next",
    };
    for (const [name, sel] of Object.entries(slots)) selection.select(sel).datum(d.frames[name]).call(draw);
    selection.select("#branch-uncond").property("hidden", d.missing.uncond);
    selection.select("#missing-uncond").property("hidden", !d.missing.uncond);
    selection.select("#branch-text").property("hidden", d.missing.text);
    selection.select("#missing-text").property("hidden", !d.missing.text);
    // step 0 has no call: the title and the numbers say so instead of "step 0 → 0"
    selection.select("#image-title-call").property("hidden", d.atStart);
    selection.select("#image-title-start").property("hidden", !d.atStart);
    selection.select("#pixel-numbers-note").property("hidden", Boolean(d.table) || d.atStart);
    selection.select("#pixel-numbers-start").property("hidden", Boolean(d.table) || !d.atStart);
    selection.select("#pixel-table").datum(d.table).call(table);
    selection.select("#step-noise").datum(d.noise || null).call(noise);
    selection.select("#step-history").datum(d.history || null).call(history);
  };
}

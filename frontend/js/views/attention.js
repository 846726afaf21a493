/**
 * Cross-attention: a token's map laid over the decoded image, its controls, and the
 * tokens a hovered pixel attends to most (a floating box over the page, so hovering
 * never moves anything else).
 *
 * attentionOverlay():  datum {map: {data, shape: [h, w]} | null, label}; event "pixel"
 *                      ({fx, fy} in [0, 1)) while the pointer is over the image, null on leave
 * attentionControls(): datum {token, resolutions, res, avg, step, note, max,
 *                      combinedFrom: the levels the combined map averages};
 *                      events "res" (value), "avg" (bool), "clear"
 * attentionHover():    datum {averaged, items: [{k, label, value, share}]} | null; drawn
 *                      into an absolutely positioned host, hidden when null
 * Colours are viridis (perceptually uniform, colour-blind safe); a map is scaled to its
 * own maximum so its shape is visible at every step.
 */
import { d3 } from "../lib.js";
import { fmt } from "../data.js";

const VIRIDIS = d3.range(256).map((j) => d3.rgb(d3.interpolateViridis(j / 255)));
const viridis = (t) => VIRIDIS[Math.max(0, Math.min(255, Math.round(255 * t)))];

export function attentionOverlay() {
  const listeners = d3.dispatch("pixel");
  const painted = new WeakMap();

  function view(selection) {
    selection.each(function draw(d) {
      const host = d3.select(this)
        .on("pointermove", function move(event) {
          const box = this.getBoundingClientRect();
          const fx = (event.clientX - box.left) / box.width;
          const fy = (event.clientY - box.top) / box.height;
          if (fx >= 0 && fx < 1 && fy >= 0 && fy < 1) listeners.call("pixel", null, { fx, fy });
        })
        .on("pointerleave", () => listeners.call("pixel", null, null));
      const canvas = host.selectAll("canvas.attention-canvas").data([null]).join("canvas")
        .attr("class", "attention-canvas")
        .attr("aria-hidden", "true");
      const node = canvas.node();
      host.classed("has-attention", Boolean(d.map));
      canvas.property("hidden", !d.map);
      if (!d.map || painted.get(node) === d.map.data) return;
      const [h, w] = d.map.shape;
      node.width = w;
      node.height = h;
      const ctx = node.getContext("2d");
      const img = ctx.createImageData(w, h);
      const max = d3.max(d.map.data) || 1;
      for (let j = 0; j < w * h; j++) {
        const t = d.map.data[j] / max;
        const c = viridis(t);
        img.data[4 * j] = c.r;
        img.data[4 * j + 1] = c.g;
        img.data[4 * j + 2] = c.b;
        img.data[4 * j + 3] = Math.round(255 * (0.25 + 0.6 * t));
      }
      ctx.putImageData(img, 0, 0);
      painted.set(node, d.map.data);
    });
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

/** "combined (16×16 + 8×8)": the option names the levels the bundle averaged into it. */
export function combinedLabel(levels) {
  if (!levels || !levels.length) return "combined";
  return `combined (${levels.map((r) => `${r}×${r}`).join(" + ")})`;
}

export function attentionControls() {
  const listeners = d3.dispatch("res", "avg", "clear");

  function view(selection) {
    const d = selection.datum();
    const root = selection.selectAll(".ac").data([null]).join((enter) => {
      const ac = enter.append("div").attr("class", "ac");
      const head = ac.append("p").attr("class", "ac-head");
      head.append("span").attr("class", "ac-title");
      head.append("button").attr("type", "button").attr("class", "link-button ac-clear")
        .text("Hide attention")
        .on("click", () => listeners.call("clear", null));
      const row = ac.append("div").attr("class", "ac-row");
      const res = row.append("label").attr("class", "ac-res");
      res.append("span").text("Resolution ");
      res.append("select").attr("class", "ac-res-select")
        .on("change", function onChange() {
          const v = this.value;
          listeners.call("res", null, v === "combined" ? "combined" : Number(v));
        });
      const avg = row.append("label").attr("class", "check ac-avg");
      avg.append("input").attr("type", "checkbox").attr("class", "ac-avg-input")
        .on("change", function onChange() {
          listeners.call("avg", null, this.checked);
        });
      avg.append("span").text(" all steps averaged");
      // the legend or a note, in a slot of fixed height: a preview never moves the page
      const info = ac.append("div").attr("class", "ac-info");
      const legend = info.append("p").attr("class", "ac-legend");
      legend.append("span").text("low ");
      legend.append("canvas").attr("class", "legend-bar").attr("aria-hidden", "true");
      legend.append("span").attr("class", "ac-max");
      info.append("p").attr("class", "ac-note");
      // paint the legend once
      legend.select("canvas").each(function paint() {
        this.width = 64;
        this.height = 1;
        const ctx = this.getContext("2d");
        for (let i = 0; i < 64; i++) {
          ctx.fillStyle = d3.interpolateViridis(i / 63);
          ctx.fillRect(i, 0, 1, 1);
        }
      });
      return ac;
    });

    root.select(".ac-title").text(d.token === null ? "Cross-attention" : `Where “${d.token}” acts`);
    root.select(".ac-res-select").selectAll("option")
      .data(d.resolutions, (r) => String(r))
      .join("option")
      .attr("value", (r) => r)
      .text((r) => (r === "combined" ? combinedLabel(d.combinedFrom) : `${r} × ${r} level`))
      .property("selected", (r) => String(r) === String(d.res));
    root.select(".ac-avg-input").property("checked", d.avg);
    root.select(".ac-max").text(d.max === null ? " high" : ` high (${fmt(d.max, 2)} of the pixel's attention)`);
    root.select(".ac-note").text(d.note || "").property("hidden", !d.note);
    root.select(".ac-legend").property("hidden", Boolean(d.note));
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

export function attentionHover() {
  return function view(selection) {
    const d = selection.datum();
    selection.property("hidden", !d);
    selection.selectAll("p.ac-hover-title").data([null]).join("p")
      .attr("class", "ac-hover-title")
      .text(d ? `This pixel attends most to${d.averaged ? " (all steps)" : ""}:` : "");
    selection.selectAll("ol").data([d ? d.items : []]).join("ol")
      // joined by rank, not by token: the rows stay put and only their words change
      .selectAll("li").data((items) => items)
      .join((enter) => {
        const li = enter.append("li");
        li.append("span").attr("class", "ac-token");
        li.append("span").attr("class", "ac-bar").append("span").attr("class", "ac-fill");
        li.append("span").attr("class", "ac-value");
        return li;
      })
      .call((li) => {
        li.select(".ac-token").text((it) => it.label);
        li.select(".ac-fill").style("width", (it) => `${Math.round(100 * it.share)}%`);
        li.select(".ac-value").text((it) => `${fmt(100 * it.value, 2)}%`);
      });
  };
}

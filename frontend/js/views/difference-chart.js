/**
 * What differs between the two lanes. differenceChart(): small line charts across the
 * steps (one per measure, each on its own scale), the current step marked; hovering
 * reads a value, a click jumps to that step. differenceImage(): the difference of the two
 * decoded images at the current step.
 *
 * differenceChart(): datum {T, step, series: [{key, label, values: number[] | null, format}]};
 *                    event "step" (s)
 * differenceImage(): datum {pixels: {data, width, height} | null, label}
 */
import { d3 } from "../lib.js";

const W = 420;
const H = 92;
const M = { top: 8, right: 12, bottom: 20, left: 44 };

export function differenceChart() {
  const listeners = d3.dispatch("step");
  let hoverStep = null;
  const axes = new WeakMap(); // svg -> the domains its axes show, so unchanged axes are not redrawn

  function view(selection) {
    const d = selection.datum();
    const x = d3.scaleLinear().domain([0, d.T]).range([M.left, W - M.right]);
    const stepAt = (event) => Math.max(0, Math.min(d.T, Math.round(x.invert(d3.pointer(event)[0]))));

    const rows = selection.selectAll("figure.dc").data(d.series, (s) => s.key).join((enter) => {
      const fig = enter.append("figure").attr("class", (s) => `dc dc-${s.key}`);
      const cap = fig.append("figcaption");
      cap.append("span").attr("class", "dc-label");
      cap.append("span").attr("class", "dc-value");
      const svg = fig.append("svg").attr("viewBox", `0 0 ${W} ${H}`).attr("class", "dc-svg")
        .attr("role", "img");
      svg.append("g").attr("class", "dc-axis dc-x").attr("transform", `translate(0,${H - M.bottom})`);
      svg.append("g").attr("class", "dc-axis dc-y").attr("transform", `translate(${M.left},0)`);
      svg.append("path").attr("class", "dc-line");
      svg.append("line").attr("class", "dc-now");
      svg.append("circle").attr("class", "dc-dot").attr("r", 4);
      svg.append("line").attr("class", "dc-hover");
      svg.append("text").attr("class", "dc-loading").attr("x", W / 2).attr("y", H / 2).attr("text-anchor", "middle")
        .text("loading…");
      svg.append("rect").attr("class", "dc-hit").attr("x", M.left).attr("y", 0)
        .attr("width", W - M.left - M.right).attr("height", H - M.bottom)
        .on("pointermove", (event) => {
          hoverStep = stepAt(event);
          selection.call(view);
        })
        .on("pointerleave", () => {
          hoverStep = null;
          selection.call(view);
        })
        .on("click", (event) => listeners.call("step", null, stepAt(event)));
      return fig;
    });

    rows.each(function drawRow(s) {
      const fig = d3.select(this);
      const svg = fig.select("svg");
      const values = s.values ? Array.from(s.values).slice(0, d.T + 1) : null;
      const max = values ? d3.max(values) || 1 : 1;
      const y = d3.scaleLinear().domain([0, max]).nice(3).range([H - M.bottom, M.top]);
      const axisKey = `${d.T}|${y.domain()}`;
      if (axes.get(svg.node()) !== axisKey) {
        svg.select(".dc-x").call(d3.axisBottom(x).ticks(Math.min(d.T, 6)).tickSizeOuter(0));
        svg.select(".dc-y").call(d3.axisLeft(y).ticks(3).tickFormat(s.format).tickSizeOuter(0));
        axes.set(svg.node(), axisKey);
      }
      svg.select(".dc-loading").property("hidden", Boolean(values)).attr("display", values ? "none" : null);
      svg.select(".dc-line").attr("d", values ? d3.line().x((v, i) => x(i)).y((v) => y(v))(values) : null);
      const now = values ? values[Math.min(d.step, values.length - 1)] : null;
      svg.select(".dc-now").attr("x1", x(d.step)).attr("x2", x(d.step)).attr("y1", M.top).attr("y2", H - M.bottom);
      svg.select(".dc-dot").attr("display", values ? null : "none")
        .attr("cx", x(d.step)).attr("cy", now === null ? 0 : y(now));
      svg.select(".dc-hover").attr("display", hoverStep === null ? "none" : null)
        .attr("x1", x(hoverStep ?? 0)).attr("x2", x(hoverStep ?? 0)).attr("y1", M.top).attr("y2", H - M.bottom);
      const shown = hoverStep ?? d.step;
      fig.select(".dc-label").text(s.label);
      fig.select(".dc-value").text(values ? ` step ${shown}: ${s.format(values[Math.min(shown, values.length - 1)])}` : "");
      svg.attr("aria-label", values
        ? `${s.label} across ${d.T} steps, from ${s.format(values[0])} at step 0 to ${s.format(values[values.length - 1])} at the end; `
          + `${s.format(now)} at step ${d.step}`
        : `${s.label}: loading`);
    });
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

export function differenceImage() {
  const painted = new WeakMap();
  return function view(selection) {
    selection.each(function draw(d) {
      const host = d3.select(this).attr("role", "img").attr("aria-label", d.label)
        .classed("is-loading", !d.pixels);
      const canvas = host.selectAll("canvas").data([null]).join("canvas").attr("class", "frame-canvas")
        .attr("aria-hidden", "true");
      const node = canvas.node();
      if (!d.pixels || painted.get(node) === d.pixels) return;
      const { data, width, height } = d.pixels;
      if (node.width !== width) node.width = width;
      if (node.height !== height) node.height = height;
      canvas.classed("pixelated", width < 128);
      node.getContext("2d").putImageData(new ImageData(data, width, height), 0, 0);
      painted.set(node, d.pixels);
    });
  };
}

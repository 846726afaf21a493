/**
 * "Fifty steps, four, one" (issue 16): the bundle's fewstep/ section (docs/bundle-format.md),
 * where the same prompt and the same noise go through the teacher's 50 steps and the
 * students' few or one. For the chosen example (prompt + seed) it draws every path on one
 * trajectory map (the example's one projection), each path's chord (the straight line from
 * its noise to its result, dashed), a time scrubber shared by all paths (time runs from
 * the noise, 1, to the image, 0: each path's node sits at its last step at or before that
 * time), each path's predicted final image from where its node is, and its straightness.
 * Nodes on one point (the noise; often the results at t = 0) are set around it (spread()).
 *
 * fewstepBox(host, {api, index}) owns the box: hidden unless api/index.json says the bundle
 * has the section (`fewstep`), nothing fetched until it is first opened, Escape closes it.
 * fewstepView() is the reusable chart it draws with:
 *   host.datum({doc, example, time, focus, image(url)}).call(fewstepView()
 *     .on("example", id => ...).on("time", t => ...).on("focus", pathId | null => ...))
 * The lesson's prose is in index.html; here only the words that depend on the numbers.
 */
import { d3 } from "../lib.js";
import { fmt } from "../data.js";
import { frame } from "./frame.js";

const EPS = 1e-9;
const SLIDER_MAX = 1000;   // the range input's units: time = 1 - value / SLIDER_MAX
const MARGIN = 16;
// a 1-step path's number is 0 (precompute/straightness.py); a section built before that
// definition holds its teacher's as ~1e-4: under this it is still the construction's 0
const STRAIGHT_BY_CONSTRUCTION = 0.01;
// colour per model: Okabe-Ito marks (apart for the common colour-vision deficiencies)
// with a darker shade for text (4.5:1 on white)
// and a shape per path of one model (most steps first), so a model's paths differ by shape too
const SHAPES = [d3.symbolCircle, d3.symbolSquare, d3.symbolDiamond, d3.symbolTriangle, d3.symbolStar, d3.symbolWye];
const PALETTE = [["#d55e00", "#b5420f"], ["#0072b2", "#1f5fa8"], ["#009e73", "#00704f"],
  ["#cc79a7", "#a0487c"], ["#e69f00", "#8a5a00"], ["#56b4e9", "#1d6f9e"]];

/**
 * The index of a path's node at time t: its last point with time >= t (time falls 1 -> 0).
 * At t = 1 every path is at its noise: a teacher with zero terminal SNR takes its first
 * step from time 1 to a time that rounds to 1, which would leave the noise before the
 * scrubber moves.
 */
export function nodeAt(times, t) {
  if (t >= 1 - EPS) return 0;
  let i = 0;
  while (i + 1 < times.length && times[i + 1] >= t - EPS) i += 1;
  return i;
}

/** Every time any path of the example has a point, from the noise (1) to the image (0). */
export function eventTimes(example) {
  const all = example.paths.flatMap((p) => p.time);
  return [...new Set(all.map((t) => Math.round(t / EPS) * EPS))].sort((a, b) => b - a);
}

/** The time an arrow key moves to from t: the next (or previous) time any path steps. */
export function nextTime(events, t, direction) {
  if (direction > 0) return events.find((e) => e < t - 1e-6) ?? 0;
  return [...events].reverse().find((e) => e > t + 1e-6) ?? 1;
}

/** A time for the readout: to 4 decimals, trailing zeros dropped down to 2 ("0.50",
 * "0.5019", "0.9995"), so that it never reads as a step's time it has not reached: the
 * teacher's step at 0.5019 is not the 4-step student's 0.5. */
export function timeText(t) {
  return t.toFixed(4).replace(/(\.\d\d\d*?)0+$/, "$1");
}

/**
 * Screen positions for the nodes so that none hides another: nodes closer than `gap`
 * (a node's width) are one group, set on a circle around the group's own centre, the
 * first path (the teacher's most steps) at the top and the rest clockwise, the circle's
 * radius just wide enough for neighbours to be `gap` apart; groups that then touch are
 * merged and set again. At t = 0 every path's result can be the same point (a student
 * distilled to land where its teacher does): each node stays visible and a line ties it to
 * the point it stands for. points: [[x, y], ...] on screen; returns as many [x, y], each
 * group's circle moved whole inside `box` ([left, top, right, bottom], optional), so a
 * group at the map's edge stays a circle.
 */
export function spread(points, gap, box = [-Infinity, -Infinity, Infinity, Infinity]) {
  let groups = points.map((_, j) => [j]);
  const near = (a, b) => Math.hypot(a[0] - b[0], a[1] - b[1]) < gap - 1e-6;
  const merge = (at) => {   // one pass: the first two groups with two members `near` each other, joined
    for (let g = 0; g < groups.length; g += 1) {
      for (let h = g + 1; h < groups.length; h += 1) {
        if (groups[g].some((a) => groups[h].some((b) => near(at[a], at[b])))) {
          groups[g] = [...groups[g], ...groups[h]].sort((a, b) => a - b);
          groups.splice(h, 1);
          return true;
        }
      }
    }
    return false;
  };
  const place = () => {
    const at = points.map((q) => [q[0], q[1]]);
    for (const group of groups.filter((g) => g.length > 1)) {
      const radius = gap / (2 * Math.sin(Math.PI / group.length));
      const inside = (v, lo, hi) => (hi - lo < 2 * radius ? (lo + hi) / 2 : Math.min(hi - radius, Math.max(lo + radius, v)));
      const cx = inside(d3.mean(group, (j) => points[j][0]), box[0], box[2]);
      const cy = inside(d3.mean(group, (j) => points[j][1]), box[1], box[3]);
      group.forEach((j, k) => {
        const angle = -Math.PI / 2 + (2 * Math.PI * k) / group.length;
        at[j] = [cx + radius * Math.cos(angle), cy + radius * Math.sin(angle)];
      });
    }
    return at;
  };
  while (merge(points));
  let at = place();
  while (merge(at)) at = place();
  return at;
}

/** A path's name: its model's label and its number of steps. */
function pathName(models, path) {
  const model = models.get(path.model);
  const steps = path.num_inference_steps;
  return `${model ? model.label : path.model}, ${steps} step${steps === 1 ? "" : "s"}`;
}

/**
 * What a path's straightness says (docs/bundle-format.md "Straightness": in flow time,
 * each step's squared distance from the chord weighted by the noise level it covers, over
 * the chord's squared length; benchmarks/bench_students.py's number). A 1-step path is
 * straight by construction: one segment from the noise to its result, so its number is 0
 * and says nothing about the model.
 */
export function straightnessWords(path) {
  if (path.num_inference_steps === 1 && path.straightness < STRAIGHT_BY_CONSTRUCTION) {
    return "one step: straight by construction";
  }
  return `straightness ${fmt(path.straightness, 2)}`;
}

const modelMaps = new WeakMap(); // doc -> its models by id, built once per section

/** The section's models by id. */
function modelsById(doc) {
  if (!modelMaps.has(doc)) modelMaps.set(doc, new Map(doc.models.map((m) => [m.id, m])));
  return modelMaps.get(doc);
}

/**
 * One sentence from the numbers: the teacher against the straightest student, each model
 * by its path with the most steps (the closest to its ODE: the teacher at 4 steps is a
 * coarse walk, not the teacher's curve), when that path has more than one step; "" when
 * the example lacks either.
 */
export function reading(doc, example) {
  const models = modelsById(doc);
  const kind = (p) => models.get(p.model)?.kind;
  const finest = d3.rollups(example.paths.filter((p) => Number.isFinite(p.straightness)), (ps) => d3.greatest(ps, (p) => p.num_inference_steps), (p) => p.model)
    .map(([, p]) => p).filter((p) => p.num_inference_steps > 1);
  const teacher = finest.find((p) => kind(p) === "teacher");
  const student = d3.least(finest.filter((p) => kind(p) !== "teacher"), (p) => p.straightness);
  if (!teacher || !student) return "";
  const ratio = student.straightness > 0 ? teacher.straightness / student.straightness : null;
  const times = ratio && ratio >= 1.5 ? `, ${fmt(ratio, 2)}× straighter` : "";
  return `Here: ${pathName(models, teacher)}: straightness ${fmt(teacher.straightness, 2)}; `
    + `${pathName(models, student)}: ${fmt(student.straightness, 2)}${times}.`;
}

/**
 * How much UNet work a path is: one evaluation a step, two with classifier-free guidance
 * (the prompt's and the empty prompt's: a guidance scale other than 1; the students run
 * at 1, their teacher's guidance baked in). The machine-free cost: the recorded seconds
 * include decoding every step's prediction, and whatever else the builder's machine ran.
 */
export function costWords(path, model) {
  const perStep = model && model.guidance_scale !== 1 ? 2 : 1;
  const n = path.num_inference_steps * perStep;
  return `${n} UNet evaluation${n === 1 ? "" : "s"}${perStep === 2 ? " (2 a step: guidance)" : ""}`;
}

/** Per path of the example: its colour, shape, name and node, prediction and frame at time t. */
function derive(doc, example, t) {
  const models = modelsById(doc);
  const colour = new Map(doc.models.map((m, j) => [m.id, PALETTE[j % PALETTE.length]]));
  const rank = (p) => example.paths.filter((q) => q.model === p.model
    && q.num_inference_steps > p.num_inference_steps).length;
  return example.paths.map((p) => {
    const T = p.num_inference_steps;
    const i = nodeAt(p.time, t);
    const [mark, ink] = colour.get(p.model) || ["#575766", "#575766"];
    return { ...p, T, i, mark, ink, shape: SHAPES[rank(p) % SHAPES.length], name: pathName(models, p),
      pred: i < T ? p.pred_xy[i] : null };
  });
}

export function fewstepView() {
  const listeners = d3.dispatch("example", "time", "focus");
  const thumb = frame();
  let width = null;
  let tallest = 440; // the map's most height: about half the screen's, so the pictures show too

  function controls(selection, d) {
    const row = selection.selectAll(".fs-controls").data([null]).join((enter) => {
      const r = enter.append("div").attr("class", "fs-controls");
      const pick = r.append("label").attr("class", "fs-pick");
      pick.append("span").text("Example ");
      pick.append("select").attr("class", "fs-example")
        .on("change", function onChange() { listeners.call("example", null, this.value); });
      const scrub = r.append("div").attr("class", "fs-scrub");
      const label = scrub.append("label").attr("class", "fs-scrub-label").attr("for", "fs-time");
      label.append("span").text("Time ");
      label.append("output").attr("class", "fs-time-readout").attr("for", "fs-time");
      scrub.append("input").attr("type", "range").attr("id", "fs-time").attr("class", "fs-time")
        .attr("min", 0).attr("max", SLIDER_MAX).attr("step", 1)
        .on("input", function onInput() { listeners.call("time", null, 1 - this.value / SLIDER_MAX); })
        .on("keydown", function onKey(event) {
          const dd = selection.datum();
          const moves = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1 };
          if (!(event.key in moves)) return; // Home, End, PageUp, PageDown: the range's own
          event.preventDefault();
          listeners.call("time", null, nextTime(eventTimes(dd.example), dd.time, moves[event.key]));
        });
      scrub.append("svg").attr("class", "fs-ticks").attr("aria-hidden", "true");
      const ends = scrub.append("div").attr("class", "fs-ends").attr("aria-hidden", "true");
      ends.append("span").text("noise, t = 1");
      ends.append("span").text("image, t = 0");
      return r;
    });
    row.select(".fs-example").selectAll("option").data(d.doc.examples, (e) => e.id).join("option")
      .attr("value", (e) => e.id).text((e) => `${e.prompt} (seed ${e.seed})`);
    row.select(".fs-example").property("value", d.example.id);
    const value = Math.round((1 - d.time) * SLIDER_MAX);
    row.select(".fs-time").property("value", value)
      .attr("aria-valuetext", `time ${timeText(d.time)}: 1 is the noise, 0 the image`);
    row.select(".fs-time-readout").text(`t = ${timeText(d.time)}`);
  }

  /** Under the scrubber: one row per path, a tick wherever it calls the model. */
  function ticks(selection, paths, t) {
    const svg = selection.select(".fs-ticks");
    const w = Math.max(100, svg.node().clientWidth || 300);
    const row = 6;
    const x = d3.scaleLinear().domain([1, 0]).range([8, w - 8]); // the thumb's travel
    svg.attr("viewBox", `0 0 ${w} ${paths.length * row + 2}`).attr("height", paths.length * row + 2);
    const rows = svg.selectAll("g.fs-tick-row").data(paths, (p) => p.id).join("g")
      .attr("class", "fs-tick-row").attr("transform", (_, j) => `translate(0,${j * row + 1})`)
      .style("--fs-mark", (p) => p.mark);
    rows.selectAll("line").data((p) => p.time.slice(0, -1).map((s, k) => ({ s, k, done: s >= t - EPS })))
      .join("line").attr("x1", (e) => x(e.s)).attr("x2", (e) => x(e.s)).attr("y1", 0).attr("y2", row - 1)
      .classed("is-done", (e) => e.done);
    svg.selectAll("line.fs-tick-now").data([t]).join("line").attr("class", "fs-tick-now")
      .attr("x1", x).attr("x2", x).attr("y1", 0).attr("y2", paths.length * row + 2);
  }

  function map(selection, d, paths) {
    const svg = selection.selectAll("svg.fs-map").data([null]).join((enter) => {
      const s = enter.append("svg").attr("class", "fs-map").attr("role", "img");
      s.append("rect").attr("class", "fs-bg");
      for (const layer of ["fs-chords", "fs-lines", "fs-dots", "fs-preds", "fs-start", "fs-leaders", "fs-now"]) {
        s.append("g").attr("class", layer);
      }
      return s;
    });
    const w = width || 400;
    const all = paths.flatMap((p) => [...p.xy, ...p.pred_xy, ...p.chord]);
    const [x0, x1] = d3.extent(all, (q) => q[0]);
    const [y0, y1] = d3.extent(all, (q) => q[1]);
    const dx = Math.max(x1 - x0, EPS);
    const dy = Math.max(y1 - y0, EPS);
    const h = Math.round(Math.max(200, Math.min(w * 0.8, tallest, (w - 2 * MARGIN) * (dy / dx) + 2 * MARGIN)));
    const k = Math.min((w - 2 * MARGIN) / dx, (h - 2 * MARGIN) / dy); // one scale: only distances mean something
    const x = (v) => w / 2 + (v - (x0 + x1) / 2) * k;
    const y = (v) => h / 2 - (v - (y0 + y1) / 2) * k;
    const line = d3.line().x((q) => x(q[0])).y((q) => y(q[1]));
    svg.attr("viewBox", `0 0 ${w} ${h}`).attr("height", h)
      .attr("aria-label", `Trajectory map at time ${timeText(d.time)}: ${paths.map((p) => `${p.name} at step ${p.i} of ${p.T}`).join("; ")}. `
        + "Dashed: each path's chord, the straight line from its noise to its result.");
    svg.select(".fs-bg").attr("width", w).attr("height", h);
    const dim = (p) => d.focus !== null && d.focus !== p.id;
    const styled = (sel) => sel.style("--fs-mark", (p) => p.mark).style("--fs-ink", (p) => p.ink)
      .classed("is-dimmed", dim).attr("data-path", (p) => p.id);

    svg.select(".fs-chords").selectAll("line").data(paths, (p) => p.id).join("line")
      .attr("class", "fs-chord").call(styled)
      .attr("x1", (p) => x(p.chord[0][0])).attr("y1", (p) => y(p.chord[0][1]))
      .attr("x2", (p) => x(p.chord[1][0])).attr("y2", (p) => y(p.chord[1][1]));
    const lines = svg.select(".fs-lines").selectAll("g.fs-path").data(paths, (p) => p.id)
      .join((enter) => {
        const g = enter.append("g");
        g.append("path").attr("class", "fs-ahead");
        g.append("path").attr("class", "fs-done");
        return g;
      })
      .attr("class", "fs-path").call(styled);
    lines.select(".fs-ahead").attr("d", (p) => line(p.xy));
    lines.select(".fs-done").attr("d", (p) => line(p.xy.slice(0, p.i + 1)));
    svg.select(".fs-dots").selectAll("g.fs-path-dots").data(paths, (p) => p.id).join("g")
      .attr("class", "fs-path-dots").call(styled)
      .selectAll("circle").data((p) => p.xy.map((q, j) => ({ q, j, done: j <= p.i })))
      .join("circle").attr("r", 2.2).attr("cx", (n) => x(n.q[0])).attr("cy", (n) => y(n.q[1]))
      .classed("is-done", (n) => n.done);
    // where each path's current call says the image will be: a ring, tied to its node
    const preds = svg.select(".fs-preds").selectAll("g.fs-pred").data(paths.filter((p) => p.pred), (p) => p.id)
      .join((enter) => {
        const g = enter.append("g");
        g.append("line");
        g.append("path");
        return g;
      })
      .attr("class", "fs-pred").call(styled);
    preds.select("line").attr("x1", (p) => x(p.xy[p.i][0])).attr("y1", (p) => y(p.xy[p.i][1]))
      .attr("x2", (p) => x(p.pred[0])).attr("y2", (p) => y(p.pred[1]));
    preds.select("path").attr("d", (p) => d3.symbol(p.shape, 90)())
      .attr("transform", (p) => `translate(${x(p.pred[0])},${y(p.pred[1])})`);
    // the nodes' size follows their label's, which is in rem (presentation mode's type reaches it)
    const label = parseFloat(getComputedStyle(svg.select(".fs-now").node()).fontSize) || 12;
    const radius = label * 1.02;  // a circle that holds "50" in bold
    const onMap = paths.map((p) => [x(p.xy[p.i][0]), y(p.xy[p.i][1])]);
    const placed = spread(onMap, 2 * radius + 3, [radius, radius, w - radius, h - radius]);
    // the noise's label, above (or below) the nodes set around the noise
    const start = paths[0].xy[0];
    const clear = d3.max(paths, (p, j) => (p.i === 0 ? Math.abs(placed[j][1] - y(start[1])) + radius : 0)) || 0;
    const side = (q) => (x(q[0]) < w / 3 ? "start" : x(q[0]) > (2 * w) / 3 ? "end" : "middle");
    svg.select(".fs-start").selectAll("text").data([start]).join("text")
      .attr("class", "fs-start-label").attr("text-anchor", side)
      .attr("x", (q) => x(q[0]) + { start: -8, middle: 0, end: 8 }[side(q)])
      .attr("y", (q) => (y(q[1]) - clear < 30 ? y(q[1]) + Math.max(24, clear + label) : y(q[1]) - Math.max(14, clear + 5)))
      .text(`the same noise (seed ${d.example.seed})`);
    const moved = paths.map((p, j) => ({ p, from: onMap[j], to: placed[j] }))
      .filter((m) => Math.hypot(m.to[0] - m.from[0], m.to[1] - m.from[1]) > 0.5);
    const leaders = svg.select(".fs-leaders").selectAll("g.fs-leader").data(moved, (m) => m.p.id)
      .join((enter) => {
        const g = enter.append("g");
        g.append("line");
        g.append("circle").attr("r", 2.5);
        return g;
      })
      .attr("class", "fs-leader").attr("data-path", (m) => m.p.id)
      .style("--fs-mark", (m) => m.p.mark).classed("is-dimmed", (m) => dim(m.p));
    leaders.select("line").attr("x1", (m) => m.from[0]).attr("y1", (m) => m.from[1])
      .attr("x2", (m) => m.to[0]).attr("y2", (m) => m.to[1]);
    leaders.select("circle").attr("cx", (m) => m.from[0]).attr("cy", (m) => m.from[1]);
    const now = svg.select(".fs-now").selectAll("g.fs-node").data(paths, (p) => p.id)
      .join((enter) => {
        const g = enter.append("g");
        g.append("path");
        g.append("text").attr("dy", "0.35em").attr("text-anchor", "middle");
        return g;
      })
      .attr("class", "fs-node").call(styled)
      .attr("data-step", (p) => p.i)
      .attr("data-x", (p) => p.xy[p.i][0]).attr("data-y", (p) => p.xy[p.i][1])
      .attr("transform", (_, j) => `translate(${placed[j][0]},${placed[j][1]})`);
    now.select("path").attr("d", (p) => d3.symbol(p.shape, Math.PI * radius * radius)());
    now.select("text").text((p) => p.T);
    now.filter((p) => d.focus === p.id).raise();
  }

  function cards(selection, d, paths) {
    const cardsHost = selection.selectAll(".fs-cards").data([null]).join("div").attr("class", "fs-cards");
    const card = cardsHost.selectAll("figure.fs-card").data(paths, (p) => p.id)
      .join((enter) => {
        const f = enter.append("figure").attr("tabindex", 0)
          .on("pointerenter focus", (_, p) => listeners.call("focus", null, p.id))
          .on("pointerleave blur", () => listeners.call("focus", null, null));
        const title = f.append("figcaption").attr("class", "fs-card-title");
        title.append("svg").attr("class", "fs-shape").attr("viewBox", "-8 -8 16 16").attr("aria-hidden", "true")
          .append("path");
        title.append("span");
        f.append("div").attr("class", "frame fs-frame");
        f.append("p").attr("class", "fs-card-step");
        f.append("p").attr("class", "fs-straightness");
        f.append("p").attr("class", "fs-cost muted");
        return f;
      })
      .attr("class", "fs-card").attr("data-path", (p) => p.id)
      .style("--fs-mark", (p) => p.mark).style("--fs-ink", (p) => p.ink)
      .classed("is-focused", (p) => d.focus === p.id);
    card.select(".fs-card-title path").attr("d", (p) => d3.symbol(p.shape, 90)());
    card.select(".fs-card-title span").text((p) => p.name);
    card.select(".fs-frame").datum((p) => {
      const url = p.images.url || d.fileUrl(p.images.file); // the served index's url: ?v= its hash
      return { image: d.image(url), index: p.i,
        entry: { frame_width: p.images.width, frame_height: p.images.height, columns: p.images.frames },
        label: p.i < p.T ? `${p.name}: what step ${p.i + 1} predicts the final image to be` : `${p.name}: the result` };
    }).call(thumb);
    card.select(".fs-card-step").text((p) => (p.i < p.T
      ? `step ${p.i + 1} of ${p.T} predicts this` : `the result, after ${p.T} step${p.T === 1 ? "" : "s"}`));
    card.select(".fs-straightness").text(straightnessWords);
    const models = modelsById(d.doc);
    // the count, then why it is twice the steps in a span that presentation mode leaves out
    card.select(".fs-cost").selectAll("span").data((p) => costWords(p, models.get(p.model)).split(/(?= \()/))
      .join("span").attr("class", (_, j) => (j ? "fs-cost-why" : null)).text((part) => part);
    card.select(".fs-cost")
      .attr("title", (p) => (Number.isFinite(p.seconds) ? `${fmt(p.seconds, 2)} s on the machine that built the bundle, `
        + "decoding every step's prediction included" : null));
  }

  function view(selection) {
    const d = selection.datum();
    const paths = derive(d.doc, d.example, d.time);
    controls(selection, d);
    ticks(selection, paths, d.time);
    // the example's whole prompt, wrapped: a phone's select shows its first words only
    selection.selectAll("p.fs-prompt").data([d.example]).join("p").attr("class", "fs-prompt")
      .text((e) => `“${e.prompt}” (seed ${e.seed})`);
    const grid = selection.selectAll(".fs-grid").data([null]).join((enter) => {
      const g = enter.append("div").attr("class", "fs-grid");
      g.append("div").attr("class", "fs-map-host");
      return g;
    });
    const host = grid.select(".fs-map-host");
    map(host, d, paths);
    // the key under the map it explains: a projector's screen keeps its height for the cards
    const models = d.doc.models.filter((m) => d.example.paths.some((p) => p.model === m.id));
    const legend = host.selectAll("ul.fs-legend").data([null]).join("ul").attr("class", "fs-legend");
    const keys = [...models.map((m) => ({ id: m.id, kind: "model", text: m.label,
      mark: paths.find((p) => p.model === m.id).mark })),
    { id: "chord", kind: "chord", text: "chord: noise → result", mark: null },
    { id: "pred", kind: "pred", text: "where the step predicts the image will end", mark: null }];
    legend.selectAll("li").data(keys, (k) => k.id).join("li")
      .attr("class", (k) => `fs-key-${k.kind}`)
      .style("--fs-mark", (k) => k.mark)
      .text((k) => k.text);
    cards(grid, d, paths);
    const words = reading(d.doc, d.example);
    selection.selectAll("p.fs-reading").data([words]).join("p").attr("class", "fs-reading")
      .text((s) => s).property("hidden", !words);
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  /** Re-read the map's width and the screen's height; true when either changed since the
   * last draw (draw again). */
  view.measure = (selection) => {
    const host = selection.select(".fs-map-host").node();
    if (!host || !host.clientWidth) return false;
    const next = Math.max(200, host.clientWidth);
    const tall = Math.max(220, Math.min(440, Math.round(window.innerHeight * 0.55)));
    if (next === width && tall === tallest) return false;
    width = next;
    tallest = tall;
    return true;
  };
  return view;
}

/**
 * The box: a disclosure in index.html (#fewstep > details) whose body is drawn when first
 * opened. index: api/index.json (its `fewstep` says the bundle has the section). store
 * (js/state.js, optional): the box's open state, example and time follow its `fewstep` and
 * `fewstepExample` (the address bar: a link opens the box there, back and forward too).
 * Returns {close()}: closes an open box (true) or does nothing (false).
 */
export function fewstepBox(host, { api, index, store = null }) {
  const details = host.select("details");
  const body = host.select(".fewstep-view");
  host.attr("hidden", index && index.fewstep ? null : true);
  const none = { close: () => false };
  if (!index || !index.fewstep || details.empty()) return none;

  const chart = fewstepView();
  const state = { example: null, time: 1, focus: null };
  let doc = null;
  let frameRequest = null;
  const fileUrl = (file) => api.urls.fewstepFile(file);
  const image = (url) => {
    const loaded = api.peek(url, "image", { start: false });
    if (!loaded && !api.failed(url)) api.load(url, "image").then(schedule, () => {});
    return loaded || null;
  };
  function draw() {
    if (!doc || !details.property("open")) return;
    const example = doc.examples.find((e) => e.id === state.example) || doc.examples[0];
    body.datum({ doc, example, time: state.time, focus: state.focus, fileUrl, image }).call(chart);
    if (chart.measure(body)) body.call(chart);
  }
  function schedule() {
    if (frameRequest === null) frameRequest = requestAnimationFrame(() => { frameRequest = null; draw(); });
  }
  // the address bar (js/state.js): what is on screen goes in; a link or back/forward comes out
  let own = false;
  let timeCommit = null;
  function commit(patch) {
    if (!store) return;
    clearTimeout(timeCommit);
    own = true;
    try {
      store.commit(patch);
    } finally {
      own = false;
    }
  }
  const shown = () => (details.property("open")
    ? { fewstep: state.time, fewstepExample: state.example } : { fewstep: null, fewstepExample: null });
  function follow() {
    const s = store.committed();
    if (s.fewstep !== null) {
      state.time = s.fewstep;
      if (s.fewstepExample !== state.example) state.focus = null;
      state.example = s.fewstepExample;
    }
    if (details.property("open") !== (s.fewstep !== null)) details.property("open", s.fewstep !== null);
    else schedule();
  }
  if (store) {
    store.on("change.fewstep", ({ reason }) => {
      if (!own && /fewstep|history/.test(reason)) follow();
    });
    if (store.committed().fewstep !== null) follow();
  }

  chart.on("example", (id) => { state.example = id; state.focus = null; schedule(); commit(shown()); })
    .on("time", (t) => {
      state.time = Math.min(1, Math.max(0, t));
      schedule();
      // a drag sends many: the address follows once it rests
      clearTimeout(timeCommit);
      timeCommit = setTimeout(() => commit(shown()), 250);
    })
    .on("focus", (id) => { state.focus = id; schedule(); });

  details.on("toggle", () => {
    commit(shown());
    if (!details.property("open") || doc) return schedule();
    body.selectAll(".fs-message").data([null]).join("p").attr("class", "fs-message muted").text("Loading the paths…");
    api.load(api.urls.fewstep()).then((loaded) => {
      doc = loaded;
      body.selectAll(".fs-message").remove();
      schedule();
    }, (error) => {
      body.selectAll(".fs-message").attr("class", "fs-message is-error").text(`Could not load the paths: ${error.message}`);
    });
  });
  const close = () => {
    if (!details.property("open")) return false;
    details.property("open", false);
    details.select("summary").node().focus();
    return true;
  };
  details.on("keydown", (event) => {
    if (event.key === "Escape" && close()) {
      event.preventDefault(); // the page's Escape (js/keyboard.js) leaves it alone then
      event.stopPropagation();
    }
  });
  window.addEventListener("resize", schedule);
  return { close };
}

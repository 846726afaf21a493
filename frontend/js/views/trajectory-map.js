/**
 * The Trajectory Map: every step's latent of two runs, projected to 2-D by the bundle
 * (one projection per seed, so every run of that seed shares the map). Nodes appear up
 * to the current step, early steps pale; each lane's current node is large and numbered;
 * hovering a node shows its step and picture and a click jumps to that step. Optionally
 * the other guidance scales' paths, faint.
 *
 * The view is fitted to the paths shown (the two lanes, plus the faint ones when shown),
 * with one scale for both axes, since only distances mean something. The first step, from
 * the noise, is usually longer than the whole rest of a path: it is drawn shortened,
 * dashed and with a break mark, and a note says by how much, so the rest is readable.
 * d3.zoom zooms and pans (wheel and pinch around the pointer, drag); the + − buttons and
 * keys zoom around the current nodes, keeping them in view; 0 or "Reset view" refits.
 *
 * Usage: d3.select(host).datum({step, T, method,
 *          paths: [{key, lane, name, text, points: [[x, y], ...T+1], thumb: {image, entry} | null}],
 *          faint: [{key, label, lane, points}], showFaint, note})
 *          .call(trajectoryMap().on("step", s => ...).on("paths", bool => ...))
 * Lane 1 is drawn with circles, lane 2 with squares, so the two differ by shape as well
 * as by colour.
 */
import { d3 } from "../lib.js";
import { fmt } from "../data.js";
import { frame } from "./frame.js";

const MARGIN = 22;
const HIT_RADIUS = 22;
const ZOOM_STEP = 1.6;
const FIRST_JUMP_SHARE = 0.3; // the shortened first step: this share of the rest's extent
const SYMBOLS = [d3.symbolCircle, d3.symbolSquare];
let uid = 0;

/** Bounding box [[x0, y0], [x1, y1]] of a list of points. */
function bounds(points) {
  return [[d3.min(points, (p) => p[0]), d3.min(points, (p) => p[1])],
    [d3.max(points, (p) => p[0]), d3.max(points, (p) => p[1])]];
}

/**
 * Shorten every path's first step to FIRST_JUMP_SHARE of the extent of all later steps.
 * Returns {points: key -> shortened points, ratio: first jump / rest of lane 1's path | null}.
 */
export function shortenFirstJump(paths) {
  const later = paths.flatMap((p) => p.points.slice(1));
  if (!later.length) return { points: new Map(paths.map((p) => [p.key, p.points])), ratio: null, broken: false };
  const [[x0, y0], [x1, y1]] = bounds(later);
  const limit = FIRST_JUMP_SHARE * Math.max(x1 - x0, y1 - y0, 1e-9);
  let broken = false;
  const points = new Map(paths.map((p) => {
    const [a, b] = p.points;
    const len = b ? Math.hypot(a[0] - b[0], a[1] - b[1]) : 0;
    if (!b || len <= limit) return [p.key, p.points];
    broken = true;
    const t = limit / len;
    return [p.key, [[b[0] + (a[0] - b[0]) * t, b[1] + (a[1] - b[1]) * t], ...p.points.slice(1)]];
  }));
  const first = paths[0];
  let ratio = null;
  if (broken && first && first.points.length > 2) {
    const rest = d3.sum(d3.pairs(first.points.slice(1)), ([a, b]) => Math.hypot(a[0] - b[0], a[1] - b[1]));
    const jump = Math.hypot(first.points[0][0] - first.points[1][0], first.points[0][1] - first.points[1][1]);
    ratio = rest > 0 ? jump / rest : null;
  }
  return { points, ratio, broken };
}

export function trajectoryMap() {
  const listeners = d3.dispatch("step", "paths");
  const clipId = `tm-clip-${++uid}`;
  const thumb = frame();
  let transform = d3.zoomIdentity;
  let root = null;     // the host selection of the last draw
  let hovered = null;  // {key, i} under the pointer
  let zoom = null;
  let width = null;    // the svg's width in CSS px, read between frames by measure()
  let fitKey = null;   // which paths the view is fitted to: a new set refits it

  const pale = d3.scaleLinear().range([0.18, 1]).clamp(true);

  /** The drawn paths (first jump shortened), the fit and the scales. */
  function geometry(d) {
    const w = width || 400;
    const shown = [...d.paths, ...(d.showFaint ? d.faint : [])];
    const short = shortenFirstJump(shown);
    const all = shown.flatMap((p) => short.points.get(p.key));
    const [[x0, y0], [x1, y1]] = all.length ? bounds(all) : [[0, 0], [1, 1]];
    const dx = Math.max(x1 - x0, 1e-9);
    const dy = Math.max(y1 - y0, 1e-9);
    const height = Math.round(Math.max(220, Math.min(460, (w - 2 * MARGIN) * (dy / dx) + 2 * MARGIN)));
    const k = Math.min((w - 2 * MARGIN) / dx, (height - 2 * MARGIN) / dy);
    const cx = (x0 + x1) / 2;
    const cy = (y0 + y1) / 2;
    const x = d3.scaleLinear().domain([cx - 1, cx + 1]).range([w / 2 - k, w / 2 + k]);
    const y = d3.scaleLinear().domain([cy - 1, cy + 1]).range([height / 2 + k, height / 2 - k]);
    return {
      width: w, height, short,
      x: transform.rescaleX(x), y: transform.rescaleY(y),
      key: shown.map((p) => p.key).join("|"),
    };
  }

  /** Every revealed node of the lane paths, with its position on screen (svg pixels). */
  function nodes(d, g) {
    return d.paths.flatMap((p) => g.short.points.get(p.key).slice(0, d.step + 1).map(([px, py], i) => ({
      key: `${p.key}-${i}`, path: p, i, x: g.x(px), y: g.y(py),
    })));
  }

  function nearest(d, g, [mx, my]) {
    let best = null;
    let bestDist = HIT_RADIUS;
    for (const n of nodes(d, g)) {
      const dist = Math.hypot(n.x - mx, n.y - my);
      if (dist <= bestDist) {
        best = n;
        bestDist = dist;
      }
    }
    return best;
  }

  /** The lanes' current nodes on screen. */
  function currentNodes(d, g) {
    return d.paths.map((p) => {
      const pts = g.short.points.get(p.key);
      const [px, py] = pts[Math.min(d.step, pts.length - 1)];
      return { key: p.key, path: p, x: g.x(px), y: g.y(py) };
    });
  }

  /**
   * Zoom by k around the current nodes: their centre stays put, and zooming in stops
   * before either of them would leave the plot.
   */
  function zoomAroundCurrent(svg, k) {
    const d = root.datum();
    const g = geometry(d);
    const cur = currentNodes(d, g);
    if (!cur.length) {
      svg.transition().duration(250).call(zoom.scaleBy, k);
      return;
    }
    const px = d3.mean(cur, (c) => c.x);
    const py = d3.mean(cur, (c) => c.y);
    let factor = k;
    if (k > 1) {
      for (const c of cur) {
        const ox = Math.abs(c.x - px);
        const oy = Math.abs(c.y - py);
        if (ox > 0) factor = Math.min(factor, (Math.min(px, g.width - px) - MARGIN) / ox);
        if (oy > 0) factor = Math.min(factor, (Math.min(py, g.height - py) - MARGIN) / oy);
      }
      factor = Math.max(1, factor);
    }
    // keep the centre of the current nodes where it is on screen
    svg.transition().duration(250).call(zoom.scaleBy, factor, [px, py]);
  }

  function view(selection) {
    root = selection;
    const d = selection.datum();

    const bar = selection.selectAll(".tm-bar").data([null]).join((enter) => {
      const b = enter.append("div").attr("class", "tm-bar");
      const zoomButtons = [["+", "Zoom in", ZOOM_STEP], ["−", "Zoom out", 1 / ZOOM_STEP]];
      for (const [label, name, k] of zoomButtons) {
        b.append("button").attr("type", "button").attr("class", "icon-button tm-zoom").attr("aria-label", name)
          .attr("title", `${name} around the current step (or scroll, pinch)`).text(label)
          .on("click", () => zoomAroundCurrent(root.select("svg.tm-svg"), k));
      }
      b.append("button").attr("type", "button").attr("class", "button tm-reset").text("Reset view")
        .on("click", () => root.select("svg.tm-svg").transition().duration(250).call(zoom.transform, d3.zoomIdentity));
      const check = b.append("label").attr("class", "check tm-faint-toggle");
      check.append("input").attr("type", "checkbox").attr("class", "tm-faint-input")
        .on("change", function onChange() { listeners.call("paths", null, this.checked); });
      check.append("span").text("other guidance scales");
      return b;
    });
    bar.select(".tm-faint-input").property("checked", d.showFaint);

    const stage = selection.selectAll(".tm-stage").data([null]).join("div").attr("class", "tm-stage");
    const svg = stage.selectAll("svg.tm-svg").data([null]).join((enter) => {
      const s = enter.append("svg").attr("class", "tm-svg").attr("tabindex", 0)
        .attr("role", "img");
      s.append("clipPath").attr("id", clipId).append("rect");
      s.append("rect").attr("class", "tm-bg");
      const plot = s.append("g").attr("class", "tm-plot").attr("clip-path", `url(#${clipId})`);
      plot.append("g").attr("class", "tm-faint");
      plot.append("g").attr("class", "tm-lines");
      plot.append("g").attr("class", "tm-breaks");
      plot.append("g").attr("class", "tm-nodes");
      plot.append("g").attr("class", "tm-current");
      plot.append("circle").attr("class", "tm-hover-ring").attr("r", 9);
      zoom = d3.zoom().scaleExtent([0.5, 40])
        .on("zoom", (event) => {
          transform = event.transform;
          root.call(view);
        });
      s.call(zoom).on("dblclick.zoom", null);
      s.on("pointermove", (event) => {
        const dd = root.datum();
        const n = nearest(dd, geometry(dd), d3.pointer(event));
        const next = n ? { key: n.path.key, i: n.i } : null;
        if (JSON.stringify(next) !== JSON.stringify(hovered)) {
          hovered = next;
          root.call(view);
        }
      }).on("pointerleave", () => {
        if (hovered) {
          hovered = null;
          root.call(view);
        }
      }).on("click", (event) => {
        const dd = root.datum();
        const n = nearest(dd, geometry(dd), d3.pointer(event));
        if (n) listeners.call("step", null, n.i);
      }).on("keydown", (event) => {
        const k = { "+": ZOOM_STEP, "=": ZOOM_STEP, "-": 1 / ZOOM_STEP, "−": 1 / ZOOM_STEP }[event.key];
        if (k) zoomAroundCurrent(s, k);
        else if (event.key === "0") s.call(zoom.transform, d3.zoomIdentity);
        else return;
        event.preventDefault();
      });
      return s;
    });

    let g = geometry(d);
    if (fitKey !== null && g.key !== fitKey && transform !== d3.zoomIdentity) {
      // other paths shown: fit the view to them again
      svg.interrupt().call(zoom.transform, d3.zoomIdentity); // draws again through "zoom"
      return;
    }
    fitKey = g.key;
    g = geometry(d);
    svg.attr("viewBox", `0 0 ${g.width} ${g.height}`).attr("height", g.height)
      .attr("aria-label", d.paths.length
        ? `Trajectory map up to step ${d.step}: ${d.paths.map((p) => `${p.name} as ${p.lane ? "squares" : "circles"}`).join(", ")}. `
          + "Hover a node for its step, click to jump there; + and − zoom around the current step."
        : "Trajectory map");
    svg.select(`#${clipId} rect`).attr("width", g.width).attr("height", g.height);
    svg.select(".tm-bg").attr("width", g.width).attr("height", g.height);
    pale.domain([0, d.T]);
    const line = d3.line().x((p) => g.x(p[0])).y((p) => g.y(p[1]));
    const drawn = (p) => g.short.points.get(p.key);
    const broken = (p) => drawn(p) !== p.points;

    // the other guidance scales, faint
    const faint = svg.select(".tm-faint").selectAll("g.tm-faint-path")
      .data(d.showFaint ? d.faint : [], (f) => f.key)
      .join((enter) => {
        const fg = enter.append("g").attr("class", "tm-faint-path");
        fg.append("path");
        fg.append("text");
        return fg;
      })
      .attr("class", (f) => `tm-faint-path${f.lane === null ? "" : ` lane-${f.lane + 1}`}`);
    faint.select("path").attr("d", (f) => line(drawn(f).slice(0, d.step + 1)));
    faint.select("text").each(function label(f) {
      const pts = drawn(f);
      const p = pts[Math.min(d.step, pts.length - 1)];
      d3.select(this).attr("x", g.x(p[0]) + 5).attr("y", g.y(p[1]) - 5).text(f.label);
    });

    // the two lanes' paths: the first step dashed when it is drawn shortened
    svg.select(".tm-lines").selectAll("path.tm-line").data(d.paths, (p) => p.key).join("path")
      .attr("class", (p) => `tm-line lane-${p.lane + 1}`)
      .attr("d", (p) => line(drawn(p).slice(broken(p) ? 1 : 0, d.step + 1)));
    const breaks = d.step >= 1 ? d.paths.filter(broken).map((p) => {
      const [a, b] = drawn(p).map((q) => [g.x(q[0]), g.y(q[1])]);
      const angle = (Math.atan2(b[1] - a[1], b[0] - a[0]) * 180) / Math.PI;
      return { key: p.key, lane: p.lane, a, b, mid: [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2], angle };
    }) : [];
    const brk = svg.select(".tm-breaks").selectAll("g.tm-break").data(breaks, (b) => b.key)
      .join((enter) => {
        const bg = enter.append("g");
        bg.append("line").attr("class", "tm-jump");
        bg.append("path").attr("class", "tm-break-mark").attr("d", "M-3,-6L-1,6M3,-6L5,6");
        return bg;
      })
      .attr("class", (b) => `tm-break lane-${b.lane + 1}`);
    brk.select("line").attr("x1", (b) => b.a[0]).attr("y1", (b) => b.a[1]).attr("x2", (b) => b.b[0]).attr("y2", (b) => b.b[1]);
    brk.select("path").attr("transform", (b) => `translate(${b.mid[0]},${b.mid[1]}) rotate(${b.angle})`);

    const all = nodes(d, g);
    svg.select(".tm-nodes").selectAll("path.tm-node").data(all, (n) => n.key)
      .join((enter) => enter.append("path")
        .attr("d", (n) => d3.symbol(SYMBOLS[n.path.lane], 42)()))
      .attr("class", (n) => `tm-node lane-${n.path.lane + 1}`)
      .attr("data-step", (n) => n.i)
      .attr("transform", (n) => `translate(${n.x},${n.y})`)
      .attr("fill-opacity", (n) => pale(n.i))
      .attr("stroke-opacity", (n) => pale(n.i));
    const current = currentNodes(d, g);
    const cur = svg.select(".tm-current").selectAll("g.tm-now").data(current, (c) => c.key)
      .join((enter) => {
        const cg = enter.append("g");
        cg.append("path").attr("d", (c) => d3.symbol(SYMBOLS[c.path.lane], 260)());
        cg.append("text").attr("dy", "0.35em").attr("text-anchor", "middle").text((c) => String(c.path.lane + 1));
        return cg;
      })
      .attr("class", (c) => `tm-now lane-${c.path.lane + 1}`)
      .attr("transform", (c, j) => `translate(${c.x + (j ? 3 : -3)},${c.y})`);
    cur.order();

    // hover: a ring on the node and a tooltip with its step and picture
    const hoverNode = hovered && all.find((n) => n.path.key === hovered.key && n.i === hovered.i);
    svg.select(".tm-hover-ring").attr("hidden", hoverNode ? null : true)
      .attr("cx", hoverNode ? hoverNode.x : 0).attr("cy", hoverNode ? hoverNode.y : 0);
    svg.style("cursor", hoverNode ? "pointer" : null);
    const tip = stage.selectAll(".tm-tip").data([null]).join((enter) => {
      const t = enter.append("div").attr("class", "tm-tip").attr("aria-hidden", "true");
      t.append("p").attr("class", "tm-tip-title");
      t.append("div").attr("class", "frame frame-tip tm-tip-frame");
      t.append("p").attr("class", "tm-tip-hint").text("click to go to this step");
      return t;
    });
    tip.property("hidden", !hoverNode);
    if (hoverNode) {
      const p = hoverNode.path;
      tip.attr("class", `tm-tip lane-${p.lane + 1}`)
        .style("left", `${Math.max(0, Math.min(hoverNode.x + 14, g.width - 170))}px`)
        .style("top", `${Math.max(0, hoverNode.y - 60)}px`);
      tip.select(".tm-tip-title").text(`${p.name}, step ${hoverNode.i}`);
      tip.select(".tm-tip-frame").datum(p.thumb
        ? { ...p.thumb, index: Math.min(hoverNode.i, p.thumb.entry.count - 1), label: `${p.name} at step ${hoverNode.i}` }
        : { image: null, entry: null, index: null, label: "" }).call(thumb);
    }

    const jumpNote = g.short.broken
      ? `The first step, from the noise, is drawn shortened (dashed, with a break mark)${
        g.short.ratio ? `: it is ${fmt(g.short.ratio, 2)}× as long as the whole rest of prompt 1's path` : ""}.`
      : "";
    const note = [d.note, jumpNote].filter(Boolean).join(" ");
    selection.selectAll("p.tm-note").data([null]).join("p").attr("class", "tm-note caption")
      .text(note).property("hidden", !note);
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  /**
   * Re-read the svg's width (call it between frames, before any DOM writes). Returns true
   * when it changed since the last draw, i.e. the map needs drawing again.
   */
  view.measure = () => {
    if (!root) return false;
    const svg = root.select("svg.tm-svg").node();
    if (!svg || !svg.isConnected || !svg.clientWidth) return false;
    const next = Math.max(200, svg.clientWidth);
    if (next === width) return false;
    width = next;
    return true;
  };
  return view;
}

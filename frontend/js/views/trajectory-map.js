/**
 * The Trajectory Map: every step's latent of two runs, projected to 2-D by the bundle
 * (one projection per seed, so every run of that seed shares the map). Nodes appear up
 * to the current step, early steps pale; each lane's current node is large and numbered,
 * with a leader line from the lane's image; d3.zoom zooms and pans (wheel, drag, pinch,
 * the + − buttons or the + − 0 keys); hovering a node shows its step and picture and a
 * click jumps to that step. Optionally the other guidance scales' paths, faint.
 *
 * Usage: d3.select(host).datum({step, T, method, extent: [[x0, y0], [x1, y1]] | null,
 *          paths: [{key, lane, name, text, points: [[x, y], ...T+1], thumb: {image, entry} | null}],
 *          faint: [{key, label, lane, points}], showFaint, note})
 *          .call(trajectoryMap().anchor((key) => element).on("step", s => ...).on("paths", bool => ...))
 * Lane 1 is drawn with circles, lane 2 with squares, so the two differ by shape as well
 * as by colour. `anchor(key)` returns the element a lane's leader line starts from.
 */
import { d3 } from "../lib.js";
import { frame } from "./frame.js";

const MARGIN = 18;
const HIT_RADIUS = 22;
const SYMBOLS = [d3.symbolCircle, d3.symbolSquare];
let uid = 0;

export function trajectoryMap() {
  const listeners = d3.dispatch("step", "paths");
  const clipId = `tm-clip-${++uid}`;
  const thumb = frame();
  let anchor = () => null;
  let transform = d3.zoomIdentity;
  let root = null;     // the host selection of the last draw
  let hovered = null;  // {path, i} under the pointer
  let zoom = null;
  let layout = null;   // the page layout the map was last drawn for: {width, anchors: {key: [x, y] | null}}

  const pale = d3.scaleLinear().range([0.18, 1]).clamp(true);

  /**
   * Read the svg's width and where each lane's anchor sits relative to the svg (CSS px),
   * or null while the map is not displayed. Reading layout forces the browser to lay the
   * page out, so the app calls `measure()` between frames instead of in the middle of a draw.
   */
  function readLayout(svgNode, keys) {
    if (!svgNode || !svgNode.isConnected || !svgNode.clientWidth) return null;
    const box = svgNode.getBoundingClientRect();
    const anchors = {};
    for (const key of keys) {
      const el = anchor(key);
      const r = el && el.offsetParent ? el.getBoundingClientRect() : null;
      // a leader line only when the lane sits to the left of the map (wide layouts)
      anchors[key] = r && r.width && r.right <= box.left + 2
        ? [Math.round(r.right - box.left), Math.round(r.top + r.height / 2 - box.top)] : null;
    }
    return { width: Math.max(200, svgNode.clientWidth), anchors };
  }

  function geometry(svg, d) {
    if (!layout) layout = readLayout(svg.node(), d.paths.map((p) => p.key));
    const width = layout ? layout.width : 400;
    const height = Math.round(Math.max(220, Math.min(460, width * 0.78)));
    const [[x0, y0], [x1, y1]] = d.extent || [[0, 0], [1, 1]];
    const padX = (x1 - x0) * 0.04 || 1;
    const padY = (y1 - y0) * 0.04 || 1;
    const x = d3.scaleLinear().domain([x0 - padX, x1 + padX]).range([MARGIN, width - MARGIN]);
    const y = d3.scaleLinear().domain([y0 - padY, y1 + padY]).range([height - MARGIN, MARGIN]);
    return { width, height, x: transform.rescaleX(x), y: transform.rescaleY(y) };
  }

  /** Every revealed node of the lane paths, with its position on screen (svg pixels). */
  function nodes(d, g) {
    return d.paths.flatMap((p) => p.points.slice(0, d.step + 1).map(([px, py], i) => ({
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

  function view(selection) {
    root = selection;
    const d = selection.datum();

    const bar = selection.selectAll(".tm-bar").data([null]).join((enter) => {
      const b = enter.append("div").attr("class", "tm-bar");
      const zoomButtons = [["+", "Zoom in", 1.6], ["−", "Zoom out", 1 / 1.6]];
      for (const [label, name, k] of zoomButtons) {
        b.append("button").attr("type", "button").attr("class", "icon-button tm-zoom").attr("aria-label", name)
          .attr("title", `${name} (or scroll, pinch)`).text(label)
          .on("click", () => root.select("svg.tm-svg").transition().duration(250).call(zoom.scaleBy, k));
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
      plot.append("g").attr("class", "tm-nodes");
      plot.append("g").attr("class", "tm-current");
      plot.append("circle").attr("class", "tm-hover-ring").attr("r", 9);
      s.append("g").attr("class", "tm-leaders");
      zoom = d3.zoom().scaleExtent([0.5, 40])
        .on("zoom", (event) => {
          transform = event.transform;
          root.call(view);
        });
      s.call(zoom).on("dblclick.zoom", null);
      s.on("pointermove", (event) => {
        const dd = root.datum();
        const n = nearest(dd, geometry(root.select("svg.tm-svg"), dd), d3.pointer(event));
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
        const n = nearest(dd, geometry(root.select("svg.tm-svg"), dd), d3.pointer(event));
        if (n) listeners.call("step", null, n.i);
      }).on("keydown", (event) => {
        const k = { "+": 1.6, "=": 1.6, "-": 1 / 1.6, "−": 1 / 1.6 }[event.key];
        if (k) s.call(zoom.scaleBy, k);
        else if (event.key === "0") s.call(zoom.transform, d3.zoomIdentity);
        else return;
        event.preventDefault();
      });
      return s;
    });

    const g = geometry(svg, d);
    svg.attr("viewBox", `0 0 ${g.width} ${g.height}`).attr("height", g.height)
      .attr("aria-label", d.paths.length
        ? `Trajectory map up to step ${d.step}: ${d.paths.map((p) => `${p.name} as ${p.lane ? "squares" : "circles"}`).join(", ")}. `
          + "Hover a node for its step, click to jump there; + and − zoom."
        : "Trajectory map");
    svg.select(`#${clipId} rect`).attr("width", g.width).attr("height", g.height);
    svg.select(".tm-bg").attr("width", g.width).attr("height", g.height);
    pale.domain([0, d.T]);
    const line = d3.line().x((p) => g.x(p[0])).y((p) => g.y(p[1]));

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
    faint.select("path").attr("d", (f) => line(f.points.slice(0, d.step + 1)));
    faint.select("text").each(function label(f) {
      const p = f.points[Math.min(d.step, f.points.length - 1)];
      d3.select(this).attr("x", g.x(p[0]) + 5).attr("y", g.y(p[1]) - 5).text(f.label);
    });

    // the two lanes' paths and nodes
    svg.select(".tm-lines").selectAll("path.tm-line").data(d.paths, (p) => p.key).join("path")
      .attr("class", (p) => `tm-line lane-${p.lane + 1}`)
      .attr("d", (p) => line(p.points.slice(0, d.step + 1)));
    const all = nodes(d, g);
    svg.select(".tm-nodes").selectAll("path.tm-node").data(all, (n) => n.key)
      .join((enter) => enter.append("path")
        .attr("d", (n) => d3.symbol(SYMBOLS[n.path.lane], 42)()))
      .attr("class", (n) => `tm-node lane-${n.path.lane + 1}`)
      .attr("data-step", (n) => n.i)
      .attr("transform", (n) => `translate(${n.x},${n.y})`)
      .attr("fill-opacity", (n) => pale(n.i))
      .attr("stroke-opacity", (n) => pale(n.i));
    const current = d.paths.map((p) => {
      const [px, py] = p.points[Math.min(d.step, p.points.length - 1)];
      return { key: p.key, path: p, x: g.x(px), y: g.y(py) };
    });
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
        .style("left", `${Math.max(0, Math.min(hoverNode.x + 14, g.width - 150))}px`)
        .style("top", `${Math.max(0, hoverNode.y - 60)}px`);
      tip.select(".tm-tip-title").text(`${p.name}, step ${hoverNode.i}`);
      tip.select(".tm-tip-frame").datum(p.thumb
        ? { ...p.thumb, index: Math.min(hoverNode.i, p.thumb.entry.count - 1), label: `${p.name} at step ${hoverNode.i}` }
        : { image: null, entry: null, index: null, label: "" }).call(thumb);
    }

    // leader lines from each lane's image to its current node, when the lane sits beside the map
    const scale = g.width / (layout ? layout.width : g.width);
    const leaders = current.map((c) => {
      const from = layout && layout.anchors[c.key];
      const inside = c.x >= 0 && c.x <= g.width && c.y >= 0 && c.y <= g.height;
      if (!from || !inside) return null;
      const start = [from[0] * scale + 4, from[1] * scale];
      return { key: c.key, lane: c.path.lane, d: d3.linkHorizontal()({ source: start, target: [c.x, c.y] }) };
    }).filter(Boolean);
    svg.select(".tm-leaders").selectAll("path.tm-leader").data(leaders, (l) => l.key).join("path")
      .attr("class", (l) => `tm-leader lane-${l.lane + 1}`)
      .attr("d", (l) => l.d);

    selection.selectAll("p.tm-note").data([null]).join("p").attr("class", "tm-note caption")
      .text(d.note || "").property("hidden", !d.note);
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  /**
   * Re-read the layout (call it between frames, before any DOM writes). Returns true when
   * it changed since the last draw, i.e. the map needs drawing again.
   */
  view.measure = () => {
    if (!root) return false;
    const svg = root.select("svg.tm-svg").node();
    const next = readLayout(svg, (root.datum().paths || []).map((p) => p.key));
    if (!next || JSON.stringify(next) === JSON.stringify(layout)) return false;
    layout = next;
    return true;
  };
  /** The element each lane's leader line starts from: fn(laneKey) -> Element | null. */
  view.anchor = (fn) => {
    anchor = fn;
    return view;
  };
  return view;
}

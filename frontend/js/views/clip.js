/**
 * Text level 3: an illustration of how CLIP places an image and its caption close
 * together in one shared space. The positions are hand-made, and the view says so.
 *
 * Usage: d3.select(host).datum(clipExample).call(clipDiagram())
 * where clipExample = {pairs: [{caption, shape, colour, image: [x, y], text: [x, y]}]}
 * in the diagram's own 0..1 coordinates. Drawn in a viewBox, so it scales with its box.
 */
import { d3 } from "../lib.js";

export const CLIP_EXAMPLE = {
  pairs: [
    { caption: "a red circle", shape: "circle", colour: "#c0392b", image: [0.22, 0.28], text: [0.3, 0.2] },
    { caption: "a blue square", shape: "square", colour: "#2e5fbf", image: [0.74, 0.72], text: [0.82, 0.62] },
  ],
};

const W = 640;
const H = 300;

export function clipDiagram() {
  return function view(selection) {
    const d = selection.datum();
    const svg = selection.selectAll("svg").data([null]).join("svg")
      .attr("viewBox", `0 0 ${W} ${H}`)
      .attr("role", "img")
      .attr("aria-label", "Illustration: two images and their captions go through CLIP's image and text encoders; "
        + "each image's vector lands next to its own caption's vector in a shared space, far from the other pair.");

    const defs = svg.selectAll("defs").data([null]).join("defs");
    defs.selectAll("marker").data(["clip-arrow"]).join("marker")
      .attr("id", (m) => m).attr("viewBox", "0 0 10 10").attr("refX", 9).attr("refY", 5)
      .attr("markerWidth", 7).attr("markerHeight", 7).attr("orient", "auto-start-reverse")
      .selectAll("path").data([null]).join("path").attr("d", "M0,0L10,5L0,10z").attr("class", "arrow-head");

    // inputs on the left: picture and caption of each pair
    const rowY = (i) => 60 + i * 150;
    const inputs = svg.selectAll("g.clip-input").data(d.pairs, (p) => p.caption).join((enter) => {
      const g = enter.append("g").attr("class", "clip-input");
      g.append("rect").attr("class", "clip-thumb").attr("width", 64).attr("height", 64).attr("rx", 6);
      g.append("path").attr("class", "clip-shape");
      g.append("text").attr("class", "clip-caption");
      return g;
    }).attr("transform", (p, i) => `translate(16,${rowY(i) - 40})`);
    inputs.select(".clip-shape")
      .attr("d", (p) => (p.shape === "circle"
        ? d3.symbol(d3.symbolCircle, 900)()
        : d3.symbol(d3.symbolSquare, 900)()))
      .attr("transform", "translate(32,32)")
      .attr("fill", (p) => p.colour);
    inputs.select(".clip-caption").attr("x", 0).attr("y", 90).text((p) => `“${p.caption}”`);

    // the two encoders
    const encoders = [
      { key: "image", label: "image encoder", y: 40, side: "image-side" },
      { key: "text", label: "text encoder", y: 190, side: "text-side" },
    ];
    const enc = svg.selectAll("g.clip-encoder").data(encoders, (e) => e.key).join((enter) => {
      const g = enter.append("g");
      g.append("rect").attr("width", 150).attr("height", 56).attr("rx", 8);
      g.append("text").attr("x", 75).attr("y", 33).attr("text-anchor", "middle");
      return g;
    }).attr("class", (e) => `clip-encoder ${e.side}`).attr("transform", (e) => `translate(190,${e.y})`);
    enc.select("text").text((e) => e.label);

    // inputs -> encoders
    const links = d.pairs.flatMap((p, i) => [
      { key: `${i}-img`, from: [84, rowY(i) - 8], to: [190, 68], kind: "image-side" },
      { key: `${i}-txt`, from: [120, rowY(i) + 46], to: [190, 218], kind: "text-side" },
    ]);
    svg.selectAll("path.clip-link").data(links, (l) => l.key).join("path")
      .attr("class", (l) => `clip-link ${l.kind}`)
      .attr("d", (l) => d3.linkHorizontal()({ source: l.from, target: l.to }))
      .attr("marker-end", "url(#clip-arrow)");

    // the shared space
    const space = { x: 420, y: 20, w: 200, h: 260 };
    const sx = d3.scaleLinear().range([space.x + 16, space.x + space.w - 16]);
    const sy = d3.scaleLinear().range([space.y + 30, space.y + space.h - 16]);
    svg.selectAll("rect.clip-space").data([space]).join("rect").attr("class", "clip-space")
      .attr("x", (s) => s.x).attr("y", (s) => s.y).attr("width", (s) => s.w).attr("height", (s) => s.h).attr("rx", 10);
    svg.selectAll("text.clip-space-label").data([space]).join("text").attr("class", "clip-space-label")
      .attr("x", (s) => s.x + s.w / 2).attr("y", (s) => s.y + 18).attr("text-anchor", "middle")
      .text("shared space");
    svg.selectAll("path.clip-out").data(encoders, (e) => e.key).join("path")
      .attr("class", (e) => `clip-out clip-link ${e.side}`)
      .attr("d", (e) => d3.linkHorizontal()({ source: [340, e.y + 28], target: [space.x, e.y + 28 + (e.key === "image" ? 20 : -20)] }))
      .attr("marker-end", "url(#clip-arrow)");

    const points = d.pairs.flatMap((p, i) => [
      { key: `${i}-img`, at: p.image, kind: "image-side", label: "image", pair: i },
      { key: `${i}-txt`, at: p.text, kind: "text-side", label: "caption", pair: i },
    ]);
    svg.selectAll("line.clip-pair").data(d.pairs, (p) => p.caption).join("line")
      .attr("class", "clip-pair")
      .attr("x1", (p) => sx(p.image[0])).attr("y1", (p) => sy(p.image[1]))
      .attr("x2", (p) => sx(p.text[0])).attr("y2", (p) => sy(p.text[1]));
    const dots = svg.selectAll("g.clip-point").data(points, (p) => p.key).join((enter) => {
      const g = enter.append("g");
      g.append("circle").attr("r", 7);
      g.append("text").attr("text-anchor", "middle");
      return g;
    }).attr("class", (p) => `clip-point ${p.kind}`)
      .attr("transform", (p) => `translate(${sx(p.at[0])},${sy(p.at[1])})`);
    // captions label above their dot, images below, so the close pairs stay readable
    dots.select("text").attr("dy", (p) => (p.kind === "text-side" ? -12 : 22)).text((p) => `${p.label} ${p.pair + 1}`);
  };
}

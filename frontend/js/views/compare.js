/**
 * The Refinement Comparison View's two lanes: for each prompt its words (the ones the
 * other prompt lacks marked in the lane's colour), a picker to choose another prompt of
 * the same seed (hover previews), and at the current step its latent, its predicted
 * final image, where its own words act (cross-attention over the decoded image), and its
 * decoded image. A lane whose run has control (a ControlNet run) shows its control image
 * and conditioning scale.
 *
 * Usage: d3.select(host).datum({lanes: [{key, n, name, text, spans, missing, previewed,
 *          frames: {latent, pred, decoded}, attention: {map, note, title}, picker,
 *          control: {frame, scale, which} | null}]})
 *          .call(compareLanes().on("commit", ({lane, id}) => ...).on("preview", ...).on("unpreview", ({lane}) => ...))
 * Each lane's decoded image carries the class `lane-decoded`. From 1200 px the two lanes
 * sit side by side (main.css), so both decoded images are on the first screen.
 */
import { d3 } from "../lib.js";
import { attentionOverlay } from "./attention.js";
import { frame } from "./frame.js";
import { promptPicker } from "./prompt-picker.js";

const FIGURES = [
  { key: "latent", caption: "Latent", size: "frame-small" },
  { key: "pred", caption: "Predicted final image", size: "frame-mid" },
  { key: "attention", caption: "", size: "frame-mid" },
  { key: "decoded", caption: "Decoded image", size: "frame-mid" },
];

export function compareLanes() {
  const listeners = d3.dispatch("commit", "preview", "unpreview");
  const draw = frame();
  const overlay = attentionOverlay();
  const pickers = new Map(); // lane key -> its promptPicker (each keeps its own open/closed state)

  function pickerFor(key, n) {
    if (!pickers.has(key)) {
      pickers.set(key, promptPicker()
        .buttonText(n === 0 ? "Change prompt 1 ▾" : "Compare with another prompt ▾")
        .on("commit", (id) => listeners.call("commit", null, { lane: n, id }))
        .on("preview", (id) => listeners.call("preview", null, { lane: n, id }))
        .on("unpreview", () => listeners.call("unpreview", null, { lane: n })));
    }
    return pickers.get(key);
  }

  function view(selection) {
    const d = selection.datum();
    const lanes = selection.selectAll("section.lane").data(d.lanes, (l) => l.key).join((enter) => {
      const lane = enter.append("section").attr("class", (l) => `lane lane-${l.n + 1}`)
        .attr("data-lane", (l) => l.key)
        .attr("aria-labelledby", (l) => `${l.key}-title`);
      const head = lane.append("header").attr("class", "lane-head");
      const title = head.append("h3").attr("class", "lane-title").attr("id", (l) => `${l.key}-title`);
      title.append("span").attr("class", "lane-badge").attr("aria-hidden", "true").text((l) => String(l.n + 1));
      title.append("span").attr("class", "lane-name");
      head.append("div").attr("class", "prompt-picker lane-picker");
      lane.append("p").attr("class", "lane-words");
      lane.append("p").attr("class", "lane-missing panel-note");
      const control = lane.append("div").attr("class", "lane-control");
      control.append("div").attr("class", "frame frame-tiny lane-control-image");
      control.append("span").attr("class", "lane-control-text");
      const figs = lane.append("div").attr("class", "lane-figures");
      for (const f of FIGURES) {
        const fig = figs.append("figure").attr("class", `lane-figure lane-figure-${f.key}`);
        fig.append("div").attr("class", `frame ${f.size} lane-${f.key}${f.key === "attention" ? " overlay-host" : ""}`);
        fig.append("figcaption").text(f.caption);
        if (f.key === "attention") fig.append("p").attr("class", "frame-note lane-attention-note");
      }
      return lane;
    });

    lanes.classed("is-previewed", (l) => l.previewed);
    lanes.select(".lane-name").text((l) => l.name);
    lanes.select(".lane-picker").each(function pick(l) {
      d3.select(this).datum(l.picker).call(pickerFor(l.key, l.n));
    });
    lanes.select(".lane-words")
      .attr("aria-label", (l) => `${l.name}: ${l.text}`)
      .selectAll("span")
      .data((l) => l.spans, (sp) => `${sp.start}:${sp.text}`)
      .join("span")
      .attr("class", (sp) => (sp.highlight ? "lane-diff" : null))
      .text((sp) => sp.text);
    lanes.select(".lane-missing").property("hidden", (l) => !l.missing).text((l) => l.missing || "");
    // where one lane's run has control, both lanes say whether theirs has (their rows align)
    const anyControl = d.lanes.some((l) => l.control);
    lanes.select(".lane-control").property("hidden", !anyControl);
    lanes.select(".lane-control-text").text((l) => (l.control
      ? `ControlNet: ${l.control.which || "this control image"}, conditioning scale ${l.control.scale}`
      : "No control image for this prompt: its run without control"));
    lanes.select(".lane-control-image").style("visibility", (l) => (l.control ? null : "hidden")).each(function f(l) {
      if (l.control) d3.select(this).datum(l.control.frame).call(draw);
    });
    lanes.select(".lane-latent").each(function f(l) { d3.select(this).datum(l.frames.latent).call(draw); });
    lanes.select(".lane-pred").each(function f(l) { d3.select(this).datum(l.frames.pred).call(draw); });
    lanes.select(".lane-decoded").each(function f(l) { d3.select(this).datum(l.frames.decoded).call(draw); });
    lanes.select(".lane-attention").each(function f(l) {
      const host = d3.select(this);
      host.datum({ ...l.frames.decoded, label: `${l.name}: ${l.attention.title.toLowerCase()}, over its decoded image` }).call(draw);
      host.datum({ map: l.attention.map }).call(overlay);
    });
    lanes.select(".lane-figure-attention figcaption").text((l) => l.attention.title).attr("title", (l) => l.attention.title);
    lanes.select(".lane-attention-note").text((l) => l.attention.note).property("hidden", (l) => !l.attention.note);
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

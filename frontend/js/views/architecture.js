/**
 * Level 1, the Architecture View: which levels are open, the refiner's cycle that runs
 * while playing, and the pictures of the pipeline at the current step (the seed's noise,
 * the latent, the decoded image and the model's predicted final image).
 *
 * Usage: d3.select("#viz").datum({open, playing, compare, frames: {noise, latent, decoded, pred},
 *          predAtStart, unavailable}).call(architecture())
 * unavailable: levels this run does not have (ControlNet's without control), hidden even
 * where `open` names them.
 * Panels are the `.panel[data-level]` sections inside the selection; the buttons that open
 * them carry data-panel and get aria-expanded.
 */
import { d3 } from "../lib.js";
import { frame } from "./frame.js";

export function architecture() {
  const draw = frame();
  return function view(selection) {
    const d = selection.datum();
    selection.classed("is-playing", d.playing).classed("has-open-level", d.open.length > 0);
    selection.selectAll(".panel[data-level]").each(function show() {
      const id = this.id.replace(/^panel-/, "");
      const open = d.open.includes(id) && !(d.unavailable || []).includes(id);
      if (this.hidden === open) this.hidden = !open;
    });
    selection.selectAll("[data-panel]")
      .attr("aria-expanded", function expanded() { return String(d.open.includes(this.dataset.panel)); })
      .classed("is-open", function isOpen() { return d.open.includes(this.dataset.panel); });
    selection.select("#panel-compare").property("hidden", !d.compare);
    if (d.compare) return; // the comparison replaces the pipeline: its pictures wait
    selection.select("#noise-frame").datum(d.frames.noise).call(draw);
    selection.select("#latent-frame").datum(d.frames.latent).call(draw);
    selection.select("#decoded-frame").datum(d.frames.decoded).call(draw);
    selection.select("#pred-frame").datum(d.frames.pred).call(draw);
    selection.select("#pred-note-start").property("hidden", !d.predAtStart);
  };
}

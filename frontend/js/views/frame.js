/**
 * One frame of a sprite sheet, drawn into a canvas: the decoded image, the latent preview
 * or a noise prediction at one step.
 *
 * Usage: d3.select(host).datum({image, entry, index, label}).call(frame())
 *   image  a loaded HTMLImageElement of the whole sprite (or null while loading)
 *   entry  the run's `images.<name>` entry: frame_width, frame_height, columns
 *   index  the frame to show (or null: nothing to show)
 *   label  the accessible description of the picture
 * A run's sprites are fetched once; every step after that is a drawImage from memory.
 */
import { d3 } from "../lib.js";

const drawn = new WeakMap(); // canvas -> what it shows, so an unchanged frame is not redrawn

export function frame() {
  function view(selection) {
    selection.each(function draw(d) {
      const host = d3.select(this).attr("role", "img");
      const ready = Boolean(d && d.image && d.entry && d.index !== null && d.index !== undefined);
      host.classed("is-loading", Boolean(d && !d.image && d.index !== null))
        .classed("is-empty", !ready)
        .attr("aria-label", d ? d.label : null)
        .attr("data-frame", ready ? d.index : null)
        .attr("data-src", ready ? d.image.currentSrc || d.image.src : null);
      const canvas = host.selectAll("canvas.frame-canvas").data([null]).join("canvas")
        .attr("class", "frame-canvas")
        .attr("aria-hidden", "true");
      const node = canvas.node();
      if (!ready) {
        if (drawn.get(node) !== "empty") {
          node.getContext("2d").clearRect(0, 0, node.width, node.height);
          drawn.set(node, "empty");
        }
        return;
      }
      const { frame_width: fw, frame_height: fh, columns } = d.entry;
      const key = `${d.image.src}#${d.index}`;
      if (drawn.get(node) === key) return;
      if (node.width !== fw) node.width = fw;
      if (node.height !== fh) node.height = fh;
      // small frames (latents, a toy model's images) stay crisp; large ones are smoothed
      canvas.classed("pixelated", fw < 128);
      const ctx = node.getContext("2d");
      const col = d.index % columns;
      const row = Math.floor(d.index / columns);
      ctx.clearRect(0, 0, fw, fh);
      ctx.drawImage(d.image, col * fw, row * fh, fw, fh, 0, 0, fw, fh);
      drawn.set(node, key);
    });
  }
  return view;
}

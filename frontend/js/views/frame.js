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
 * A frame the entry lists as approximate (`approximate`: made by a tiny preview decoder,
 * docs/bundle-format.md) carries a "≈ approximate" badge and says by how much that
 * decoder differed from the full VAE on the run's final image.
 */
import { d3 } from "../lib.js";

const drawn = new WeakMap(); // canvas -> what it shows, so an unchanged frame is not redrawn

export function frame() {
  function view(selection) {
    selection.each(function draw(d) {
      const host = d3.select(this).attr("role", "img");
      const ready = Boolean(d && d.image && d.entry && d.index !== null && d.index !== undefined);
      const approx = ready ? approximateNote(d.entry, d.index) : null;
      host.classed("is-loading", Boolean(d && !d.image && d.index !== null))
        .classed("is-empty", !ready)
        .classed("is-approximate", Boolean(approx))
        .attr("aria-label", d ? (approx ? `${d.label} (${approx})` : d.label) : null)
        .attr("title", approx)
        .attr("data-frame", ready ? d.index : null)
        .attr("data-src", ready ? d.image.currentSrc || d.image.src : null);
      const canvas = host.selectAll("canvas.frame-canvas").data([null]).join("canvas")
        .attr("class", "frame-canvas")
        .attr("aria-hidden", "true");
      host.selectAll("span.frame-approximate").data(approx ? [approx] : []).join("span")
        .attr("class", "frame-approximate")
        .attr("aria-hidden", "true")
        .style("position", "absolute").style("left", "4px").style("bottom", "4px")
        .style("padding", "0 4px").style("border-radius", "3px").style("font-size", "0.7rem")
        .style("background", "rgba(20, 20, 30, 0.7)").style("color", "#fff")
        .style("pointer-events", "none")
        .text(badgeText(d && d.entry));
      const node = canvas.node();
      if (!ready) {
        if (drawn.get(node) !== "empty") {
          node.getContext("2d").clearRect(0, 0, node.width, node.height);
          drawn.set(node, "empty");
        }
        return;
      }
      const { frame_width: fw, frame_height: fh, columns } = d.entry;
      // small frames (latents, a toy model's images) stay crisp; large ones are smoothed
      // (before the unchanged-frame return: the join above has just reset the class)
      canvas.classed("pixelated", fw < 128);
      const key = `${d.image.src}#${d.index}`;
      if (drawn.get(node) === key) return;
      if (node.width !== fw) node.width = fw;
      if (node.height !== fh) node.height = fh;
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

/** What an approximate frame says (or null when the frame is exact): which decoder made
 * it and its mean difference from the full VAE on the run's final image, in 0-255 levels. */
export function approximateNote(entry, index) {
  const a = entry && entry.approximate;
  if (!a || !Array.isArray(a.frames) || index < a.frames[0] || index > a.frames[1]) return null;
  const diff = a.final_image_difference || {};
  const by = Number.isFinite(diff.mean_abs) ? `; on the final image it differs from the full `
    + `VAE by ${diff.mean_abs.toFixed(1)} of 255 levels on average` : "";
  return `approximate: decoded by the preview decoder ${String(a.decoder || "")}${by}`;
}

/** The badge: "≈ approximate", and the mean difference on the final image when known. */
function badgeText(entry) {
  const diff = (entry && entry.approximate && entry.approximate.final_image_difference) || {};
  return Number.isFinite(diff.mean_abs) ? `≈ approximate ±${diff.mean_abs.toFixed(1)}/255`
    : "≈ approximate";
}

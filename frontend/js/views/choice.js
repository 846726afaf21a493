/**
 * A row of mutually exclusive options (seed, guidance scale, channel) with hover preview.
 *
 * Usage: d3.select(host).datum({options: [{value, label, name}], selected, previewed})
 *          .call(choice().on("commit", v => ...).on("preview", v => ...).on("unpreview", ...))
 * The host carries role="radiogroup" and its label in the HTML. Hovering or focusing an
 * option previews it; a click, Enter/Space or an arrow key commits it (roving tabindex).
 */
import { d3 } from "../lib.js";

export function choice() {
  const listeners = d3.dispatch("commit", "preview", "unpreview");

  function view(selection) {
    selection.each(function draw(d) {
      const host = d3.select(this);
      const same = (a, b) => String(a) === String(b);
      const buttons = host.selectAll("button.option")
        .data(d.options, (o) => String(o.value))
        .join((enter) => enter.append("button")
          .attr("type", "button")
          .attr("class", "option")
          .attr("role", "radio")
          .on("click", (event, o) => listeners.call("commit", null, o.value))
          .on("pointerenter", (event, o) => listeners.call("preview", null, o.value))
          .on("pointerleave", () => listeners.call("unpreview", null))
          .on("focus", (event, o) => listeners.call("preview", null, o.value))
          .on("blur", () => listeners.call("unpreview", null))
          .on("keydown", function onKey(event, o) {
            const delta = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[event.key];
            if (!delta) return;
            event.preventDefault();
            event.stopPropagation();
            const all = d3.select(this.parentNode).selectAll("button.option").data();
            const i = all.findIndex((x) => same(x.value, o.value));
            const next = all[(i + delta + all.length) % all.length];
            listeners.call("commit", null, next.value);
            const nodes = d3.select(this.parentNode).selectAll("button.option").nodes();
            nodes[(i + delta + nodes.length) % nodes.length].focus();
          }))
        .text((o) => o.label)
        .attr("aria-label", (o) => o.name || null)
        .attr("aria-checked", (o) => String(same(o.value, d.selected)))
        .attr("tabindex", (o) => (same(o.value, d.selected) ? 0 : -1))
        .classed("is-selected", (o) => same(o.value, d.selected))
        .classed("is-previewed", (o) => d.previewed !== undefined && d.previewed !== null
          && same(o.value, d.previewed) && !same(o.value, d.selected));
      buttons.order();
    });
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

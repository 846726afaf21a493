/**
 * Fills every `[data-field=name]` element inside the selection with its value.
 * The prose around the numbers stays in index.html; this only writes the numbers.
 *
 * Usage: d3.select(root).datum({step: "12", weaken: "0.31"}).call(fields())
 */
import { d3 } from "../lib.js";

export function fields() {
  return function view(selection) {
    const values = selection.datum();
    selection.selectAll("[data-field]").each(function fill() {
      const name = this.getAttribute("data-field");
      if (!(name in values)) return;
      const text = String(values[name]);
      if (this.textContent !== text) this.textContent = text;
    });
  };
}

/** Show or hide elements: datum {id-or-selector: visible}. Hidden uses the `hidden` property. */
export function visibility() {
  return function view(selection) {
    const shown = selection.datum();
    for (const [selector, visible] of Object.entries(shown)) {
      selection.selectAll(selector).property("hidden", !visible);
    }
  };
}


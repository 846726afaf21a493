/**
 * Fills every `[data-field=name]` element inside the selection with its value.
 * The prose around the numbers stays in index.html; this only writes the numbers.
 * A value may hold inline math between dollar signs ("noise $z_s$ of size
 * $\\sigma_s$"): writeProse() typesets it with KaTeX, so no TeX reaches the page raw.
 *
 * Usage: d3.select(root).datum({step: "12", weaken: "0.31"}).call(fields())
 */
import { katexIfLoaded } from "../lib.js";

const written = new WeakMap(); // element -> the value last written into it

/**
 * Put `text` into `element`: plain text, with each `$...$` part as a `.tex` span of
 * inline math. Typeset at once when KaTeX has loaded; else the span holds its TeX
 * source, which article.js's renderMath() typesets (as it does index.html's `.tex`).
 */
export function writeProse(element, text) {
  if (!text.includes("$")) {
    element.textContent = text;
    return;
  }
  const katex = katexIfLoaded();
  element.textContent = "";
  text.split(/\$([^$]+)\$/).forEach((part, k) => {
    if (k % 2 === 0) {
      if (part) element.append(part);
      return;
    }
    const span = document.createElement("span");
    span.className = "tex";
    if (katex) {
      span.setAttribute("data-tex", part);
      katex.render(part, span, { throwOnError: false });
    } else {
      span.textContent = part;
    }
    element.append(span);
  });
}

export function fields() {
  return function view(selection) {
    const values = selection.datum();
    selection.selectAll("[data-field]").each(function fill() {
      const name = this.getAttribute("data-field");
      if (!(name in values)) return;
      const text = String(values[name]);
      if (!text.includes("$")) {
        if (this.textContent !== text) this.textContent = text;
      } else if (written.get(this) !== text || (katexIfLoaded() && this.querySelector(".tex:not([data-tex])"))) {
        writeProse(this, text); // (again once KaTeX is here, if it came after the last write)
      }
      written.set(this, text);
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

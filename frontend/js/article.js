/**
 * The article: puts in the model-dependent words (wording.js), typesets its math with the
 * vendored KaTeX and makes the "i" buttons in the views jump to their section. The prose
 * itself lives in index.html.
 */
import { loadKatex } from "./lib.js";
import { wording } from "./wording.js";
import { writeProse } from "./views/fields.js";

/**
 * Fill `[data-wording=key]` elements with the bundle's model's texts and show
 * `[data-wording-show=key]` elements only where they hold for it. Call once, when the
 * index has loaded and before renderMath (a `.tex` element's text is its TeX source; in
 * prose, `$...$` parts become such elements: views/fields.js writeProse).
 */
export function applyWording(root, index) {
  const { texts, show } = wording(index);
  for (const el of root.querySelectorAll("[data-wording]")) {
    const text = texts[el.dataset.wording];
    if (text === undefined || el.hasAttribute("data-tex")) continue;
    if (el.classList.contains("tex")) el.textContent = text; // its TeX source
    else writeProse(el, text);
  }
  for (const el of root.querySelectorAll("[data-wording-show]")) {
    el.hidden = !show[el.dataset.wordingShow];
  }
}

/** Render every `.tex` element's TeX source in place (`.tex-display` as a display formula). */
export async function renderMath(root) {
  const katex = await loadKatex();
  for (const el of root.querySelectorAll(".tex:not([data-tex])")) {
    const source = el.textContent;
    el.setAttribute("data-tex", source);
    katex.render(source, el, { displayMode: el.classList.contains("tex-display"), throwOnError: false });
  }
}

/** Buttons with data-article="name" scroll to #article-name and move focus to its heading. */
export function bindArticleLinks(root) {
  root.addEventListener("click", (event) => {
    const button = event.target.closest && event.target.closest("[data-article]");
    if (!button) return;
    const section = document.getElementById(`article-${button.dataset.article}`);
    if (!section) return;
    event.preventDefault();
    const heading = section.querySelector("h2") || section;
    heading.setAttribute("tabindex", "-1");
    const reduce = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    section.scrollIntoView({ behavior: reduce ? "auto" : "smooth", block: "start" });
    heading.focus({ preventScroll: true });
  });
}

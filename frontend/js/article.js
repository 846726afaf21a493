/**
 * The article: typesets its math with the vendored KaTeX and makes the "i" buttons in
 * the views jump to their section. The prose itself lives in index.html.
 */
import { loadKatex } from "./lib.js";

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

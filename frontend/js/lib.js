/**
 * The vendored libraries, imported once.
 *
 * d3 (v7) and KaTeX are loaded from frontend/vendor/ by classic <script defer> tags
 * in index.html, which run before any module. This is the only module that reads
 * them from the global object; every other module imports them from here.
 */
export const d3 = globalThis.d3;
export const katex = globalThis.katex;

if (!d3 || !katex) {
  throw new Error("vendor/d3/d3.min.js and vendor/katex/katex.min.js must load before js/main.js");
}

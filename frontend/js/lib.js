/**
 * The vendored libraries, imported once.
 *
 * d3 (v7) is loaded from frontend/vendor/ by a classic <script defer> tag in index.html,
 * which runs before any module. KaTeX is only needed for math, none of which is on the
 * first screen, so `loadKatex()` adds its script when asked. This is the only module that
 * reads the libraries from the global object; every other module gets them from here.
 */
export const d3 = globalThis.d3;

if (!d3) throw new Error("vendor/d3/d3.min.js must load before js/main.js");

let katexPromise = null;

/** KaTeX, loaded on first use from vendor/katex/ (same origin, so the CSP allows it). */
export function loadKatex() {
  if (!katexPromise) {
    katexPromise = globalThis.katex ? Promise.resolve(globalThis.katex) : new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = "vendor/katex/katex.min.js";
      script.onload = () => resolve(globalThis.katex);
      script.onerror = () => reject(new Error("could not load vendor/katex/katex.min.js"));
      document.head.append(script);
    });
  }
  return katexPromise;
}

/** KaTeX if it has loaded, else null (callers draw plain text until it has). */
export function katexIfLoaded() {
  return globalThis.katex || null;
}

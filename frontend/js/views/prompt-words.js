/**
 * The prompt as text whose words are buttons: a click selects that token's
 * cross-attention map (a second click clears it). Words a variant changes are marked;
 * when the prompt has a variant (`keyword`), clicking a marked word opens the comparison.
 *
 * Usage: d3.select(host).datum({spans: [{text, k, highlight, start}], selected, keyword})
 *          .call(promptWords().on("token", k => ...).on("keyword", k => ...))
 */
import { d3 } from "../lib.js";

export function promptWords() {
  const listeners = d3.dispatch("token", "keyword");
  let keywords = false; // whether marked words open the comparison (the prompt has a variant)

  function view(selection) {
    selection.each(function draw(d) {
      keywords = Boolean(d.keyword);
      const keyword = (s) => keywords && s.highlight;
      d3.select(this).selectAll(".word")
        .data(d.spans, (s) => `${s.start}:${s.k}`)
        .join((enter) => enter.append((s) => document.createElement(s.k === null ? "span" : "button"))
          .attr("type", (s) => (s.k === null ? null : "button"))
          .on("click", (event, s) => {
            if (s.k !== null) listeners.call(keywords && s.highlight ? "keyword" : "token", null, s.k);
          }))
        .attr("class", (s) => (s.k === null ? "word plain" : "word token-word"))
        .classed("is-highlight", (s) => s.highlight)
        .classed("is-keyword", (s) => s.k !== null && keyword(s))
        .classed("is-selected", (s) => s.k !== null && s.k === d.selected)
        .attr("aria-pressed", (s) => (s.k === null || keyword(s) ? null : String(s.k === d.selected)))
        .attr("aria-label", (s) => {
          if (s.k === null) return null;
          return keyword(s) ? `Compare: what changes when "${s.text}" changes` : `Show where "${s.text}" acts in the image`;
        })
        .text((s) => s.text);
    });
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

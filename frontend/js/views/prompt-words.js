/**
 * The prompt as text whose words are buttons: a click selects that token's
 * cross-attention map (a second click clears it), as the hint under the prompt says.
 * Words the prompt's variant changes are marked; the comparison opens from its own
 * button ("Compare with …"), never from a word.
 *
 * Usage: d3.select(host).datum({spans: [{text, k, highlight, start}], selected})
 *          .call(promptWords().on("token", k => ...))
 */
import { d3 } from "../lib.js";

/** The spans in groups that do not break across lines: a token with the tokens that
 * touch it ("bottom" ","), as a line may break between any two buttons, so a comma could
 * start a line; every other span alone. */
function groups(spans) {
  const out = [];
  spans.forEach((s, i) => {
    if (i > 0 && s.k !== null && spans[i - 1].k !== null) out[out.length - 1].push(s);
    else out.push([s]);
  });
  return out;
}

export function promptWords() {
  const listeners = d3.dispatch("token");

  function view(selection) {
    selection.each(function draw(d) {
      const key = (s) => `${s.start}:${s.k}`;
      d3.select(this).selectAll(".word-group")
        .data(groups(d.spans), (g) => g.map(key).join(" "))
        .join("span")
        .attr("class", "word-group")
        .selectAll(".word")
        .data((g) => g, key)
        .join((enter) => enter.append((s) => document.createElement(s.k === null ? "span" : "button"))
          .attr("type", (s) => (s.k === null ? null : "button"))
          .on("click", (event, s) => {
            if (s.k !== null) listeners.call("token", null, s.k);
          }))
        .attr("class", (s) => (s.k === null ? "word plain" : "word token-word"))
        .classed("is-highlight", (s) => s.highlight)
        .classed("is-selected", (s) => s.k !== null && s.k === d.selected)
        .attr("aria-pressed", (s) => (s.k === null ? null : String(s.k === d.selected)))
        .attr("aria-label", (s) => (s.k === null ? null : `Show where "${s.text}" acts in the image`))
        .text((s) => s.text);
    });
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

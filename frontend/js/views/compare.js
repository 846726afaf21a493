/**
 * The comparison seam: two lanes, the chosen prompt and its variant, each showing its
 * decoded image at the current step from the same seed. A later issue adds the
 * trajectory map; the state field (`compare`) and the entry point already exist.
 *
 * Usage: d3.select(host).datum({lanes: [{key, text, frame}]}).call(compareLanes())
 */
import { d3 } from "../lib.js";
import { frame } from "./frame.js";

export function compareLanes() {
  const draw = frame();
  return function view(selection) {
    const d = selection.datum();
    const lanes = selection.selectAll("figure.lane").data(d.lanes, (l) => l.key).join((enter) => {
      const fig = enter.append("figure").attr("class", "lane");
      fig.append("div").attr("class", "frame frame-large");
      fig.append("figcaption");
      return fig;
    });
    lanes.attr("class", (l, i) => `lane lane-${i + 1}`);
    lanes.select("figcaption").text((l) => l.text || "(empty prompt)");
    lanes.select(".frame").each(function drawLane(l) {
      d3.select(this).datum(l.frame).call(draw);
    });
  };
}

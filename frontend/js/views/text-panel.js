/**
 * Text level 2: the tokenizer's real output as chips, and every token's vector as a
 * colour strip (with the empty prompt's vector at the same position for comparison).
 *
 * tokenChips():   datum {real, padding, pad: {label, what}, truncated, dropped, selected};
 *                 event "token" (k). pad names the padding token (wording.js paddingWords):
 *                 CLIP pads with its end token, SD 2's tokenizers with "!"
 * vectorStrips(): datum {rows: [{k, label, values, empty, cosine}], dim, domain}; event
 *                 "cell" ({row, dim, value, empty}) while hovering, null on leave
 * conditioningInputs(): SDXL's size and crop conditioning, datum config.json's
 *                 `conditioning` {original_size, crops_coords_top_left, target_size}:
 *                 one row per input and the six time ids the UNet gets. (SDXL's second
 *                 tokenizer's row is another tokenChips().)
 */
import { d3 } from "../lib.js";
import { fmt } from "../data.js";

export function tokenChips() {
  const listeners = d3.dispatch("token");

  function view(selection) {
    selection.each(function draw(d) {
      const host = d3.select(this);
      const pad = d.pad || { label: "end", what: "the end token repeated" };
      const items = [
        ...d.real.map((t) => ({ ...t, key: `t${t.k}` })),
        ...(d.padding ? [{ key: "pad", kind: "padding", label: `${pad.label} × ${d.padding}`, k: null }] : []),
        ...d.dropped.map((label, i) => ({ key: `cut${i}`, kind: "dropped", label, k: null })),
      ];
      host.selectAll(".chip")
        .data(items, (t) => t.key)
        .join((enter) => enter.append((t) => document.createElement(t.k === null ? "span" : "button"))
          .on("click", (event, t) => {
            if (t.k !== null) listeners.call("token", null, t.k);
          }))
        .attr("type", (t) => (t.k === null ? null : "button"))
        .attr("class", (t) => `chip chip-${t.kind}`)
        .classed("continues", (t) => Boolean(t.continues))
        .classed("is-selected", (t) => t.k !== null && t.k === d.selected)
        .attr("aria-pressed", (t) => (t.k === null ? null : String(t.k === d.selected)))
        .attr("title", (t) => {
          if (t.kind === "padding") return `${d.padding} padding tokens (${pad.what}) fill the prompt to 77`;
          if (t.kind === "dropped") return "cut off by the 77-token limit";
          return `token ${t.k}: ${t.piece} (id ${t.id})`;
        })
        .attr("aria-label", (t) => {
          if (t.kind === "padding") return `${d.padding} padding tokens`;
          if (t.kind === "dropped") return `${t.label}, cut off`;
          return `Token ${t.k}: ${t.label}. Show its attention`;
        })
        .text((t) => t.label)
        .order();
      host.attr("data-count", d.real.length);
    });
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

/** Paint one vector as a 1-pixel-high strip; CSS stretches it to the row's width. */
function paintStrip(canvas, values, color) {
  if (canvas.width !== values.length) canvas.width = values.length;
  canvas.height = 1;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(values.length, 1);
  for (let i = 0; i < values.length; i++) {
    const c = d3.rgb(color(values[i]));
    img.data[4 * i] = c.r;
    img.data[4 * i + 1] = c.g;
    img.data[4 * i + 2] = c.b;
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

export function vectorStrips() {
  const listeners = d3.dispatch("cell");
  const painted = new WeakMap(); // canvas -> the values it shows

  function view(selection) {
    selection.each(function draw(d) {
      const host = d3.select(this);
      // diverging, colour-blind-safe: negative orange, 0 white, positive purple
      const color = d3.scaleDiverging(d3.interpolatePuOr).domain([-d.domain, 0, d.domain]).clamp(true);

      const legend = host.selectAll(".strip-legend").data([d.domain]).join((enter) => {
        const p = enter.append("p").attr("class", "strip-legend");
        p.append("span").attr("class", "lo");
        p.append("canvas").attr("class", "legend-bar").attr("aria-hidden", "true");
        p.append("span").attr("class", "hi");
        return p;
      });
      legend.select(".lo").text(fmt(-d.domain, 2));
      legend.select(".hi").text(`${fmt(d.domain, 2)} (and beyond)`);
      paintStrip(legend.select("canvas").node(), d3.range(-d.domain, d.domain, d.domain / 64), color);

      const rows = host.selectAll(".strip-row")
        .data(d.rows, (r) => r.key)
        .join((enter) => {
          const row = enter.append("div").attr("class", "strip-row");
          row.append("span").attr("class", "strip-label");
          const strips = row.append("div").attr("class", "strips");
          strips.append("canvas").attr("class", "strip strip-prompt");
          strips.append("canvas").attr("class", "strip strip-empty");
          row.append("span").attr("class", "strip-cos");
          return row;
        })
        .classed("is-selected", (r) => r.k !== null && r.k === d.selected)
        .classed("with-empty", (r) => Boolean(r.empty));
      rows.select(".strip-label").text((r) => r.label);
      rows.select(".strip-cos").text((r) => (r.empty ? `cos ${fmt(r.cosine, 2)}` : ""))
        .attr("title", (r) => (r.empty ? "cosine similarity of this token's vector and the empty prompt's vector at the same position" : null));

      rows.each(function paint(r) {
        const row = d3.select(this);
        const prompt = row.select(".strip-prompt").node();
        if (painted.get(prompt) !== r.values) {
          paintStrip(prompt, r.values, color);
          painted.set(prompt, r.values);
        }
        const empty = row.select(".strip-empty").property("hidden", !r.empty).node();
        if (r.empty && painted.get(empty) !== r.empty) {
          paintStrip(empty, r.empty, color);
          painted.set(empty, r.empty);
        }
      });

      rows.select(".strips")
        // a tap shows the value too (a phone has no hover), and it stays after the finger lifts
        .on("pointermove pointerdown", function hover(event, r) {
          const [x, y] = d3.pointer(event, this);
          const box = this.getBoundingClientRect();
          const dim = Math.max(0, Math.min(r.values.length - 1, Math.floor((x / box.width) * r.values.length)));
          const onEmpty = Boolean(r.empty) && y > box.height / 2;
          listeners.call("cell", null, { row: r, dim, value: r.values[dim], empty: r.empty ? r.empty[dim] : null, onEmpty });
        })
        .on("pointerleave", (event) => {
          if (event.pointerType !== "touch") listeners.call("cell", null, null);
        });
    });
  }

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  return view;
}

/** SDXL's micro-conditioning inputs as rows "name  value" and the time ids they make. */
export function conditioningInputs() {
  const pair = (v, sep) => v.join(sep);

  function view(selection) {
    selection.each(function draw(d) {
      const rows = [
        { key: "original_size", value: `${pair(d.original_size, " × ")} px`, title: "the size of the training image before any resizing (height × width)" },
        { key: "crops_coords_top_left", value: `(${pair(d.crops_coords_top_left, ", ")})`, title: "where a crop of that image started (top, left); (0, 0): not cropped" },
        { key: "target_size", value: `${pair(d.target_size, " × ")} px`, title: "the size of the image to make (height × width)" },
      ];
      const ids = [...d.original_size, ...d.crops_coords_top_left, ...d.target_size];
      const host = d3.select(this).attr("data-time-ids", ids.join(","));
      const row = host.selectAll(".conditioning-row")
        .data(rows, (r) => r.key)
        .join((enter) => {
          const r = enter.append("div").attr("class", "conditioning-row");
          r.append("code").attr("class", "conditioning-name");
          r.append("span").attr("class", "conditioning-value");
          return r;
        })
        .attr("title", (r) => r.title);
      row.select(".conditioning-name").text((r) => r.key);
      row.select(".conditioning-value").text((r) => r.value);
      host.selectAll(".conditioning-ids")
        .data([ids])
        .join("p")
        .attr("class", "conditioning-ids")
        .text((v) => `time_ids = [${v.join(", ")}]`);
    });
  }
  return view;
}

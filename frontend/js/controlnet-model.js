/**
 * ControlNet runs (docs/bundle-format.md, "ControlNet"): which controlled run a choice
 * means, and what the ControlNet level draws at a step.
 *
 * The state's `control` is the conditioning scale (`controlnet_conditioning_scale`); 0,
 * the default, is the run without control, the bundle's normal run. `controlImage` is the
 * control_id of the chosen control image (null: the prompt's first): a prompt file can give
 * a prompt several control images (precompute/prompts.py `control_images`). A prompt's
 * controlled runs come from api/index.json's `control_lookup` (prompt -> seed -> guidance
 * -> control_id -> scale -> run_id, scale "0" the run without control from the same noise).
 * A chosen control image the prompt does not have (another prompt's) means its first.
 *
 * `shownRunId` is the one place that says which run a state shows: the app's first screen
 * (js/main.js), its model (js/model.js) and the early loads of js/opening.js all use it, so
 * this module imports no d3 (js/opening.js runs before d3 has loaded).
 *
 * Like model.js, `derive` is synchronous: it reads the API cache with `peek`, which starts
 * any fetch that is missing.
 */
import { urls } from "./api.js";
import { callIndex, fmt, runIdFor, sliceFirst } from "./data.js";

const sameNumber = (a, b) => Math.abs(Number(a) - Number(b)) < 1e-9;
const scalesOf = new WeakMap(); // index -> the bundle's conditioning scales
const imagesOf = new WeakMap(); // index -> the bundle's control ids

/** Every conditioning scale above 0 of the bundle's ControlNet runs, ascending. */
export function controlScales(index) {
  if (!scalesOf.has(index)) {
    const all = Object.values(index.runs || {}).map((r) => r.controlnet_conditioning_scale)
      .filter((c) => typeof c === "number" && c > 0);
    scalesOf.set(index, [...new Set(all)].sort((a, b) => a - b));
  }
  return scalesOf.get(index);
}

/** Every control_id of the bundle's ControlNet runs (js/state.js keeps a chosen one of these). */
export function controlIds(index) {
  if (!imagesOf.has(index)) {
    const all = Object.values(index.runs || {}).map((r) => r.control_id).filter((c) => typeof c === "string");
    imagesOf.set(index, new Set(all));
  }
  return imagesOf.get(index);
}

/** A control image's short name: its control_id without the hash ("sketch-0123abcd" -> "sketch"). */
export function controlName(controlId) {
  return controlId.replace(/-[0-9a-f]{8}$/, "");
}

/** control_lookup's control_id -> scale -> run_id for a prompt, seed and guidance, or null. */
function byControlId(index, promptId, seed, guidance) {
  const bySeed = index.control_lookup && index.control_lookup[promptId];
  const byGuidance = bySeed && (bySeed[seed] ?? bySeed[String(seed)]);
  if (!byGuidance) return null;
  const key = Object.keys(byGuidance).find((g) => sameNumber(g, guidance));
  return key === undefined ? null : byGuidance[key];
}

/** The prompt's control setup for this seed and guidance: {controlId, controlIds (every
 * control image's, sorted), runs: [{scale, runId}] ascending, 0 first where the run without
 * control is in the bundle}, or null (a prompt without a control image, guidance 0).
 * `controlId` is the chosen control image where the prompt has it, else its first. */
export function controlSetup(index, promptId, seed, guidance, controlId = null) {
  const byId = byControlId(index, promptId, seed, guidance);
  const ids = byId ? Object.keys(byId).sort() : [];
  if (!ids.length) return null;
  const id = ids.includes(controlId) ? controlId : ids[0];
  const runs = Object.entries(byId[id])
    .map(([scale, runId]) => ({ scale: Number(scale), runId }))
    .sort((a, b) => a.scale - b.scale);
  return { controlId: id, controlIds: ids, runs };
}

/** A setup's controlled run at conditioning scale `scale`, or null (no setup, scale 0, or
 * not recorded). */
function runAtScale(setup, scale) {
  if (!setup || !scale) return null;
  const found = setup.runs.find((r) => r.scale > 0 && sameNumber(r.scale, scale));
  return found ? found.runId : null;
}

/** The run a state ({prompt, seed, guidance, control, controlImage}) shows: the controlled
 * run at its control image (null or one the prompt lacks: its first) and scale where
 * recorded, else the run without control (scale 0, or no such run). */
export function shownRunId(index, { prompt, seed, guidance, control = 0, controlImage = null }) {
  return runAtScale(controlSetup(index, prompt, seed, guidance, controlImage), control)
    || runIdFor(index, prompt, seed, guidance);
}

/** The scale the level opens on when control is off: 1 where recorded, else the
 * smallest above 0. */
export function openingScale(setup) {
  const on = setup.runs.filter((r) => r.scale > 0);
  return (on.find((r) => sameNumber(r.scale, 1)) || on[0]).scale;
}

/** The state patch of choosing control image `controlId`: the image, and the scale kept
 * where that image has it, else its opening scale (so a choice never lands on no run). */
export function controlImageChoice(index, state, controlId) {
  const setup = controlSetup(index, state.prompt, state.seed, state.guidance, controlId);
  if (!setup || !state.control) return { controlImage: controlId };
  const kept = runAtScale(setup, state.control) !== null;
  return { controlImage: controlId, control: kept ? state.control : openingScale(setup) };
}

/** The pipeline's ControlNet opener beside the seed's noise: null where the prompt has no
 * control at this seed and guidance, else {scale, frame: the control image} (loaded after
 * the first screen). */
export function controlOpener(index, api, state) {
  const setup = controlSetup(index, state.prompt, state.seed, state.guidance, state.controlImage);
  if (!setup) return null;
  const first = setup.runs.find((r) => r.scale > 0);
  const run = api.peek(urls.run(first.runId), "json", { background: true });
  const entry = run && run.images ? run.images.control_image : undefined;
  const image = entry ? api.peek(entry.url, "image", { background: true }) : undefined;
  return {
    scale: sameNumber(state.control, 0) ? 0 : state.control,
    frame: { image: image || null, entry: entry || null, index: entry ? 0 : null, label: "The control image, a sketch of where things go" },
  };
}

/**
 * The guidance level's row (the same seed at every guidance scale) under control: each
 * item's picture is the run the state would show at that guidance scale, so with a
 * conditioning scale chosen, the controlled run at the chosen control image and scale
 * where the bundle has one (api/sweeps lists runs without control only). Returns {items,
 * note}: `note` says in one line which guidance scales have no such run (their pictures
 * stay without control); null with control off or a prompt without control.
 *
 * @param items  the sweep's items [{g, selected, previewed, frame}] (js/model.js)
 */
export function guidanceRowUnderControl(index, api, state, items) {
  const bySeed = index.control_lookup && index.control_lookup[state.prompt];
  if (!state.control || !bySeed || !(bySeed[state.seed] ?? bySeed[String(state.seed)])) return { items, note: null };
  const s = state.step;
  const missing = [];
  let named = null; // the control image, where the prompt has several to choose from
  const row = items.map((it) => {
    const setup = controlSetup(index, state.prompt, state.seed, it.g, state.controlImage);
    if (setup && setup.controlIds.length > 1) named = controlName(setup.controlId);
    const runId = runAtScale(setup, state.control);
    if (!runId) {
      missing.push(it.g);
      return { ...it, control: false };
    }
    const run = api.peek(urls.run(runId));
    const entry = run && run.images ? run.images.decoded : undefined;
    const image = entry ? api.peek(entry.url, "image") : undefined;
    return { ...it, control: true, frame: { image: image || null, entry: entry || null,
      index: entry ? Math.min(s, entry.count - 1) : null,
      label: `Guidance ${it.g}, conditioning scale ${fmt(state.control)}, step ${s}` } };
  });
  const which = named ? ` with control image ${named}` : "";
  const note = missing.length
    ? `No run at conditioning scale ${fmt(state.control)}${which} for g = ${missing.join(", ")}: `
      + `${missing.length === 1 ? "that picture is" : "those pictures are"} without control.`
    : null;
  return { items: row, note };
}

/** "down_blocks.1.resnets.0" -> "d1 r0": the block's short label under its bar. */
export function blockLabel(name) {
  if (name === "conv_in") return "in";
  if (name === "mid_block") return "mid";
  const m = /^down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)$/.exec(name);
  if (!m) return name;
  return m[2] === "resnets" ? `d${m[1]} r${m[3]}` : `d${m[1]} ↓`;
}

/** A map's caption: which residuals it sums. */
function mapLabel(name, blocks) {
  if (name === "controlnet_mid") {
    const mid = blocks.find((b) => b.name === "mid_block");
    return `mid block${mid ? ` (${mid.resolution.join("×")})` : ""}`;
  }
  const h = Number(name.replace("controlnet_res", ""));
  const n = blocks.filter((b) => b.name !== "mid_block" && b.resolution[0] === h).length;
  const w = (blocks.find((b) => b.resolution[0] === h) || { resolution: [h, h] }).resolution[1];
  return `${n} skip${n === 1 ? "" : "s"} at ${h}×${w}`;
}

/**
 * @param helpers {picture(slot, run, name, index, label), runOf(promptId, seed, guidance,
 *                 control, controlImage)} from model.js
 */
export function createControlnetModel(index, api, { picture, runOf }) {
  const peaks = new WeakMap(); // npy or run -> its largest value over every step

  const peak = (key, values) => {
    if (!peaks.has(key)) {
      let max = 0;
      for (const v of values) if (v > max) max = v;
      peaks.set(key, max || 1);
    }
    return peaks.get(key);
  };

  /** The residual norms at call i: B values, with each block's peak over every step. */
  function norms(cn, run, i) {
    const flat = cn.residual_norms.flat();
    return {
      blocks: cn.blocks.map((b, k) => ({ ...b, key: b.name, label: blockLabel(b.name),
        peak: Math.max(...cn.residual_norms.map((row) => row[k])) })),
      values: i === null ? null : cn.residual_norms[i],
      max: peak(cn, flat),
    };
  }

  /** The magnitude maps at call i: one per resolution, each on its own peak over every step. */
  function maps(cn, run, i) {
    return cn.maps.map((name) => {
      const entry = run.arrays[name];
      const npy = entry ? api.peek(entry.url, "npy") : undefined;
      const base = { key: name, label: mapLabel(name, cn.blocks), map: null, max: null };
      if (!npy || i === null) return base;
      const { data, shape } = sliceFirst(npy, i); // (1, h, w)
      return { ...base, map: { data, shape: shape.slice(1) }, max: peak(npy, npy.data) };
    });
  }

  /** One scale's decoded image at step s, for the row of every scale (its own sprite). */
  function sweepItem(r, s, scale, previewing) {
    const run = api.peek(urls.run(r.runId));
    const entry = run && run.images ? run.images.decoded : undefined;
    const image = entry ? api.peek(entry.url, "image") : undefined;
    const shown = sameNumber(r.scale, scale);
    return {
      c: r.scale,
      selected: shown && !previewing,
      previewed: shown && previewing,
      frame: { image: image || null, entry: entry || null, index: entry ? Math.min(s, entry.count - 1) : null,
        label: r.scale ? `Conditioning scale ${fmt(r.scale)}, step ${s}` : `Without control, step ${s}` },
    };
  }

  /**
   * @param state  the store's state (its `control` may be a hovered preview)
   * @returns the level's datum, or null where the prompt has no control at this seed
   *          and guidance
   */
  /** The row of the prompt's control images (empty where it has one): each one's picture
   * from its first controlled run, the shown one marked. */
  function imageChoices(state, setup) {
    if (setup.controlIds.length < 2) return [];
    const previewing = state.previewing.includes("controlImage");
    return setup.controlIds.map((id, k) => {
      const own = controlSetup(index, state.prompt, state.seed, state.guidance, id);
      const first = own.runs.find((r) => r.scale > 0) || own.runs[0];
      const label = `Control image ${k + 1} of ${setup.controlIds.length}: ${controlName(id)}`;
      const shown = id === setup.controlId;
      return { id, label, selected: shown && !previewing, previewed: shown && previewing,
        frame: picture(`cn-image-${id}`, api.peek(urls.run(first.runId)), "control_image", 0, label) };
    });
  }

  return function derive(state) {
    const setup = controlSetup(index, state.prompt, state.seed, state.guidance, state.controlImage);
    if (!setup) return null;
    const s = state.step;
    const i = callIndex(s);
    const scales = setup.runs.map((r) => r.scale);
    if (!scales.includes(0)) scales.unshift(0);
    const previewing = state.previewing.includes("control");
    const scale = scales.find((c) => sameNumber(c, state.control)) ?? 0;
    const current = runOf(state.prompt, state.seed, state.guidance, scale, setup.controlId);
    const plain = runOf(state.prompt, state.seed, state.guidance, 0);
    // the control image and the blocks are every controlled run's: take the shown one's,
    // or at scale 0 the first controlled run's
    const refId = scale > 0 ? current.id : setup.runs.find((r) => r.scale > 0).runId;
    const ref = scale > 0 ? current.run : api.peek(urls.run(refId));
    const cn = ref && ref.controlnet;
    const on = scale > 0 && Boolean(current.run && current.run.controlnet);
    const inWindow = cn && i !== null ? cn.residual_norms[i].some((v) => v > 0) : null;
    return {
      scale,
      slider: { scales, selected: previewing ? null : scale, previewed: previewing ? scale : null,
        name: "Conditioning scale" },
      image: picture("cn-image", ref, "control_image", 0, "The control image: the sketch the ControlNet reads"),
      images: imageChoices(state, setup),
      blocks: cn ? cn.blocks : [],
      window: cn ? [cn.control_guidance_start, cn.control_guidance_end] : null,
      chart: cn ? { ...norms(cn, ref, on ? i : null), step: s, scale, off: !on, atStart: i === null } : null,
      maps: cn && on ? maps(cn, current.run, i) : [],
      notes: { off: scale === 0, atStart: i === null, closed: on && inWindow === false },
      sweep: setup.runs.map((r) => sweepItem(r, s, scale, previewing)),
      results: {
        with: picture("cn-with", current.run, "decoded", s,
          scale > 0 ? `With control at scale ${fmt(scale)}, step ${s}` : `Scale 0: the run without control, step ${s}`),
        without: picture("cn-without", plain.run, "decoded", s, `Without control, the same noise, step ${s}`),
      },
      step: s,
    };
  };
}

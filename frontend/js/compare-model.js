/**
 * Derives the Refinement Comparison View from the state: two lanes (the main prompt and
 * the prompt in `compare`, same seed and guidance), the Trajectory Map of both runs, and
 * what differs between them (per-step distances, the difference image, and where each
 * lane's own words act).
 *
 * Like model.js it is synchronous: it reads the API cache with `peek` (starting missing
 * fetches) and computes distances once per pair of runs.
 */
import { urls } from "./api.js";
import { controlName, controlSetup } from "./controlnet-model.js";
import { alignTokens, callIndex, fmt, recordedSteps, runIdFor, splitRanges, wordDiff } from "./data.js";
import { differenceFrame, imageDistance, latentDistance, spritePixels } from "./difference.js";

const LANE_NAMES = ["Prompt 1", "Prompt 2"];

/**
 * @param helpers {picture(slot, run, name, index, label), runOf(promptId, seed, guidance, control, controlImage),
 *                 promptData(promptId)} from model.js
 */
export function createCompareModel(index, api, { picture, runOf, promptData }) {
  const T = recordedSteps(index);
  const pairs = new WeakMap();   // object a -> Map(object b -> value): per-pair results
  const cache = new Map();       // string key -> small per-step results (maps, difference images)

  const pairMemo = (a, b, fn) => {
    let m = pairs.get(a);
    if (!m) pairs.set(a, (m = new Map()));
    if (!m.has(b)) m.set(b, fn());
    return m.get(b);
  };
  const keyMemo = (key, fn) => {
    if (!cache.has(key)) {
      if (cache.size > 400) cache.clear();
      cache.set(key, fn());
    }
    return cache.get(key);
  };

  /** Prompts with a run for this seed and guidance, for a lane's picker (not the other lane's). */
  function pickerGroups(state, exclude) {
    const has = (id) => id !== "empty" && id !== exclude && index.prompts[id]
      && runIdFor(index, id, state.seed, state.guidance);
    const seen = new Set();
    const groups = (index.groups || []).map((g) => ({
      id: g.id,
      title: g.title,
      options: g.prompts.filter((id) => {
        seen.add(id);
        return has(id);
      }).map((id) => ({ id, text: index.prompts[id].text })),
    }));
    const rest = Object.keys(index.prompts).filter((id) => !seen.has(id) && has(id));
    if (rest.length) groups.push({ id: "other", title: "Other prompts", options: rest.map((id) => ({ id, text: index.prompts[id].text })) });
    return groups.filter((g) => g.options.length);
  }

  /** The mean cross-attention map of tokens `ks` at call i, or a note saying why there is none. */
  function laneAttention(runId, run, ks, words, i) {
    if (!run) return { map: null, note: "" };
    if (!run.attention) return { map: null, note: "At guidance 0 the prompt is not used: no attention to its words." };
    if (!ks.length) return { map: null, note: "No words of its own: this prompt only lacks words of the other." };
    if (i === null) return { map: null, note: "Step 0 is the noise: attention is measured from step 1 on." };
    const tokens = ks.filter((k) => k < run.attention.tokens)
      .map((k) => api.peek(urls.attentionToken(runId, "combined", k), "npy"));
    if (!tokens.every(Boolean)) return { map: null, note: "" };
    const map = keyMemo(`att|${runId}|${ks.join(",")}|${i}`, () => {
      const [, h, w] = tokens[0].shape;
      const out = new Float32Array(h * w);
      for (const t of tokens) {
        const base = i * h * w;
        for (let j = 0; j < h * w; j++) out[j] += t.data[base + j] / tokens.length;
      }
      return { data: out, shape: [h, w] };
    });
    return { map, note: "", words };
  }

  /** A lane's ControlNet run: {frame: its control image, scale, which: "control image 2
   * of 3 (name)" where its prompt has several, else null}, or null (no control). */
  function laneControl(run, n, name) {
    const cn = run && run.controlnet;
    if (!cn) return null;
    const setup = controlSetup(index, run.prompt_id, run.seed, run.guidance_scale, cn.control_id);
    const ids = setup ? setup.controlIds : [];
    return { scale: cn.conditioning_scale,
      which: ids.length > 1 ? `control image ${ids.indexOf(cn.control_id) + 1} of ${ids.length} (${controlName(cn.control_id)})` : null,
      frame: picture(`cmp-${n}-control`, run, "control_image", 0, `${name}: the control image its ControlNet read`) };
  }

  function lane(state, n, promptId, ranges, s, i) {
    const text = index.prompts[promptId].text;
    const { id: runId, run } = runOf(promptId, state.seed, state.guidance, state.control, state.controlImage);
    const prompt = promptData(promptId);
    const changed = prompt
      ? alignTokens(text, prompt.tokens.real).filter((sp) => sp.k !== null
        && ranges.some(([a, b]) => sp.start < b && sp.start + sp.text.length > a))
      : [];
    const words = ranges.map(([a, b]) => text.slice(a, b));
    const ks = [...new Set(changed.map((sp) => sp.k))];
    const name = LANE_NAMES[n];
    const quoted = words.length ? words.map((w) => `“${w}”`).join(" ") : "";
    const att = prompt ? laneAttention(runId, run, ks, words, i) : { map: null, note: "" };
    return {
      key: `lane-${n + 1}`,
      n,
      name,
      promptId,
      runId,
      text,
      spans: splitRanges(text, ranges),
      missing: runId ? null : `This bundle has no run of this prompt for seed ${state.seed} at guidance ${fmt(state.guidance)}.`,
      previewed: state.previewing.includes(n === 0 ? "prompt" : "compare"),
      frames: {
        latent: picture(`cmp-${n}-latent`, run, "latents", s, `${name}: latent at step ${s}`),
        pred: picture(`cmp-${n}-pred`, run, "pred_original_sample", i,
          i === null ? `${name}: no prediction at step 0` : `${name}: predicted final image at step ${s}`),
        decoded: picture(`cmp-${n}-decoded`, run, "decoded", s, `${name}: decoded image at step ${s}`),
      },
      control: laneControl(run, n, name), // a ControlNet run: its control image and scale
      attention: {
        map: att.map,
        note: att.note,
        title: quoted ? `Where ${quoted} act${words.length === 1 ? "s" : ""}` : "Where its own words act",
      },
      picker: { selected: promptId, previewed: null, groups: pickerGroups(state, n === 0 ? state.compare : state.prompt) },
    };
  }

  function trajectory(state, lanes, runs) {
    const available = (index.trajectories || []).includes(state.seed);
    const json = available ? api.peek(urls.trajectories(state.seed)) : undefined;
    const base = { step: state.step, T, paths: [], faint: [], showFaint: state.paths, method: null };
    if (!available) return { ...base, note: `This bundle has no trajectory map for seed ${state.seed}.` };
    if (!json) return { ...base, note: "Loading the map…" };
    const paths = lanes.map((l, n) => {
      const run = runs[n].run;
      const decoded = run && run.images ? run.images.decoded : null;
      const image = decoded ? api.peek(decoded.url, "image") : undefined;
      return {
        key: l.key,
        lane: n,
        name: l.name,
        text: l.text,
        points: runs[n].id ? json.runs[runs[n].id] || null : null,
        thumb: image ? { image, entry: decoded } : null,
      };
    }).filter((p) => p.points);
    const current = new Set(runs.map((r) => r.id));
    const faint = [];
    if (state.paths) {
      for (const l of lanes) {
        const bySeed = (index.run_lookup[l.promptId] || {})[String(state.seed)] || {};
        for (const rid of Object.values(bySeed)) {
          if (current.has(rid) || !json.runs[rid] || faint.some((f) => f.key === rid)) continue;
          const g = index.runs[rid].guidance_scale;
          faint.push({ key: rid, label: `g ${fmt(g)}`, lane: rid.startsWith("empty--") ? null : l.n, points: json.runs[rid] });
        }
      }
    }
    const same = runs[0].id && runs[0].id === runs[1].id;
    return {
      ...base, method: json.method, paths, faint,
      note: same ? "At guidance 0 both prompts share one run, so their paths are the same." : "",
    };
  }

  function differences(state, runs, s) {
    const latents = runs.map((r) => (r.run && r.run.arrays.latents ? api.peek(r.run.arrays.latents.url, "npy") : undefined));
    const entry = runs[0].run && runs[0].run.images ? runs[0].run.images.decoded : null;
    const images = runs.map((r) => (r.run && r.run.images.decoded ? api.peek(r.run.images.decoded.url, "image") : undefined));
    const latentValues = latents.every(Boolean) ? pairMemo(latents[0], latents[1], () => latentDistance(latents[0], latents[1])) : null;
    let imageValues = null;
    let image = null;
    if (entry && images.every(Boolean)) {
      const [pa, pb] = images.map(spritePixels);
      imageValues = pairMemo(images[0], images[1], () => imageDistance(pa, pb, entry));
      image = keyMemo(`diff|${images[0].src}|${images[1].src}|${s}`, () => differenceFrame(pa, pb, entry, s));
    }
    return {
      chart: {
        T,
        step: s,
        series: [
          { key: "latents", label: "Latents: RMS difference", values: latentValues, format: (v) => fmt(v) },
          { key: "images", label: "Decoded images: mean |difference|", values: imageValues,
            format: (v) => `${fmt(100 * v, 2)}%` },
        ],
      },
      image: { pixels: image, label: `Difference of the two decoded images at step ${s}: dark where they agree, bright where they differ` },
    };
  }

  return function derive(state) {
    const s = state.step;
    const i = callIndex(s);
    const ids = [state.prompt, state.compare];
    const ranges = wordDiff(index.prompts[ids[0]].text, index.prompts[ids[1]].text);
    const lanes = ids.map((pid, n) => lane(state, n, pid, ranges[n], s, i));
    const runs = ids.map((pid) => runOf(pid, state.seed, state.guidance, state.control, state.controlImage));
    return {
      lanes,
      noise: picture("cmp-noise", runs[0].run, "latents", 0, `The same random noise at step 0 for seed ${state.seed}`),
      shared: Boolean(runs[0].id && runs[0].id === runs[1].id),
      map: trajectory(state, lanes, runs),
      differences: differences(state, runs, s),
    };
  };
}

/**
 * Derives what every view draws from the state and what has arrived from the API.
 *
 * `derive(state)` is synchronous: it reads the API cache with `peek`, which also starts
 * any fetch that is missing, and returns one datum per view. When a fetch lands the app
 * derives again. While a newly chosen run is loading, each picture keeps showing the
 * last frame it had (marked stale) instead of going blank.
 */
import { d3 } from "./lib.js";
import { urls } from "./api.js";
import {
  alignTokens, callIndex, compareCandidate, fmt, fmtTimestep, groupOf, markHighlights, meanOverSteps, recordedSteps,
  sliceFirst, tokenList,
} from "./data.js";
import { SPEEDS } from "./state.js";
import { historyWords } from "./scheduler-words.js";
import { createCompareModel } from "./compare-model.js";
import { createControlnetModel, guidanceRowUnderControl, shownRunId } from "./controlnet-model.js";
import {
  callWords, factorsSentence, guidanceRescaleAt, outputOf, paddingWords, remainderLabel, rescaleFactor, schedulerTitle,
  stepNumbersText, uncondWords, wording,
} from "./wording.js";

/** Robust colour range for vectors: the 99th percentile of |value|. */
function robustMax(values) {
  const abs = Float32Array.from(values, Math.abs).sort();
  return abs[Math.floor(0.99 * (abs.length - 1))] || 1;
}

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let j = 0; j < a.length; j++) {
    dot += a[j] * b[j];
    na += a[j] * a[j];
    nb += b[j] * b[j];
  }
  return dot / (Math.sqrt(na * nb) || 1);
}

export function createModel(index, api) {
  const T = recordedSteps(index); // one recorded step per UNet call
  const C = index.config.latent_shape ? index.config.latent_shape[0] : 4;
  const { facts } = wording(index);
  const out = outputOf(facts); // what the UNet predicts: noise, v or the clean latent
  const modelInfo = (index.about && index.about.model_info) || {};
  const lastGood = new Map();     // picture slot -> last frame datum that was drawable
  const derived = new WeakMap();  // npy -> values computed from it once (means, ranges)

  const memo = (obj, key, fn) => {
    let m = derived.get(obj);
    if (!m) derived.set(obj, (m = new Map()));
    if (!m.has(key)) m.set(key, fn());
    return m.get(key);
  };

  // `control`: ControlNet's conditioning scale; 0 or a prompt without control: the plain run
  // (`controlImage`: the chosen control image's control_id; null: the prompt's first)
  const runOf = (promptId, seed, guidance, control = 0, controlImage = null) => {
    const id = shownRunId(index, { prompt: promptId, seed, guidance, control, controlImage });
    return { id, run: id ? api.peek(urls.run(id)) : undefined };
  };

  /** A frame datum for one picture slot, falling back to the slot's last frame while loading. */
  function picture(slot, run, name, frameIndex, label) {
    const entry = run && run.images ? run.images[name] : undefined;
    if (frameIndex === null) {
      // fetched after the first screen, so the next step draws at once (api.js)
      if (entry) api.peek(entry.url, "image", { background: true });
      return { image: null, entry: null, index: null, label };
    }
    if (run && !entry) {
      lastGood.delete(slot);
      return { image: null, entry: null, index: null, label }; // this run has no such picture
    }
    const image = entry ? api.peek(entry.url, "image") : undefined;
    if (image) {
      const d = { image, entry, index: frameIndex, label, stale: false };
      lastGood.set(slot, d);
      return d;
    }
    const previous = lastGood.get(slot);
    if (previous && previous.entry.count > frameIndex) return { ...previous, index: frameIndex, label, stale: true };
    return { image: null, entry: entry || null, index: frameIndex, label };
  }

  function promptData(promptId) {
    const json = api.peek(urls.prompt(promptId));
    return json ? { json, tokens: tokenList(json) } : null;
  }

  const compare = createCompareModel(index, api, { picture, runOf, promptData });
  const controlnet = createControlnetModel(index, api, { picture, runOf });

  function textPanel(state, prompt) {
    if (!prompt) return null;
    const emb = api.peek(prompt.json.text_embeddings.url, "npy");
    let empty = null;
    if (state.vsEmpty && prompt.json.empty_prompt_id) {
      const emptyJson = api.peek(urls.prompt(prompt.json.empty_prompt_id));
      empty = emptyJson ? api.peek(emptyJson.text_embeddings.url, "npy") : null;
    }
    let strips = null;
    if (emb) {
      const [, D] = emb.shape;
      const row = (a, k) => a.data.subarray(k * D, (k + 1) * D);
      const { real, padding } = prompt.tokens;
      const rows = real.map((t) => ({ key: `t${t.k}`, k: t.k, label: t.label }));
      if (padding) rows.push({ key: "pad", k: null, label: `padding 1/${padding}`, position: real.length });
      strips = {
        dim: D,
        selected: state.token,
        domain: memo(emb, "range", () => robustMax(emb.data)),
        rows: rows.map((r) => {
          const position = r.k === null ? r.position : r.k;
          const values = row(emb, position);
          const other = empty ? row(empty, position) : null;
          return { ...r, values, empty: other, cosine: other ? cosine(values, other) : null };
        }),
      };
    }
    const { pieces, n_real: nReal } = prompt.json.tokens;
    const pad = paddingWords(nReal < pieces.length ? pieces[nReal] : null, pieces[nReal - 1]);
    return { chips: { ...prompt.tokens, pad, selected: state.token }, strips, sdxl: sdxlText(state, prompt) };
  }

  /** SDXL: the second tokenizer's chips and the size and crop conditioning (text-panel.js). */
  function sdxlText(state, prompt) {
    const t2 = prompt.json.tokens_2;
    if (!t2) return null;
    const pad = paddingWords(t2.n_real < t2.pieces.length ? t2.pieces[t2.n_real] : null, t2.pieces[t2.n_real - 1]);
    return { chips: { ...tokenList({ tokens: t2 }), pad, selected: state.token }, conditioning: index.config.conditioning || null };
  }

  function attention(state, runId, run, prompt, i, hover) {
    if (!run || !prompt) return null;
    const label = (k) => (prompt.tokens.real[k] ? prompt.tokens.real[k].label : `token ${k}`);
    const token = state.token;
    if (!run.attention) {
      return token === null ? null : {
        controls: { token: label(token), resolutions: ["combined"], res: "combined", avg: state.avg, max: null, hover: null,
          note: "At guidance 0 the prompt is not used, so no pixel attends to its words." },
        map: null,
      };
    }
    // a combined map of one level is that level's map: list it once, as "combined (r×r)"
    const from = run.attention.combined ? run.attention.combined.from : [];
    const resolutions = ["combined", ...run.attention.resolutions.filter(
      (r) => !(from.length === 1 && from[0] === r))];
    const res = resolutions.some((r) => String(r) === String(state.res)) ? state.res : "combined";
    const K = run.attention.tokens;
    let map = null;
    let note = "";
    if (token !== null && token < K) {
      // at step 0 no map is drawn yet: fetched after the first screen, for step 1 on
      const tok = api.peek(urls.attentionToken(runId, res, token), "npy", { background: i === null && !state.avg });
      if (tok && state.avg) map = memo(tok, "mean", () => meanOverSteps(tok));
      else if (tok && i !== null) map = sliceFirst(tok, i);
      else if (i === null) note = "Step 0 is the starting noise: attention is measured from step 1 on (or tick “all steps averaged”).";
    }
    let hoverList = null;
    if (hover && (i !== null || state.avg)) {
      const cell = (shape) => Math.floor(hover.fy * shape[0]) * shape[1] + Math.floor(hover.fx * shape[1]);
      let values = null;
      if (state.avg) {
        const all = d3.range(K).map((k) => api.peek(urls.attentionToken(runId, res, k), "npy"));
        if (all.every(Boolean)) {
          values = all.map((a) => memo(a, "mean", () => meanOverSteps(a)).data[cell(a.shape.slice(1))]);
        }
      } else {
        const step = api.peek(urls.attentionStep(runId, res, i), "npy");
        if (step) {
          const [, h, w] = step.shape;
          const c = cell([h, w]);
          values = d3.range(K).map((k) => step.data[k * h * w + c]);
        }
      }
      if (values) {
        const items = values.map((value, k) => ({ k, label: label(k), value }))
          .sort((a, b) => b.value - a.value).slice(0, 5);
        const top = items[0].value || 1;
        hoverList = { averaged: state.avg, items: items.map((it) => ({ ...it, share: it.value / top })) };
      }
    }
    if (token === null && !hoverList) return { controls: null, map: null };
    return {
      map,
      controls: {
        token: token === null ? null : label(token), resolutions, res, avg: state.avg,
        combinedFrom: from,
        max: map ? d3.max(map.data) : null, note, hover: hoverList,
      },
    };
  }

  function stepNumbers(state, runId, run, i) {
    if (i === null || !run) return null;
    const step = api.peek(urls.step(runId, i));
    if (!step) return null;
    const weaken = step.weaken ?? run.scheduler.weaken[i];
    const ch = (name) => step[name] || null;
    // a stochastic step also added noise_scale x its N(0, I) draw z
    const scale = step.noise_scale ?? null;
    const noise = scale !== null && step.variance_noise ? step.variance_noise.map((z) => scale * z) : null;
    const expected = step.latents && step.noise_pred
      ? step.latents.map((x, c) => x - weaken * step.noise_pred[c] + (noise ? noise[c] : 0)) : null;
    const rows = [
      { key: "latents", label: `latent before (step ${i})`, values: ch("latents") },
      { key: "uncond", label: `${out.name}, ${uncondLabel(uncondWords(index, run))}`, values: ch("noise_pred_uncond") },
      { key: "text", label: `${out.name}, your prompt`, values: ch("noise_pred_text") },
      { key: "guided", label: `guided ${out.name} (g = ${fmt(state.guidance)})`, values: ch("noise_pred") },
      { key: "weakened", label: `× weaken ${fmt(weaken)}`, values: step.noise_pred ? step.noise_pred.map((v) => v * weaken) : null },
      ...(scale === null ? [] : [{ key: "noise", label: `+ noise added: ${fmt(scale)} × z`, values: noise }]),
      { key: "expected", label: `latent − weakened ${out.name}${scale === null ? "" : " + noise"}`, values: expected },
      { key: "next", label: `latent after (step ${i + 1}, stored)`, values: ch("latents_next") },
    ];
    // DDIM and v-prediction steps also rescale the latent: x_{i+1} = c x_i - w out_i
    const c = rescaleFactor(facts, run.scheduler, i);
    if (c !== null && c !== 1) {
      rows.push({ key: "rescale", label: `rescaling: (c − 1) × latent before, c = ${fmt(c, 6)}`,
        values: step.latents ? step.latents.map((x) => (c - 1) * x) : null });
    }
    rows.push({ key: "leftover", label: remainderLabel(facts),
      values: expected && step.latents_next ? step.latents_next.map((v, k) => v - expected[k]) : null });
    return { step, weaken, table: { channels: C, rows } };
  }

  function derive(state, hover) {
    const s = state.step;
    const i = callIndex(s);
    const { id: runId, run } = runOf(state.prompt, state.seed, state.guidance, state.control, state.controlImage);
    const prompt = promptData(state.prompt);
    const open = new Set(state.compare ? [] : state.open); // the comparison hides the levels
    const stats = run ? run.stats || {} : {};
    const stat = (name, k) => (stats[name] && k !== null && stats[name][k] !== undefined ? stats[name][k] : null);
    const group = groupOf(index, state.prompt);

    const place = callWords(facts, run && run.scheduler, s); // multi-call schedulers: "UNet call s of T (...)"
    const uncond = uncondWords(index, run);
    const frames = {
      noise: picture("noise", run, "latents", 0, `Random noise for seed ${state.seed} (latent preview)`),
      latent: picture("latent", run, "latents", s, `Latent at ${place || `step ${s} of ${T}`} (colour preview of its channels)`),
      decoded: picture("decoded", run, "decoded", s, `Decoded image at ${place || `step ${s} of ${T}`}`),
      pred: picture("pred", run, "pred_original_sample", i, i === null ? "No prediction at step 0"
        : `The model's predicted final image at step ${s}`),
    };
    const levelOneReady = ["noise", "latent", "decoded"].every((k) => frames[k].image && !frames[k].stale)
      && (i === null || (frames.pred.image && !frames.pred.stale));

    const needSteps = open.has("image") || open.has("guidance");
    const numbers = needSteps ? stepNumbers(state, runId, run, i) : null;

    const model = {
      runId,
      run,
      ready: Boolean(run && prompt && levelOneReady),
      architecture: { open: state.open, playing: state.playing, compare: state.compare, frames, predAtStart: i === null },
      controller: {
        step: s, T, playing: state.playing, speed: state.speed, speeds: SPEEDS,
        stepLabel: place ? `call ${s} / ${T} · step ${run.scheduler.step_index[s - 1] + 1} / ${facts.steps}` : null,
        timestep: run && i !== null ? run.scheduler.timesteps[i] : null,
        sigma: run && i !== null && run.scheduler.sigmas ? run.scheduler.sigmas[i] : null,
      },
      picker: {
        selected: state.prompt,
        previewed: state.previewing.includes("prompt") ? state.prompt : null,
        groups: pickerGroups(index),
      },
      seeds: {
        options: index.seeds.map((v) => ({ value: v, label: String(v), name: `Seed ${v}` })),
        selected: state.seed,
        previewed: state.previewing.includes("seed") ? state.seed : null,
      },
      guidance: {
        options: index.guidance_scales.map((v) => ({ value: v, label: String(v), name: `Guidance scale ${v}` })),
        selected: state.guidance,
        previewed: state.previewing.includes("guidance") ? state.guidance : null,
      },
      words: prompt ? {
        selected: state.token,
        spans: markHighlights(alignTokens(prompt.json.text, prompt.tokens.real),
          group && group.highlights ? group.highlights[state.prompt] : null),
      } : { selected: null, spans: [] },
      compareFallback: compareCandidate(index, state.prompt, state.seed, state.guidance),
      fields: {
        step: String(s),
        "steps-total": String(facts.steps || T), // scheduler steps (T counts UNet calls)
        "call-from": String(i === null ? 0 : i),
        timestep: run && i !== null ? fmtTimestep(run.scheduler.timesteps[i]) : "–",
        weaken: run && i !== null ? fmt(run.scheduler.weaken[i]) : "–",
        guidance: fmt(state.guidance),
        seed: String(state.seed),
        "latent-std": fmt(stat("latents_std", s)),
        "uncond-norm": fmt(stat("noise_pred_uncond_norm", i)),
        "text-norm": fmt(stat("noise_pred_text_norm", i)),
        "guided-norm": fmt(stat("noise_pred_norm", i)),
        channels: String(C),
        model: index.config.model,
        "bundle-title": index.title || index.config.model,
        "bundle-description": index.description || "",
        scheduler: schedulerTitle(String(index.config.scheduler)),
        "call-note": place ? `${place}.` : "",
        "call-noun": facts.multiCall ? "UNet call" : "step",
        "uncond-name": uncond.name,
        "scheduler-numbers": run && i !== null ? stepNumbersText(facts, run.scheduler, i, noiseSize(run, i)) : "",
        "noise-scale": run && i !== null && run.scheduler.noise_scale ? fmt(run.scheduler.noise_scale[i]) : "–",
        "uncond-phrase": uncond.short === "empty" ? "an empty prompt" : `the ${uncond.name.replace(":", "")}`,
        "rescale-note": rescaleNote(facts, guidanceRescaleAt(run, i), state.guidance),
        "prediction-note": predictionNote(facts.prediction),
        "factors-trend": run ? factorsSentence(run.scheduler.weaken) : "",
        "embed-dim": String(prompt && prompt.json.text_embeddings.shape ? prompt.json.text_embeddings.shape[1]
          : modelInfo.cross_attention_dim || "–"),
        "latent-shape": (index.config.latent_shape || [4, 64, 64]).join(" × "),
      },
      attention: attention(state, runId, run, prompt, i, hover),
    };

    if (open.has("text")) model.text = textPanel(state, prompt);
    if (open.has("image")) {
      const none = { image: null, entry: null, index: null, label: "" };
      model.image = {
        atStart: i === null,
        missing: {
          uncond: Boolean(run && !run.images.noise_pred_uncond),
          text: Boolean(run && !run.images.noise_pred_text),
        },
        frames: {
          prev: picture("prev", run, "latents", i === null ? 0 : i, `Latent before the step, step ${i === null ? 0 : i}`),
          uncond: i === null ? none : picture("uncond", run, "noise_pred_uncond", i, `${out.Name} predicted for the ${uncond.name} at step ${s}`),
          text: i === null ? none : picture("text", run, "noise_pred_text", i, `${out.Name} predicted for your prompt at step ${s}`),
          guided: i === null ? none : picture("guided", run, "noise_pred", i, `${out.guided} at step ${s}`),
          next: i === null ? none : picture("next", run, "latents", s, `Latent after the step, step ${s}`),
        },
        table: numbers ? numbers.table : null,
        noise: addedNoise(run, i),
        history: historyWords(facts, run && run.scheduler, i), // multistep solvers: earlier calls' share
      };
    }
    if (open.has("guidance")) model.guidancePanel = guidancePanel(state, numbers, s, run, i);
    if (open.has("controlnet")) model.controlnet = controlnet(state); // null: no control here
    if (state.compare) model.compare = compare(state);
    return model;
  }

  /** A stochastic call's added noise, noise_scale x z (its variance_noise array), for the refiner. */
  function addedNoise(run, i) {
    const entry = run && run.arrays && run.arrays.variance_noise;
    if (!entry || i === null || !run.scheduler.noise_scale || !run.latent_preview) return null;
    const z = api.peek(entry.url, "npy"); // (T, C, h, w)
    if (!z) return null;
    const { data, shape } = sliceFirst(z, i);
    const scale = run.scheduler.noise_scale[i];
    const matrix = run.latent_preview.matrix;
    return {
      values: memo(z, `added${i}`, () => Float32Array.from(data, (x) => x * scale)), shape, matrix,
      scale: memo(z, "previewScale", () => noisePreviewScale(matrix)),
    };
  }

  function guidancePanel(state, numbers, s, run, i) {
    const c = state.channel;
    const step = numbers ? numbers.step : null;
    const pick = (name) => (step && step[name] ? step[name][c] : null);
    const formula = step ? {
      symbol: out.symbol,
      g: state.guidance,
      uncond: pick("noise_pred_uncond"),
      text: pick("noise_pred_text"),
      guided: pick("noise_pred"),
      missing: !step.noise_pred_text ? "text" : !step.noise_pred_uncond ? "uncond" : null,
      mode: facts.guidanceMode,  // none: the prompt alone; embedding: an LCM's w = g - 1 (fewstep-words.js)
      uncondTex: uncondWords(index, run).tex,
      rescale: guidanceRescaleAt(run, i),
    } : i === null ? { atStart: true } : null; // step 0: no call, nothing to load
    const sweepJson = api.peek(urls.sweep(state.prompt, state.seed));
    const items = sweepJson ? sweepJson.runs.map((r) => {
      const image = api.peek(r.decoded.url, "image");
      return {
        g: r.guidance_scale,
        selected: r.guidance_scale === state.guidance && !state.previewing.includes("guidance"),
        previewed: r.guidance_scale === state.guidance && state.previewing.includes("guidance"),
        frame: { image: image || null, entry: r.decoded, index: Math.min(s, r.decoded.count - 1),
          label: `Guidance ${r.guidance_scale}, step ${s}` },
      };
    }) : [];
    const row = guidanceRowUnderControl(index, api, state, items); // with control: its runs
    return {
      slider: {
        scales: index.guidance_scales,
        selected: state.previewing.includes("guidance") ? null : state.guidance,
        previewed: state.previewing.includes("guidance") ? state.guidance : null,
      },
      channels: { options: d3.range(C).map((v) => ({ value: v, label: String(v), name: `Channel ${v}` })), selected: c },
      formula,
      notes: { zero: state.guidance === 0, one: state.guidance === 1, negative: uncondWords(index, run).short !== "empty" },
      sweep: row,
    };
  }

  return { derive };
}

/** backend/previews.py noise_scale: 2.5 x the spread of unit noise through the colour map. */
function noisePreviewScale(matrix) {
  const k = matrix[0].length;
  let sum = 0;
  for (let j = 0; j < k; j++) for (const row of matrix) sum += row[j] * row[j];
  return 2.5 * Math.sqrt(sum / k) || 1;
}

/** The table's short name of the unconditional branch ("empty prompt", "negative prompt"). */
function uncondLabel(uncond) {
  return uncond.short === "empty" ? uncond.name : uncond.short;
}

/** |noise_scale z| of call i: the size of the noise a stochastic step added, or null. */
function noiseSize(run, i) {
  const norms = run.stats && run.stats.variance_noise_norm;
  const scale = run.scheduler.noise_scale;
  return norms && scale && norms[i] !== null ? Math.abs(scale[i]) * norms[i] : null;
}

/** The guidance view's sentence on guidance_rescale at this step, or "" where not applied. */
function rescaleNote(facts, r, g) {
  if (!facts.guidanceRescale) return "";
  if (!r) {
    return `guidance_rescale φ = ${fmt(facts.guidanceRescale)} (Lin et al. 2023) applies only where the pipeline guides, above g = 1: `
      + (g > 1 ? "step forward to see its factor." : `at g = ${fmt(g)} the guided prediction is not rescaled.`);
  }
  return `guidance_rescale φ = ${fmt(r.phi)} (Lin et al. 2023): at this step the prompt's prediction has ${fmt(r.ratio)} times `
    + `the spread of the guided one, so the guided prediction is scaled by φ × ${fmt(r.ratio)} + (1 − φ) = ${fmt(r.factor)} `
    + "(the stored value below), keeping its direction but not the spread that large scales add.";
}

/** The prompt picker's groups: the bundle's groups, then any prompt not in one. */
function pickerGroups(index) {
  const seen = new Set();
  const groups = (index.groups || []).map((g) => ({
    id: g.id,
    title: g.title,
    options: g.prompts.filter((id) => index.prompts[id]).map((id) => {
      seen.add(id);
      return { id, text: index.prompts[id].text };
    }),
  }));
  const rest = Object.keys(index.prompts).filter((id) => id !== "empty" && !seen.has(id));
  if (rest.length) groups.push({ id: "other", title: "Other prompts", options: rest.map((id) => ({ id, text: index.prompts[id].text })) });
  return groups;
}

/** What the UNet's output is, in words: the pictures below show exactly that output. */
function predictionNote(type) {
  if (type === "v_prediction") {
    return "This model predicts $v$ (\u201cvelocity\u201d), a mix of the noise and the image: " +
      "$v = \\sqrt{\\bar\\alpha}\\,\\epsilon - \\sqrt{1-\\bar\\alpha}\\,x_0$, noise $\\epsilon$ and image $x_0$ " +
      "(v-prediction, as in Stable Diffusion 2.x). The pictures and numbers labelled $v$ show exactly that output; " +
      "the scheduler removes $w \\times v$.";
  }
  if (type === "sample") return "This model predicts the clean image directly; the scheduler derives the noise.";
  return "The UNet predicts the noise in the latent (\u03b5-prediction, as in Stable Diffusion 1.x).";
}

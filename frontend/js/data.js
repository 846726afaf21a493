/**
 * Pure helpers that read the API's JSON: which run a choice means, what a token is,
 * which frame of a sprite shows a step. No fetching and no DOM here.
 *
 * Step convention (docs/bundle-format.md): step s (0..T) shows latents[s], the latent
 * after s UNet calls; step 0 is the starting noise. Everything else drawn at step s
 * describes the call that made it, i = s - 1: its noise predictions, its guided noise,
 * the scheduler's factor, its predicted final image and its cross-attention.
 */

const sameNumber = (a, b) => Math.abs(Number(a) - Number(b)) < 1e-9;

/**
 * What a first visit opens (js/state.js defaults; js/opening.js asks for its run before
 * the app has loaded): the first group's first prompt, the first seed, and the bundle's
 * own opening scale (its prompt file's default_guidance_scale), else Stable Diffusion's
 * usual 7.5 or 7, else the middle one.
 */
export function openingRun(index) {
  const groups = index.groups || [];
  const prompt = groups.length && groups[0].prompts.length
    ? groups[0].prompts[0]
    : Object.keys(index.prompts).find((id) => id !== "empty");
  const scales = index.guidance_scales;
  const named = index.default_guidance_scale;
  const guidance = (named != null ? scales.find((g) => sameNumber(g, named)) : undefined)
    ?? scales.find((g) => sameNumber(g, 7.5)) ?? scales.find((g) => sameNumber(g, 7))
    ?? scales[Math.floor(scales.length / 2)];
  return { prompt, seed: index.seeds[0], guidance };
}

/** The run for a prompt, seed and guidance scale (guidance 0 points at the shared run). */
export function runIdFor(index, promptId, seed, guidance) {
  const bySeed = index.run_lookup && index.run_lookup[promptId];
  const byGuidance = bySeed && (bySeed[seed] ?? bySeed[String(seed)]);
  if (byGuidance) {
    const key = Object.keys(byGuidance).find((k) => sameNumber(k, guidance));
    if (key !== undefined) return byGuidance[key];
  }
  const found = Object.entries(index.runs || {}).find(([, r]) =>
    r.seed === seed && sameNumber(r.guidance_scale, guidance)
    && (r.prompt_id === promptId || (Number(guidance) === 0 && r.prompt_id === "empty")));
  return found ? found[0] : null;
}

/** T, the steps a run records: one per UNet call (config.num_timesteps, more than
 * num_inference_steps for heun, kdpm2 and pndm; bundles without it: the same). */
export function recordedSteps(index) {
  return index.config.num_timesteps || index.config.num_inference_steps;
}

/** The sprites (run.images names) the first screen draws at step s: the latent preview
 * (the starting noise and the step's latent), the decoded image and, after step 0, the
 * predicted final image (model.js's level-one pictures). */
export function firstScreenSprites(step) {
  return step > 0 ? ["latents", "decoded", "pred_original_sample"] : ["latents", "decoded"];
}

/** The UNet call that produced step s, or null at step 0. */
export function callIndex(step) {
  return step > 0 ? step - 1 : null;
}

const START = "<|startoftext|>";
const END = "<|endoftext|>";

/** A piece as a reader sees it: "</w>" (end of a word) dropped, special tokens named. */
export function pieceLabel(piece) {
  if (piece === START) return "start";
  if (piece === END) return "end";
  return piece.replace(/<\/w>$/, "");
}

/**
 * The tokenizer output of a prompt, ready to draw.
 * @returns {{real: object[], padding: number, truncated: boolean, dropped: string[]}}
 */
export function tokenList(promptJson) {
  const t = promptJson.tokens;
  const real = t.pieces.slice(0, t.n_real).map((piece, k) => ({
    k,
    piece,
    id: t.input_ids[k],
    label: pieceLabel(piece),
    kind: piece === START ? "start" : piece === END ? "end" : "word",
    // a piece without "</w>" continues into the next piece of the same word
    continues: piece !== START && piece !== END && !piece.endsWith("</w>"),
  }));
  return {
    real,
    padding: t.pieces.length - t.n_real,
    truncated: Boolean(t.truncated),
    dropped: (t.dropped_pieces || []).map(pieceLabel),
  };
}

/**
 * Split the prompt text into spans, each either plain text or the characters of one
 * real token, so words in the prompt can be clicked like token chips. CLIP lowercases
 * and cleans the text, so pieces are matched case-insensitively, in order.
 * @returns {{text: string, k: number|null, start: number}[]}
 */
export function alignTokens(text, real) {
  const lower = text.toLowerCase();
  const spans = [];
  let cursor = 0;
  for (const tok of real) {
    if (tok.kind !== "word") continue;
    const at = lower.indexOf(tok.label.toLowerCase(), cursor);
    if (at < 0 || tok.label === "") continue;
    if (at > cursor) spans.push({ text: text.slice(cursor, at), k: null, start: cursor });
    spans.push({ text: text.slice(at, at + tok.label.length), k: tok.k, start: at });
    cursor = at + tok.label.length;
  }
  if (cursor < text.length) spans.push({ text: text.slice(cursor), k: null, start: cursor });
  return spans;
}

/** Mark the characters inside any [start, end] highlight span (the words a variant changes). */
export function markHighlights(spans, highlights) {
  if (!highlights || !highlights.length) return spans.map((s) => ({ ...s, highlight: false }));
  return spans.map((s) => ({
    ...s,
    highlight: highlights.some(([a, b]) => s.start < b && s.start + s.text.length > a),
  }));
}

/** The group a prompt belongs to and its other prompts (variants or main). */
export function groupOf(index, promptId) {
  return (index.groups || []).find((g) => g.prompts.includes(promptId)) || null;
}

/** Format a number for prose: 3 significant digits, a real minus sign. */
export function fmt(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  let s;
  if (abs !== 0 && (abs < 0.001 || abs >= 1e5)) s = value.toExponential(digits - 1);
  else s = Number(value.toPrecision(digits)).toString();
  return s.replaceAll("-", "\u2212");  // the sign and an exponent's: "−1.2e−4", never "−1.2e-4"
}

/** A scheduler timestep: integers as they are, fractional ones (Euler, LMS) to 1 decimal. */
export function fmtTimestep(t) {
  if (t === null || t === undefined) return "–";
  return Number.isInteger(t) ? String(t) : t.toFixed(1);
}

/** Mean over the first axis of a (T, r, r) array: a token's map averaged over all steps. */
export function meanOverSteps(npy) {
  const [T, h, w] = npy.shape;
  const out = new Float32Array(h * w);
  for (let t = 0; t < T; t++) {
    const base = t * h * w;
    for (let j = 0; j < h * w; j++) out[j] += npy.data[base + j];
  }
  for (let j = 0; j < h * w; j++) out[j] /= T;
  return { data: out, shape: [h, w] };
}

/** Slice frame t of a (T, ...) array without copying. */
export function sliceFirst(npy, t) {
  const size = npy.shape.slice(1).reduce((a, b) => a * b, 1);
  return { data: npy.data.subarray(t * size, (t + 1) * size), shape: npy.shape.slice(1) };
}

/** The words of a text with their character ranges; compared lowercased, without punctuation. */
function words(text) {
  return [...text.matchAll(/\S+/g)].map((m) => ({
    key: m[0].toLowerCase().replace(/[^\p{L}\p{N}'-]+/gu, ""),
    start: m.index,
    end: m.index + m[0].length,
  }));
}

/**
 * The words two prompts do not share: a word-level longest common subsequence, so
 * "a cute panda" vs "a cute red panda" marks only "red".
 * @returns {[number, number][][]} two lists of [start, end] character ranges, one per text
 */
export function wordDiff(textA, textB) {
  const a = words(textA);
  const b = words(textB);
  const n = a.length;
  const m = b.length;
  // lcs[i][j]: common words of a[i:] and b[j:]
  const lcs = Array.from({ length: n + 1 }, () => new Int32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = a[i].key === b[j].key ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const keepA = new Set();
  const keepB = new Set();
  for (let i = 0, j = 0; i < n && j < m;) {
    if (a[i].key === b[j].key) {
      keepA.add(i++);
      keepB.add(j++);
    } else if (lcs[i + 1][j] >= lcs[i][j + 1]) i++;
    else j++;
  }
  const ranges = (ws, keep) => ws.filter((w, i) => !keep.has(i)).map((w) => [w.start, w.end]);
  return [ranges(a, keepA), ranges(b, keepB)];
}

/** Cut a text into spans at the edges of [start, end] ranges, marking the spans inside one. */
export function splitRanges(text, ranges) {
  const edges = [...new Set([0, text.length, ...ranges.flat()])]
    .filter((x) => x >= 0 && x <= text.length).sort((a, b) => a - b);
  const spans = [];
  for (let j = 0; j + 1 < edges.length; j++) {
    const [start, end] = [edges[j], edges[j + 1]];
    if (end > start) {
      spans.push({ text: text.slice(start, end), start, highlight: ranges.some(([a, b]) => start < b && end > a) });
    }
  }
  return spans;
}

/**
 * The prompt a comparison opens with: the prompt's variant; else (a group of one, e.g. the
 * demo's sketch prompts) the prompt with a run for this seed and scale whose words differ
 * least (wordDiff's count), so the comparison shows one change; null when there is none.
 */
export function compareCandidate(index, promptId, seed, guidance) {
  const group = groupOf(index, promptId);
  const variant = group ? group.prompts.find((p) => p !== promptId && index.prompts[p]) : null;
  if (variant) return variant;
  const own = index.prompts[promptId] ? index.prompts[promptId].text : "";
  let best = null;
  let fewest = Infinity;
  for (const id of Object.keys(index.prompts)) {
    if (id === "empty" || id === promptId || !runIdFor(index, id, seed, guidance)) continue;
    const [ours, theirs] = wordDiff(own, index.prompts[id].text);
    if (ours.length + theirs.length < fewest) [best, fewest] = [id, ours.length + theirs.length];
  }
  return best;
}

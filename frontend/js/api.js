/**
 * The one data-access module: every URL the app requests, and a cache of what came back.
 *
 * URLs are relative to the app root (docs/api.md), so the same code works against
 * `noisepath serve` and a static `noisepath export` under any sub-path. Each URL is
 * fetched at most once; `peek` returns what is already in memory so views can draw
 * synchronously, and `load` returns a promise for what is not.
 *
 * A static export says so in its api/index.json (`export`); from then on the per-step and
 * per-token URLs are cut from the export's per-run files (js/packed.js), under the same URLs.
 *
 * Loading order: the first screen first. `firstScreen` asks for the opening run's
 * document and, the moment it arrives, the sprites its opening step draws, at high
 * priority. A load asked for with `background: true` (a sprite of another step, a word's
 * attention at step 0) waits until the app calls `startBackground()` after its first full
 * render, unless something asks for the same URL in the foreground first; from then on
 * every load starts at once. Before all that, js/opening.js has already asked for a first
 * visit's run and sprites (`prefetch`), while the app's modules were still loading; the
 * app's own loads of those URLs take them over.
 *
 * Images are decoded once, off the main thread (createImageBitmap), and kept up to a
 * budget of decoded pixels (DECODED_IMAGE_BUDGET).
 */
import { parseNpy } from "./npy.js";
import { packedSource } from "./packed.js";

const enc = encodeURIComponent;

/** Every API path the front end knows, in one place. */
export const urls = {
  index: () => "api/index.json",
  prompt: (promptId) => `api/prompts/${enc(promptId)}.json`,
  run: (runId) => `api/runs/${enc(runId)}.json`,
  step: (runId, i) => `api/runs/${enc(runId)}/steps/${i}.json`,
  attentionToken: (runId, res, k) => `api/runs/${enc(runId)}/attention/${res}/tokens/${k}.npy`,
  attentionStep: (runId, res, i) => `api/runs/${enc(runId)}/attention/${res}/steps/${i}.npy`,
  sweep: (promptId, seed) => `api/sweeps/${enc(promptId)}/${seed}.json`,
  trajectories: (seed) => `api/trajectories/${seed}.json`,
  // the bundle's fewstep/ section (views/fewstep-view.js), when api/index.json has `fewstep`
  fewstep: () => "api/fewstep/index.json",
  fewstepFile: (file) => `api/fewstep/files/${enc(file)}`,
  // `noisepath serve --live` only (views/live-prompt.js); never cached here: they change
  liveInfo: () => "api/live/info.json",
  liveJobs: () => "api/live/jobs",
  liveJob: (id) => `api/live/jobs/${enc(id)}.json`,
  liveCancel: (id) => `api/live/jobs/${enc(id)}/cancel`,
  liveFrame: (id, i, kind) => `api/live/jobs/${enc(id)}/frames/${i}/${kind}.png`,
};

/** POST body as JSON; resolves to {response, data} (data: the parsed JSON, or null). */
export async function postJson(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  return { response, data };
}

/** Turn an error response ({error, message, status}) into an Error with a readable message. */
async function failure(response, url) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.message) message = body.message;
  } catch {
    // not JSON: keep the status line
  }
  const error = new Error(`${url}: ${message}`);
  error.status = response.status;
  return error;
}

const readers = {
  async json(response) {
    return response.json();
  },
  async npy(response) {
    return parseNpy(await response.arrayBuffer());
  },
  async buffer(response) {
    return response.arrayBuffer();
  },
};

/**
 * An image, decoded once, off the main thread: the file's bytes through
 * createImageBitmap. Views draw it with drawImage as they would an <img>, and it carries
 * what they read of one (src, currentSrc, naturalWidth, naturalHeight). An <img> decoded
 * with img.decode() is decoded again, on the main thread, when first drawn into a
 * canvas (the canvas does not share the page's decoded images): 0.1-0.3 s for an
 * SD-sized run's 3.3-megapixel sprite (docs/performance.md). Browsers without
 * createImageBitmap get the <img>.
 */
async function loadImage(url, priority) {
  if (typeof createImageBitmap !== "function") return loadImageElement(url, priority);
  const response = await fetch(url, { priority });
  if (!response.ok) throw await failure(response, url);
  const bitmap = await createImageBitmap(await response.blob());
  const src = new URL(url, document.baseURI).href;
  Object.defineProperties(bitmap, {
    src: { value: src }, currentSrc: { value: src },
    naturalWidth: { value: bitmap.width }, naturalHeight: { value: bitmap.height },
  });
  return bitmap;
}

async function loadImageElement(url, priority) {
  const image = new Image();
  image.decoding = "async";
  image.fetchPriority = priority;
  image.src = url;
  await image.decode();
  return image;
}

// Decoded images the cache keeps, in bytes of RGBA pixels: an SD-sized run's level-1
// sprites are about 30 MB decoded (an <img>'s decoded pixels the browser may drop and
// decode again; an ImageBitmap's it keeps while referenced), so past this the images
// least recently drawn are let go (fetched again, from the HTTP cache, if needed again).
export const DECODED_IMAGE_BUDGET = 160 * 2 ** 20;
const IN_USE_MS = 2000; // an image drawn this recently is never let go

/** The bookkeeping of that budget: keep(url, image) when loaded, use(url) when drawn;
 * forget(url) drops a let-go image from the cache. */
export function decodedPixels(forget, { budget = DECODED_IMAGE_BUDGET, inUseMs = IN_USE_MS } = {}) {
  const kept = new Map(); // url -> {bytes, used}, least recently used first
  let total = 0;
  function use(url) {
    const k = kept.get(url);
    if (!k) return;
    kept.delete(url);
    kept.set(url, { ...k, used: performance.now() });
  }
  function keep(url, image) {
    const bytes = 4 * (image.naturalWidth || image.width) * (image.naturalHeight || image.height);
    kept.set(url, { bytes, used: performance.now() });
    total += bytes;
    const now = performance.now();
    for (const [old, k] of kept) {
      if (total <= budget || now - k.used < inUseMs) break;
      kept.delete(old);
      total -= k.bytes;
      forget(old);
    }
  }
  return { use, keep };
}

/** Fetch url and read it as kind (json, npy, buffer or image), without a cache. */
async function fetchAs(url, kind, priority) {
  if (kind === "image") return loadImage(url, priority);
  const response = await fetch(url, { priority });
  if (!response.ok) throw await failure(response, url);
  return readers[kind](response);
}

// Loads js/opening.js started before the app's modules had loaded (url -> {kind, promise}),
// each handed over to the first createApi load of the same url and kind.
const early = new Map();
let appEntries = null; // the app's cache (createApi), once there is one

/**
 * Start loading url now, at high priority, for a load the app will ask for later (the
 * first screen of a first visit: js/opening.js). Returns the promise of the value; if the
 * app has asked for url already (it started first), its load.
 */
export function prefetch(url, kind = "json") {
  const app = appEntries && appEntries.get(url);
  if (app) return app.promise;
  if (!early.has(url)) {
    const promise = fetchAs(url, kind, "high");
    promise.catch(() => {}); // the app's own load of url tries again and reports a failure
    early.set(url, { kind, promise });
  }
  return early.get(url).promise;
}

/** The early load of url as kind, taken out of the registry, or null. */
function takeEarly(url, kind) {
  const e = early.get(url);
  if (!e || e.kind !== kind) return null;
  early.delete(url);
  return e.promise.catch(() => null); // failed early: load it again
}

/**
 * @param {{onLoad?: (url: string) => void, onError?: (url: string, error: Error) => void}} hooks
 *   called after each resource arrives or fails (the app re-renders on them)
 */
export function createApi(hooks = {}) {
  const entries = new Map(); // url -> {promise, value, error, hurry}
  let packed = false;        // a static export's layout (api/index.json's `export`)
  let background = false;    // true once the first screen is drawn: nothing is held back
  const held = new Set();    // the resolvers of background loads waiting for that
  const pixels = decodedPixels((url) => entries.delete(url));
  appEntries = entries;

  /**
   * Load url once (later calls share the promise). kind: json, npy, buffer or image.
   * background: hold the request back until startBackground() (see the module comment).
   */
  function load(url, kind = "json", { background: later = false } = {}) {
    let entry = entries.get(url);
    if (entry) {
      if (!later && entry.hurry) entry.hurry(); // asked for now: stop holding it back
      return entry.promise;
    }
    entry = { value: undefined, error: undefined, hurry: null };
    const wait = later && !background ? new Promise((resolve) => {
      entry.hurry = resolve;
      held.add(resolve);
    }) : null;
    entry.promise = (async () => {
      if (wait) {
        await wait;
        held.delete(entry.hurry);
        entry.hurry = null;
      }
      const priority = background ? "auto" : "high";
      const head = takeEarly(url, kind);
      const ahead = head && await head;
      if (ahead) return ahead;
      if (kind === "image") return loadImage(url, priority);
      const source = packed ? packedSource(url) : null;
      if (source) return source(load);
      return fetchAs(url, kind, priority);
    })().then(
      (value) => {
        if (url === urls.index() && value.export) packed = value.export.layout === "packed";
        entry.value = value;
        if (kind === "image") pixels.keep(url, value);
        if (hooks.onLoad) hooks.onLoad(url);
        return value;
      },
      (error) => {
        entry.error = error;
        if (hooks.onError) hooks.onError(url, error);
        throw error;
      },
    );
    entry.promise.catch(() => {}); // reported through hooks.onError; callers may still await
    entries.set(url, entry);
    return entry.promise;
  }

  /** What is in memory for url, starting its load if asked (in the background if asked
   * so, see load): the value, or undefined. */
  function peek(url, kind = "json", { start = true, background: later = false } = {}) {
    const entry = entries.get(url);
    if (entry) {
      if (!later && entry.hurry) entry.hurry();
      if (kind === "image") pixels.use(url);
      return entry.value;
    }
    if (start && url) load(url, kind, { background: later });
    return undefined;
  }

  function failed(url) {
    const entry = entries.get(url);
    return entry ? entry.error : undefined;
  }

  /** The first screen is drawn (or cannot be): start every held-back load, hold none after. */
  function startBackground() {
    background = true;
    early.clear(); // what the app did not take over is not on its first screen
    for (const go of [...held]) go();
    held.clear();
  }

  /**
   * Ask for what the opening screen draws before anything else: the prompt's and the
   * run's documents, then, as soon as the run's arrives (not at the next draw), its
   * sprites `images` (names in run.images, e.g. the opening step's decoded image).
   */
  async function firstScreen(runId, promptId, images) {
    if (promptId) load(urls.prompt(promptId));
    if (!runId) return;
    const run = await load(urls.run(runId));
    for (const name of images) if (run.images && run.images[name]) load(run.images[name].url, "image");
  }

  return { load, peek, failed, urls, startBackground, firstScreen };
}

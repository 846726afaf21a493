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
 * every load starts at once.
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

async function loadImage(url, priority) {
  const image = new Image();
  image.decoding = "async";
  image.fetchPriority = priority;
  image.src = url;
  await image.decode();
  return image;
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
      if (kind === "image") return loadImage(url, priority);
      const source = packed ? packedSource(url) : null;
      if (source) return source(load);
      const response = await fetch(url, { priority });
      if (!response.ok) throw await failure(response, url);
      const value = await readers[kind](response);
      if (url === urls.index() && value.export) packed = value.export.layout === "packed";
      return value;
    })().then(
      (value) => {
        entry.value = value;
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

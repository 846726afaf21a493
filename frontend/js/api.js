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

async function loadImage(url) {
  const image = new Image();
  image.decoding = "async";
  image.src = url;
  await image.decode();
  return image;
}

/**
 * @param {{onLoad?: (url: string) => void, onError?: (url: string, error: Error) => void}} hooks
 *   called after each resource arrives or fails (the app re-renders on them)
 */
export function createApi(hooks = {}) {
  const entries = new Map(); // url -> {promise, value, error}
  let packed = false;        // a static export's layout (api/index.json's `export`)

  function load(url, kind = "json") {
    let entry = entries.get(url);
    if (entry) return entry.promise;
    entry = { value: undefined, error: undefined };
    entry.promise = (async () => {
      if (kind === "image") return loadImage(url);
      const source = packed ? packedSource(url) : null;
      if (source) return source(load);
      const response = await fetch(url);
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

  /** What is in memory for url, starting its load if asked: the value, or undefined. */
  function peek(url, kind = "json", { start = true } = {}) {
    const entry = entries.get(url);
    if (entry) return entry.value;
    if (start && url) load(url, kind);
    return undefined;
  }

  function failed(url) {
    const entry = entries.get(url);
    return entry ? entry.error : undefined;
  }

  return { load, peek, failed, urls };
}

/**
 * The one state module.
 *
 * `committed` is what the user chose; `preview` is what they hover over (a prompt, a
 * seed, a guidance scale) and is dropped when the pointer leaves. Views draw
 * `store.state()`, the two merged. The committed state lives in the URL's query string
 * (the hash is left to in-page anchors), so a link reopens exactly what was on screen
 * and back/forward move through committed choices. Steps and playback speed replace the
 * current history entry instead of adding one, so playing does not flood the history.
 *
 * `compare` is the second prompt of the comparison view (null: the overview), so entering
 * and leaving it are history entries and a link can open a comparison; `paths` shows the
 * other guidance scales' paths on its Trajectory Map. `control` is ControlNet's
 * conditioning scale (0: the run without control; js/controlnet-model.js) and
 * `controlImage` the chosen control image's control_id (null: the prompt's first); the URL
 * writes both in one `control=` (`1`, or `1:<control_id>`; links without the id still work).
 *
 * The boxes under the pipeline are in the URL too, so a link opens them: `fewstep` is the
 * "Fifty steps, four, one" box's time (null: closed; 1 the noise, 0 the image) and
 * `fewstepExample` its example's id (null: the first), written as `fewstep=<time>` or
 * `fewstep=<time>:<example id>`; `speech` is the spoken prompts' shown clip's id (null:
 * closed), `speech=<id>`. Scrubbing the time replaces the history entry; opening and
 * closing a box adds one. An id the bundle lacks opens the box on its first example.
 *
 * No d3 here: js/opening.js reads the address bar with fromSearch and normalize before d3
 * has loaded (js/lib.js would then hold no d3 for the whole app).
 */
import { controlIds, controlScales } from "./controlnet-model.js";
import { openingRun, recordedSteps } from "./data.js";

/** Panels that can be open, and the level-2 panel each deeper one belongs to. */
export const PANELS = { text: null, clip: "text", image: null, guidance: null, controlnet: null };
export const SPEEDS = [2, 5, 10, 20];

const REPLACE_ONLY = new Set(["step", "speed"]);
/** A change that replaces the history entry: a step, a speed, the open fewstep box's time. */
const replaces = (k, before, after) => REPLACE_ONLY.has(k)
  || (k === "fewstep" && before.fewstep !== null && after.fewstep !== null);
/** A box's example id as the URL may carry it (the bundle's ids are slugs). */
const BOX_ID = /^[\w.-]{1,160}$/;
const boxId = (v) => (typeof v === "string" && BOX_ID.test(v) ? v : null);
/** The fewstep time as written: 6 decimals, rounded down (a node sits at its last step at or
 * before the time: rounded up, a step's exact time would show the step before it). */
const timeParam = (t) => String(Math.floor(t * 1e6 + 1e-6) / 1e6);

/** Guidance scales compare as numbers; the URL writes them as plain decimals. */
const sameNumber = (a, b) => Math.abs(a - b) < 1e-9;

export function defaults(index) {
  return {
    ...openingRun(index), // prompt, seed, guidance (data.js: js/opening.js reads it too)
    step: 0,
    open: [],
    token: null,
    res: "combined",
    avg: false,
    speed: 10,
    compare: null,
    paths: false,
    present: false,
    vsEmpty: false,
    channel: 0,
    control: 0, // ControlNet's conditioning scale; 0: the run without control
    controlImage: null, // the chosen control image's control_id; null: the prompt's first
    fewstep: null, // the fewstep box's time; null: closed
    fewstepExample: null, // its example's id; null: the first
    speech: null, // the spoken prompts' shown clip's id; null: closed
  };
}

/** Make any partial state valid for this bundle: unknown values fall back to defaults. */
export function normalize(index, raw) {
  const base = defaults(index);
  const s = { ...base, ...raw };
  const T = recordedSteps(index); // one step per UNet call
  if (!index.prompts[s.prompt] || s.prompt === "empty") s.prompt = base.prompt;
  if (!index.seeds.includes(s.seed)) s.seed = base.seed;
  const g = index.guidance_scales.find((x) => sameNumber(x, s.guidance));
  s.guidance = g === undefined ? base.guidance : g;
  s.step = Number.isInteger(s.step) ? Math.max(0, Math.min(T, s.step)) : base.step;
  const open = (Array.isArray(s.open) ? s.open : []).filter((p) => p in PANELS);
  s.open = open.filter((p, i) => open.indexOf(p) === i && (PANELS[p] === null || open.includes(PANELS[p])));
  s.token = Number.isInteger(s.token) && s.token >= 0 && s.token < 77 ? s.token : null;
  s.res = s.res === "combined" || (Number.isInteger(s.res) && s.res > 0) ? s.res : "combined";
  s.avg = Boolean(s.avg);
  s.speed = SPEEDS.includes(s.speed) ? s.speed : base.speed;
  s.compare = s.compare && s.compare !== "empty" && index.prompts[s.compare] && s.compare !== s.prompt ? s.compare : null;
  s.paths = Boolean(s.paths);
  s.present = Boolean(s.present);
  s.vsEmpty = Boolean(s.vsEmpty);
  const C = index.config.latent_shape ? index.config.latent_shape[0] : 4;
  s.channel = Number.isInteger(s.channel) && s.channel >= 0 && s.channel < C ? s.channel : 0;
  s.control = controlScales(index).find((c) => sameNumber(c, s.control)) ?? 0;
  s.controlImage = controlIds(index).has(s.controlImage) ? s.controlImage : null;
  const t = s.fewstep;
  s.fewstep = index.fewstep && typeof t === "number" && t >= 0 && t <= 1 ? t : null;
  s.fewstepExample = s.fewstep === null ? null : boxId(s.fewstepExample);
  s.speech = boxId(s.speech);
  return s;
}

const int = (v) => (v === null || v === "" || !/^-?\d+$/.test(v) ? undefined : Number(v));
const num = (v) => (v === null || v === "" || Number.isNaN(Number(v)) ? undefined : Number(v));

/** Read a query string ("?prompt=...&seed=1") into a partial state. */
export function fromSearch(search) {
  const q = new URLSearchParams(search);
  const raw = {};
  if (q.has("prompt")) raw.prompt = q.get("prompt");
  if (q.has("seed")) raw.seed = int(q.get("seed"));
  if (q.has("guidance")) raw.guidance = num(q.get("guidance"));
  if (q.has("step")) raw.step = int(q.get("step"));
  if (q.has("open")) raw.open = q.get("open").split(",").filter(Boolean);
  if (q.has("token")) raw.token = int(q.get("token"));
  if (q.has("res")) raw.res = q.get("res") === "combined" ? "combined" : int(q.get("res"));
  if (q.has("avg")) raw.avg = q.get("avg") === "1";
  if (q.has("speed")) raw.speed = int(q.get("speed"));
  if (q.has("compare")) raw.compare = q.get("compare");
  if (q.has("paths")) raw.paths = q.get("paths") === "all";
  if (q.has("present")) raw.present = q.get("present") === "1";
  if (q.has("vs")) raw.vsEmpty = q.get("vs") === "empty";
  if (q.has("channel")) raw.channel = int(q.get("channel"));
  if (q.has("control")) { // "1" or "1:<control_id>"
    const [scale, image] = q.get("control").split(":");
    raw.control = num(scale);
    if (image) raw.controlImage = image;
  }
  if (q.has("fewstep")) { // "<time>" or "<time>:<example id>"
    const [time, ...example] = q.get("fewstep").split(":");
    raw.fewstep = num(time);
    if (example.length) raw.fewstepExample = example.join(":");
  }
  if (q.has("speech")) raw.speech = q.get("speech");
  for (const k of Object.keys(raw)) if (raw[k] === undefined) delete raw[k];
  return raw;
}

/** Write a full state as a query string; values equal to the defaults are left out. */
export function toSearch(index, s) {
  const base = defaults(index);
  const q = new URLSearchParams();
  q.set("prompt", s.prompt);
  q.set("seed", String(s.seed));
  q.set("guidance", String(s.guidance));
  q.set("step", String(s.step));
  if (s.open.length) q.set("open", s.open.join(","));
  if (s.token !== null) q.set("token", String(s.token));
  if (s.res !== base.res) q.set("res", String(s.res));
  if (s.avg) q.set("avg", "1");
  if (s.speed !== base.speed) q.set("speed", String(s.speed));
  if (s.compare) q.set("compare", s.compare);
  if (s.paths) q.set("paths", "all");
  if (s.present) q.set("present", "1");
  if (s.vsEmpty) q.set("vs", "empty");
  if (s.channel !== base.channel) q.set("channel", String(s.channel));
  if (s.control || s.controlImage) { // "1", or "1:<control_id>" with a chosen control image
    q.set("control", s.controlImage ? `${s.control}:${s.controlImage}` : String(s.control));
  }
  if (s.fewstep !== null) {
    q.set("fewstep", s.fewstepExample ? `${timeParam(s.fewstep)}:${s.fewstepExample}` : timeParam(s.fewstep));
  }
  if (s.speech !== null) q.set("speech", s.speech);
  return `?${q.toString()}`;
}

/**
 * @param index   the bundle index (api/index.json)
 * @param win     an object with `location`, `history` and `addEventListener` (the window)
 * @returns the store: state(), committed(), commit(patch, {replace}), preview(patch), clearPreview(),
 *          playing(), setPlaying(bool), togglePanel(id), closeTopPanel(), on(type, fn)
 */
export function createStore(index, win) {
  const listeners = new Map(); // "change.<name>" -> fn: a name's later listener replaces it, as in d3.dispatch
  const fromUrl = fromSearch(win.location.search);
  let committed = normalize(index, fromUrl);
  let preview = {};
  let hover = null;
  // A link that names a step shows that step; otherwise the page plays on load.
  let playing = !("step" in fromUrl);

  function emit(reason) {
    for (const fn of listeners.values()) fn.call(null, { reason });
  }

  // A live run's URL carries its prompt's text, so the server can compute it again after
  // its cache was cleared (docs/api.md): kept while the page shows that prompt.
  const opened = new URLSearchParams(win.location.search);
  const liveText = opened.get("text");
  // A live prompt the server queued again (?live_job=<id>, after its cache was cleared):
  // kept while the page still shows what it opened on, so a reload watches the same job.
  const liveJob = opened.get("live_job");
  const openedOn = committed.prompt;

  function writeUrl(push) {
    let search = toSearch(index, committed);
    if (liveText !== null && committed.prompt === fromUrl.prompt) {
      search += `&text=${encodeURIComponent(liveText)}`;
    }
    if (liveJob !== null && committed.prompt === openedOn) {
      search += `&live_job=${encodeURIComponent(liveJob)}`;
    }
    if (search === win.location.search) return;
    const url = `${win.location.pathname}${search}${win.location.hash}`;
    if (push) win.history.pushState(null, "", url);
    else win.history.replaceState(null, "", url);
  }

  /** Commit a choice; `replace` keeps it out of the history (a choice the app made itself). */
  function commit(patch, { replace = false } = {}) {
    const next = { ...committed, ...patch };
    if (patch.prompt !== undefined && patch.prompt !== committed.prompt && !("token" in patch)) {
      next.token = null; // token positions belong to the old prompt
    }
    const normalized = normalize(index, next);
    const changed = Object.keys(normalized).filter(
      (k) => JSON.stringify(normalized[k]) !== JSON.stringify(committed[k]),
    );
    // a committed choice ends the preview of that choice
    for (const k of Object.keys(patch)) delete preview[k];
    if (!changed.length) {
      emit("preview");
      return;
    }
    const before = committed;
    committed = normalized;
    writeUrl(!replace && changed.some((k) => !replaces(k, before, normalized)));
    emit(changed.join(","));
  }

  win.addEventListener("popstate", () => {
    committed = normalize(index, fromSearch(win.location.search));
    preview = {};
    playing = false;
    emit("history");
  });

  // Show the normalized state in the address bar from the start (no new entry).
  writeUrl(false);

  return {
    index,
    /** The state to draw: the committed choice with any hover preview on top. */
    state: () => ({ ...committed, ...preview, playing, previewing: Object.keys(preview) }),
    committed: () => ({ ...committed }),
    commit,
    preview(patch) {
      const next = { ...preview, ...patch };
      if (JSON.stringify(next) === JSON.stringify(preview)) return;
      preview = next;
      emit("preview");
    },
    /** Transient pointer state (a hovered pixel): never in the URL or the history. */
    hover: () => hover,
    setHover(value) {
      if (JSON.stringify(value) === JSON.stringify(hover)) return;
      hover = value;
      emit("hover");
    },
    clearPreview(keys) {
      if (!Object.keys(preview).length) return;
      if (keys) for (const k of keys) delete preview[k];
      else preview = {};
      emit("preview");
    },
    playing: () => playing,
    setPlaying(value) {
      if (playing === Boolean(value)) return;
      playing = Boolean(value);
      emit("playing");
    },
    /** Open a panel (closing other level-2 panels and their children) or close it. */
    togglePanel(id, force) {
      const isOpen = committed.open.includes(id);
      const open = force ?? !isOpen;
      if (open === isOpen) return;
      if (!open) {
        commit({ open: committed.open.filter((p) => p !== id && PANELS[p] !== id) });
        return;
      }
      let next = committed.open;
      const parent = PANELS[id];
      if (parent === null && id !== "guidance") {
        // one level-2 column at a time, as in the reference
        next = next.filter((p) => p === "guidance");
      } else if (parent && !next.includes(parent)) {
        next = [...next, parent];
      }
      commit({ open: [...next, id] });
    },
    /** Escape: close the most recently opened panel. Returns whether one was open. */
    closeTopPanel() {
      const open = committed.open;
      if (!open.length) return false;
      const top = open[open.length - 1];
      commit({ open: open.filter((p) => p !== top && PANELS[p] !== top) });
      return true;
    },
    closeAllPanels() {
      if (committed.open.length) commit({ open: [] });
    },
    /** Listen to "change" (namespaced: "change.render"); fn null removes the listener. */
    on(type, fn) {
      if (fn) listeners.set(type, fn);
      else listeners.delete(type);
      return this;
    },
  };
}

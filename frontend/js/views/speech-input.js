/**
 * Say a prompt (`noisepath serve --live` with the [speech] extra): a microphone button
 * and a file picker beside the live prompt box. The clip is recorded with Web Audio (or
 * read from the picked file, in any format the browser decodes), resampled to 16 kHz
 * mono and sent as WAV to api/live/speech (docs/api.md, "Spoken prompts"), so the server
 * needs no ffmpeg. The page then shows what the recognizer worked on and what it chose:
 * the waveform, its mel spectrogram, and the transcript with each word's confidence.
 * An understood caption fills the prompt box and runs as if typed (when a word is
 * uncertain the box waits for Enter, so it can be corrected first); a clip that is not
 * understood offers the recognizer's hypotheses and the box, and runs nothing.
 *
 * Without the [speech] extra the row says in one line what to install.
 *
 * A bundle may ship spoken examples (its speech/ section, docs/bundle-format.md): prompts
 * of the bundle spoken by espeak-ng voices with what the demo recognizer heard in them.
 * `spokenExamples` shows them in any app, served or a static export, with no recognizer:
 * the clip to play, its waveform and spectrogram, the transcript with each word's
 * confidence (the word being spoken marked while it plays), then a link that opens that
 * prompt's run.
 *
 * Usage: speechInput(row, panel, { info, text, run, say })
 *   row: where the buttons go; panel: where the clip and transcript are drawn;
 *   info: api/live/info.json's speech object; text: the prompt input (d3);
 *   run(): submits the prompt box; say(message, isError): the box's status line.
 * Usage: spokenExamples(d3.select("#speech-examples"))
 */
import { d3 } from "../lib.js";

const SPEECH_URL = "api/live/speech";
const EXAMPLES_URL = "api/speech/examples.json";
const RATE = 16000;
// A word below this confidence makes the box wait for Enter. On 180 espeak-ng clips
// (benchmarks/bench_speech.py, docs/performance.md) 0.8 held back 12 of 20 wrong
// captions and 29 of 152 right ones (0.6: 6 of 20 and 5 of 152); a held-back right
// caption costs one key, a wrong one a wrong picture.
const UNSURE = 0.8;
// A clip refused because recognizers are busy (429: this browser's clip or its network
// address's ceiling, a class behind one router; 503: the server's) is sent again after
// Retry-After, at most this many tries in all: the clip is kept, not spoken again.
const BUSY_TRIES = 5;
const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

/** POST a WAV clip to api/live/speech; on 429 or 503 wait Retry-After seconds (1 to 10)
 * and send it again, up to `tries` in all, saying so with say(line). Returns the last
 * answer: { response, data } (data: its JSON, or null). */
export async function sendClip(body, say, { tries = BUSY_TRIES, fetchFn = fetch, wait = sleep } = {}) {
  for (let attempt = 1; ; attempt += 1) {
    const response = await fetchFn(SPEECH_URL, { method: "POST", body,
      headers: { "Content-Type": "audio/wav" } });
    const data = await response.json().catch(() => null);
    if ((response.status !== 429 && response.status !== 503) || attempt >= tries) {
      return { response, data };
    }
    const seconds = Math.min(10, Math.max(1, Math.round(Number(response.headers.get("Retry-After"))) || 1));
    say(`The recognizer is busy: sending the clip again in ${seconds} s (try ${attempt + 1} of ${tries})…`);
    await wait(seconds);
  }
}

/** Samples (Float32Array, 16 kHz mono) as a 16-bit PCM WAV file. */
export function wavBlob(samples, rate = RATE) {
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(buffer);
  const ascii = (offset, text) => [...text].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  ascii(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true);          // PCM
  view.setUint16(22, 1, true);          // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true);   // bytes per second
  view.setUint16(32, 2, true);          // bytes per frame
  view.setUint16(34, 16, true);         // bits per sample
  ascii(36, "data");
  view.setUint32(40, samples.length * 2, true);
  samples.forEach((s, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, s)) * 32767, true));
  return new Blob([buffer], { type: "audio/wav" });
}

/** An AudioBuffer mixed to mono and resampled to 16 kHz (Web Audio renders it). */
async function toMono16k(audio) {
  const length = Math.max(1, Math.ceil(audio.duration * RATE));
  const offline = new OfflineAudioContext(1, length, RATE);
  const source = offline.createBufferSource();
  source.buffer = audio;
  source.connect(offline.destination); // channels are mixed down to the context's one
  source.start();
  return (await offline.startRendering()).getChannelData(0);
}

/** A picked file's audio, in any format the browser decodes, as 16 kHz mono samples. */
async function decodeFile(file) {
  const context = new OfflineAudioContext(1, 1, RATE);
  let audio;
  try {
    audio = await context.decodeAudioData(await file.arrayBuffer());
  } catch {
    throw new Error(`the browser cannot decode ${file.name} as audio`);
  }
  return toMono16k(audio);
}

/** Microphone recording with Web Audio: start() asks for the microphone; stop()
 * resolves to the 16 kHz mono samples. */
function recorder() {
  let context, stream, node, chunks;
  return {
    async start() {
      if (!navigator.mediaDevices) {  // http:// from another machine: not a secure context
        throw new Error("the browser lends the microphone only to https:// or localhost pages;"
          + " pick a recorded clip instead");
      }
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      context = new AudioContext();
      const source = context.createMediaStreamSource(stream);
      node = context.createScriptProcessor(4096, 1, 1);
      chunks = [];
      node.onaudioprocess = (e) => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
      source.connect(node);
      node.connect(context.destination);
    },
    async stop() {
      node.disconnect();
      stream.getTracks().forEach((t) => t.stop());
      const n = chunks.reduce((sum, c) => sum + c.length, 0);
      const audio = context.createBuffer(1, Math.max(1, n), context.sampleRate);
      let offset = 0;
      chunks.forEach((c) => { audio.copyToChannel(c, 0, offset); offset += c.length; });
      await context.close();
      return toMono16k(audio);
    },
  };
}

/** The waveform (min/max per column) as an SVG area. */
function drawWaveform(figure, wave) {
  const width = wave.min.length, height = 48;
  const svg = figure.append("svg").attr("class", "speech-wave")
    .attr("viewBox", `0 0 ${width} ${height}`).attr("preserveAspectRatio", "none")
    .attr("role", "img").attr("aria-label", `waveform of the ${wave.seconds} s clip`);
  const y = d3.scaleLinear().domain([-1, 1]).range([height, 0]);
  const area = d3.area().x((_, i) => i).y0((i) => y(wave.min[i])).y1((i) => y(wave.max[i]));
  svg.append("path").attr("d", area(d3.range(width)));
  figure.append("figcaption").text(`waveform, ${wave.seconds.toFixed(1)} s`);
}

function drawSpectrogram(figure, spec) {
  figure.append("img").attr("class", "speech-spectrogram").attr("src", spec.png)
    .attr("alt", `mel spectrogram: ${spec.mel_bins} frequency bands (low at the bottom) over ${spec.seconds} s`);
  figure.append("figcaption")
    .text(`spectrogram: ${spec.mel_bins} mel bands, low pitch at the bottom — what the recognizer listens to`);
}

/** The transcript, each word with its confidence (a bar under it and its percent). */
function drawWords(host, result) {
  const line = host.append("p").attr("class", "speech-words");
  line.append("span").attr("class", "muted")
    .text(result.understood ? "Heard: " : "Heard (not a caption the model knows): ");
  result.words.forEach((w) => {
    const known = w.confidence !== null && w.confidence !== undefined;
    const percent = known ? Math.round(w.confidence * 100) : null;
    const word = line.append("span").attr("class", "speech-word")
      .classed("unsure", known && w.confidence < UNSURE)
      .attr("title", known ? `confidence ${percent}%` : "no confidence (word loop)")
      .attr("aria-label", known ? `${w.word}, confidence ${percent}%` : w.word);
    word.append("span").text(w.word);
    if (known) {
      word.append("span").attr("class", "speech-bar").append("span")
        .style("width", `${percent}%`);
    }
    line.append("span").text(" ");
  });
}

/** Hypotheses of a clip that was not understood: buttons that fill the box (no run). */
function offerHypotheses(host, result, text) {
  const list = (result.nbest || []).filter((h) => h);
  if (!list.length) return;
  const p = host.append("p").attr("class", "speech-nbest");
  p.append("span").attr("class", "muted").text("Put in the box: ");
  list.forEach((h) => p.append("button").attr("type", "button").attr("class", "link-button")
    .text(h).on("click", () => text.property("value", h).node().focus()));
}

export function speechInput(row, panel, { info, text, run, say }) {
  if (!info || !info.available) {
    const reason = (info && info.reason) || "speaking a prompt needs the [speech] extra";
    row.append("span").attr("class", "speech-unavailable muted")
      .text(`${reason[0].toUpperCase()}${reason.slice(1)}.`);
    return;
  }
  const mic = row.append("button").attr("type", "button").attr("class", "button speech-mic")
    .attr("aria-pressed", "false");
  const label = (on) => mic.html(on
    ? '<span aria-hidden="true">■</span> Stop' : '<span aria-hidden="true" class="speech-dot">●</span> Speak');
  label(false);
  const pickLabel = row.append("label").attr("class", "button speech-pick").attr("tabindex", 0)
    .attr("role", "button").attr("for", "speech-file").text("Clip…");
  const picker = row.append("input").attr("type", "file").attr("id", "speech-file")
    .attr("accept", "audio/*,.wav").attr("class", "visually-hidden")
    .attr("aria-label", "choose a recorded clip to recognize");
  pickLabel.on("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      picker.node().click();
    }
  });

  async function recognize(samples) {
    panel.attr("hidden", null).selectAll("*").remove();
    say("Recognizing the clip…");
    const { response, data } = await sendClip(wavBlob(samples), say);
    if (!response.ok) {
      say(data && data.message ? data.message : `${response.status} ${response.statusText}`, true);
      return;
    }
    const clip = panel.append("div").attr("class", "speech-clip");
    drawWaveform(clip.append("figure"), data.waveform);
    drawSpectrogram(clip.append("figure"), data.spectrogram);
    drawWords(panel, data);
    if (!data.understood) {
      say(`${data.message}.`, true);
      offerHypotheses(panel, data, text);
      text.node().focus();
      return;
    }
    text.property("value", data.text);
    const unsure = data.words.filter((w) => w.confidence < UNSURE).map((w) => w.word);
    if (unsure.length) {
      say(`Not sure of ${unsure.map((w) => `“${w}”`).join(", ")}: correct the box if needed, then press Enter.`);
      text.node().focus();
      return;
    }
    say(`Understood in ${data.recognize_seconds.toFixed(2)} s: running it.`);
    run();
  }

  const failed = (error) => say(`Could not recognize the clip: ${error.message}`, true);

  let recording = null, timer = null;
  async function stopRecording() {
    clearTimeout(timer);
    const r = recording;
    recording = null;
    mic.attr("aria-pressed", "false");
    label(false);
    await recognize(await r.stop());
  }
  mic.on("click", async () => {
    try {
      if (recording) {
        await stopRecording();
        return;
      }
      const r = recorder();
      await r.start();
      recording = r;
      mic.attr("aria-pressed", "true");
      label(true);
      say(`Listening: say a prompt (at most ${info.max_seconds} s), then press Stop.`);
      timer = setTimeout(() => stopRecording().catch(failed), info.max_seconds * 1000 - 200);
    } catch (error) {
      recording = null;
      mic.attr("aria-pressed", "false");
      label(false);
      const words = { NotAllowedError: "the microphone is not allowed on this page",
        NotFoundError: "no microphone was found; pick a recorded clip instead" };
      failed(words[error.name] ? new Error(words[error.name]) : error);
    }
  });
  picker.on("change", async () => {
    const file = picker.node().files[0];
    if (!file) return;
    try {
      await recognize(await decodeFile(file));
    } catch (error) {
      failed(error);
    } finally {
      picker.property("value", "");
    }
  });
}

/** The query string that opens an example's run, the box still open on its clip (js/state.js
 * reads it). */
function runSearch(example) {
  const q = new URLSearchParams({ prompt: example.prompt_id, seed: String(example.seed),
    guidance: String(example.guidance_scale), speech: example.id });
  return `?${q.toString()}`;
}

/** Open a run without reloading: the store follows the address bar (js/state.js). */
function openRun(event, example) {
  if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return; // new tab
  event.preventDefault();
  window.history.pushState(null, "", `${window.location.pathname}${runSearch(example)}`);
  window.dispatchEvent(new PopStateEvent("popstate"));
  const words = document.getElementById("prompt-words");
  if (words) words.scrollIntoView({ block: "nearest" });
}

/**
 * The clip into the audio element as a blob: URL (the browser seeks in it anywhere; a
 * host that does not answer Range requests, as the app's server and Python's static
 * one, leaves an http: clip unseekable). A clip is a few hundred kB; drawExample frees
 * the blob when it draws another. On a failed fetch the element plays the URL itself.
 */
function loadClip(audio, url) {
  fetch(url).then((r) => (r.ok ? r.blob() : Promise.reject(new Error(r.statusText))))
    .then((blob) => {
      const local = URL.createObjectURL(blob);
      if (!audio.node().isConnected) {
        URL.revokeObjectURL(local);
        return;
      }
      audio.attr("src", local);
    })
    .catch(() => audio.attr("src", url));
}

/** Seconds as the player's readout writes them ("1.4"). */
const secondsText = (t) => (Number.isFinite(t) ? t.toFixed(1) : "0.0");

/**
 * The clip's player: a play button, a seek bar and the time, drawn by the page around an
 * <audio> without controls. The browsers' own controls drop their seek bar in a narrow
 * column (chromium: under about 250 px, which the prompt column is from 720 to 1023 px
 * and was at 1440 px unless it widened, shrinking the pictures); this bar takes the
 * row's width, at least 7.5rem. Returns the audio element (d3).
 */
function drawPlayer(host, example) {
  const label = `the clip: ${example.voice_name} saying “${example.text}”`;
  const audio = host.append("audio").attr("class", "speech-audio")
    .attr("preload", "metadata").attr("aria-label", label);
  loadClip(audio, example.clip.url);
  const player = host.append("div").attr("class", "speech-player").attr("role", "group")
    .attr("aria-label", label);
  const play = player.append("button").attr("type", "button").attr("class", "button speech-play");
  const seek = player.append("input").attr("type", "range").attr("class", "speech-seek")
    .attr("min", 0).attr("max", example.waveform.seconds).attr("step", 0.1).property("value", 0)
    .attr("aria-label", "position in the clip");
  const time = player.append("span").attr("class", "speech-time").attr("aria-hidden", "true");
  const a = audio.node();
  let frame = null;
  const duration = () => (Number.isFinite(a.duration) ? a.duration : example.waveform.seconds);
  function show() {
    const playing = !a.paused && !a.ended;
    play.attr("aria-label", playing ? "Pause the clip" : "Play the clip")
      .html(playing ? '<span aria-hidden="true">❚❚</span>' : '<span aria-hidden="true">▶</span>');
    seek.attr("max", duration())
      .attr("aria-valuetext", `${secondsText(a.currentTime)} of ${secondsText(duration())} seconds`);
    if (document.activeElement !== seek.node() || playing) seek.property("value", a.currentTime);
    time.text(`${secondsText(a.currentTime)} / ${secondsText(duration())} s`);
  }
  // the bar follows the sound every frame while it plays (timeupdate comes 4 times a second)
  function follow() {
    show();
    frame = a.paused ? null : requestAnimationFrame(follow);
  }
  play.on("click", () => (a.paused || a.ended ? a.play().catch(() => {}) : a.pause()));
  seek.on("input", () => { a.currentTime = Number(seek.property("value")); show(); });
  audio.on("loadedmetadata.player pause.player ended.player timeupdate.player seeked.player", show)
    .on("play.player", () => { if (frame === null) follow(); });
  show();
  return audio;
}

/** One example: the clip, what the recognizer worked on and heard, and its run. */
function drawExample(host, example) {
  host.selectAll("audio").each(function free() {
    if (this.src.startsWith("blob:")) URL.revokeObjectURL(this.src);
  });
  host.selectAll("*").remove();
  const audio = drawPlayer(host, example);
  const clip = host.append("div").attr("class", "speech-clip");
  drawWaveform(clip.append("figure"), example.waveform);
  drawSpectrogram(clip.append("figure"), example.spectrogram);
  drawWords(host, example.result);
  host.append("p").attr("class", "speech-open").append("a").attr("class", "button")
    .attr("href", runSearch(example))
    .text(`Open its run (seed ${example.seed}, guidance ${example.guidance_scale}) →`)
    .on("click", (event) => openRun(event, example));
  const others = (example.result.nbest || []).filter((h) => h !== example.result.text);
  host.append("p").attr("class", "speech-nbest muted").text(others.length
    ? `Also weighed by the recognizer: ${others.map((h) => `“${h}”`).join(", ")}.`
    : "No other caption fitted the sound.");
  // the word being spoken, marked while the clip plays
  const spans = host.selectAll(".speech-word").nodes();
  const mark = () => {
    const t = audio.node().currentTime;
    const playing = !audio.node().paused;
    example.result.words.forEach((w, i) => spans[i]
      && spans[i].classList.toggle("speaking", playing && t >= w.start && t < w.end));
  };
  audio.on("timeupdate", mark).on("pause", mark).on("ended", mark);
}

/**
 * The bundle's spoken examples (api/speech/examples.json), in a closed disclosure: a
 * list to pick one, then drawExample. Draws nothing for a bundle without them. store
 * (js/state.js, optional): the box's open state and shown clip follow its `speech` (the
 * address bar: a link opens the box on that clip, an unknown id on the first).
 */
export async function spokenExamples(host, { store = null } = {}) {
  let doc = null;
  try {
    const response = await fetch(EXAMPLES_URL);
    doc = response.ok ? await response.json() : null;
  } catch {
    doc = null;
  }
  host.selectAll("*").remove();
  const examples = (doc && doc.examples) || [];
  host.attr("hidden", examples.length ? null : true);
  if (!examples.length) {
    if (store && store.committed().speech !== null) store.commit({ speech: null }, { replace: true });
    return;
  }
  const details = host.append("details").attr("class", "speech-examples-box");
  const summary = details.append("summary");
  summary.append("span").text("Spoken prompts");
  summary.append("span").attr("class", "muted").text(` (${examples.length})`);
  details.append("p").attr("class", "speech-about muted").text(
    `Speech → prompt → image: this bundle's prompts spoken by ${doc.synthesizer}, and what `
    + `the recognizer (${doc.recognizer}: it hears only captions the demo model knows) made `
    + "of each. With noisepath serve --live, say your own.");
  const pick = details.append("p").attr("class", "speech-pick-example");
  pick.append("label").attr("for", "speech-example").text("Clip ");
  const select = pick.append("select").attr("id", "speech-example");
  select.selectAll("option").data(examples).join("option")
    .attr("value", (d) => d.id)
    .text((d) => `${d.voice_name}, ${d.words_per_minute} wpm: ${d.text}`);
  const panel = details.append("div").attr("class", "speech-example");
  let drawn = null; // the id of the example on screen
  const show = () => {
    const example = examples.find((d) => d.id === select.property("value")) || examples[0];
    drawn = example.id;
    drawExample(panel, example);
  };
  // the address bar (js/state.js): what is on screen goes in; a link or back/forward comes out
  let own = false;
  const commit = (options) => {
    if (!store) return;
    own = true;
    try {
      store.commit({ speech: details.property("open") ? select.property("value") : null }, options);
    } finally {
      own = false;
    }
  };
  const follow = () => {
    const id = store.committed().speech;
    const known = examples.some((d) => d.id === id);
    if (id !== null) select.property("value", known ? id : examples[0].id);
    if (details.property("open") !== (id !== null)) details.property("open", id !== null);
    else if (id !== null && drawn !== select.property("value")) show();
    if (id !== null && !known) commit({ replace: true }); // the address names the clip shown
  };
  select.on("change", () => { show(); commit(); });
  // drawn when first opened: no clip or spectrogram is fetched for a page that never looks
  details.on("toggle", () => {
    if (details.property("open") && drawn !== select.property("value")) show();
    commit();
  });
  if (store) {
    store.on("change.speech", ({ reason }) => {
      if (!own && /speech|history/.test(reason)) follow();
    });
    if (store.committed().speech !== null) follow();
  }
}

/**
 * The prompt box of `noisepath serve --live`: type a prompt, keep or change seed and
 * guidance scale, press Enter; the server queues the job (docs/api.md, "Live prompts"),
 * and this view polls the job's small JSON status, showing each computed step's latent
 * preview and predicted final image as it arrives. When the run is done it opens it
 * under live/, where every view works on it as on a shipped run.
 *
 * Without --live (or in a static export) the server has no api/live/ (a --live server
 * marks its answers with a Noisepath-Live header), and the box says what typing a
 * prompt needs instead.
 *
 * A live/ URL of a typed prompt that the cache evicted is sent here by the server with
 * ?live_job=<id> (its job queued again): the box then watches that job as if typed.
 *
 * The microphone button and clip picker beside the box are views/speech-input.js's.
 *
 * The server knows this browser by an HttpOnly cookie it sets (a class behind one
 * router shares an address): fetch and the frames' <img> send it, so only this browser
 * sees and cancels its jobs.
 *
 * Usage: livePrompt(d3.select("#live-prompt"), { seed, guidance, job })
 */
import { urls, postJson } from "../api.js";
import { speechInput } from "./speech-input.js";

const POLL_MS = 200;

/** The app root relative to this page: the live bundle's page is one folder down. */
function appRoot() {
  return /\/live\/$/.test(window.location.pathname) ? "../" : "./";
}

/** Settings' names as the page says them. */
const SETTING_WORDS = {
  model: "model", scheduler: "scheduler", num_inference_steps: "number of steps",
  height: "image height", width: "image width", image_size: "frame size",
  storage: "storage", attention_levels: "attention levels",
};

/**
 * When the shipped prompts were made with other settings than live runs use (another
 * step count or model), their runs cannot sit beside a typed one: the box offers their
 * texts, so one runs in the live settings and then compares with a typed prompt.
 */
function offerShipped(form, input, shipped) {
  if (!shipped || shipped.in_live_bundle || !(shipped.texts || []).length) return;
  const list = form.append("datalist").attr("id", "live-shipped");
  list.selectAll("option").data(shipped.texts).join("option").attr("value", (d) => d);
  input.attr("list", "live-shipped");
  const differs = (shipped.differs_in || []).map((k) => SETTING_WORDS[k] || k);
  form.append("p").attr("class", "live-note muted")
    .text(`The shipped prompts were made with another ${differs.join(" and ") || "setting"}, `
      + "so they do not compare with runs typed here: pick one from this box's suggestions "
      + "to run it here, then compare.");
}

export async function livePrompt(host, { seed = 1, guidance = 7, job = null } = {}) {
  let info = null;
  try {
    // only a --live server marks its answers; a plain one or an export has no api/live/
    const head = await fetch(urls.index(), { method: "HEAD" });
    if (head.headers.get("Noisepath-Live")) {
      const response = await fetch(urls.liveInfo());
      if (response.ok) info = await response.json();
    }
  } catch {
    info = null;
  }
  host.selectAll("*").remove();
  if (!info || !info.available) {
    host.append("p").attr("class", "live-unavailable")
      .html("Your own prompt: needs <code>noisepath serve --live</code>.");
    return;
  }

  const form = host.append("form").attr("class", "live-form").attr("novalidate", true);
  form.append("label").attr("for", "live-text").attr("class", "live-label")
    .text("Your own prompt");
  const text = form.append("input").attr("id", "live-text").attr("type", "text")
    .attr("maxlength", 1000).attr("autocomplete", "off").attr("enterkeyhint", "go")
    .attr("placeholder", "e.g. a blue star on a yellow background");
  offerShipped(form, text, info.shipped);
  const row = form.append("div").attr("class", "live-row");
  const number = (label, id, value, attrs) => {
    const l = row.append("label").attr("for", id).text(label);
    const input = row.append("input").attr("id", id).attr("type", "number").property("value", value);
    Object.entries(attrs).forEach(([k, v]) => input.attr(k, v));
    return input;
  };
  const seedInput = number("seed", "live-seed", seed, { min: 0, max: info.max_seed, step: 1 });
  const guidanceInput = number("guidance", "live-guidance", guidance,
    { min: 0, max: info.max_guidance_scale, step: 0.5 });
  const run = row.append("button").attr("type", "submit").attr("class", "button").text("Run");
  const status = host.append("p").attr("class", "live-status").attr("role", "status")
    .attr("aria-live", "polite");
  const speechPanel = host.append("div").attr("class", "speech-panel").attr("hidden", true);
  const wordsLine = host.append("p").attr("class", "live-words").attr("hidden", true);
  const frames = host.append("div").attr("class", "live-frames").attr("hidden", true);
  const latent = frames.append("figure");
  const latentImg = latent.append("img").attr("alt", "latent preview of the last computed step");
  latent.append("figcaption").text("latent");
  const predicted = frames.append("figure");
  const predictedImg = predicted.append("img")
    .attr("alt", "predicted final image at the last computed step");
  predicted.append("figcaption").text("predicted final image");
  const progress = host.append("progress").attr("class", "live-progress").attr("hidden", true);

  let current = null; // the job being watched
  window.addEventListener("pagehide", () => {
    if (current && (current.state === "queued" || current.state === "running")) {
      fetch(urls.liveCancel(current.id), { method: "POST", keepalive: true }).catch(() => {});
    }
  });

  const say = (message, isError = false) => status.text(message).classed("error", isError);
  // a spoken prompt fills the box and runs as typed (views/speech-input.js)
  speechInput(row, speechPanel, { info: info.speech, text, say,
    run: () => form.node().requestSubmit() });

  /** Which typed words the tokenizer has whole, and which it splits into pieces. */
  function showWords(words) {
    const fresh = (words || []).filter((w) => !w.known);
    wordsLine.attr("hidden", words && words.length ? null : true).selectAll("*").remove();
    if (!fresh.length) {
      wordsLine.text("The model knows every word of this prompt.");
      return;
    }
    wordsLine.append("span").text("New to the model, split into pieces: ");
    fresh.forEach((w, i) => {
      wordsLine.append("q").text(w.word);
      wordsLine.append("span").attr("class", "muted")
        .text(` (${w.pieces.map((p) => p.replace("</w>", "")).join(" · ")})${i < fresh.length - 1 ? ", " : ""}`);
    });
    wordsLine.append("span").text(info.demo_model
      ? ". The demo model never saw them in its training captions: they have no effect."
      : ". The text encoder sees only these pieces.");
  }

  function show(job) {
    if (!current || current.id !== job.id) showWords(job.words);
    current = job;
    const total = job.unet_calls || job.num_inference_steps || 0;
    const calls = total !== job.num_inference_steps;  // Heun, KDPM2, PNDM: calls, not steps
    if (job.state === "queued") {
      say(job.ahead ? `Busy: ${job.ahead} ahead of you.` : "Starting…");
    } else if (job.state === "running") {
      say(`${calls ? "UNet call" : "Step"} ${job.steps_done} of ${total}`
        + `${calls ? ` (${job.num_inference_steps} scheduler steps)` : ""}: the model is computing it now.`);
    }
    if (job.steps_done > 0) {
      const i = job.steps_done - 1;
      frames.attr("hidden", null);
      latentImg.attr("src", urls.liveFrame(job.id, i, "latent"));
      predictedImg.attr("src", urls.liveFrame(job.id, i, "predicted"));
    }
    progress.attr("hidden", null).attr("max", total || 1).attr("value", job.steps_done);
  }

  async function watch(job) {
    for (;;) {
      show(job);
      if (job.state === "done") {
        say(job.cached ? "Computed before: opening the run." : "Done: opening the run.");
        window.location.assign(appRoot() + job.open);
        return;
      }
      if (job.state === "failed" || job.state === "cancelled") {
        say(job.error || `The job was ${job.state}.`, true);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      const response = await fetch(urls.liveJob(job.id));
      if (!response.ok) {
        say(`Lost the job (${response.status}).`, true);
        return;
      }
      job = await response.json();
    }
  }

  form.on("submit", async (event) => {
    event.preventDefault();
    const body = {
      prompt: text.property("value"),
      seed: Number(seedInput.property("value")),
      guidance_scale: Number(guidanceInput.property("value")),
    };
    run.attr("disabled", true);
    frames.attr("hidden", true);
    progress.attr("hidden", true);
    try {
      const { response, data } = await postJson(urls.liveJobs(), body);
      if (!response.ok) {
        // the server's message names the limit and says when to try again
        const wait = response.headers.get("Retry-After");
        say(data && data.message ? data.message : `${response.status} ${response.statusText}`
          + (wait ? ` (try again in ${wait} s)` : ""), true);
        return;
      }
      await watch(data);
    } catch (error) {
      say(`Could not reach the server: ${error.message}`, true);
    } finally {
      run.attr("disabled", null);
    }
  });

  if (job) {  // a reopened live/ URL whose run was evicted: its job, queued again
    try {
      const response = await fetch(urls.liveJob(job));
      if (!response.ok) return;
      const data = await response.json();
      text.property("value", data.prompt);
      seedInput.property("value", data.seed);
      guidanceInput.property("value", data.guidance_scale);
      say("This typed prompt was removed from the cache: computing it again.");
      await watch(data);
    } catch (error) {
      say(`Could not reach the server: ${error.message}`, true);
    }
  }
}

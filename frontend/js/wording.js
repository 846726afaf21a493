/**
 * What the page says about the model shown, from the bundle's own facts: a pure module
 * (no DOM, no fetching), so a test can run it on any bundle's api/index.json.
 *
 * The prose lives in index.html; the parts of it that depend on the model (what the
 * UNet predicts, how the scheduler steps, the x0 formula, the training loss, the
 * tokenizer's vocabulary and padding, how the text encoder was trained, whether the
 * demo model is shown) come from here, keyed by the names index.html uses:
 *   data-wording="key"       an element whose text (or TeX source, in a `.tex`) is texts[key];
 *                            prose writes its math between dollar signs ("noise $z_s$"),
 *                            typeset inline (views/fields.js writeProse)
 *   data-wording-show="key"  an element shown only when show[key] is true
 * article.js's applyWording() puts them in place once, when the index has loaded.
 *
 * Facts read: index.config (scheduler, prediction_type, image_size, height, width,
 * storage, num_inference_steps, num_timesteps, eta, guidance_rescale),
 * index.about.scheduler_config and index.about.model_info (scheduler class and config,
 * tokenizer, noisepath_demo), as precompute/model.py's describe() records them. The
 * scheduler families' formulas and per-step numbers are in scheduler-words.js; the words
 * that depend on one run (its negative prompt, its calls) take the run's document.
 */
import {
  FAMILIES, MULTI_CALL, SIGMA_LATENTS, familyRescale, familyStep, historyArticleText, schedulerTitle, x0Source,
  stepNumbersText as familyNumbers,
} from "./scheduler-words.js";

import {
  FLOW_OUTPUTS, fewStep, fewX0Formula, flowNumbersText, flowTexts, guidanceModeText,
} from "./fewstep-words.js";

export { schedulerTitle } from "./scheduler-words.js";

/** The numbers of call i in words (scheduler-words.js); a flow call's flow time and dt. */
export function stepNumbersText(facts, scheduler, i, noiseSize = null) {
  return flowNumbersText(facts, scheduler, i) || familyNumbers(facts, scheduler, i, noiseSize, schedulerStep(facts).noise);
}

/** What the UNet outputs, by prediction type: words and a TeX symbol. */
const OUTPUTS = {
  epsilon: { name: "noise", Name: "Noise", symbol: "\\epsilon", guided: "Guided noise" },
  v_prediction: { name: "v", Name: "v", symbol: "v", guided: "Guided v" },
  sample: { name: "clean latent", Name: "Clean latent", symbol: "x_0", guided: "Guided clean latent" },
  ...FLOW_OUTPUTS,  // rectified flow's velocity (fewstep-words.js)
};

/** The bundle's model, as the facts the wording depends on. */
export function modelFacts(index) {
  const config = index.config || {};
  const info = (index.about && index.about.model_info) || config.model_info || {};
  const scheduler = info.scheduler || {};
  const tokenizer = info.tokenizer || {};
  const prediction = config.prediction_type || info.prediction_type || "epsilon";
  const name = String(config.scheduler || scheduler.name || "").toLowerCase();
  const schedulerConfig = (index.about && index.about.scheduler_config) || scheduler.config || {};
  const eta = Number(config.eta) || 0;
  const steps = config.num_inference_steps || null;
  return {
    prediction: OUTPUTS[prediction] ? prediction : "epsilon",
    scheduler: name,
    family: FAMILIES[name] || null,
    schedulerClass: scheduler.class || null,
    sigmaScaled: SIGMA_LATENTS.includes(name),
    multiCall: MULTI_CALL.includes(name),
    stochastic: name === "euler_a" || name === "ddpm" || name === "lcm" || (name === "ddim" && eta > 0),
    guidanceMode: config.guidance_mode || "classifier_free",  // fewstep-words.js
    eta,
    guidanceRescale: Number(config.guidance_rescale) || 0,
    steps,
    calls: config.num_timesteps || steps,
    skipPrk: schedulerConfig.skip_prk_steps === undefined ? null : Boolean(schedulerConfig.skip_prk_steps),
    varianceType: schedulerConfig.variance_type || "fixed_small",
    zeroSnr: Boolean(scheduler.config && scheduler.config.rescale_betas_zero_snr),
    vocabSize: Number.isFinite(tokenizer.vocab_size) ? tokenizer.vocab_size : null,
    padToken: typeof tokenizer.pad_token === "string" ? tokenizer.pad_token : null,
    eosToken: typeof tokenizer.eos_token === "string" ? tokenizer.eos_token : null,
    demo: info.noisepath_demo === true,
    storage: config.storage || null,
    imageSize: config.image_size || null,
    height: config.height || null,
    width: config.width || null,
  };
}

/** The model's output in words and TeX: {name, Name, symbol, guided}. */
export function outputOf(facts) {
  return OUTPUTS[facts.prediction];
}

/**
 * How one scheduler step uses the guided output, for this scheduler and prediction type:
 * {step: TeX, weaken: TeX, remainder: "none" | "rescale" | "earlier" | "earlier+rescale",
 *  text: what the factor is, in words}.
 */
export function schedulerStep(facts) {
  const o = outputOf(facts).symbol;
  const { scheduler, prediction } = facts;
  const family = fewStep(facts, o) || familyStep(facts, o);
  if (family) return family;
  if (scheduler === "euler" && prediction === "epsilon") {
    return { step: `x_{s+1} = x_s - w\\,\\hat{${o}}`, weaken: "w = \\sigma_s - \\sigma_{s+1}", remainder: "none",
      text: "Euler with noise prediction moves the latent along the predicted noise by the fall in sigma: nothing else changes." };
  }
  if (scheduler === "euler") {
    return { step: `x_{s+1} = c\\,x_s - w\\,\\hat{${o}}`,
      weaken: "w = \\frac{\\sigma_s - \\sigma_{s+1}}{\\sqrt{\\sigma_s^2+1}},\\quad c = 1 - \\frac{(\\sigma_s - \\sigma_{s+1})\\,\\sigma_s}{\\sigma_s^2+1}",
      remainder: "rescale",
      text: "Euler with v-prediction first turns $v$ into a direction that also contains the latent itself, so besides removing $w$ times $v$ the step shrinks the latent by the factor $c$." };
  }
  if (scheduler === "ddim" && prediction === "v_prediction") {
    return { step: `x_{s+1} = c\\,x_s - w\\,\\hat{${o}}`,
      weaken: "w = \\sqrt{\\bar\\alpha_{s+1}}\\sqrt{1-\\bar\\alpha_s} - \\sqrt{1-\\bar\\alpha_{s+1}}\\sqrt{\\bar\\alpha_s},\\quad c = \\sqrt{1-w^2}",
      remainder: "rescale",
      text: "DDIM with v-prediction turns the latent by a small angle at every step: it removes $w$ times $v$ and rescales the latent by $c$, just under 1." };
  }
  if (scheduler === "ddim") {
    return { step: `x_{s+1} = c\\,x_s - w\\,\\hat{${o}}`,
      weaken: "c = \\sqrt{\\bar\\alpha_{s+1}/\\bar\\alpha_s},\\quad w = c\\,\\sqrt{1-\\bar\\alpha_s} - \\sqrt{1-\\bar\\alpha_{s+1}}",
      remainder: "rescale",
      text: "DDIM removes $w$ times the predicted noise and rescales the latent by $c$, a little over 1, as the share of signal grows." };
  }
  if (scheduler === "lms") {
    const v = prediction !== "epsilon";
    return { step: v ? `x_{s+1} = c\\,x_s - w\\,\\hat{${o}}_s + \\textstyle\\sum_{k\\ge1} w_k\\,d_{s-k}`
      : `x_{s+1} = x_s - w\\,\\hat{${o}}_s + \\textstyle\\sum_{k\\ge1} w_k\\,\\hat{${o}}_{s-k}`,
      weaken: "w = \\text{LMS's weight for this step's prediction (from the sigmas)}",
      remainder: v ? "earlier+rescale" : "earlier",
      text: "LMS (a linear multistep method) mixes this step's prediction with those of up to three earlier steps, each with its own weight computed from the sigmas"
        + (v ? "; with v-prediction each of them also contains the latent, which rescales it." : ".") };
  }
  return { step: `x_{s+1} = x_s - w\\,\\hat{${o}} + \\dots`, weaken: "w", remainder: "earlier",
    text: "The factor is measured from the scheduler itself." };
}

/** The rescaling factor c of step i (x_{i+1} = c x_i - w out_i), or null when unknown. */
export function rescaleFactor(facts, scheduler, i) {
  const { prediction } = facts;
  const known = familyRescale(facts, scheduler, i);
  if (known !== undefined) return known;
  const w = scheduler.weaken ? scheduler.weaken[i] : null;
  if (facts.scheduler === "ddim" && prediction === "v_prediction" && w !== null) return Math.sqrt(Math.max(0, 1 - w * w));
  if (facts.scheduler === "ddim" && prediction === "epsilon") {
    const a = scheduler.alphas_cumprod;
    return a && i + 1 < a.length ? Math.sqrt(a[i + 1] / a[i]) : null;
  }
  if (facts.scheduler === "euler" && prediction === "v_prediction" && scheduler.sigmas) {
    const s = scheduler.sigmas[i];
    const next = i + 1 < scheduler.sigmas.length ? scheduler.sigmas[i + 1] : 0;
    return 1 - ((s - next) * s) / (s * s + 1);
  }
  if (facts.scheduler === "euler") return 1;
  return null;
}

/** The refiner table's last row: what the step does besides removing w x the output. */
export function remainderLabel(facts) {
  return {
    none: "left over (≈ 0: rounding of the stored numbers)",
    rescale: "left over (the rescaling, plus rounding of the stored numbers)",
    earlier: "left over (earlier steps' shares)",
    "earlier+rescale": "left over (earlier steps' shares and the rescaling)",
  }[schedulerStep(facts).remainder];
}

/** The predicted clean latent from the model output, for this prediction type and scheduler (TeX). */
export function x0Formula(facts) {
  const { prediction, sigmaScaled } = facts;
  const few = fewX0Formula(facts);
  if (few) return few;
  if (prediction === "sample") return "\\hat x_0 = \\text{the UNet's output itself}";
  if (prediction === "v_prediction") {
    return sigmaScaled ? "\\hat x_0 = \\frac{x}{\\sigma^2+1} - \\frac{\\sigma}{\\sqrt{\\sigma^2+1}}\\,\\hat v"
      : "\\hat x_0 = \\sqrt{\\bar\\alpha_t}\\,x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\hat v";
  }
  return sigmaScaled ? "\\hat x_0 = x - \\sigma\\,\\hat\\epsilon"
    : "\\hat x_0 = \\frac{x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\hat\\epsilon}{\\sqrt{\\bar\\alpha_t}}";
}

/** The training objective the model was trained with (TeX). */
export function trainingLoss(facts) {
  if (facts.prediction === "v_prediction") {
    return "\\text{loss} = \\lVert v - v_\\theta(x_t, t, c) \\rVert^2,\\qquad v = \\sqrt{\\bar\\alpha_t}\\,\\epsilon - \\sqrt{1-\\bar\\alpha_t}\\,x_0";
  }
  if (facts.prediction === "sample") return "\\text{loss} = \\lVert x_0 - \\hat x_\\theta(x_t, t, c) \\rVert^2";
  return "\\text{loss} = \\lVert \\epsilon - \\epsilon_\\theta(x_t, t, c) \\rVert^2";
}

/** A sentence on this run's scheduler factors, from the numbers themselves. */
export function factorsSentence(weaken) {
  if (!weaken || !weaken.length) return "";
  const f = (x) => (Math.abs(x) >= 0.1 ? x.toFixed(2) : x.toPrecision(2)).replace("-", "\u2212");
  const first = weaken[0];
  const last = weaken[weaken.length - 1];
  let k = 0;
  weaken.forEach((x, j) => { if (x > weaken[k]) k = j; });
  // the same factor at every step (a flow model's 1/N): say so, not "falling to" itself
  if (weaken.every((x) => Math.abs(x - first) <= 1e-6 * Math.max(Math.abs(first), 1e-12))) {
    return `For the run shown, the factor is ${f(first)} at every step.`;
  }
  const trend = last > first ? "rising" : "falling";
  const peak = k === 0 || k === weaken.length - 1 ? "" : ` (largest, ${f(weaken[k])}, at step ${k + 1})`;
  return `For the run shown, the factor is ${f(first)} at the first step, ${trend} to ${f(last)} at the last${peak}.`;
}

/** The padding chip's label and description, from the pad piece and the end piece. */
export function paddingWords(padPiece, endPiece) {
  if (padPiece === null || padPiece === undefined || padPiece === endPiece) {
    return { label: "end", what: "the end token repeated" };
  }
  const shown = padPiece.replace(/<\/w>$/, "");
  return { label: `“${shown}”`, what: `“${shown}”, this tokenizer's padding token` };
}

/**
 * Where a step of this run is, for the multi-call schedulers (heun, kdpm2, pndm): "UNet
 * call 7 of 99 (scheduler step 4 of 50, its 1st call of 2)". s: the slider's position
 * (the latent after s calls); null at s = 0, for one-call schedulers and runs without
 * step_index, where "step s of T" is the truth.
 */
export function callWords(facts, scheduler, s) {
  const steps = scheduler && scheduler.step_index;
  if (!facts.multiCall || !steps || !s) return null;
  const i = s - 1;
  const k = steps[i];
  const first = steps.indexOf(k);
  const count = steps.lastIndexOf(k) - first + 1;
  const n = facts.steps || steps[steps.length - 1] + 1;
  const which = count > 1 ? `, its ${ORDINALS[i - first] || `${i - first + 1}th`} call of ${count}` : "";
  return `UNet call ${s} of ${steps.length} (scheduler step ${k + 1} of ${n}${which})`;
}

const ORDINALS = ["1st", "2nd", "3rd", "4th"];

/**
 * How the page names a run's unconditional branch: {name, short, tex}. A run made with
 * a negative prompt names it ("negative prompt: “blurry”"); else the empty prompt.
 */
export function uncondWords(index, run) {
  const id = run && run.negative_prompt_id;
  const prompt = id && index.prompts ? index.prompts[id] : null;
  if (!id || id === "empty" || !prompt) return { name: "empty prompt", short: "empty", tex: "\\text{empty}" };
  return { name: `negative prompt: “${prompt.text}”`, short: "negative prompt", tex: "\\text{negative}" };
}

/**
 * guidance_rescale as applied at call i of a run (Lin et al. 2023): {phi, ratio, factor},
 * factor = phi * ratio + 1 - phi, the number the guided output was multiplied by; null
 * when the run was not rescaled.
 */
export function guidanceRescaleAt(run, i) {
  const phi = run && Number(run.guidance_rescale);
  const ratios = run && run.guidance_rescale_std_ratio;
  if (!phi || !ratios || i === null || ratios[i] === undefined) return null;
  return { phi, ratio: ratios[i], factor: phi * ratios[i] + 1 - phi };
}

function withCommas(n) {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** Every model-dependent text of the page: {texts: {key: string}, show: {key: boolean}}. */
export function wording(index) {
  const facts = modelFacts(index);
  const out = outputOf(facts);
  const step = schedulerStep(facts);
  const pad = facts.padToken === null ? null : paddingWords(facts.padToken, facts.eosToken);
  const o = out.symbol;
  const size = facts.imageSize;
  const downscaled = size && facts.height && Math.max(facts.height, facts.width || 0) > size;
  const phi = facts.guidanceRescale;
  const texts = {
    "output-name": out.name,
    "output-cap": out.Name,
    "guided-cap": out.guided,
    "output-the": facts.prediction === "epsilon" ? "the noise" : facts.prediction === "v_prediction" ? "v" : "the clean latent",
    "unet-predicts": facts.prediction === "epsilon" ? "the noise"
      : facts.prediction === "v_prediction" ? "v, a mix of the noise and the clean latent" : "the clean latent",
    "scheduler-step": step.step,
    "weaken-formula": step.weaken,
    "scheduler-text": step.text,
    "x0-formula": x0Formula(facts),
    "training-loss": trainingLoss(facts),
    "noising-formula": "x_t = \\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon",
    "training-target": facts.prediction === "epsilon" ? "to say which noise was added"
      : facts.prediction === "v_prediction" ? "to predict v, a mix of the added noise and the clean latent (v-prediction, as in Stable Diffusion 2.x)"
        : "to predict the clean latent itself",
    "guidance-formula": `\\hat{${o}} = ${o}_\\theta(x_t, t, \\varnothing) + g\\,\\big(${o}_\\theta(x_t, t, c) - ${o}_\\theta(x_t, t, \\varnothing)\\big)`,
    "guidance-panel-formula": `\\hat{${o}} = ${o}_{\\text{empty}} + g\\,(${o}_{\\text{prompt}} - ${o}_{\\text{empty}})`,
    "guidance-panel-formula-negative": `\\hat{${o}} = ${o}_{\\text{negative}} + g\\,(${o}_{\\text{prompt}} - ${o}_{\\text{negative}})`,
    "remainder-label": remainderLabel(facts),
    vocab: facts.vocabSize ? `${withCommas(facts.vocabSize)} byte-pair pieces` : "byte-pair pieces",
    padding: pad ? (pad.label === "end" ? "end tokens" : `${pad.label} tokens (its padding token)`) : "a padding token",
    "stored-as": [
      `The pictures are stored as lossy WebP frames${size ? ` of ${size} px` : ""}`
        + (downscaled ? `, downscaled from ${facts.height} px` : "")
        + " (off by about 2% of the pixel range on average, measured on the demo)",
      facts.storage === "compact" ? "the numbers in 8 bits (within about 0.2% of each map's range)"
        : facts.storage === "full" ? "the numbers as 16-bit floats" : null,
    ].filter(Boolean).join(", and ") + ".",
    "x0-source": x0Source(facts),
    "noise-text": facts.stochastic ? `The ${schedulerTitle(facts.scheduler)} sampler is stochastic: every step adds fresh Gaussian noise $z_s$, `
      + `drawn from the seed's generator, times the factor $${step.noise || "\\sigma_s"}$ in the formula. The refiner view shows the factor, the size of the noise `
      + "it added and, in the table, the noise at the centre pixel, so what the step did still adds up." : "",
    "calls-text": facts.multiCall ? `${schedulerTitle(facts.scheduler)} makes more UNet calls than scheduler steps: `
      + `${facts.calls} calls for ${facts.steps} steps in this bundle. Every recorded step on this page is one UNet call, `
      + "as the pipeline's loop makes them (one entry of scheduler.timesteps); the controller and the refiner view say which "
      + "scheduler step each call belongs to." : "",
    "rescale-formula": "\\hat{" + o + "}_{\\text{rescaled}} = \\varphi\\,\\frac{\\operatorname{std}(" + o + "_\\theta(x_t, t, c))}{\\operatorname{std}(\\hat{" + o + "})}\\,\\hat{" + o + "} + (1-\\varphi)\\,\\hat{" + o + "}",
    "rescale-text": phi ? `This bundle was made with guidance_rescale φ = ${phi} (Lin et al. 2023, “Common Diffusion Noise Schedules and Sample Steps are Flawed”, eq. 15-16): `
      + "at every scale above 1 the guided prediction is scaled to the spread (standard deviation) of the prompt's own prediction and mixed back "
      + "with weight φ. Large scales inflate the guided prediction's spread, which overexposes the image, most of all in zero-SNR and "
      + "v-prediction models; the rescaling undoes that while keeping the direction guidance chose. The guidance view shows the factor of each step." : "",
    "guidance-mode-text": guidanceModeText(facts.guidanceMode),
    "history-text": historyArticleText(facts), // multistep solvers' earlier calls (scheduler-words.js)
    ...flowTexts(facts),  // a flow model's velocity, loss and noising (fewstep-words.js)
  };
  return {
    facts,
    texts,
    show: {
      demo: facts.demo,
      "not-demo": !facts.demo,
      "clip-contrastive": !facts.demo,
      "clip-joint": facts.demo,
      "sigma-latents": facts.sigmaScaled,
      "zero-snr": facts.zeroSnr && facts.prediction === "v_prediction",
      "remainder-rescale": step.remainder.includes("rescale"),
      "remainder-earlier": step.remainder.includes("earlier"),
      "x0-source": texts["x0-source"] !== "",
      stochastic: facts.stochastic,
      "multi-call": facts.multiCall,
      multistep: texts["history-text"] !== "",
      "guidance-rescale": phi > 0,
      "guidance-mode": texts["guidance-mode-text"] !== "",
      "cfg-guidance": texts["guidance-mode-text"] === "",  // the two-branch formula applies
      "not-flow": !(facts.scheduler === "flow_euler" || facts.scheduler === "instaflow"),  // a flow step's w is 1/N
    },
  };
}

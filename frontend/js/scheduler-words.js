/**
 * How the bundle's scheduler makes one step, by family: the formula (TeX), its factors,
 * what the refiner table's leftover holds, and the numbers that went into one recorded
 * step. A pure module (no DOM), used by wording.js; tests/test_wording.py runs it in node.
 *
 * A recorded step is one UNet call (docs/bundle-format.md): run.scheduler holds, per call,
 * timesteps, sigmas (sigma-form latents only), alphas_cumprod, weaken (the measured share
 * of the guided output the call removed), step_index (its scheduler step) and, for
 * stochastic samplers, noise_scale (the factor the step added its N(0, I) draw with).
 *
 * Notation: s is the call shown, s+1 the next; o-hat the guided output (noise, v or x0);
 * z_s the step's standard normal draw. The words are prose with inline math between
 * dollar signs ("noise $z_s$"), which the page typesets (views/fields.js writeProse).
 * Families (diffusers' schedulers):
 *   ddim       DDIM (Song et al. 2021, eq. 12), eta > 0 adds noise
 *   pndm       PLMS (Liu et al. 2022): a linear multistep on the noise, moved by DDIM's formula
 *   sigma      Euler, LMS (Karras et al. 2022): sigma-form latents
 *   ancestral  Euler ancestral (sigma_up / sigma_down), DDPM (Ho et al. 2020, posterior)
 *   two-call   Heun (Karras et al. 2022, Alg. 2), KDPM2: two UNet calls per step
 *   dpm        DPM-Solver++(2M) (Lu et al. 2022), with or without Karras sigmas
 *   unipc      UniPC (Zhao et al. 2023): a corrector, then a predictor
 */

export const FAMILIES = {
  ddim: "ddim", pndm: "pndm", lms: "sigma", euler: "sigma", euler_a: "ancestral",
  ddpm: "ancestral", heun: "two-call", kdpm2: "two-call", dpmpp_2m: "dpm",
  dpmpp_2m_karras: "dpm", unipc: "unipc",
};
/** Schedulers whose latent is x0 + sigma * noise (precompute/model.py's SIGMA_LATENTS). */
export const SIGMA_LATENTS = ["lms", "euler", "euler_a", "heun", "kdpm2"];
/** Schedulers that make more UNet calls than steps. */
export const MULTI_CALL = ["heun", "kdpm2", "pndm"];

const NAMES = {  // ddim, lms, euler: their bundle names upper-cased, as the page has always said
  pndm: "PNDM (PLMS)", euler_a: "Euler ancestral", ddpm: "DDPM", heun: "Heun", kdpm2: "KDPM2",
  dpmpp_2m: "DPM-Solver++ 2M", dpmpp_2m_karras: "DPM-Solver++ 2M Karras", unipc: "UniPC",
  lcm: "LCM", flow_euler: "Rectified-flow Euler", instaflow: "InstaFlow Euler",  // fewstep-words.js
};

/** The scheduler's name for people ("Euler ancestral"), or its bundle name upper-cased. */
export function schedulerTitle(name) {
  return NAMES[name] || String(name).toUpperCase();
}

// TeX pieces
const A = (k) => `\\bar\\alpha_{${k}}`;
const SIGMA_UP = "\\sigma_{\\uparrow}";
const SIGMA_DOWN = "\\sigma_{\\downarrow}";
const D_NOTE = "d = (x - \\hat x_0)/\\sigma";
/** The predicted clean latent, in the prose's inline math. */
export const X0 = "\\hat x_0";

/**
 * The families the app did not explain before (ddim with eta > 0 and all that follow):
 * {step, weaken, remainder, text}; null for ddim (eta 0), euler and lms (wording.js).
 */
export function familyStep(facts, o) {
  const { scheduler, prediction, eta } = facts;
  const eps = prediction === "epsilon";
  if (scheduler === "ddim" && eta > 0) return ddimEta(eps, o, eta);
  if (scheduler === "pndm") return pndm(eps, o, facts);
  if (scheduler === "euler_a") return eulerAncestral(eps, o);
  if (scheduler === "ddpm") return ddpm(eps, o, facts);
  if (scheduler === "heun") return heun(eps, o);
  if (scheduler === "kdpm2") return kdpm2(eps, o);
  if (scheduler === "dpmpp_2m" || scheduler === "dpmpp_2m_karras") return dpm(o, scheduler === "dpmpp_2m_karras");
  if (scheduler === "unipc") return unipc(o);
  return null;
}

function ddimEta(eps, o, eta) {
  const sigma = `\\sigma_s = \\eta\\sqrt{\\tfrac{1-${A("s+1")}}{1-${A("s")}}}\\sqrt{1-\\tfrac{${A("s")}}{${A("s+1")}}}`;
  const factors = eps
    ? `c = \\sqrt{${A("s+1")}/${A("s")}},\\quad w = c\\,\\sqrt{1-${A("s")}} - \\sqrt{1-${A("s+1")}-\\sigma_s^2}`
    : `w = \\sqrt{${A("s+1")}}\\sqrt{1-${A("s")}} - \\sqrt{1-${A("s+1")}-\\sigma_s^2}\\sqrt{${A("s")}},\\quad c = \\sqrt{${A("s+1")}${A("s")}} + \\sqrt{(1-${A("s+1")}-\\sigma_s^2)(1-${A("s")})}`;
  return { step: `x_{s+1} = c\\,x_s - w\\,\\hat{${o}} + \\sigma_s\\,z_s`, weaken: `${sigma},\\quad ${factors}`,
    remainder: "rescale", noise: "\\sigma_s",
    text: `DDIM with eta = ${eta} (Song et al. 2021, eq. 12) takes the deterministic DDIM step with a little less of the prediction, `
      + "then adds fresh Gaussian noise $z_s$ scaled by $\\sigma_s$ (eta = 1 is DDPM's amount): each step removes $w$ times the prediction, "
      + "rescales the latent by $c$ and adds noise." };
}

function pndm(eps, o, facts) {
  const e = "\\hat\\epsilon";
  const warmup = facts.skipPrk !== true  // diffusers' default: PRK unless skip_prk_steps (SD 1.x sets it)
    ? " Its first three steps are a pseudo Runge-Kutta warm-up (PRK) of four UNet calls each."
    : " Its first step takes two UNet calls (the two predictions averaged, a second-order start).";
  return { step: `x_{s+1} = \\sqrt{\\tfrac{${A("s+1")}}{${A("s")}}}\\,x_s - \\frac{${A("s+1")} - ${A("s")}}{${A("s")}\\sqrt{1-${A("s+1")}} + \\sqrt{${A("s")}(1-${A("s")})${A("s+1")}}}\\;${e}'_s`,
    weaken: `${e}'_s = \\tfrac{1}{24}\\big(55\\,${e}_s - 59\\,${e}_{s-1} + 37\\,${e}_{s-2} - 9\\,${e}_{s-3}\\big)`
      + (eps ? "" : `,\\quad ${e} = \\sqrt{${A("")}}\\,\\hat{${o}} + \\sqrt{1-${A("")}}\\,x`),
    remainder: "earlier+rescale",
    text: "PNDM's PLMS (pseudo linear multistep, Liu et al. 2022) is a linear multistep method on the predicted noise: "
      + "it combines this call's noise with those of up to three earlier calls (Adams-Bashforth weights 55, -59, 37, -9 over 24; "
      + "fewer at the start) and moves the latent with DDIM's transfer formula, which also rescales it."
      + (eps ? "" : " With v-prediction each v is first turned into noise, which brings in the latent itself.") + warmup };
}

function eulerAncestral(eps, o) {
  const split = `${SIGMA_UP} = \\sigma_{s+1}\\sqrt{1-\\sigma_{s+1}^2/\\sigma_s^2},\\quad ${SIGMA_DOWN} = \\sqrt{\\sigma_{s+1}^2-${SIGMA_UP}^2}`;
  const text = "Euler ancestral (Karras et al. 2022; k-diffusion's sampler) splits the next noise level in two: it takes an Euler step "
    + `down to $${SIGMA_DOWN}$, below the next level, and then adds fresh Gaussian noise $z_s$ of size $${SIGMA_UP}$ to come back up to $\\sigma_{s+1}$. `
    + "Every step forgets a little of the path and draws new noise: the result depends on the seed at every step, not only at the start.";
  if (eps) {
    return { step: `x_{s+1} = x_s - w\\,\\hat\\epsilon + ${SIGMA_UP}\\,z_s`, weaken: `w = \\sigma_s - ${SIGMA_DOWN},\\quad ${split}`,
      remainder: "none", noise: SIGMA_UP, text };
  }
  return { step: `x_{s+1} = c\\,x_s - w\\,\\hat{${o}} + ${SIGMA_UP}\\,z_s`,
    weaken: `w = \\frac{\\sigma_s - ${SIGMA_DOWN}}{\\sqrt{\\sigma_s^2+1}},\\quad c = 1 - \\frac{(\\sigma_s - ${SIGMA_DOWN})\\,\\sigma_s}{\\sigma_s^2+1},\\quad ${split}`,
    remainder: "rescale", noise: SIGMA_UP, text: `${text} With v-prediction the step also shrinks the latent by $c$.` };
}

function ddpm(eps, o, facts) {
  const large = facts.varianceType === "fixed_large";
  const variance = large ? "\\sigma_s^2 = \\beta_s" : `\\sigma_s^2 = \\tfrac{1-${A("s+1")}}{1-${A("s")}}\\,\\beta_s`;
  const w = eps ? `w = \\frac{\\sqrt{${A("s+1")}}\\,\\beta_s}{\\sqrt{${A("s")}}\\sqrt{1-${A("s")}}}`
    : `w = \\frac{\\sqrt{${A("s+1")}}\\,\\beta_s}{\\sqrt{1-${A("s")}}}`;
  return { step: `x_{s+1} = \\frac{\\sqrt{${A("s+1")}}\\,\\beta_s}{1-${A("s")}}\\,\\hat x_0 + \\frac{\\sqrt{\\alpha_s}\\,(1-${A("s+1")})}{1-${A("s")}}\\,x_s + \\sigma_s\\,z_s`,
    weaken: `\\alpha_s = ${A("s")}/${A("s+1")},\\quad \\beta_s = 1-\\alpha_s,\\quad ${variance},\\quad ${w}`,
    remainder: "rescale", noise: "\\sigma_s",
    text: "DDPM (Ho et al. 2020) samples the posterior of the forward process: the next latent is a mix of the predicted clean latent "
      + `and the current latent, plus fresh Gaussian noise $z_s$ with the posterior's spread $\\sigma_s$ (${large ? "$\\beta_s$, variance_type fixed_large" : "Ho et al.'s eq. 7, fixed_small"}). `
      + `In terms of the ${eps ? "predicted noise" : "prediction"} it removes $w$ times it and rescales the latent.` };
}

function heun(eps, o) {
  return { step: `\\text{call 1: } \\tilde x = x_s - (\\sigma_s - \\sigma_{s+1})\\,d_s \\qquad \\text{call 2: } x_{s+1} = x_s - (\\sigma_s - \\sigma_{s+1})\\,\\tfrac{1}{2}(d_s + \\tilde d)`,
    weaken: eps ? `${D_NOTE} = \\hat\\epsilon,\\quad w_1 = \\sigma_s - \\sigma_{s+1},\\quad w_2 = \\tfrac{1}{2}(\\sigma_s - \\sigma_{s+1})`
      : `${D_NOTE},\\quad w_1 = \\frac{\\sigma_s - \\sigma_{s+1}}{\\sqrt{\\sigma_s^2+1}},\\quad w_2 = \\frac{\\sigma_s - \\sigma_{s+1}}{2\\sqrt{\\sigma_{s+1}^2+1}}`,
    remainder: eps ? "earlier" : "earlier+rescale",
    text: "Heun's method (Karras et al. 2022, Algorithm 2) makes two UNet calls per step: the first predicts at $\\sigma_s$ and takes a trial Euler step "
      + "to the next level; the second predicts again there, and the step uses the average of the two slopes $d$. The last step is a single "
      + `Euler call (it ends at $\\sigma = 0$). Each recorded step here is one call: the second call's row removes half of its slope and takes back the trial step's other half.${eps ? "" : " With v-prediction the slope also contains the latent, which rescales it."}` };
}

function kdpm2(eps, o) {
  return { step: `\\text{call 1: } \\tilde x = x_s - (\\sigma_s - \\sigma_{\\text{mid}})\\,d_s \\qquad \\text{call 2: } x_{s+1} = x_s - (\\sigma_s - \\sigma_{s+1})\\,\\tilde d_{\\text{mid}}`,
    weaken: `${D_NOTE}${eps ? " = \\hat\\epsilon" : ""},\\quad \\sigma_{\\text{mid}} = \\sqrt{\\sigma_s\\,\\sigma_{s+1}}`
      + (eps ? ",\\quad w_1 = \\sigma_s - \\sigma_{\\text{mid}},\\quad w_2 = \\sigma_s - \\sigma_{s+1}" : ""),
    remainder: eps ? "earlier" : "earlier+rescale",
    text: "KDPM2 (k-diffusion's DPM-Solver-2) makes two UNet calls per step: the first predicts at $\\sigma_s$ and steps to the midpoint "
      + "$\\sigma_{\\text{mid}}$ (the geometric mean of $\\sigma_s$ and $\\sigma_{s+1}$); the second predicts there, and the whole step is taken with the midpoint's slope $d$. "
      + `Each recorded step here is one call: the second call's row takes back the trial step and moves by the midpoint slope.${eps ? "" : " With v-prediction the slope also contains the latent, which rescales it."}` };
}

const LAMBDA = `\\lambda_s = \\tfrac12\\log\\tfrac{${A("s")}}{1-${A("s")}},\\quad h_s = \\lambda_{s+1} - \\lambda_s,\\quad r_s = h_{s-1}/h_s`;

function dpm(o, karras) {
  return { step: `x_{s+1} = \\sqrt{\\tfrac{1-${A("s+1")}}{1-${A("s")}}}\\,x_s + \\sqrt{${A("s+1")}}\\,(1-e^{-h_s})\\Big(\\big(1+\\tfrac{1}{2r_s}\\big)\\hat x_0^{(s)} - \\tfrac{1}{2r_s}\\,\\hat x_0^{(s-1)}\\Big)`,
    weaken: LAMBDA, remainder: "earlier+rescale",
    text: `DPM-Solver++(2M) (Lu et al. 2022) solves the denoising ODE in terms of the predicted clean latent $${X0}$: it moves the latent `
      + `towards $${X0}$ by the exact exponential factor of the step in log signal-to-noise ratio $\\lambda$, extrapolating $${X0}$ from this step's and `
      + "the previous step's (second order, \"2M\"; the first and the last step use this step's alone, $1/(2r) = 0$). The weaken factor is "
      + `the share of the UNet's output in that move, through $${X0}$.`
      + (karras ? " With Karras sigmas the noise levels are spaced as in Karras et al. 2022 ($\\rho = 7$): dense near the end, where details form." : "") };
}

function unipc(o) {
  return { step: `x^{c}_s = x_s + \\sqrt{${A("s")}}\\,(1-e^{-h_{s-1}})\\,\\rho_c\\big(\\hat x_0^{(s)} - \\hat x_0^{(s-1)}\\big) + \\dots \\qquad `
      + `x_{s+1} = \\sqrt{\\tfrac{1-${A("s+1")}}{1-${A("s")}}}\\,x^{c}_s + \\sqrt{${A("s+1")}}\\,(1-e^{-h_s})\\Big(\\hat x_0^{(s)} + \\tfrac{1}{2r_s}\\big(\\hat x_0^{(s)} - \\hat x_0^{(s-1)}\\big)\\Big)`,
    weaken: `${LAMBDA},\\quad \\rho_c:\\ \\text{UniC's weight (}B(h) = e^{h}-1\\text{)}`,
    remainder: "earlier+rescale",
    text: `UniPC (Zhao et al. 2023) is a predictor-corrector: with this call's $${X0}$ it first corrects the latent the UNet just saw (UniC: the `
      + `previous step taken again with the new $${X0}$; the dots are earlier steps' differences), then predicts the next latent from the `
      + "corrected one (UniP, a multistep step like DPM-Solver++). The correction costs no extra UNet call." };
}

// ---------------------------------------------------------------- per-step numbers

const f = (x) => (x === null || x === undefined || !Number.isFinite(x) ? "–"
  : (Math.abs(x) >= 0.1 || x === 0 ? x.toFixed(Math.abs(x) >= 100 ? 1 : 3) : x.toPrecision(3)).replace("-", "\u2212"));

/** Euler ancestral's split of the next noise level: {up, down}. */
export function ancestralSigmas(from, to) {
  const up = Math.sqrt(Math.max(0, (to * to * (from * from - to * to)) / (from * from)));
  return { up, down: Math.sqrt(Math.max(0, to * to - up * up)) };
}

/** The noise level of the next scheduler step after call i: its sigma (0 at the end). */
function nextSigma(scheduler, i) {
  const { sigmas, step_index: steps } = scheduler;
  if (!steps) return i + 1 < sigmas.length ? sigmas[i + 1] : 0;
  for (let j = i + 1; j < steps.length; j++) if (steps[j] > steps[i]) return sigmas[j];
  return 0;
}

/** alpha-bar of the next call (null after the last: the run does not record it). */
const nextAlpha = (scheduler, i) => (i + 1 < scheduler.alphas_cumprod.length ? scheduler.alphas_cumprod[i + 1] : null);

/**
 * The numbers that went into call i's step, in words with inline math:
 * "$\\bar\\alpha_s$ = 0.012, $\\bar\\alpha_{s+1}$ = 0.015, ...". noiseSize: |noise_scale z|
 * of the call (from the stats), or null; noise: the TeX of the factor the step's noise
 * is added with (its step's `noise`), "\\sigma_s" when not given.
 */
export function stepNumbersText(facts, scheduler, i, noiseSize = null, noise = null) {
  if (!scheduler || i === null || i === undefined) return "";
  const t = scheduler.timesteps[i];
  const parts = [`timestep ${Number.isInteger(t) ? t : t.toFixed(1)}`];
  const a = scheduler.alphas_cumprod[i];
  const a1 = nextAlpha(scheduler, i);
  const family = FAMILIES[facts.scheduler];
  if (scheduler.sigmas && SIGMA_LATENTS.includes(facts.scheduler)) {
    const s = scheduler.sigmas[i];
    const next = nextSigma(scheduler, i);
    parts.push(`$\\sigma_s$ = ${f(s)}`);
    if (facts.scheduler === "euler_a") {
      const { up, down } = ancestralSigmas(s, next);
      parts.push(`$\\sigma_{s+1}$ = ${f(next)}`, `$${SIGMA_UP}$ = ${f(up)}`, `$${SIGMA_DOWN}$ = ${f(down)}`);
    } else if (facts.scheduler === "kdpm2") {
      parts.push(`(this call's $\\sigma$; the step goes to $\\sigma_{s+1}$ = ${f(next)})`);
    } else {
      parts.push(`$\\sigma_{s+1}$ = ${f(next)}`);
    }
  } else {
    parts.push(`$${A("s")}$ = ${f(a)}`, `$${A("s+1")}$ = ${a1 === null ? "(not recorded: the last step)" : f(a1)}`);
    if (family === "dpm" || family === "unipc") {
      const lambda = (x) => 0.5 * Math.log(x / (1 - x));
      if (a1 !== null && a > 0 && a < 1 && a1 > 0 && a1 < 1) {
        const h = lambda(a1) - lambda(a);
        parts.push(`$\\lambda_s$ = ${f(lambda(a))}`, `$h_s$ = ${f(h)}`);
        const a0 = i > 0 ? scheduler.alphas_cumprod[i - 1] : null;
        if (a0 !== null && a0 > 0 && a0 < 1) parts.push(`$r_s$ = ${f((lambda(a) - lambda(a0)) / h)}`);
      }
    }
    if (facts.scheduler === "ddpm" && a1 !== null && a1 > 0) {
      const beta = 1 - a / a1;
      parts.push(`$\\beta_s$ = ${f(beta)}`);
    }
  }
  parts.push(`$w$ = ${f(scheduler.weaken[i])} (measured)`);
  const scale = scheduler.noise_scale ? scheduler.noise_scale[i] : null;
  if (scale !== null && scale !== undefined) {
    const name = noise || "\\sigma_s";
    parts.push(`noise added: $${name} \\times z$ with $${name}$ = ${f(scale)}`
      + (noiseSize === null ? "" : `, size $\\lvert ${name}\\, z \\rvert$ = ${f(noiseSize)}`));
  }
  return `This call's numbers: ${parts.join(", ")}.`;
}

/**
 * The factor c of x_{s+1} = c x_s - w o + noise for the stochastic families (where the
 * run's numbers give it exactly), or undefined where this module does not know it.
 */
export function familyRescale(facts, scheduler, i) {
  const eps = facts.prediction === "epsilon";
  const a = scheduler.alphas_cumprod[i];
  const a1 = nextAlpha(scheduler, i);
  if (facts.scheduler === "euler_a" && scheduler.sigmas) {
    const s = scheduler.sigmas[i];
    if (eps) return 1;
    const { down } = ancestralSigmas(s, nextSigma(scheduler, i));
    return 1 - ((s - down) * s) / (s * s + 1);
  }
  if (facts.scheduler === "ddim" && facts.eta > 0) {
    if (a1 === null) return null;
    if (eps) return Math.sqrt(a1 / a);
    const sigma = scheduler.noise_scale ? scheduler.noise_scale[i] : 0;
    return Math.sqrt(a1 * a) + Math.sqrt(Math.max(0, (1 - a1 - sigma * sigma) * (1 - a)));
  }
  if (facts.scheduler === "ddpm") {
    if (a1 === null || (eps && a === 0)) return null;
    const alpha = a / a1;
    const coefX0 = (Math.sqrt(a1) * (1 - alpha)) / (1 - a);
    const coefX = (Math.sqrt(alpha) * (1 - a1)) / (1 - a);
    return eps ? coefX0 / Math.sqrt(a) + coefX : coefX0 * Math.sqrt(a) + coefX;
  }
  return undefined;
}

/** Where the predicted clean latent comes from, for schedulers whose step does not return it. */
export function x0Source(facts) {
  const family = FAMILIES[facts.scheduler];
  if (family === "dpm" || family === "unipc") {
    return `${schedulerTitle(facts.scheduler)} works on $${X0}$ itself: it converts the UNet's output to $${X0}$ with this formula before it steps, and the predicted final image is that $${X0}$.`;
  }
  if (facts.scheduler === "pndm") {
    return `PNDM's step does not return $${X0}$: the predicted final image is computed with this formula from the call's output and the latent the UNet saw.`;
  }
  return "";
}

// ---------------------------------------------------------------- multistep history

/** Schedulers that mix earlier calls' outputs into a step (precompute/multistep.py). */
export const MULTISTEP = ["lms", "pndm", "dpmpp_2m", "dpmpp_2m_karras", "unipc"];

const pct = (x) => `${Math.round(x * 100)}%`.replace("-", "\u2212");

/** The article's words on a multistep solver's history ("" for other schedulers). */
export function historyArticleText(facts) {
  if (!MULTISTEP.includes(facts.scheduler)) return "";
  return `${schedulerTitle(facts.scheduler)} is a multistep solver: besides this call's prediction its step reuses the predictions `
    + "of earlier UNet calls. Where the bundle records it, the refiner view shows for every call what share of the step's move "
    + "comes from this call's prediction and what from the earlier ones, measured from the scheduler itself like w. The shares add "
    + "up to 100%; this call's is often above 100% and an earlier one's negative: the solver extrapolates the trend of its predictions.";
}

/**
 * What call i's step took from this call's prediction and from earlier calls', from the
 * run's scheduler.multistep (docs/bundle-format.md): {text, bars: [{label, share}]}, or
 * null where the bundle has no record (single-step schedulers, older bundles). Shares
 * are of the step's move (x_{s+1} minus what the step does to the latent by itself) and
 * add up to 1; a multistep solver extrapolates, so they can exceed 1 or be negative.
 */
export function historyWords(facts, scheduler, i) {
  const record = scheduler && scheduler.multistep;
  if (!record || i === null || i === undefined || record.current[i] === undefined) return null;
  const current = record.current[i];
  const history = record.history[i] || [];
  const n = record.history_calls[i] || 0;
  const bars = [{ label: "this call", share: current }, ...history.map((share, k) => ({
    label: history.length === 1 && n > 1 ? `${n} earlier` : `earlier ${k + 1}`, share }))];
  if (!history.length) {
    const moves = Math.abs(current) > 1e-6;
    return { bars: moves ? bars : [], text: moves
      ? `This step: ${pct(current)} from this call's prediction; it uses no earlier call's${i === 0 ? " (there is none yet)" : ""}.`
      : "This call's step does not move the latent: it ends at the noise level it started from." };
  }
  const earlier = history.reduce((a, b) => a + b, 0);
  const prk = facts.scheduler === "pndm" && history.length === 1 && n > 1;
  const from = prk ? `the ${n} earlier calls of this Runge-Kutta step (summed, weights 1, 2, 2 against this call's 1, over 6)`
    : `${facts.scheduler === "pndm" ? (n === 1 ? "an earlier" : `${n} earlier`) : `the previous${n === 1 ? "" : ` ${n}`}`} `
      + (n === 1 ? "call's prediction" : "calls' predictions");
  const each = history.length > 1 ? ` (newest first: ${history.map(pct).join(", ")})` : "";
  const extrapolates = current > 1.005 && earlier < 0
    ? ` ${schedulerTitle(facts.scheduler)} extrapolates: it takes more than all of this call's prediction and subtracts part of the earlier ones, continuing the trend of its predictions.`
    : "";
  return { bars, text: `This step: ${pct(current)} from this call's prediction, ${pct(earlier)} from ${from}${each}.${extrapolates}` };
}

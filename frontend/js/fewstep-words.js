/**
 * What the page says about few-step models (precompute/fewstep.py): rectified-flow Euler
 * (diffusers' flow_euler and InstaFlow's sign, instaflow), latent consistency models (lcm)
 * and bundles whose guidance is not the classifier-free two-branch formula
 * (config.guidance_mode: "none", the prompt's prediction alone; "embedding", an LCM's
 * guidance embedding). A pure module (no DOM) used by wording.js; tests/test_wording.py
 * runs it in node.
 *
 * Flow notation: the latent is x = (1 - σ) x0 + σ ε, flow time t = 1 - σ runs from 0 (the
 * noise) to 1 (the image); flow_euler's UNet predicts u = ε - x0, instaflow's v = x0 - ε.
 * Prose writes its math between dollar signs, as scheduler-words.js does.
 */

/** What the UNet outputs for the flow prediction types: words and a TeX symbol. */
export const FLOW_OUTPUTS = {
  flow: { name: "velocity", Name: "Velocity", symbol: "u", guided: "Guided velocity" },
  flow_instaflow: { name: "velocity", Name: "Velocity", symbol: "v", guided: "Guided velocity" },
};

export const FEW_NAMES = { lcm: "LCM", flow_euler: "Rectified-flow Euler", instaflow: "InstaFlow Euler" };

const isFlow = (facts) => facts.prediction === "flow" || facts.prediction === "flow_instaflow";

/** The scheduler step of the few-step families: {step, weaken, remainder, text[, noise]} or null. */
export function fewStep(facts, o) {
  if (facts.scheduler === "flow_euler" || facts.scheduler === "instaflow") {
    const insta = facts.scheduler === "instaflow";
    return {
      step: insta ? `x_{s+1} = x_s + (\\sigma_s - \\sigma_{s+1})\\,\\hat{${o}}` : `x_{s+1} = x_s - (\\sigma_s - \\sigma_{s+1})\\,\\hat{${o}}`,
      weaken: insta ? "w = -(\\sigma_s - \\sigma_{s+1}) = -1/N" : "w = \\sigma_s - \\sigma_{s+1} = 1/N",
      remainder: "none",
      text: "Rectified flow (Liu et al. 2023; InstaFlow) draws a straight line from the noise to the image: the latent is "
        + "$x = (1 - \\sigma)\\,x_0 + \\sigma\\,\\epsilon$, and the flow time $t = 1 - \\sigma$ goes from 0 (noise) to 1 (image) in equal steps of $1/N$. "
        + (insta ? "The UNet predicts the velocity $v = x_0 - \\epsilon$ along the line (InstaFlow's sign) and each Euler step adds $dt \\cdot v$, so the factor is negative."
          : "The UNet predicts the velocity $u = \\epsilon - x_0$ along the line (diffusers' FlowMatchEulerDiscreteScheduler) and each Euler step removes $dt \\cdot u$.")
        + " Where the paths are straight the velocity does not change along them, and one step lands where fifty would.",
    };
  }
  if (facts.scheduler === "lcm") {
    return {
      step: "x_{s+1} = \\sqrt{\\bar\\alpha_{s+1}}\\,\\hat x_0^{(s)} + \\sqrt{1-\\bar\\alpha_{s+1}}\\,z_s,\\qquad \\hat x_0^{(s)} = c_{\\text{skip}}\\,x_s + c_{\\text{out}}\\,\\frac{x_s - \\sqrt{1-\\bar\\alpha_s}\\,\\hat\\epsilon}{\\sqrt{\\bar\\alpha_s}}",
      weaken: "w = \\sqrt{\\bar\\alpha_{s+1}}\\,c_{\\text{out}}\\,\\sqrt{1-\\bar\\alpha_s}/\\sqrt{\\bar\\alpha_s}",
      remainder: "rescale",
      noise: "\\sqrt{1-\\bar\\alpha_{s+1}}",
      text: "A latent consistency model (Luo et al. 2023) jumps rather than walks: each step maps the latent straight to its denoised "
        + "estimate $\\hat x_0$ (the predicted final image), and between steps the scheduler noises that estimate again, down to the next, lower "
        + "noise level, with fresh Gaussian noise $z_s$. The last step keeps $\\hat x_0$ itself. The refiner view shows the jump back to noise.",
    };
  }
  return null;
}

/** The predicted clean latent's formula (TeX) for these models, or null. */
export function fewX0Formula(facts) {
  if (facts.prediction === "flow") return "\\hat x_0 = x - \\sigma\\,\\hat u";
  if (facts.prediction === "flow_instaflow") return "\\hat x_0 = x + \\sigma\\,\\hat v";
  if (facts.scheduler === "lcm") return "\\hat x_0 = c_{\\text{skip}}\\,x_t + c_{\\text{out}}\\,\\frac{x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\hat\\epsilon}{\\sqrt{\\bar\\alpha_t}}\\quad\\text{(LCM's denoised)}";
  return null;
}

/** The words that differ for flow models: {key: text} (wording.js's texts), or {}. */
export function flowTexts(facts) {
  if (!isFlow(facts)) return {};
  const insta = facts.prediction === "flow_instaflow";
  const velocity = insta ? "x_0 - \\epsilon" : "\\epsilon - x_0";
  return {
    "output-the": "the velocity",
    "unet-predicts": `the velocity $${velocity}$, the direction from ${insta ? "the noise to the image" : "the image to the noise"}`,
    "training-loss": `\\text{loss} = \\lVert (${velocity}) - ${insta ? "v" : "u"}_\\theta(x_t, t, c) \\rVert^2`,
    "noising-formula": "x_t = (1-\\sigma)\\,x_0 + \\sigma\\,\\epsilon,\\qquad \\sigma = 1 - t",
    "training-target": "to predict the velocity of the straight line between the noise and the clean latent (rectified flow)",
  };
}

/** How the bundle's runs are guided, when not by the two-branch formula: a paragraph, or "". */
export function guidanceModeText(mode) {
  if (mode === "none") {
    return "This bundle uses no classifier-free guidance: the prompt's prediction alone, one UNet call per step, as SD-Turbo "
      + "and other adversarially distilled models are run. diffusers writes that as guidance_scale = 0; on this page it is g = 1, "
      + "because here g = 0 would be the empty prompt's prediction alone.";
  }
  if (mode === "embedding") {
    return "This model takes its guidance inside the UNet: it was distilled with guidance (a latent consistency model), and the scale "
      + "enters as an embedding of w = g − 1 next to the timestep. Each step is one UNet call with the prompt; there is no "
      + "empty-prompt prediction to extrapolate from, and the unconditional branch is not recorded.";
  }
  return "";
}

/** A flow call's numbers ("flow time $t$ = 0.250 ($\\sigma$ = 0.750), ..."), or null for other models. */
export function flowNumbersText(facts, scheduler, i) {
  const t = scheduler && scheduler.flow_time;
  if (!isFlow(facts) || !t || i === null || i === undefined || t[i] === undefined) return null;
  const next = i + 1 < t.length ? t[i + 1] : 1;
  const f = (x) => (Math.abs(x) >= 0.1 || x === 0 ? x.toFixed(3) : x.toPrecision(3)).replace("-", "\u2212");
  // math between dollar signs, typeset like the other samplers' numbers (views/fields.js writeProse)
  return `This call's numbers: flow time $t$ = ${f(t[i])} ($\\sigma$ = ${f(1 - t[i])}), next $t$ = ${f(next)}, `
    + `$\\Delta t$ = ${f(next - t[i])}, $w$ = ${f(scheduler.weaken[i])} (measured).`;
}

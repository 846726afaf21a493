"""Straightness of a sampler's path (Liu et al. 2022, "Flow Straight and Fast"): the one
number issue 16 measures, used by the bundle's few-step comparison
(precompute/fewstep_bundle.py: the number the app shows per path) and by
benchmarks/bench_students.py (docs/performance.md, "Students (issue 16)").

Time convention: diffusers' flow matching, the students'. A latent at noise level sigma is
y = (1 - sigma) x0 + sigma eps (sigma 1: noise, 0: image) and its velocity is
v = dy/dsigma = eps - x0 (on a straight path, the chord z - x0). A model's velocity at a
call is its implied eps_hat - x0_hat (its predictions of the noise and of the image).

    S = E over sigma ~ U(path) of ||chord - v(y_sigma, sigma)||^2,   chord = (z - x0) / L

along the path from z (its start, sigma_0) to x0 (its end, sigma_N), L = sigma_0 - sigma_N
its length in sigma (1 for the flow students; 0.9717 for the demo teacher's DDIM, which
stops at alpha_bar_0 < 1). A sampler's path is piecewise linear in sigma (an Euler step
moves along v_i from sigma_i to sigma_i+1), so the integral over uniform sigma is exact:

    S = sum_i (sigma_i - sigma_i+1) / L * ||chord - v_i||^2     (mean over latent elements)

and `relative` = S / |chord|^2 (the same mean): the number the app shows and
docs/performance.md reports. For an Euler path the chord is the step-weighted mean of the
v_i, so S is the weighted variance of the velocity along the path: 0 exactly when the path
is a straight line walked at constant speed. `chord_mismatch` = |weighted mean v - chord|^2
/ |chord|^2 checks that: float rounding (~1e-13 from float32 runs, more from the bundle's
float16 arrays) when the velocities are the ones the sampler stepped with.

A path of one step is straight by construction: it is one segment, from z to x0 along its
one velocity, so S and `relative` are 0 exactly. Computed by the sum they would be the
chord mismatch instead (with one velocity, its weighted mean is itself), which is
rounding, not a bend; that number stays in `chord_mismatch`.

The teacher (a VP model: x_t = a x0 + s eps, a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar))
as a probability-flow ODE: y = x_t / (a + s), sigma = s / (a + s) puts its latents in the
convention above, and its ODE's velocity there is eps_hat - x0_hat (`vp_predictions` turns
an epsilon-, v- or sample-prediction into x0_hat and eps_hat). DDIM with eta 0 is exactly
Euler in (y, sigma): x_t' = a' x0_hat + s' eps_hat gives y' = (1 - sigma') x0_hat +
sigma' eps_hat, so y' - y = (sigma' - sigma)(eps_hat - x0_hat). Its end is where DDIM's
last step lands (`ddim_final_alpha_bar`), not sigma 0. Numpy only: no torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The definition above, named in each fewstep/ section (`straightness_definition`), so a
# section whose numbers came from another definition (before this module: an unweighted
# mean over calls) is not taken as up to date. Change it when the number's meaning changes.
DEFINITION = "flow-time, sigma-weighted, over the squared chord; 1 step: 0"


@dataclass
class FlowPath:
    """A sampler's path in flow time (module docstring), float64: sigmas (N + 1,) from start
    to end, the velocity of each step (N, B, ...), and the ends y(sigma_0), y(sigma_N)
    (B, ...); B: samples measured at once."""
    sigmas: np.ndarray
    velocities: np.ndarray
    start: np.ndarray
    end: np.ndarray


def vp_to_flow(alpha_bar: float) -> tuple[float, float]:
    """(a + s, sigma) of a VP noise level: y = x_t / (a + s), sigma = s / (a + s)."""
    a, s = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    return a + s, s / (a + s)


def vp_predictions(model_output, sample, alpha_bar: float, prediction_type: str):
    """(x0_hat, eps_hat) of a VP model's call at x_t = `sample` (diffusers' DDIMScheduler
    conventions): epsilon, v_prediction (v = a eps - s x0) or sample (the output is x0_hat:
    a run's recorded pred_original_sample)."""
    a, s = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    out, x = np.asarray(model_output, np.float64), np.asarray(sample, np.float64)
    if prediction_type == "v_prediction":
        return a * x - s * out, s * x + a * out
    if prediction_type == "epsilon":
        if a == 0:
            raise ValueError("an epsilon-prediction at alpha_bar 0 (zero terminal SNR) implies "
                             "no x0: the model must predict v or x0 there")
        return (x - s * out) / a, out
    if prediction_type == "sample":
        if s == 0:
            raise ValueError("a sample-prediction at alpha_bar 1 implies no noise")
        return out, (x - a * out) / s
    raise ValueError(f"prediction_type {prediction_type!r}: expected epsilon, v_prediction "
                     "or sample")


def vp_path(alpha_bars, end_alpha_bar: float, samples, predictions, result,
            prediction_type: str) -> FlowPath:
    """A VP model's path as its probability-flow ODE's: alpha_bars (N,) of the calls,
    end_alpha_bar where the last step lands, samples x_t (N, B, ...) the calls saw,
    predictions (N, B, ...) their outputs, result (B, ...) the sampler's final latent."""
    sigmas, velocities = [], []
    for alpha_bar, x, out in zip(alpha_bars, samples, predictions):
        x0_hat, eps_hat = vp_predictions(out, x, float(alpha_bar), prediction_type)
        velocities.append(eps_hat - x0_hat)
        sigmas.append(vp_to_flow(float(alpha_bar))[1])
    scale_end, sigma_end = vp_to_flow(end_alpha_bar)
    scale_start = vp_to_flow(float(alpha_bars[0]))[0]
    return FlowPath(np.array(sigmas + [sigma_end]), np.stack(velocities),
                    np.asarray(samples[0], np.float64) / scale_start,
                    np.asarray(result, np.float64) / scale_end)


def flow_path(sigmas, end_sigma: float, velocities, start, result) -> FlowPath:
    """A flow model's path: sigmas (N,) of the calls, end_sigma where the last step lands
    (0 for an Euler run to the image), velocities eps_hat - x0_hat (N, B, ...)."""
    return FlowPath(np.append(np.asarray(sigmas, np.float64), end_sigma),
                    np.asarray(velocities, np.float64), np.asarray(start, np.float64),
                    np.asarray(result, np.float64))


def flow_velocity(sample, x0_hat, sigma):
    """eps_hat - x0_hat of a flow call from its latent and predicted image:
    x = (1 - sigma) x0_hat + sigma eps_hat gives eps_hat - x0_hat = (x - x0_hat) / sigma."""
    return (np.asarray(sample, np.float64) - np.asarray(x0_hat, np.float64)) / sigma


def ddim_final_alpha_bar(scheduler, last_timestep: int) -> float:
    """Where a DDIM (or PNDM) run's last step lands: DDIMScheduler.step's prev_timestep,
    timestep - num_train_timesteps // num_inference_steps, and final_alpha_cumprod below 0
    (alpha_bar_0 when set_alpha_to_one is false)."""
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev = int(last_timestep) - stride
    if prev >= 0:
        return float(scheduler.alphas_cumprod[prev])
    return float(scheduler.final_alpha_cumprod)


def straightness(path: FlowPath) -> dict:
    """Per sample (B,): S (mean over latent elements), `relative` = S / |chord|^2, and
    `chord_mismatch` (module docstring); `length`: L. A 1-step path's S is 0 (module
    docstring)."""
    d = path.sigmas[:-1] - path.sigmas[1:]  # (N,) step lengths in sigma
    length = float(d.sum())
    if len(d) == 0 or length <= 0 or not np.all(d > 0):
        raise ValueError(f"sigmas {path.sigmas.tolist()}: a path needs at least one step, "
                         "with sigma falling at every step")
    weights = d / length
    chord = (path.start - path.end) / length                          # (B, ...)
    per_element = tuple(range(1, chord.ndim))
    chord_sq = (chord ** 2).mean(axis=per_element)                      # (B,)
    if np.any(chord_sq == 0):
        raise ValueError("the path ends where it starts: its chord is 0")
    off = ((chord[None] - path.velocities) ** 2).mean(axis=tuple(range(2, chord.ndim + 1)))
    s = weights @ off if len(d) > 1 else np.zeros(len(chord))           # (B,)
    mean_v = np.tensordot(weights, path.velocities, axes=1)            # (B, ...)
    return {"S": s, "relative": s / chord_sq, "length": length,
            "chord_mismatch": ((mean_v - chord) ** 2).mean(axis=per_element) / chord_sq}

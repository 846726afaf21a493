"""Few-step models in the instrumented loop: rectified flow, latent consistency, no-CFG runs.

precompute/loop.py drives every model with one loop; what differs for these models lives
here, asked for by a few lines of the loop and of precompute/run.py:

Rectified flow / flow matching (Liu et al. 2023, "Flow Straight and Fast"; InstaFlow, Liu
et al. 2023, arXiv 2309.06380). The latent at noise level sigma is
x = (1 - sigma) x0 + sigma noise; InstaFlow's flow time is t = 1 - sigma (0: noise, 1:
the image) and the UNet is called at timestep 1000 sigma. Two conventions for what the
UNet predicts, both Euler steps of size dt = sigma_s - sigma_{s+1} = 1 / N:
    flow_euler  diffusers' FlowMatchEulerDiscreteScheduler (SD3's): the output is
                u = noise - x0, the step x <- x - dt u, x0 = x - sigma u.
                prediction_type "flow".
    instaflow   InstaFlow's checkpoints (code/pipeline_rf.py): the output is
                v = x0 - noise = -u, the step x <- x + dt v, x0 = x + sigma v.
                prediction_type "flow_instaflow".
Both run InstaFlow's uniform grid, sigma_i = 1 - i/N (timesteps (1 - i/N) 1000), where
diffusers' own default is linspace(1, 1/1000, N): a model trained on uniform t is
sampled as InstaFlow samples it. The recorded "noise prediction" is the velocity, with
its meaning in config.prediction_type; run.json adds scheduler.flow_time (t of each call).

Latent consistency models (LCM, Luo et al. 2023; diffusers' LCMScheduler): a UNet with
a guidance embedding (unet.config.time_cond_proj_dim) takes w = guidance_scale - 1 as
`timestep_cond` and is called once per step with the prompt alone (guidance mode
"embedding": no unconditional row). LCMScheduler's step returns `denoised` (the
consistency function's x0 estimate: pred_original_sample, source "denoised") and, between
steps, jumps back to noise: alpha_{s+1}^0.5 denoised + (1 - alpha_{s+1})^0.5 z, the
fresh draw z recorded as variance_noise with its factor in noise_scale.

No classifier-free guidance (SD-Turbo, ADD: EulerDiscrete or EulerAncestral with
trailing spacing, 1-4 steps): diffusers' guidance_scale 0 there means the prompt's
prediction alone, which is guidance 1 here. A bundle whose only guidance scale is 1 is
recorded with guidance mode "none" (config.json and run.json), and the app says "no
classifier-free guidance: the prompt's prediction alone", not guidance 0 (which here is
the unconditional prediction alone).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusionPipeline

from backend.format import GUIDANCE_MODES  # noqa: F401 (config.guidance_mode's values)

# our scheduler names whose latents are flow latents (1 - sigma) x0 + sigma noise
FLOW = ("flow_euler", "instaflow")
# the samplers of distilled or flow models: never suggested for another model
FEW_STEP = ("lcm", *FLOW)
# config.prediction_type of each flow scheduler: what the UNet's output is
FLOW_PREDICTION = {"flow_euler": "flow", "instaflow": "flow_instaflow"}
NO_CFG_WORDS = "no classifier-free guidance: the prompt's prediction alone"


class FlowMatchEulerScheduler(FlowMatchEulerDiscreteScheduler):
    """diffusers' FlowMatchEulerDiscreteScheduler as the Stable Diffusion loop drives it:
    the two members the loop (and StableDiffusionPipeline) asks every scheduler for, and
    InstaFlow's uniform grid when set_timesteps is given a step count alone."""

    init_noise_sigma = 1.0  # x_T = noise: sigma 1 is pure noise, nothing to scale
    order = 1

    def scale_model_input(self, sample, timestep=None):
        return sample  # the UNet sees the flow latent as it is

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None,
                      timesteps=None):
        if sigmas is None and timesteps is None and num_inference_steps:
            sigmas = instaflow_sigmas(num_inference_steps)
            num_inference_steps = None  # diffusers: given sigmas, the count is theirs
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu,
                              timesteps=timesteps)


class InstaFlowEulerScheduler(FlowMatchEulerScheduler):
    """InstaFlow's checkpoints predict v = x0 - noise (pipeline_rf.py: latents + dt * v):
    the opposite sign of diffusers' flow output, so the step negates it first."""

    def step(self, model_output, timestep, sample, *args, **kwargs):
        return super().step(-model_output, timestep, sample, *args, **kwargs)


def instaflow_sigmas(n: int) -> np.ndarray:
    """InstaFlow's grid: sigma_i = 1 - i/N, i = 0 .. N-1 (its timesteps (1 - i/N) 1000)."""
    return 1.0 - np.arange(n, dtype=np.float64) / n


def is_flow(name: str) -> bool:
    return name in FLOW


def prediction_type(scheduler, name: str) -> str:
    """config.prediction_type: what the UNet's output is (flow schedulers have no key)."""
    if name in FLOW_PREDICTION:
        return FLOW_PREDICTION[name]
    return scheduler.config.get("prediction_type", "epsilon")


def check_family(name: str, checkpoint_class) -> None:
    """A flow checkpoint runs only with a flow scheduler, and a diffusion checkpoint not
    with diffusers' flow scheduler (its UNet predicts noise, not a velocity)."""
    flow_checkpoint = isinstance(checkpoint_class, type) and issubclass(
        checkpoint_class, FlowMatchEulerDiscreteScheduler)
    if flow_checkpoint and name not in FLOW:
        raise ValueError(
            f"scheduler {name!r} is a diffusion sampler, and this checkpoint is a flow-matching "
            f"model ({checkpoint_class.__name__}: its UNet predicts a velocity); use flow_euler")
    if not flow_checkpoint and name == "flow_euler":
        raise ValueError(
            f"scheduler 'flow_euler' runs flow-matching models, and this checkpoint's own "
            f"scheduler is {getattr(checkpoint_class, '__name__', checkpoint_class)} (a diffusion "
            "model); an InstaFlow checkpoint (a Stable Diffusion folder whose UNet predicts "
            "x0 - noise) runs with instaflow")


# -- guidance ---------------------------------------------------------------------

def guides_by_embedding(unet) -> bool:
    """An LCM-distilled UNet: guidance goes in as an embedding of w (time_cond_proj_dim)."""
    return getattr(unet.config, "time_cond_proj_dim", None) is not None


def guidance_mode(unet, guidance_scales) -> str:
    """"embedding" (LCM), "none" (every run the prompt's prediction alone: guidance 1
    only), else "classifier_free"."""
    if guides_by_embedding(unet):
        return "embedding"
    if [float(g) for g in guidance_scales] == [1.0]:
        return "none"
    return "classifier_free"


def check_inputs(components, name: str, guidance_scales, guidance_rescale: float) -> None:
    """What these models cannot run, refused with the reason."""
    if guides_by_embedding(components.unet):
        if 0.0 in guidance_scales:
            raise ValueError(
                "this UNet takes its guidance as an embedding of w = guidance_scale - 1 with the "
                "prompt (an LCM: unet.config.time_cond_proj_dim), and has no unconditional run: "
                "guidance 0 has no meaning here; use scales above 0 (LCM's default is 8.5)")
        if guidance_rescale:
            raise ValueError("guidance_rescale rescales classifier-free guidance, which this "
                             "LCM UNet does not use (its guidance is an embedding)")


def branch_rows(unet, runs, uncond_runs, text_runs):
    """The UNet rows of a sweep: an LCM UNet calls every run with the prompt alone."""
    if guides_by_embedding(unet):
        return [], list(runs)
    return uncond_runs, text_runs


def unet_kwargs(unet, guidance_scales, text_runs, device, dtype) -> dict:
    """Extra UNet arguments per call: an LCM UNet's timestep_cond, the embedding of
    w = guidance_scale - 1 of each row, exactly as LatentConsistencyModelPipeline makes it."""
    if not guides_by_embedding(unet):
        return {}
    w = torch.tensor([guidance_scales[g] - 1 for g in text_runs])  # (Gt,) float32
    embedding = StableDiffusionPipeline.get_guidance_scale_embedding(
        None, w, embedding_dim=unet.config.time_cond_proj_dim)
    return {"timestep_cond": embedding.to(device=device, dtype=dtype)}  # (Gt, D)


# -- the step's numbers -----------------------------------------------------------------

def noise_level(scheduler, i: int) -> tuple[None, float]:
    """(sigma, alpha_bar) of a flow call, in the loop's terms: no Karras sigma (the
    latent is not x0 + sigma noise), and the alpha_bar with the same signal-to-noise
    ratio, (1 - sigma)^2 / ((1 - sigma)^2 + sigma^2)."""
    sigma = float(scheduler.sigmas[i])
    return None, (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma ** 2)


def step_x0(step, scheduler, name: str, model_output, sample, x0_from: str):
    """The x0 estimate of a step and where it comes from: the scheduler's own
    pred_original_sample ("step"), LCM's denoised ("denoised"), a flow step's
    x - sigma u ("flow"); (None, x0_from) where the loop must compute it."""
    x0 = getattr(step, "pred_original_sample", None)
    if x0 is not None:
        return x0, x0_from
    if getattr(step, "denoised", None) is not None:
        return step.denoised, "denoised"
    if name in FLOW:
        sigma = scheduler.sigmas[scheduler.step_index - 1]  # the call's (step() moved on)
        u = model_output if name == "flow_euler" else -model_output
        return (sample.float() - sigma * u.float()).to(sample.dtype), "flow"
    return None, x0_from


def run_fields(scheduler, name: str) -> dict:
    """RunResult fields of these models: a flow run's time t = 1 - sigma of each call."""
    if name not in FLOW:
        return {}
    return {"flow_time": (1 - scheduler.sigmas[:-1]).float().cpu().numpy()}


# -- the bundle's records (precompute/run.py) ------------------------------------------

def bundle_guidance_mode(unet, guidance_scales, existing_config: dict | None) -> str:
    """config.guidance_mode of a precompute: the model's and the settings' (guidance_mode),
    or the bundle's when it has one already. A bundle made without classifier-free
    guidance ("none") stays so: other scales would be guided runs in it."""
    mode = guidance_mode(unet, guidance_scales)
    if existing_config is None:
        return mode
    old = existing_config.get("guidance_mode", "classifier_free")
    if old == "none" and mode != "none":
        raise ValueError(
            f"this bundle was made with {NO_CFG_WORDS} (guidance_scales = [1]); guidance "
            f"scales {list(guidance_scales)} would add guided runs to it: write them to a new "
            "--out folder")
    return old


def notes(scheduler, guidance_scales) -> list[str]:
    """What the precompute says before it runs these models."""
    said = []
    spacing = scheduler.config.get("timestep_spacing")
    if spacing == "trailing" and 0.0 in [float(g) for g in guidance_scales]:
        said.append("note: guidance 0 here is the unconditional prediction alone (the empty or "
                    "negative prompt); diffusers' guidance_scale=0 for SD-Turbo means "
                    f"{NO_CFG_WORDS}, which is guidance_scales = [1] here")
    return said


def config_fields(mode: str) -> dict:
    """config.json's guidance_mode (None, left out, for the usual classifier-free one)."""
    return {"guidance_mode": None if mode == "classifier_free" else mode}


def run_record(r, mode: str) -> dict:
    """run.json's fields of these models: guidance_mode where not classifier-free, and a
    flow run's scheduler.flow_time (returned under "scheduler")."""
    fields = {} if mode == "classifier_free" else {"guidance_mode": mode}
    if getattr(r, "flow_time", None) is not None:
        fields["scheduler"] = {"flow_time": [float(t) for t in r.flow_time]}
    return fields

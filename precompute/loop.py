"""The instrumented denoising loop: Stable Diffusion unrolled, every step recorded.

`run_guidance_sweep` is StableDiffusionPipeline.__call__ written out (see
shared/sd-internals.md for why we cannot use the pipeline itself), with three changes:
all guidance scales of one (prompt, seed) share one batched UNet call per step, the
two noise predictions and the scheduler's `pred_original_sample` are kept, and the
cross-attention maps are captured. Names follow diffusers so a reader can jump to
its docs:

    latents                x_t, the noisy latent at step i (x_T first)
    noise_pred_uncond      eps(x_t, t, negative)    the unconditional prediction ("" or the
                                                    negative prompt)
    noise_pred_text        eps(x_t, t, prompt)      the text-conditioned prediction
    noise_pred             eps_u + s (eps_c - eps_u)  classifier-free guidance, s = guidance_scale
                                                    (then guidance_rescale, if set)
    pred_original_sample   x_0 as predicted at step i (the scheduler's estimate)
    weaken                 how much of noise_pred the step removes from x_t
    variance_noise         the standard normal sample a stochastic step drew (euler_a, ddpm,
                           ddim with eta > 0); noise_scale: the factor the step added it with

(For v-prediction checkpoints the "noise" predictions are v; the names stay.)

A recorded step is one UNet call: one entry of scheduler.timesteps, one iteration of the
pipeline's loop and one scheduler.step(). Heun and KDPM2 make two calls per scheduler
step, PNDM one more call in its first step (PLMS) or four per step in its PRK warm-up;
`step_index` maps each call to its scheduler step.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import PNDMScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.utils.torch_utils import randn_tensor

from precompute import multistep
from precompute import sdxl
from precompute import fewstep
from precompute.attention import CrossAttentionCapture
from precompute.model import SIGMA_LATENTS, Components, quiet_diffusers, scheduler_name

# How x_T is drawn (recorded in config.json as "noise"): from a CPU generator seeded with the
# run's seed, then moved to the device, so one seed gives the same noise on a CPU, a CUDA GPU
# or Apple's MPS (diffusers' documented way to reproduce a run across devices; a generator on
# the device draws other numbers there).
NOISE = {"generator": "cpu", "function": "diffusers.utils.torch_utils.randn_tensor"}


@dataclass
class RunResult:
    """One (prompt, seed, guidance_scale) run, on the host, float32. T = num_inference_steps."""

    seed: int
    guidance_scale: float
    prompt: str | None  # None: the prompt-independent guidance-0 run
    negative_prompt: str  # the unconditional row's prompt ("": none)
    latents: np.ndarray  # (T+1, C, h, w), x_T first; T = UNet calls (len(timesteps))
    noise_pred_uncond: np.ndarray | None  # (T, C, h, w); None at guidance 1
    noise_pred_text: np.ndarray | None  # (T, C, h, w); None at guidance 0
    noise_pred: np.ndarray  # (T, C, h, w), the guided model output the scheduler used
    pred_original_sample: np.ndarray  # (T, C, h, w)
    timesteps: np.ndarray  # (T,) float32 (LMS/Euler timesteps can be fractional)
    sigmas: np.ndarray | None  # (T,) sigma_t; None for schedulers without sigmas (DDIM)
    alphas_cumprod: np.ndarray  # (T,) alpha-bar at each step's timestep
    weaken: np.ndarray  # (T,) coefficient of noise_pred removed by the step
    step_index: np.ndarray  # (T,) int: the scheduler step of each UNet call (0 .. steps - 1)
    pred_original_sample_from: str  # "scheduler": its own; "formula": x0_from_model_output
    variance_noise: np.ndarray | None  # (T, C, h, w) the N(0, I) draw of each step; None: none
    noise_scale: np.ndarray | None  # (T,) the factor each step added variance_noise with
    guidance_rescale: float  # phi of rescale_noise_cfg, 0 where not applied (guidance <= 1)
    guidance_rescale_std_ratio: np.ndarray | None  # (T,) std(noise_pred_text) / std(cfg)
    multistep: dict | None  # multistep solvers: each call's and earlier calls' shares (multistep.py)
    attention: dict[str, np.ndarray] | None  # "combined": (K, T, h, w), "res16": (K, T, 16, 16), ...
    attention_meta: dict | None
    control: object = None  # ControlNet: precompute/controlnet.py's ControlRecord; None: none
    flow_time: np.ndarray | None = None  # (T,) flow models: t = 1 - sigma of each call (fewstep.py)


# -- text ---------------------------------------------------------------------

@torch.no_grad()
def encode_prompt_tokens(components: Components, prompt: str) -> dict:
    """The tokenizer's real output and the text encoder's per-token vectors for `prompt`.

    Tokenized exactly as StableDiffusionPipeline.encode_prompt does (pad to 77, truncate),
    plus what truncation dropped. n_real counts start token .. first end token inclusive;
    the rest is padding. SDXL (two text encoders): precompute/sdxl.py's.
    """
    if sdxl.is_sdxl(components):
        return sdxl.encode_prompt_tokens(components, prompt)
    tokenizer = components.tokenizer
    max_length = tokenizer.model_max_length
    input_ids = tokenizer(
        prompt, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids  # (1, 77)
    untruncated = tokenizer(prompt, verbose=False).input_ids  # start .. end, any length
    truncated = len(untruncated) > max_length
    # as diffusers reports it: everything after the 76th token except the final end token
    dropped = untruncated[max_length - 1 : -1] if truncated else []
    ids = input_ids[0].tolist()
    n_real = ids.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in ids else len(ids)
    config = components.text_encoder.config
    attention_mask = None
    if getattr(config, "use_attention_mask", False):
        attention_mask = (input_ids != tokenizer.pad_token_id).long().to(components.device)
    embeddings = components.text_encoder(input_ids.to(components.device), attention_mask=attention_mask)[0]
    return {
        "input_ids": ids,
        "pieces": tokenizer.convert_ids_to_tokens(ids),
        "n_real": n_real,
        "truncated": truncated,
        "dropped_pieces": tokenizer.convert_ids_to_tokens(dropped),
        "embeddings": embeddings[0].float().cpu().numpy(),  # (77, D)
    }


# -- the loop -------------------------------------------------------------------

def check_inputs(components, prompt, guidance_scales, num_inference_steps, height, width,
                 eta=0.0, guidance_rescale=0.0, run_keys=None):
    scheduler = components.scheduler
    name = scheduler_name(scheduler)  # raises for unsupported schedulers
    if len(guidance_scales) == 0:
        raise ValueError("guidance_scales is empty")
    keys = guidance_scales if run_keys is None else run_keys  # ControlNet: (g, its scale)
    if len(set(keys)) != len(keys):
        raise ValueError(f"guidance_scales has duplicates: {keys}")
    if any(s < 0 for s in guidance_scales):
        raise ValueError(f"guidance_scales must be >= 0, got {guidance_scales}")
    if prompt is None and any(s != 0 for s in guidance_scales):
        raise ValueError("prompt=None (the shared unconditional run) only makes sense at guidance_scale 0")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    f = components.vae_scale_factor
    if height % f or width % f:
        raise ValueError(f"height and width must be divisible by {f}, got {height}x{width}")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be from 0 to 1, got {eta}")
    if eta and "eta" not in inspect.signature(scheduler.step).parameters:
        raise ValueError(f"eta is DDIM's noise setting (Song et al. 2021, eq. 16); scheduler "
                         f"{name!r} does not take it: use ddim, or no eta")
    if not 0 <= guidance_rescale <= 1:
        raise ValueError(f"guidance_rescale must be from 0 to 1, got {guidance_rescale}")
    fewstep.check_inputs(components, name, guidance_scales, guidance_rescale)  # LCM's limits


@torch.no_grad()
def run_guidance_sweep(
    components: Components,
    prompt: str | None,
    seed: int,
    guidance_scales,
    num_inference_steps: int,
    height: int,
    width: int,
    capture_attention: bool = True,
    attention_levels=None,
    progress=None,
    on_step=None,
    negative_prompt: str = "",
    eta: float = 0.0,
    guidance_rescale: float = 0.0,
    control=None,
) -> list[RunResult]:
    """Denoise one (prompt, seed) at every guidance scale at once; one RunResult per scale.

    UNet batch rows are [uncond x Gu, text x Gt]: guidance 1 needs no unconditional row,
    guidance 0 no text row. prompt=None runs guidance 0 from the unconditional branch
    only (that run is the same for every prompt with this negative prompt).
    attention_levels: the map heights the combined attention map averages (None: all but
    the mid block). `progress.update(1)` once per UNet call; `on_step(i, guidance_scales,
    latents, pred_original_sample)` too (the live server streams each step with it:
    precompute/live.py). negative_prompt, eta, guidance_rescale: as the pipeline's.
    """
    unet, device, dtype = components.unet, components.device, components.dtype

    # 1. Check inputs
    guidance_scales = [float(s) for s in guidance_scales]
    eta, guidance_rescale = float(eta or 0), float(guidance_rescale or 0)
    check_inputs(components, prompt, guidance_scales, num_inference_steps, height, width,
                 eta, guidance_rescale, control and list(zip(guidance_scales, control.scales)))
    runs = range(len(guidance_scales))
    uncond_runs = [g for g in runs if guidance_scales[g] != 1]  # need eps(x_t, t, negative)
    text_runs = [g for g in runs if guidance_scales[g] != 0]  # need eps(x_t, t, prompt)
    uncond_runs, text_runs = fewstep.branch_rows(unet, runs, uncond_runs, text_runs)  # LCM: prompt rows only
    # the pipeline rescales only where it guides (do_classifier_free_guidance: scale > 1)
    rescaled = [g for g in runs if guidance_scales[g] > 1] if guidance_rescale > 0 else []

    # 2. Encode the prompt and the negative prompt ("" when none, as in the pipeline) with
    #    the CLIP text encoder (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance",
    #    drop the condition for the unconditional branch)
    negative_prompt = negative_prompt or ""
    negative = encode_prompt_tokens(components, negative_prompt)
    uncond_embeds = torch.from_numpy(negative["embeddings"])
    prompt_embeds = n_real = tokens = None
    if text_runs:
        tokens = encode_prompt_tokens(components, prompt)
        prompt_embeds, n_real = torch.from_numpy(tokens["embeddings"]), tokens["n_real"]
    encoder_hidden_states = torch.stack(
        [uncond_embeds] * len(uncond_runs) + [prompt_embeds] * len(text_runs)
    ).to(device, dtype)  # (Gu + Gt, 77, D)
    s = torch.tensor(guidance_scales, device=device, dtype=torch.float32).view(-1, 1, 1, 1)  # (G, 1, 1, 1)
    few_kwargs = fewstep.unet_kwargs(unet, guidance_scales, text_runs, device, dtype)  # LCM: timestep_cond
    # 2b. SDXL only (else None): pooled text embeddings and size/crop conditioning per row
    added_cond_kwargs = sdxl.added_cond_kwargs(components, negative, tokens, len(uncond_runs),
                                               len(text_runs), height, width)

    # 3. Prepare timesteps (a private copy: the scheduler keeps per-run state)
    scheduler = copy.deepcopy(components.scheduler)
    name = scheduler_name(scheduler)
    with quiet_diffusers():
        scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = scheduler.timesteps  # one entry per UNet call
    _check_timesteps(name, timesteps, num_inference_steps)
    if hasattr(scheduler, "get_lms_coefficient"):
        # LMS integrates its coefficients numerically (scipy) at every step; cache them so
        # the zero-output copy in 5.4 (a deepcopy shares the cache) does not redo it
        scheduler.get_lms_coefficient = functools.lru_cache(maxsize=None)(scheduler.get_lms_coefficient)

    # 4. Prepare latents x_T ~ N(0, I) * init_noise_sigma, exactly as the pipeline's
    #    prepare_latents for batch 1 given a CPU generator (NOISE); every guidance scale
    #    starts from the same x_T. The same generator then gives a stochastic step its noise
    #    (the pipeline's extra_step_kwargs): one copy per row, so every row draws what a
    #    pipeline run of its own guidance scale draws.
    latent_shape = (1, unet.config.in_channels, height // components.vae_scale_factor,
                    width // components.vae_scale_factor)
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = randn_tensor(latent_shape, generator=generator, device=device, dtype=dtype)
    latents = (latents * scheduler.init_noise_sigma).repeat(len(guidance_scales), 1, 1, 1)  # (G, C, h, w)
    step_params = inspect.signature(scheduler.step).parameters
    takes_generator = "generator" in step_params
    step_kwargs = {"eta": eta} if "eta" in step_params else {}

    record = {k: [] for k in ("latents", "noise_pred_uncond", "noise_pred_text", "noise_pred",
                              "pred_original_sample", "weaken", "attention", "variance_noise",
                              "noise_scale", "std_ratio")}
    record["latents"].append(latents)
    sigmas, alphas_cumprod, starts = [], [], []
    history = multistep.Tracker()  # multistep solvers: each call's and earlier calls' parts
    x0_from = "step"

    capture = None
    if capture_attention and text_runs:
        text_rows = range(len(uncond_runs), len(uncond_runs) + len(text_runs))
        capture = CrossAttentionCapture(unet, latent_shape[2:], n_real, rows=text_rows,
                                        combined_levels=attention_levels)

    # 5. Denoising loop: one iteration per UNet call
    with capture if capture is not None else contextlib.nullcontext():
        for i, t in enumerate(timesteps):
            x_t = latents  # (G, C, h, w)
            starts.append(_starts_step(scheduler))
            # 5.1 One UNet call for both branches of every guidance scale
            latent_model_input = torch.cat([x_t[uncond_runs], x_t[text_runs]])  # (Gu + Gt, C, h, w)
            latent_model_input = scheduler.scale_model_input(latent_model_input, t)
            sigma, alpha_cumprod = _noise_level(scheduler, name, i, t)  # what the UNet saw
            # 5.1b ControlNet (precompute/controlnet.py): its residuals for each row's run
            control_kwargs = {} if control is None else control.unet_kwargs(
                i, len(timesteps), latent_model_input, t, encoder_hidden_states, uncond_runs, text_runs)
            model_output = unet(latent_model_input, t, encoder_hidden_states=encoder_hidden_states,
                                added_cond_kwargs=added_cond_kwargs, **control_kwargs, **few_kwargs,
                                return_dict=False)[0]  # (Gu + Gt, C, h, w)

            # 5.2 Classifier-free guidance (Ho & Salimans 2022, eq. 6 with s = 1 + w),
            #     one s per run: eps = eps_uncond + s * (eps_text - eps_uncond)
            noise_pred_uncond, noise_pred_text = _per_run(model_output, uncond_runs, text_runs)  # (G, C, h, w) each
            noise_pred = (noise_pred_uncond + s * (noise_pred_text - noise_pred_uncond)).to(dtype)  # (G, C, h, w)
            std_ratio = torch.ones(len(guidance_scales), device=device)  # (G,)
            if rescaled:
                # 5.2b guidance_rescale (Lin et al. 2023, "Common Diffusion Noise Schedules
                #      and Sample Steps are Flawed", eq. 15-16): scale the guided output to
                #      the text branch's std, mixed in by phi (diffusers' rescale_noise_cfg)
                guided = noise_pred[rescaled]
                std_ratio[rescaled] = (noise_pred_text[rescaled].std(dim=(1, 2, 3))
                                       / guided.std(dim=(1, 2, 3))).float()
                noise_pred[rescaled] = rescale_noise_cfg(guided, noise_pred_text[rescaled].to(dtype),
                                                         guidance_rescale=guidance_rescale)

            # 5.3 Scheduler step x_t -> x_{t-1} (LMS: Karras et al. 2022 sampling with a
            #     linear multistep ODE solver; DDIM: Song et al. 2021 eq. 12; Euler (a), Heun:
            #     Karras et al. 2022 Algorithms 1-2; DPM-Solver++(2M): Lu et al. 2022;
            #     UniPC: Zhao et al. 2023; PNDM: Liu et al. 2022; DDPM: Ho et al. 2020)
            shadow = copy.deepcopy(scheduler)
            other = copy.deepcopy(scheduler) if takes_generator else None
            state = generator.get_state()
            rows = _generators(takes_generator, state, len(guidance_scales))
            step = scheduler.step(noise_pred, t, x_t, **step_kwargs, **rows)
            latents = step.prev_sample
            pred_original_sample, x0_from = fewstep.step_x0(step, scheduler, name, noise_pred, x_t, x0_from)
            if pred_original_sample is None:
                pred_original_sample, x0_from = _x0(scheduler, noise_pred, x_t, alpha_cumprod)
            # 5.3b A multistep solver's step split into this call's and earlier calls' parts,
            #      measured by stepping copies (precompute/multistep.py), which also steps
            #      the copy `shadow` with a zero model output (and the same noise) for 5.4
            zero, _ = history.step(shadow, noise_pred, latents, lambda copy_, out: copy_.step(
                out, t, x_t, **step_kwargs, **_generators(takes_generator, state, len(guidance_scales))).prev_sample)

            # 5.4 weaken: what differs from the zero-output step (`zero`) is the part of
            #     x_{t-1} that noise_pred moved, projected on noise_pred per run
            #     (= sigma_t - sigma_{t+1} for Euler with epsilon prediction)
            weaken = -_project(latents - zero, noise_pred)  # (G,)

            # 5.5 The noise a stochastic step added: its N(0, I) draw z (every row draws the
            #     same, from its own copy of the generator) and the factor c it was added with,
            #     measured as weaken is: a copy stepped with another draw z' differs by c (z - z')
            variance_noise = noise_scale = None
            if takes_generator and not torch.equal(rows["generator"][0].get_state(), state):
                z = randn_tensor(latent_shape, generator=_generator(state), device=device,
                                 dtype=noise_pred.dtype)  # (1, C, h, w)
                other_state = torch.Generator("cpu").manual_seed(seed + i + 1).get_state()
                z_other = randn_tensor(latent_shape, generator=_generator(other_state), device=device,
                                       dtype=noise_pred.dtype)
                changed = latents - other.step(noise_pred, t, x_t, **step_kwargs, **_generators(
                    True, other_state, len(guidance_scales))).prev_sample
                noise_scale = _project(changed, (z - z_other).expand_as(changed))  # (G,)
                variance_noise = z[0]  # (C, h, w)
            if takes_generator:  # where the pipeline's generator is now
                generator.set_state(rows["generator"][0].get_state())

            # 5.6 Record
            sigmas.append(sigma)
            alphas_cumprod.append(alpha_cumprod)
            record["latents"].append(latents)
            record["noise_pred_uncond"].append(noise_pred_uncond)
            record["noise_pred_text"].append(noise_pred_text)
            record["noise_pred"].append(noise_pred)
            record["pred_original_sample"].append(pred_original_sample)
            record["weaken"].append(weaken)
            record["std_ratio"].append(std_ratio)
            record["variance_noise"].append(variance_noise)
            record["noise_scale"].append(noise_scale)
            if capture is not None:
                record["attention"].append(capture.pop_step())  # {key: (Gt, K, r_h, r_w)}
            if progress is not None:
                progress.update(1)
            if on_step is not None:
                on_step(i, guidance_scales, latents, pred_original_sample)

    # 6. Split the batch into one RunResult per guidance scale, on the host
    stochastic = any(c is not None and bool((c != 0).any()) for c in record["noise_scale"])
    zeros = torch.zeros(latent_shape[1:], device=device, dtype=dtype)
    record["variance_noise"] = [(z if z is not None else zeros).expand_as(record["latents"][0])
                                for z in record["variance_noise"]]  # (G, C, h, w) each
    record["noise_scale"] = [c if c is not None else torch.zeros(len(guidance_scales), device=device)
                             for c in record["noise_scale"]]
    host = {k: torch.stack(v, dim=1).float().cpu().numpy()  # (G, T or T+1, ...)
            for k, v in record.items() if k != "attention"}
    attention = None
    if capture is not None:
        attention = {key: torch.stack([maps[key] for maps in record["attention"]], dim=2).numpy()
                     for key in record["attention"][0]}  # {key: (Gt, K, T, r_h, r_w)}
    common = dict(
        seed=int(seed),
        negative_prompt=negative_prompt,
        timesteps=timesteps.float().cpu().numpy(),
        sigmas=np.asarray(sigmas, np.float32) if name in SIGMA_LATENTS else None,
        alphas_cumprod=np.asarray(alphas_cumprod, np.float32),
        step_index=np.cumsum(starts) - 1,
        pred_original_sample_from=x0_from,
        **fewstep.run_fields(scheduler, name),
    )
    results = []
    for g, guidance_scale in enumerate(guidance_scales):
        in_text = g in text_runs
        results.append(RunResult(
            guidance_scale=guidance_scale,
            prompt=prompt,
            latents=host["latents"][g],
            noise_pred_uncond=host["noise_pred_uncond"][g] if g in uncond_runs else None,
            noise_pred_text=host["noise_pred_text"][g] if in_text else None,
            noise_pred=host["noise_pred"][g],
            pred_original_sample=host["pred_original_sample"][g],
            weaken=host["weaken"][g],
            variance_noise=host["variance_noise"][g] if stochastic else None,
            noise_scale=host["noise_scale"][g] if stochastic else None,
            guidance_rescale=guidance_rescale if g in rescaled else 0.0,
            guidance_rescale_std_ratio=host["std_ratio"][g] if g in rescaled else None,
            multistep=history.run_record(g),
            attention={k: v[text_runs.index(g)] for k, v in attention.items()} if attention and in_text else None,
            attention_meta=capture.meta if capture is not None and in_text else None,
            control=None if control is None else control.record(g),
            **common,
        ))
    return results


# -- what each UNet call and scheduler step are ------------------------------------

def _check_timesteps(name: str, timesteps, num_inference_steps: int) -> None:
    """Refuse repeated timesteps where a scheduler does not mean them (heun, kdpm2 and pndm
    do): diffusers' step() finds its place by the timestep, so a repeat makes it step from
    the wrong index and fail (Karras sigmas on a zero-terminal-SNR schedule round several
    huge sigmas to timestep 999)."""
    values = timesteps.tolist()
    if name not in ("heun", "kdpm2", "pndm") and len(set(values)) < len(values):
        raise ValueError(
            f"scheduler {name!r} repeats timesteps at {num_inference_steps} steps on this "
            f"checkpoint ({len(values) - len(set(values))} repeats, e.g. {values[:4]}), which "
            "diffusers' scheduler cannot step (Karras sigmas on a zero-terminal-SNR schedule "
            "do this); use fewer steps or another scheduler (dpmpp_2m)")


def _starts_step(scheduler) -> bool:
    """Whether the next UNet call begins a scheduler step (else it finishes one)."""
    if hasattr(scheduler, "state_in_first_order"):  # Heun, KDPM2: a step is two calls
        return bool(scheduler.state_in_first_order)
    if isinstance(scheduler, PNDMScheduler):
        if not scheduler.config.skip_prk_steps and scheduler.counter < len(scheduler.prk_timesteps):
            return scheduler.counter % 4 == 0  # a Runge-Kutta step: four calls
        # PLMS's first step without PRK is two calls (Liu et al. 2022, the second-order start)
        return not (scheduler.config.skip_prk_steps and scheduler.counter == 1)
    return True


def _noise_level(scheduler, name: str, i: int, t) -> tuple[float | None, float]:
    """(sigma, alpha_bar) of the latent the UNet sees at call i (after scale_model_input).
    sigma only for SIGMA_LATENTS schedulers: their latent is x0 + sigma noise."""
    if fewstep.is_flow(name):  # (1 - sigma) x0 + sigma noise: precompute/fewstep.py
        return fewstep.noise_level(scheduler, i)
    if name in SIGMA_LATENTS:
        sigmas = scheduler.sigmas
        if getattr(scheduler, "sigmas_interpol", None) is not None and not scheduler.state_in_first_order:
            sigmas = scheduler.sigmas_interpol  # KDPM2's second call is at the midpoint sigma
        sigma = sigmas[scheduler.step_index].item()
        return sigma, 1 / (1 + sigma**2)
    if hasattr(scheduler, "sigmas"):  # DPM-Solver++, UniPC: alpha_t^2 = 1 / (1 + sigma_t^2)
        sigma = scheduler.sigmas[i].item()
        return None, 1 / (1 + sigma**2)
    return None, scheduler.alphas_cumprod[int(t)].item()


def _x0(scheduler, model_output, sample, alpha_cumprod: float):
    """x0 estimate of a step that does not return pred_original_sample: (x0, how).

    "model_outputs": DPM-Solver++ and UniPC (predict_x0) convert the model output to x0
    first (convert_model_output) and keep it; that is their own estimate. Else ("formula",
    PNDM), from the call's model output and the latent the UNet saw, with a = alpha_bar_t:
        epsilon:       x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
        v_prediction:  x0 = sqrt(a) x_t - sqrt(1 - a) v
        sample:        x0 = the model output
    """
    config = scheduler.config
    if config.get("algorithm_type") == "dpmsolver++" or config.get("predict_x0") is True:
        return scheduler.model_outputs[-1], "model_outputs"
    a = torch.tensor(alpha_cumprod, dtype=torch.float64)
    x, out = sample.double(), model_output.double()
    kind = config.prediction_type
    if kind == "epsilon":
        x0 = (x - (1 - a).sqrt() * out) / a.sqrt()
    elif kind == "v_prediction":
        x0 = a.sqrt() * x - (1 - a).sqrt() * out
    elif kind == "sample":
        x0 = out
    else:
        raise ValueError(f"prediction_type {kind!r} has no x0 formula here")
    return x0.to(sample.dtype), "formula"


def _project(a, b):
    """Per row, the coefficient c that makes c * b closest to a: <a, b> / <b, b>. (G,)"""
    a, b = a.float(), b.float()
    return (a * b).sum(dim=(1, 2, 3)) / (b * b).sum(dim=(1, 2, 3)).clamp_min(1e-30)


def _generator(state):
    return torch.Generator("cpu").set_state(state)


def _generators(takes_generator: bool, state, rows: int) -> dict:
    """step()'s generator keyword: one CPU generator per row, each in `state`, so each row
    draws what the pipeline's one generator draws for one image (diffusers' randn_tensor
    gives row k the draw of generator k)."""
    return {"generator": [_generator(state) for _ in range(rows)]} if takes_generator else {}


def _per_run(model_output, uncond_runs, text_runs):
    """Rows [uncond x Gu, text x Gt] -> per-run (noise_pred_uncond, noise_pred_text), (G, C, h, w) each.

    A run with one branch only (guidance 0 or 1) gets that branch in both places, so the
    guidance formula returns it exactly: s=0 gives eps_uncond, s=1 gives eps_text.
    """
    uncond_rows, text_rows = model_output.split([len(uncond_runs), len(text_runs)])
    n_runs = len(set(uncond_runs) | set(text_runs))
    noise_pred_uncond = model_output.new_empty((n_runs, *model_output.shape[1:]))
    noise_pred_text = model_output.new_empty((n_runs, *model_output.shape[1:]))
    noise_pred_uncond[text_runs], noise_pred_uncond[uncond_runs] = text_rows, uncond_rows
    noise_pred_text[uncond_runs], noise_pred_text[text_runs] = uncond_rows, text_rows
    return noise_pred_uncond, noise_pred_text


# -- images ---------------------------------------------------------------------

@torch.no_grad()
def decode_latents(components: Components, latents, batch_size: int = 8, vae=None) -> np.ndarray:
    """VAE-decode latents (N, C, h, w) to uint8 RGB (N, H, W, 3), as the pipeline does.

    `batch_size` latents go through the decoder at once (precompute/pipeline_io.py picks it
    from the device's memory and decodes a whole job in one call); `vae` another decoder of
    the same latents (a diffusers AutoencoderTiny for preview frames), else the model's.
    """
    vae = components.vae if vae is None else vae
    dtype = getattr(vae, "dtype", components.dtype)
    latents = torch.as_tensor(np.asarray(latents))
    images = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start : start + batch_size].to(components.device, dtype)
        image = vae.decode(chunk / vae.config.scaling_factor, return_dict=False)[0]  # (n, 3, H, W) in [-1, 1]
        image = (image * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()  # (n, H, W, 3)
        images.append((image * 255).round().astype(np.uint8))
    return np.concatenate(images)


def latent_rgb_factors(latents_final, image_final) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fit of rgb ~= latent @ matrix + bias (rgb in [0, 1]).

    latents_final: (C, h, w) or (N, C, h, w); image_final: (H, W, 3) or (N, H, W, 3)
    uint8, box-downsampled to (h, w). Returns matrix (C, 3) and bias (3,), float32.
    """
    latents = np.asarray(latents_final, np.float64)
    image = np.asarray(image_final, np.float64) / 255
    if latents.ndim == 3:
        latents, image = latents[None], image[None]
    n, c, h, w = latents.shape
    f = image.shape[1] // h
    image = image[:, : h * f, : w * f].reshape(n, h, f, w, f, 3).mean(axis=(2, 4))  # (N, h, w, 3)
    x = latents.transpose(0, 2, 3, 1).reshape(-1, c)  # (N*h*w, C)
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)  # (N*h*w, C+1)
    coef, *_ = np.linalg.lstsq(x, image.reshape(-1, 3), rcond=None)  # (C+1, 3)
    return coef[:c].astype(np.float32), coef[c].astype(np.float32)

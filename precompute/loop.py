"""The instrumented denoising loop: Stable Diffusion unrolled, every step recorded.

`run_guidance_sweep` is StableDiffusionPipeline.__call__ written out (see
shared/sd-internals.md for why we cannot use the pipeline itself), with three changes:
all guidance scales of one (prompt, seed) share one batched UNet call per step, the
two noise predictions and the scheduler's `pred_original_sample` are kept, and the
cross-attention maps are captured. Names follow diffusers so a reader can jump to
its docs:

    latents                x_t, the noisy latent at step i (x_T first)
    noise_pred_uncond      eps(x_t, t, "")          the unconditional prediction
    noise_pred_text        eps(x_t, t, prompt)      the text-conditioned prediction
    noise_pred             eps_u + s (eps_c - eps_u)  classifier-free guidance, s = guidance_scale
    pred_original_sample   x_0 as predicted at step i (the scheduler's estimate)
    weaken                 how much of noise_pred the step removes from x_t

(For v-prediction checkpoints the "noise" predictions are v; the names stay.)
"""

from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from precompute.attention import CrossAttentionCapture
from precompute.model import Components, scheduler_name

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
    latents: np.ndarray  # (T+1, C, h, w), x_T first
    noise_pred_uncond: np.ndarray | None  # (T, C, h, w); None at guidance 1
    noise_pred_text: np.ndarray | None  # (T, C, h, w); None at guidance 0
    noise_pred: np.ndarray  # (T, C, h, w), the guided model output the scheduler used
    pred_original_sample: np.ndarray  # (T, C, h, w)
    timesteps: np.ndarray  # (T,) float32 (LMS/Euler timesteps can be fractional)
    sigmas: np.ndarray | None  # (T,) sigma_t; None for schedulers without sigmas (DDIM)
    alphas_cumprod: np.ndarray  # (T,) alpha-bar at each step's timestep
    weaken: np.ndarray  # (T,) coefficient of noise_pred removed by the step
    attention: dict[str, np.ndarray] | None  # "combined": (K, T, h, w), "res16": (K, T, 16, 16), ...
    attention_meta: dict | None


# -- text ---------------------------------------------------------------------

@torch.no_grad()
def encode_prompt_tokens(components: Components, prompt: str) -> dict:
    """The tokenizer's real output and the text encoder's per-token vectors for `prompt`.

    Tokenized exactly as StableDiffusionPipeline.encode_prompt does (pad to 77, truncate),
    plus what truncation dropped. n_real counts start token .. first end token inclusive;
    the rest is padding.
    """
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

def check_inputs(components, prompt, guidance_scales, num_inference_steps, height, width):
    scheduler_name(components.scheduler)  # raises for unsupported schedulers
    if len(guidance_scales) == 0:
        raise ValueError("guidance_scales is empty")
    if len(set(guidance_scales)) != len(guidance_scales):
        raise ValueError(f"guidance_scales has duplicates: {guidance_scales}")
    if any(s < 0 for s in guidance_scales):
        raise ValueError(f"guidance_scales must be >= 0, got {guidance_scales}")
    if prompt is None and any(s != 0 for s in guidance_scales):
        raise ValueError("prompt=None (the shared unconditional run) only makes sense at guidance_scale 0")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    f = components.vae_scale_factor
    if height % f or width % f:
        raise ValueError(f"height and width must be divisible by {f}, got {height}x{width}")


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
) -> list[RunResult]:
    """Denoise one (prompt, seed) at every guidance scale at once; one RunResult per scale.

    UNet batch rows are [uncond x Gu, text x Gt]: guidance 1 needs no unconditional row,
    guidance 0 no text row. prompt=None runs guidance 0 from the unconditional branch
    only (that run is the same for every prompt). attention_levels: the map heights the
    combined attention map averages (None: all but the mid block). `progress.update(1)`
    once per step; `on_step(i, guidance_scales, latents, pred_original_sample)` too (the
    live server streams each step with it: precompute/live.py).
    """
    unet, device, dtype = components.unet, components.device, components.dtype

    # 1. Check inputs
    guidance_scales = [float(s) for s in guidance_scales]
    check_inputs(components, prompt, guidance_scales, num_inference_steps, height, width)
    runs = range(len(guidance_scales))
    uncond_runs = [g for g in runs if guidance_scales[g] != 1]  # need eps(x_t, t, "")
    text_runs = [g for g in runs if guidance_scales[g] != 0]  # need eps(x_t, t, prompt)

    # 2. Encode the prompt and the empty prompt with the CLIP text encoder
    #    (negative prompt "" as in the pipeline; Ho & Salimans 2022, "Classifier-Free
    #    Diffusion Guidance", drop the condition for the unconditional branch)
    uncond_embeds = torch.from_numpy(encode_prompt_tokens(components, "")["embeddings"])
    prompt_embeds = n_real = None
    if text_runs:
        tokens = encode_prompt_tokens(components, prompt)
        prompt_embeds, n_real = torch.from_numpy(tokens["embeddings"]), tokens["n_real"]
    encoder_hidden_states = torch.stack(
        [uncond_embeds] * len(uncond_runs) + [prompt_embeds] * len(text_runs)
    ).to(device, dtype)  # (Gu + Gt, 77, D)
    s = torch.tensor(guidance_scales, device=device, dtype=torch.float32).view(-1, 1, 1, 1)  # (G, 1, 1, 1)

    # 3. Prepare timesteps (a private copy: the scheduler keeps per-run state)
    scheduler = copy.deepcopy(components.scheduler)
    scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = scheduler.timesteps
    if hasattr(scheduler, "get_lms_coefficient"):
        # LMS integrates its coefficients numerically (scipy) at every step; cache them so
        # the zero-output copy in 5.4 (a deepcopy shares the cache) does not redo it
        scheduler.get_lms_coefficient = functools.lru_cache(maxsize=None)(scheduler.get_lms_coefficient)

    # 4. Prepare latents x_T ~ N(0, I) * init_noise_sigma, exactly as the pipeline's
    #    prepare_latents for batch 1 given a CPU generator (NOISE); every guidance scale
    #    starts from the same x_T
    latent_shape = (1, unet.config.in_channels, height // components.vae_scale_factor,
                    width // components.vae_scale_factor)
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = randn_tensor(latent_shape, generator=generator, device=device, dtype=dtype)
    latents = (latents * scheduler.init_noise_sigma).repeat(len(guidance_scales), 1, 1, 1)  # (G, C, h, w)

    record = {k: [] for k in ("latents", "noise_pred_uncond", "noise_pred_text", "noise_pred",
                              "pred_original_sample", "weaken", "attention")}
    record["latents"].append(latents)
    sigmas, alphas_cumprod = [], []

    capture = None
    if capture_attention and text_runs:
        text_rows = range(len(uncond_runs), len(uncond_runs) + len(text_runs))
        capture = CrossAttentionCapture(unet, latent_shape[2:], n_real, rows=text_rows,
                                        combined_levels=attention_levels)

    # 5. Denoising loop
    with capture if capture is not None else contextlib.nullcontext():
        for i, t in enumerate(timesteps):
            x_t = latents  # (G, C, h, w)
            # 5.1 One UNet call for both branches of every guidance scale
            latent_model_input = torch.cat([x_t[uncond_runs], x_t[text_runs]])  # (Gu + Gt, C, h, w)
            latent_model_input = scheduler.scale_model_input(latent_model_input, t)
            model_output = unet(latent_model_input, t, encoder_hidden_states=encoder_hidden_states,
                                return_dict=False)[0]  # (Gu + Gt, C, h, w)

            # 5.2 Classifier-free guidance (Ho & Salimans 2022, eq. 6 with s = 1 + w),
            #     one s per run: eps = eps_uncond + s * (eps_text - eps_uncond)
            noise_pred_uncond, noise_pred_text = _per_run(model_output, uncond_runs, text_runs)  # (G, C, h, w) each
            noise_pred = (noise_pred_uncond + s * (noise_pred_text - noise_pred_uncond)).to(dtype)  # (G, C, h, w)

            # 5.3 Scheduler step x_t -> x_{t-1} (LMS: Karras et al. 2022 sampling with a
            #     linear multistep ODE solver; DDIM: Song et al. 2021 eq. 12, eta 0;
            #     Euler: Karras et al. 2022 Algorithm 2 without churn)
            shadow = copy.deepcopy(scheduler)
            step = scheduler.step(noise_pred, t, x_t)
            latents, pred_original_sample = step.prev_sample, step.pred_original_sample

            # 5.4 weaken: step a copy with a zero model output; what differs is the part of
            #     x_{t-1} that noise_pred moved, projected on noise_pred per run
            #     (= sigma_t - sigma_{t+1} for Euler with epsilon prediction)
            moved = (latents - shadow.step(torch.zeros_like(noise_pred), t, x_t).prev_sample).float()
            m = noise_pred.float()
            weaken = -(moved * m).sum(dim=(1, 2, 3)) / (m * m).sum(dim=(1, 2, 3)).clamp_min(1e-30)  # (G,)

            # 5.5 Record
            sigma = scheduler.sigmas[i].item() if hasattr(scheduler, "sigmas") else None
            sigmas.append(sigma)
            alphas_cumprod.append(1 / (1 + sigma**2) if sigma is not None
                                  else scheduler.alphas_cumprod[int(t)].item())
            record["latents"].append(latents)
            record["noise_pred_uncond"].append(noise_pred_uncond)
            record["noise_pred_text"].append(noise_pred_text)
            record["noise_pred"].append(noise_pred)
            record["pred_original_sample"].append(pred_original_sample)
            record["weaken"].append(weaken)
            if capture is not None:
                record["attention"].append(capture.pop_step())  # {key: (Gt, K, r_h, r_w)}
            if progress is not None:
                progress.update(1)
            if on_step is not None:
                on_step(i, guidance_scales, latents, pred_original_sample)

    # 6. Split the batch into one RunResult per guidance scale, on the host
    host = {k: torch.stack(v, dim=1).float().cpu().numpy()  # (G, T or T+1, ...)
            for k, v in record.items() if k != "attention"}
    attention = None
    if capture is not None:
        attention = {key: torch.stack([maps[key] for maps in record["attention"]], dim=2).numpy()
                     for key in record["attention"][0]}  # {key: (Gt, K, T, r_h, r_w)}
    common = dict(
        seed=int(seed),
        timesteps=timesteps.float().cpu().numpy(),
        sigmas=np.asarray(sigmas, np.float32) if sigmas[0] is not None else None,
        alphas_cumprod=np.asarray(alphas_cumprod, np.float32),
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
            attention={k: v[text_runs.index(g)] for k, v in attention.items()} if attention and in_text else None,
            attention_meta=capture.meta if capture is not None and in_text else None,
            **common,
        ))
    return results


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
def decode_latents(components: Components, latents, batch_size: int = 8) -> np.ndarray:
    """VAE-decode latents (N, C, h, w) to uint8 RGB (N, H, W, 3), as the pipeline does."""
    vae = components.vae
    latents = torch.as_tensor(np.asarray(latents))
    images = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start : start + batch_size].to(components.device, components.dtype)
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

"""Loads a Stable Diffusion checkpoint into the parts our loop drives.

`load_components` wraps `StableDiffusionPipeline.from_pretrained` (any SD 1.x / 2.x
checkpoint, hub id or local folder, epsilon or v-prediction; SDXL's
`StableDiffusionXLPipeline` when the folder has a second text encoder, precompute/sdxl.py)
and picks device and dtype. It runs the checkpoint's own scheduler unless one is named (`checkpoint_scheduler`
says which of ours that is); `make_scheduler` swaps in a named one, built
from the checkpoint's own scheduler config so that `prediction_type`,
`timestep_spacing`, `rescale_betas_zero_snr`, betas etc. carry over, exactly as
`DDIMScheduler.from_config(pipe.scheduler.config)` does in diffusers: a key the config
omits takes diffusers' default, and a scheduler that cannot follow the checkpoint's noise
schedule is refused, never silently changed.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import diffusers
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)

from precompute.fewstep import (FlowMatchEulerScheduler, InstaFlowEulerScheduler, FEW_STEP,
                                check_family, prediction_type)

from precompute import sdxl

# name -> (scheduler class, the config keys the name fixes). The loop records one entry per
# UNet call (precompute/loop.py): heun, kdpm2 and pndm make more calls than steps.
SCHEDULERS = {
    "pndm": (PNDMScheduler, {}),  # SD 1.x's own (PLMS; PRK warm-up unless skip_prk_steps)
    "lms": (LMSDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),  # eta > 0 (the "eta" setting) makes it stochastic
    "ddpm": (DDPMScheduler, {}),  # stochastic
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),  # stochastic
    "heun": (HeunDiscreteScheduler, {}),  # two UNet calls per step
    "kdpm2": (KDPM2DiscreteScheduler, {}),  # two UNet calls per step
    "dpmpp_2m": (DPMSolverMultistepScheduler,
                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler,
                        {"algorithm_type": "dpmsolver++", "solver_order": 2,
                         "use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {}),
    # few-step models (precompute/fewstep.py): LCM's denoised estimate and jump back to noise
    # (stochastic); rectified-flow Euler in diffusers' convention and in InstaFlow's
    "lcm": (LCMScheduler, {}),
    "flow_euler": (FlowMatchEulerScheduler, {}),
    "instaflow": (InstaFlowEulerScheduler, {}),
}
# Schedulers whose latent is x0 + sigma * noise (Karras et al. 2022's parametrization; the
# UNet sees it divided by sqrt(sigma^2 + 1)): the bundle records their sigmas. The others'
# latent is sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise, as the UNet sees it.
SIGMA_LATENTS = ("lms", "euler", "euler_a", "heun", "kdpm2")

DTYPES = {
    "fp16": torch.float16, "float16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp32": torch.float32, "float32": torch.float32,
}


def pick_device(device: str = "auto") -> torch.device:
    """auto: cuda > mps > cpu."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """auto: fp16 on cuda (what SD is usually run in), fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def make_scheduler(name: str, base_config: dict):
    """A fresh scheduler of kind `name` configured from the checkpoint's scheduler config
    (betas, prediction_type, timestep_spacing...), plus the keys the name fixes (dpmpp_2m's
    solver)."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name!r} is not supported; use one of "
                         f"{', '.join(SCHEDULERS)}")
    scheduler_class, fixed = SCHEDULERS[name]
    # As DDIMScheduler.from_config(pipe.scheduler.config) in diffusers: a key the checkpoint's
    # config file omits (diffusers lists those in `_use_default_values`) takes the class's
    # default, e.g. DDIM's clip_sample=True (SD checkpoints' own configs say False; clipping
    # x0 to [-1, 1] in latent space hurts their images, and the precompute says so).
    for key in SCHEDULE_KEYS:
        if base_config.get(key) and key not in _init_keys(scheduler_class):
            able = [n for n, (c, _) in SCHEDULERS.items() if key in _init_keys(c)
                    and n not in FEW_STEP]  # LCM's sampler suits LCM models only
            raise ValueError(
                f"scheduler {name!r} cannot follow this checkpoint's scheduler config: it sets "
                f"{key}={base_config[key]!r}, which diffusers' {scheduler_class.__name__} does "
                f"not support, and dropping it would sample another noise schedule than the "
                f"model's; use {', '.join(able[:-1])} or {able[-1]}")
    with quiet_diffusers():
        return scheduler_class.from_config({**base_config, **fixed})


@contextlib.contextmanager
def quiet_diffusers():
    """KDPM2's set_timesteps calls np.interp on torch tensors, which NumPy 2 deprecates
    (diffusers 0.42); the result is right, the warning is diffusers' to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array_wrap__", DeprecationWarning)
        yield


def name_of(scheduler_class, config) -> str | None:
    """Our name for a scheduler class with this config, or None when we have none. Ours
    may extend diffusers' class (the flow schedulers: precompute/fewstep.py)."""
    for name, (cls, fixed) in SCHEDULERS.items():
        ours = isinstance(scheduler_class, type) and issubclass(cls, scheduler_class)
        if ours and all(config.get(k, _default(cls, k)) == v for k, v in fixed.items()):
            return name
    return None


def _default(scheduler_class, key):
    """diffusers' default for a config key (what a config file that omits it gets)."""
    return inspect.signature(scheduler_class.__init__).parameters[key].default


def checkpoint_scheduler(model) -> str:
    """The name of the checkpoint's own scheduler (model_index.json's class, its
    scheduler/scheduler_config.json), read without loading the model; ValueError when the
    precompute cannot record it."""
    index = StableDiffusionPipeline.load_config(str(model))  # model_index.json
    class_name = (index.get("scheduler") or [None, None])[1]
    scheduler_class = getattr(diffusers, str(class_name), None)
    config = scheduler_class.load_config(str(model), subfolder="scheduler") \
        if scheduler_class is not None else {}
    return _own_name(scheduler_class or class_name, config)


def _own_name(scheduler_class, config) -> str:
    name = name_of(scheduler_class, config)
    if name is None:
        solver = {k: config.get(k) for k in ("algorithm_type", "solver_order", "use_karras_sigmas")
                  if k in config}
        raise ValueError(
            f"the checkpoint's own scheduler ({getattr(scheduler_class, '__name__', scheduler_class)}"
            f"{' ' + str(solver) if solver else ''}) is not one the precompute can record; name "
            f"one with --scheduler (or scheduler = \"...\" in the prompt file): "
            f"{', '.join(SCHEDULERS)}")
    return name


# Scheduler config keys that change the noise schedule itself (the alphas_cumprod the model
# was trained on): a scheduler without the option would ignore them silently.
SCHEDULE_KEYS = ("rescale_betas_zero_snr",)


def _init_keys(scheduler_class) -> set[str]:
    return set(inspect.signature(scheduler_class.__init__).parameters)


def check_device(device: str) -> torch.device:
    """The torch device for --device (see pick_device), or ValueError when it is not here."""
    device = pick_device(device)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"--device {device}: this machine has {count or 'no'} CUDA "
                             "device(s) torch can use; use --device cpu (or auto)")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"--device {device}: Apple's MPS is not available here; use "
                             "--device cpu (or auto)")
    return device


def scheduler_name(scheduler) -> str:
    """Our name for a scheduler object, or ValueError naming the supported ones."""
    name = name_of(type(scheduler), scheduler.config)
    if name is None:
        raise ValueError(f"unsupported scheduler {type(scheduler).__name__}; use one of "
                         f"{', '.join(SCHEDULERS)}")
    return name


@dataclass
class Components:
    """The pipeline's parts, on one device in one dtype."""

    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler: Any
    device: torch.device
    dtype: torch.dtype
    model_id: str
    # SDXL's second tokenizer and text encoder, and whether its unconditional row without a
    # negative prompt is zeros (precompute/sdxl.py); None / False for SD 1.x and 2.x
    tokenizer_2: Any = None
    text_encoder_2: Any = None
    force_zeros_for_empty_prompt: bool = False

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def pipeline(self, scheduler=None) -> StableDiffusionPipeline:
        """A plain StableDiffusionPipeline sharing these modules (for comparisons), running
        `scheduler` (default: ours) as it is: it is set after construction, as diffusers'
        documented `pipe.scheduler = DDIMScheduler.from_config(...)` does, because the
        constructor rewrites a DDIM clip_sample=True to False (deprecated in diffusers).
        SDXL: a StableDiffusionXLPipeline."""
        if sdxl.is_sdxl(self):
            return sdxl.pipeline(self, scheduler)
        pipe = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=None,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.scheduler = scheduler if scheduler is not None else self.scheduler
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def describe(self) -> dict:
        """JSON-ready facts about the model for the bundle's config."""
        unet, scheduler = self.unet.config, self.scheduler
        return {
            "model_id": self.model_id,
            "prediction_type": prediction_type(scheduler, scheduler_name(scheduler)),
            "latent_channels": unet.in_channels,
            "vae_scale_factor": self.vae_scale_factor,
            "vae_scaling_factor": float(self.vae.config.scaling_factor),
            "cross_attention_dim": unet.cross_attention_dim,
            "sample_size": unet.sample_size,
            "text_max_length": int(self.tokenizer.model_max_length),
            "tokenizer": self._tokenizer_facts(),
            **sdxl.describe(self),  # SDXL: tokenizer_2, text_encoder_2
            # trained by `noisepath train-demo` (its export writes training_state.json): the
            # app then says what the demo model is (frontend/js/wording.js)
            "noisepath_demo": (Path(self.model_id) / "training_state.json").is_file(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "scheduler": {
                "name": scheduler_name(scheduler),
                "class": type(scheduler).__name__,
                "config": _jsonable(dict(scheduler.config)),
            },
        }

    def _tokenizer_facts(self) -> dict:
        """What the app says about the tokenizer: its vocabulary size and special tokens."""
        t = self.tokenizer
        return {"class": type(t).__name__, "vocab_size": len(t),
                "bos_token": t.bos_token, "eos_token": t.eos_token, "pad_token": t.pad_token}


def _jsonable(value):
    """Config values as plain JSON types (tuples -> lists, numpy/torch scalars -> numbers).
    JSON has no infinities: a non-finite number (DPM-Solver's default lambda_min_clipped
    is -inf) is written as its name, "-inf", "inf" or "nan"."""
    plain = json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
    return _finite(plain)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def load_components(model: str, device="auto", dtype="auto", scheduler=None) -> Components:
    """Load any diffusers SD checkpoint (hub id or folder) and swap in `scheduler` (None:
    keep the checkpoint's own, if the precompute can record it)."""
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    # The safety checker only looks at final images; the explainer shows every step
    # and the checkpoint may not ship one (or a feature extractor) at all.
    if sdxl.is_sdxl_checkpoint(model):  # model_index.json names tokenizer_2 / text_encoder_2
        pipe = sdxl.from_pretrained(model, dtype)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(model), dtype=dtype, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.to(device)
    name = scheduler or _own_name(type(pipe.scheduler), pipe.scheduler.config)
    check_family(name, type(pipe.scheduler))  # flow vs diffusion (precompute/fewstep.py)
    text_encoder_2 = getattr(pipe, "text_encoder_2", None)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, text_encoder_2):
        if module is not None:
            module.eval().requires_grad_(False)
    return Components(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        unet=pipe.unet,
        vae=pipe.vae,
        scheduler=make_scheduler(name, pipe.scheduler.config),
        device=device,
        dtype=dtype,
        model_id=str(model),
        tokenizer_2=getattr(pipe, "tokenizer_2", None),
        text_encoder_2=text_encoder_2,
        force_zeros_for_empty_prompt=bool(pipe.config.get("force_zeros_for_empty_prompt", False)),
    )

"""SDXL's text side: two text encoders, pooled embeddings, size and crop conditioning.

StableDiffusionXLPipeline (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models
for High-Resolution Image Synthesis") conditions its UNet on more than SD 1.x / 2.x does.
What our loop hands the UNet per batch row, with diffusers' names:

    encoder_hidden_states  (77, D1 + D2)  the penultimate hidden states of CLIP ViT-L
                                          (text_encoder, D1 = 768) and OpenCLIP ViT-bigG
                                          (text_encoder_2, D2 = 1280), concatenated per
                                          token: what cross-attention reads
    text_embeds            (P,)           text_encoder_2's pooled, projected output
                                          (P = projection_dim, 1280)
    time_ids               (6,)           original_size + crops_coords_top_left +
                                          target_size (section 2.2, "micro-conditioning")

`text_embeds` and `time_ids` reach the UNet as `added_cond_kwargs` and are added to its
timestep embedding. Without a negative prompt the unconditional row is all zeros
(pipeline config `force_zeros_for_empty_prompt`, True for SDXL base), not the encoding
of "". Everything here follows `StableDiffusionXLPipeline.encode_prompt` and
`_get_add_time_ids` for one prompt, one image, no LoRA, no clip_skip, and `prompt_2 =
prompt`; tests/test_sdxl.py checks the final latent against the pipeline.

Refiner checkpoints (no first text encoder, aesthetic-score conditioning, img2img) are
refused. Turbo-style checkpoints load like the base model; their few-step settings are
the scheduler's and the prompt file's.
"""

from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, DiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)

CROPS_COORDS_TOP_LEFT = (0, 0)  # the pipeline's default: an uncropped training image


def is_sdxl_checkpoint(model) -> bool:
    """Whether the pipeline folder (or hub id) has SDXL's second tokenizer and text encoder
    (model_index.json's tokenizer_2 / text_encoder_2), read without loading the model."""
    index = DiffusionPipeline.load_config(str(model))
    return any((index.get(key) or [None])[0] is not None for key in ("tokenizer_2", "text_encoder_2"))


def is_sdxl(components) -> bool:
    """Whether loaded components are SDXL's (they have a second text encoder)."""
    return getattr(components, "text_encoder_2", None) is not None


def default_size(model) -> int | None:
    """StableDiffusionXLPipeline's default image side for `model`: the UNet's sample_size
    times the VAE's scale factor (1024 for SDXL base: 128 x 128 latents), from the config
    files alone; None for SD 1.x / 2.x, or a model that cannot be read here (loading it
    says why)."""
    try:
        if not is_sdxl_checkpoint(model):
            return None
        unet = UNet2DConditionModel.load_config(str(model), subfolder="unet")
        vae = AutoencoderKL.load_config(str(model), subfolder="vae")
    except Exception:  # noqa: BLE001 (a missing or offline model: the load reports it)
        return None
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def from_pretrained(model, dtype: torch.dtype) -> StableDiffusionXLPipeline:
    """The SDXL pipeline of `model` (no watermarker: the explainer shows every step's latent,
    and diffusers adds the watermark to decoded images only). A VAE whose config asks for
    float32 (`force_upcast`, SDXL's own VAE overflows in fp16) is kept in float32, as the
    pipeline's decode upcasts it."""
    upcast = dtype == torch.float16 and AutoencoderKL.load_config(str(model), subfolder="vae").get(
        "force_upcast", True)  # diffusers' default
    pipe = StableDiffusionXLPipeline.from_pretrained(
        str(model), dtype={"default": dtype, "vae": torch.float32} if upcast else dtype,
        add_watermarker=False)
    if pipe.text_encoder is None or pipe.tokenizer is None:
        raise ValueError(f"{model}: an SDXL checkpoint without the first text encoder (the SDXL "
                         "refiner, an img2img model) is not supported; use an SDXL base model")
    if pipe.config.get("requires_aesthetics_score"):
        raise ValueError(f"{model}: aesthetic-score conditioning (the SDXL refiner) is not "
                         "supported; use an SDXL base model")
    return pipe


def pipeline(components, scheduler=None) -> StableDiffusionXLPipeline:
    """A plain StableDiffusionXLPipeline sharing the components' modules (for comparisons)."""
    pipe = StableDiffusionXLPipeline(
        vae=components.vae, text_encoder=components.text_encoder,
        text_encoder_2=components.text_encoder_2, tokenizer=components.tokenizer,
        tokenizer_2=components.tokenizer_2, unet=components.unet, scheduler=None,
        force_zeros_for_empty_prompt=components.force_zeros_for_empty_prompt,
        add_watermarker=False,
    )
    pipe.scheduler = scheduler if scheduler is not None else components.scheduler
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- the prompt ---------------------------------------------------------------------

def tokenize(tokenizer, prompt: str) -> tuple[torch.Tensor, dict]:
    """input_ids (1, 77) as the pipeline tokenizes, and what the bundle records of them:
    input_ids, pieces, n_real (start .. first end token), truncated, dropped_pieces."""
    max_length = tokenizer.model_max_length
    input_ids = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True,
                          return_tensors="pt").input_ids  # (1, 77)
    untruncated = tokenizer(prompt, verbose=False).input_ids
    truncated = len(untruncated) > max_length
    dropped = untruncated[max_length - 1 : -1] if truncated else []
    ids = input_ids[0].tolist()
    n_real = ids.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in ids else len(ids)
    return input_ids, {
        "input_ids": ids, "pieces": tokenizer.convert_ids_to_tokens(ids), "n_real": n_real,
        "truncated": truncated, "dropped_pieces": tokenizer.convert_ids_to_tokens(dropped),
    }


@torch.no_grad()
def encode_prompt_tokens(components, prompt: str) -> dict:
    """loop.encode_prompt_tokens for SDXL: the first tokenizer's record, plus `tokens_2`
    (the second tokenizer's), `embeddings` (77, D1 + D2) and `pooled` (P,).

    "" is the unconditional row's prompt; with force_zeros_for_empty_prompt its vectors
    are zeros (`zeroed`: True), as the pipeline's are when it is given no negative prompt.
    """
    hidden, pooled, records = [], None, []
    for tokenizer, text_encoder in ((components.tokenizer, components.text_encoder),
                                    (components.tokenizer_2, components.text_encoder_2)):
        input_ids, record = tokenize(tokenizer, prompt)
        out = text_encoder(input_ids.to(components.device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds, the pooled vector
            pooled = out[0]  # (1, P)
        hidden.append(out.hidden_states[-2])  # (1, 77, D_i), the penultimate layer
        records.append(record)
    embeddings = torch.cat(hidden, dim=-1)[0].float()  # (77, D1 + D2)
    pooled = pooled[0].float()  # (P,)
    zeroed = prompt == "" and components.force_zeros_for_empty_prompt
    if zeroed:
        embeddings, pooled = torch.zeros_like(embeddings), torch.zeros_like(pooled)
    return {**records[0], "tokens_2": records[1], "zeroed": zeroed,
            "embeddings": embeddings.cpu().numpy(), "pooled": pooled.cpu().numpy()}


# -- size and crop conditioning -----------------------------------------------------------

def conditioning(components, height: int, width: int) -> dict | None:
    """SDXL's conditioning inputs of a run at height x width, as config.json records them
    (None for SD 1.x / 2.x): the pipeline's defaults original_size = target_size =
    (height, width), crops_coords_top_left = (0, 0)."""
    if not is_sdxl(components):
        return None
    return {"original_size": [height, width], "crops_coords_top_left": list(CROPS_COORDS_TOP_LEFT),
            "target_size": [height, width],
            "force_zeros_for_empty_prompt": bool(components.force_zeros_for_empty_prompt)}


def add_time_ids(components, height: int, width: int) -> torch.Tensor:
    """original_size + crops_coords_top_left + target_size, (1, 6), checked against the
    UNet's added embedding as `_get_add_time_ids` does."""
    c = conditioning(components, height, width)
    time_ids = c["original_size"] + c["crops_coords_top_left"] + c["target_size"]
    unet = components.unet
    passed = unet.config.addition_time_embed_dim * len(time_ids) + \
        components.text_encoder_2.config.projection_dim
    expected = unet.add_embedding.linear_1.in_features
    if passed != expected:
        raise ValueError(f"this SDXL UNet expects an added embedding of {expected} numbers, the "
                         f"time ids and pooled text embedding make {passed}: the checkpoint's "
                         "unet and text_encoder_2 configs disagree")
    return torch.tensor([time_ids], dtype=components.dtype)  # (1, 6)


def added_cond_kwargs(components, negative: dict, tokens: dict | None, n_uncond: int,
                      n_text: int, height: int, width: int) -> dict | None:
    """The UNet's added_cond_kwargs for batch rows [uncond x n_uncond, text x n_text]:
    text_embeds (rows, P) from the encodings `negative` and `tokens`
    (encode_prompt_tokens'), time_ids (rows, 6). None for SD 1.x / 2.x."""
    if not is_sdxl(components):
        return None
    pooled = [torch.from_numpy(negative["pooled"])] * n_uncond
    pooled += [torch.from_numpy(tokens["pooled"])] * n_text if n_text else []
    device, dtype = components.device, components.dtype
    return {
        "text_embeds": torch.stack(pooled).to(device, dtype),  # (rows, P)
        "time_ids": add_time_ids(components, height, width).repeat(n_uncond + n_text, 1).to(device),  # (rows, 6)
    }


def describe(components) -> dict:
    """model_info facts of an SDXL model: its second tokenizer and text encoder."""
    if not is_sdxl(components):
        return {}
    t = components.tokenizer_2
    return {"tokenizer_2": {"class": type(t).__name__, "vocab_size": len(t),
                            "bos_token": t.bos_token, "eos_token": t.eos_token,
                            "pad_token": t.pad_token},
            "text_encoder_2": {"class": type(components.text_encoder_2).__name__,
                               "hidden_size": components.text_encoder_2.config.hidden_size,
                               "projection_dim": components.text_encoder_2.config.projection_dim}}

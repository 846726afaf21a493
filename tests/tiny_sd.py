"""Tiny, random, offline Stable Diffusion pipelines for tests and benchmarks.

`build_tiny_pipeline(path)` writes a complete diffusers pipeline folder (UNet, VAE,
CLIP text encoder, a CLIP-style BPE tokenizer trained here with `tokenizers`, an LMS
scheduler) that loads with `StableDiffusionPipeline.from_pretrained(path)` and never
touches a hub. Shapes follow diffusers' own fast tests (see shared/sd-internals.md):

    UNet   block_out_channels (32, 64), layers_per_block 2, cross_attention_dim 32
    VAE    block_out_channels [32, 64], latent_channels 4 (scale factor 2)
    CLIP   hidden 32, 5 layers, 4 heads, 77 positions

kind="sd15": epsilon prediction, conv projections, one attention_head_dim.
kind="sd2v": v-prediction, linear projections, attention_head_dim per block (like SD 2.x).

Also: bare SD-1.5- and SD-2-shaped UNets with cheap random weights (capture tests),
SD-1.5-sized random components (GPU benchmark), and per-process caches for tests:
`tiny_pipeline_path(kind)` (a folder) and `tiny_components(kind, scheduler)`.
"""

import atexit
import json
import math
import shutil
import tempfile
from pathlib import Path

# Words the tokenizer learns merges from; anything else falls back to single bytes.
WORDS = (
    "a an the of on in with and at by photo painting picture portrait drawing of "
    "astronaut riding horse moon cat dog bird red blue green yellow black white "
    "circle square triangle star large small left right top bottom background "
    "oil watercolor city night sunset mountain lake forest tree house car "
    "beautiful detailed highly trending artstation style"
).split()

SAMPLE_SIZE = 8  # latent side; images are 16x16 (VAE scale factor 2)


def build_tokenizer():
    """A CLIP tokenizer (byte-level BPE, `</w>` word ends) with merges learned offline.

    transformers 5 ignores `vocab_file=`/`merges_file=`, so we pass the vocab dict and
    merge list directly and let `save_pretrained` write the folder.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=400, end_of_word_suffix="</w>", show_progress=False)
    bpe.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]

    # CLIP's vocabulary layout: 256 byte symbols, the same with "</w>", merges, specials.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {}
    for symbol in alphabet + [s + "</w>" for s in alphabet] + [a + b for a, b in merges]:
        vocab.setdefault(symbol, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def unet_config(kind="sd15", sample_size=SAMPLE_SIZE):
    """Tiny UNet2DConditionModel config; `kind` picks SD 1.x or SD 2.x conventions."""
    config = dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
        attention_head_dim=8,
    )
    if kind == "sd2v":
        config.update(attention_head_dim=(4, 8), use_linear_projection=True)
    return config


def sd_shaped_unet_config(kind="sd15", sample_size=8):
    """The real SD 1.5 / SD 2.x UNet shapes (about 860M parameters) at a tiny sample size."""
    config = dict(
        sample_size=sample_size,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    if kind == "sd2":
        config.update(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
    return config


def fast_random_init(module, seed=0):
    """Cheap pseudo-random weights for big modules (torch's init of 860M floats takes ~8 s).

    Matrices are tiled from one random pool and scaled by 1/sqrt(fan_in); 1-D weights
    (norms) are 1, biases 0. Fine for shapes, capture and timing, not for pictures.
    """
    import torch

    pool = torch.rand(2**20 + 7, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim == 1:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
                continue
            flat = param.view(-1)
            for start in range(0, flat.numel(), len(pool)):
                chunk = flat[start : start + len(pool)]
                chunk.copy_(pool[: chunk.numel()].to(chunk.dtype))
            flat.mul_(1 / math.sqrt(param[0].numel()))
    return module.eval()


def build_sd_shaped_unet(kind="sd15", sample_size=8, seed=0):
    """An SD-1.5- or SD-2-shaped UNet (about 860M parameters) with cheap random weights."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd_shaped_unet_config(kind, sample_size))
    return fast_random_init(unet.to_empty(device="cpu"), seed)


def build_sd15_random_components(seed=0):
    """SD-1.5-sized UNet, VAE and CLIP ViT-L text encoder with random weights (for timing).

    The tokenizer is the tiny one (the text encoder's vocabulary matches it); every
    other shape is SD 1.5's.
    """
    import torch
    from diffusers import AutoencoderKL, LMSDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd_shaped_unet_config("sd15", sample_size=64))
        vae = AutoencoderKL(
            block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            sample_size=512,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    for i, module in enumerate((unet, vae, text_encoder)):
        fast_random_init(module.to_empty(device="cpu"), seed + i)
    # position_ids is a buffer, not a parameter: restore it after to_empty
    text_model = getattr(text_encoder, "text_model", text_encoder)
    embeddings = text_model.embeddings
    embeddings.position_ids.copy_(torch.arange(77)[None])
    scheduler = LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                     num_train_timesteps=1000, steps_offset=1)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_components(kind="sd15", seed=0):
    """Random tiny components as a dict for `StableDiffusionPipeline(**components)`."""
    import torch
    from diffusers import AutoencoderKL, LMSDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if kind not in ("sd15", "sd2v"):
        raise ValueError(f"kind must be 'sd15' or 'sd2v', got {kind!r}")
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(kind))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=SAMPLE_SIZE * 2,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=5,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = LMSDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        prediction_type="v_prediction" if kind == "sd2v" else "epsilon",
    )
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_pipeline(path, *, kind="sd15", seed=0):
    """Write a tiny random pipeline folder to `path` (once; reused if complete) and return it."""
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    pipe = StableDiffusionPipeline(**build_components(kind, seed))
    pipe.save_pretrained(path)
    return path


_ROOT = None


def tiny_pipeline_path(kind="sd15"):
    """The tiny pipeline of `kind`, built once per process in a temp dir removed at exit."""
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="noisepath-tiny-sd-"))
        atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
    return build_tiny_pipeline(_ROOT / kind, kind=kind)


_COMPONENTS = {}


def tiny_components(kind="sd15", scheduler="lms"):
    """precompute Components of the tiny pipeline on CPU, fp32, loaded once per (kind, scheduler).

    Shared between test modules; the loop never mutates them (it steps a copy of the
    scheduler and restores the attention processors).
    """
    from precompute.model import load_components

    if (kind, scheduler) not in _COMPONENTS:
        _COMPONENTS[kind, scheduler] = load_components(
            tiny_pipeline_path(kind), device="cpu", dtype="fp32", scheduler=scheduler)
    return _COMPONENTS[kind, scheduler]


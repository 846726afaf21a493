"""Stable Diffusion's parts at toy size, and the caption tokenizer.

The demo model is the same architecture as Stable Diffusion, built from the same
classes, only smaller:
- AutoencoderKL with 4 latent channels, downsampling 4x (64x64 RGB -> 16x16x4 latents);
- CLIPTextModel, a causal transformer over a CLIP-style byte-pair tokenizer trained on
  the caption corpus (start/end tokens, `</w>` word ends, 77-token context);
- UNet2DConditionModel with cross-attention to the text encoder's hidden states;
- the zero-terminal-SNR noise schedule with v-prediction and trailing timestep spacing
  (Lin et al. 2023), the recipe that made a tiny model follow its prompts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77


@dataclass
class ModelConfig:
    """Sizes of the three networks. The defaults are the shipped demo model."""

    image_size: int = 64
    vae_channels: tuple[int, ...] = (16, 32, 64)  # 3 blocks: 4x downsampling
    vae_norm_groups: int = 8
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_attention_heads: int = 4
    unet_layers_per_block: int = 1
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 256

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


MICRO = ModelConfig(image_size=64, vae_channels=(8, 16, 16), vae_norm_groups=4,
                    unet_channels=(16, 32, 32), unet_attention_heads=2,
                    text_hidden=16, text_layers=1, text_heads=2, text_intermediate=32)


# --- tokenizer ----------------------------------------------------------------------------

def train_tokenizer(corpus: list[str], folder: str | Path, vocab_size: int = 1000):
    """Train CLIP's byte-level BPE on the captions and save a CLIPTokenizer folder.

    The normalizer and pre-tokenizer are CLIP's (lower case, words split by a regex, bytes
    mapped to printable characters); the last symbol of every word carries `</w>`. Every
    byte is in the vocabulary with and without `</w>`, as in CLIP, so any text encodes.
    The caption words are few, so with this vocabulary size every word becomes one token.
    """
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=EOS))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  end_of_word_suffix="</w>")
    bpe.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    # CLIP's order: bytes, bytes with </w>, merged symbols, then the two special tokens.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [a + "</w>" for a in alphabet]
    tokens += [a + b for a, b in merges]
    vocab: dict[str, int] = {}
    for token in tokens + [BOS, EOS]:
        vocab.setdefault(token, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
    tokenizer.save_pretrained(str(folder))
    return CLIPTokenizer.from_pretrained(str(folder))


def load_tokenizer(folder: str | Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


# --- networks -------------------------------------------------------------------------------

def build_vae(cfg: ModelConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels, layers_per_block=1,
        norm_num_groups=cfg.vae_norm_groups, sample_size=cfg.image_size,
        mid_block_add_attention=False)


def build_text_encoder(cfg: ModelConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        intermediate_size=cfg.text_intermediate, max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config)


def build_unet(cfg: ModelConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=cfg.latent_size, in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels, block_out_channels=cfg.unet_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=cfg.unet_layers_per_block, cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.unet_attention_heads,
        norm_num_groups=min(32, cfg.unet_channels[0]))


# --- noise schedule -------------------------------------------------------------------------

# Stable Diffusion 1.5's betas (scaled linear, 0.00085 -> 0.012 over 1000 steps), rescaled so
# the last step is pure noise (zero terminal SNR), with v-prediction; sampled with
# "trailing" spacing so the first sampling step starts at t=999, pure noise.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                beta_schedule="scaled_linear", prediction_type="v_prediction",
                rescale_betas_zero_snr=True, timestep_spacing="trailing")


def training_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE, clip_sample=False)


def sampling_scheduler():
    """DDIM (eta 0) configured for the recipe; it returns pred_original_sample each step."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1)  # unused by trailing spacing


def make_pipeline(vae, text_encoder, tokenizer, unet, scheduler=None):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler or sampling_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())

"""A realistic stand-in for Stable Diffusion 1.5 runs at 512 px, to measure bundle sizes.

Random-weight SD output is noise at every step, an upper bound on what compresses; a
trained model's runs are mostly smooth pictures. Without SD weights (nothing is
downloaded) this builds runs of SD's exact shapes whose contents behave like a trained
model's, from real photographs (scikit-image's data module: astronaut, coffee, chelsea,
rocket; `pip install scikit-image`, for this benchmark only):

- schedule: SD 1.5's, scaled_linear betas 0.00085..0.012 over 1000 steps, 50 DDIM
  steps (timesteps 981, 961, ..., 1);
- latents (4, 64, 64): the photo downscaled 8x and mapped to 4 channels by a fixed
  linear map (unit spread, as SD's scaled latents); the "model" predicts x0 as that
  latent blurred, more while the noise is strong (a posterior mean does that), the
  empty prompt blurring more and towards grey; noise predictions, guidance and DDIM
  steps follow from it exactly (epsilon = (x_t - sqrt(a) x0_hat) / sqrt(1 - a));
- decoded frames (256 px, the precompute's image_size for 512 px): the photo noised
  along the same schedule with the run's own latent noise upsampled 8x (the VAE turns a
  latent pixel into an 8x8 patch) plus a little per-pixel grain; predicted-x0 frames:
  the photo blurred as the model's x0 estimate is;
- attention (K tokens, levels 64, 32, 16 and the mid block's 8x8): per token a smooth
  Gaussian blob (start token: a broad field; end token: a weak one), drifting and
  sharpening over the steps, plus smooth low-frequency texture that changes gradually
  from step to step (a new random field every 5 steps); values are shares of a
  pixel's attention (the real tokens' sum below 1). Masks of the blobs are kept for the
  localization check.

Not a model's output: the numbers it gives are estimates of a trained model's sizes,
to be checked on real SD bundles when a GPU makes them.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
from PIL import Image

STEPS, LATENT, IMAGE, FRAME = 50, 64, 512, 256
LEVELS = (64, 32, 16)  # SD 1.5's cross-attention levels at 64x64 latents; mid block 8x8
MID = 8
PROMPT_FILE = Path(__file__).resolve().parent.parent / "precompute/prompts/diffusion-explainer.toml"


def schedule() -> tuple[np.ndarray, np.ndarray]:
    """(timesteps (50,), alphas_cumprod at them (50,)): SD 1.5's DDIM schedule."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1 - betas)
    timesteps = np.arange(STEPS)[::-1] * (1000 // STEPS) + 1   # steps_offset 1 ("leading")
    return timesteps, alphas_cumprod[timesteps]


def mean_tokens() -> float:
    """Mean real tokens (start and end included) of the Diffusion Explainer prompts: CLIP's
    BPE is not available offline, so words and punctuation marks count one token each
    (BPE splits rare words further: a lower bound)."""
    texts = re.findall(r'"([^"]+)"', PROMPT_FILE.read_text())
    return float(np.mean([len(re.findall(r"\w+|[^\w\s]", t)) + 2 for t in texts]))


@functools.lru_cache(maxsize=1)
def photographs() -> list[np.ndarray]:
    """Four real photographs, centre-cropped and resized to 512 px, in [-1, 1]."""
    from skimage import data

    out = []
    for img in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket()):
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        img = Image.fromarray(img).resize((IMAGE, IMAGE), Image.LANCZOS)
        out.append(np.asarray(img, np.float32) / 127.5 - 1)       # (512, 512, 3)
    return out


def _blur(x: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of (H, W, C) float values, per channel."""
    from scipy.ndimage import gaussian_filter

    if radius <= 0.05:
        return x
    return gaussian_filter(x, (float(radius), float(radius), 0), mode="nearest")


def _resize(x: np.ndarray, n: int, method=Image.BICUBIC) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((n, n), method))
                     for c in np.moveaxis(x, -1, 0)], -1)


TO_LATENT = np.array([[0.9, 0.4, -0.5, 0.3], [0.5, -0.8, 0.2, 0.6], [0.3, 0.2, 0.9, -0.7]],
                     np.float32)  # RGB -> 4 latent channels, a fixed stand-in for the encoder


@functools.lru_cache(maxsize=8)
def run_arrays(photo_index: int, seed: int, guidance_scale: float) -> tuple[dict, dict]:
    """(arrays, images) of one stand-in run: DDIM along SD's schedule (module docstring)."""
    photo = photographs()[photo_index]
    rng = np.random.default_rng(seed)
    _, a = schedule()
    a_prev = np.r_[a[1:], 1.0]
    x0 = _resize(photo, LATENT, Image.BOX) @ TO_LATENT                         # (64, 64, 4)
    x0 = (x0 - x0.mean()) / x0.std()
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    x = noise.copy()                                                           # x_T, DDIM: sigma 1
    grain = rng.standard_normal((IMAGE, IMAGE, 3)).astype(np.float32)
    decoded_noise = _resize(noise[..., :3], IMAGE) * 0.6 + 0.15 * grain       # (512, 512, 3)
    latents, uncond_, text_, guided, x0_pred, decoded, x0_frames = [x], [], [], [], [], [], []
    for i in range(STEPS):
        radius = 6 * np.sqrt(1 - a[i])                                         # latent pixels
        x0_text = _blur(x0, radius)
        x0_uncond = 0.6 * _blur(x0, 2 * radius + 1)
        eps = [(x - np.sqrt(a[i]) * m) / np.sqrt(1 - a[i]) for m in (x0_uncond, x0_text)]
        e = eps[0] + np.float32(guidance_scale) * (eps[1] - eps[0])
        x0_hat = (x - np.sqrt(1 - a[i]) * e) / np.sqrt(a[i])
        x = (np.sqrt(a_prev[i]) * x0_hat + np.sqrt(1 - a_prev[i]) * e).astype(np.float32)
        uncond_.append(eps[0]), text_.append(eps[1]), guided.append(e), x0_pred.append(x0_hat)
        latents.append(x)
        x0_frames.append(_blur(photo, 8 * radius))
    for i in range(STEPS + 1):
        ab = a[i] if i < STEPS else 1.0
        decoded.append(np.sqrt(ab) * photo + np.sqrt(1 - ab) * decoded_noise)
    chw = lambda xs: np.stack(xs).transpose(0, 3, 1, 2).astype(np.float32)  # noqa: E731
    arrays = {"latents": chw(latents), "pred_original_sample": chw(x0_pred),
              "noise_pred": chw(guided)}
    if guidance_scale != 1:
        arrays["noise_pred_uncond"] = chw(uncond_)
    if guidance_scale != 0:
        arrays["noise_pred_text"] = chw(text_)
    images = {"decoded": _frames(decoded), "pred_original_sample": _frames(x0_frames)}
    return arrays, images


def _frames(xs) -> np.ndarray:
    """Images in [-1, 1] at 512 px -> uint8 frames at 256 px (N, 256, 256, 3)."""
    out = []
    for x in xs:
        u8 = ((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        out.append(np.asarray(Image.fromarray(u8).resize((FRAME, FRAME), Image.LANCZOS)))
    return np.stack(out)


@functools.lru_cache(maxsize=2)
def attention_maps(k: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({level name: (K, T, r, r)}, masks (K, 64, 64) bool): smooth per-token maps."""
    rng = np.random.default_rng(1000 + seed)
    yy, xx = (np.mgrid[0:LATENT, 0:LATENT] + 0.5) / LATENT                   # (64, 64)
    centres = rng.uniform(0.2, 0.8, (k, 2))
    widths = rng.uniform(0.08, 0.2, k)
    maps = np.zeros((k, STEPS, LATENT, LATENT), np.float32)
    # texture: a random 16 x 16 field per token every 5 steps, upsampled, and blended
    # linearly between those steps (a map changes gradually from step to step)
    keys = np.arange(0, STEPS + 5, 5)
    fields = _resize(rng.random((16, 16, k * len(keys))).astype(np.float32), LATENT)
    fields = fields.reshape(LATENT, LATENT, k, len(keys)).transpose(2, 3, 0, 1)  # (K, keys, 64, 64)
    at = np.arange(STEPS) / 5
    lo, w = at.astype(int), (at % 1)[None, :, None, None].astype(np.float32)
    texture = (1 - w) * fields[:, lo] + w * fields[:, lo + 1]                    # (K, T, 64, 64)
    for t in range(STEPS):
        sharpen = 1.6 - 0.6 * t / (STEPS - 1)             # blobs sharpen as the image forms
        drift = 0.05 * (1 - t / (STEPS - 1))
        for j in range(k):
            cy, cx = centres[j] + drift * np.sin([j + t / 7, j - t / 9])
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (widths[j] * sharpen) ** 2))
            maps[j, t] = 0.12 * blob + 0.02 * texture[j, t]
    maps[0] = 0.5 + 0.1 * texture[0]                      # the start token: broad, strong
    maps[-1] *= 0.3                                       # the end token: weak
    masks = np.stack([((yy - c[0]) ** 2 + (xx - c[1]) ** 2) < (1.2 * w) ** 2
                      for c, w in zip(centres, widths)])
    levels = {}
    for r in LEVELS:                                     # a coarser level: the map averaged
        f = LATENT // r
        levels[f"attention_res{r}"] = maps.reshape(k, STEPS, r, f, r, f).mean(axis=(3, 5))
    f = LATENT // MID
    levels["attention_mid"] = maps.reshape(k, STEPS, MID, f, MID, f).mean(axis=(3, 5))
    return levels, masks


GUIDANCE_SCALES = (0, 1, 7, 20)   # the Diffusion Explainer prompt file's
RUNS_BY_GUIDANCE = {0: 3, 1: 78, 7: 78, 20: 78}  # its 237 runs: 26 prompts x 3 seeds, + 3 g0


def _tokens(k: int) -> dict:
    pieces = ["<|startoftext|>"] + [f"w{i}</w>" for i in range(k - 2)] + ["<|endoftext|>"]
    ids = [49406] + [400 + i for i in range(k - 2)] + [49407] * (77 - k + 1)
    return {"input_ids": ids, "pieces": pieces + ["<|endoftext|>"] * (77 - k), "n_real": k,
            "truncated": False, "dropped_pieces": []}


def write_bundle(root: Path, storage: str, photo_index: int = 0, seed: int = 1) -> dict:
    """One prompt and seed of stand-in runs, one per guidance scale, written by the real
    writer (precompute/writer.py) with `storage`; returns {run_id: attention masks}."""
    from backend import codec
    from precompute.writer import BundleWriter, prompt_id, run_id

    k = round(mean_tokens())
    timesteps, alphas = schedule()
    writer = BundleWriter(root, {
        "storage": storage, "title": "SD 1.5 stand-in", "description": "benchmarks/sd_stand_in.py",
        "model": "sd15-stand-in", "scheduler": "ddim", "num_inference_steps": STEPS,
        "height": IMAGE, "width": IMAGE, "dtype": "float16", "image_size": FRAME,
        "latent_shape": [4, LATENT, LATENT], "prediction_type": "epsilon",
        "model_info": {"cross_attention_dim": 768}, "scheduler_config": {}})
    text = f"stand-in prompt of {k} tokens"
    rng = np.random.default_rng(0)
    for t in ("", text):
        writer.write_prompt(t, _tokens(2 if t == "" else k),
                            rng.standard_normal((77, 768)).astype(np.float32))
    masks = {}
    for g in GUIDANCE_SCALES:
        pid = prompt_id("" if g == 0 else text)
        arrays, frames = run_arrays(photo_index, seed, g)
        arrays = dict(arrays)
        attention = None
        if g != 0:
            levels, masks[run_id(pid, seed, g)] = attention_maps(k, seed)
            arrays.update(levels)
            arrays["attention"] = codec.attention_mean(
                [levels[f"attention_res{r}"] for r in LEVELS], (LATENT, LATENT))
            attention = {"tokens": k, "resolutions": list(LEVELS), "layers": 16,
                         "combined": {"resolution": [LATENT, LATENT], "from": list(LEVELS)},
                         "layers_by_level": {"64": [], "32": [], "16": [], "mid": []},
                         "mid_block_resolution": [MID, MID]}
        writer.write_run({
            "run_id": run_id(pid, seed, g), "prompt_id": pid, "seed": seed,
            "guidance_scale": float(g), "num_inference_steps": STEPS,
            "scheduler": {"name": "ddim", "timesteps": [float(t) for t in timesteps],
                          "sigmas": None, "alphas_cumprod": [float(x) for x in alphas],
                          "weaken": [0.0] * STEPS},
            "latent_preview": {"matrix": (np.linalg.pinv(TO_LATENT) * 0.25).round(6).tolist(),
                               "bias": [0.5] * 3},
            "attention": attention,
        }, arrays, {name: (f, "webp") for name, f in frames.items()})
    writer.rebuild_index()
    return masks

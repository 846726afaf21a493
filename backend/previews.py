"""Image sprites and the cheap previews of a run's arrays (numpy and Pillow, no torch).

One definition, used by the writer (precompute/writer.py) to store previews in a full
bundle and by the server (backend/store.py) to render them for a compact bundle, so
the two give byte-identical PNGs for the same arrays:

- `latents.png`: each latent through the model's linear latent -> RGB map
  (`latent_preview` in run.json: one map per bundle, the same in every run), as the
  UNet sees it: a sigma scheduler's noisy latent x is divided by sqrt(sigma^2 + 1);
- `noise_pred*.png`: each model output (noise or v) through the same map, centred at
  grey, on one scale fixed by the map (unit-variance noise spans most of the range).

Previews of latents of 64 x 64 and more (Stable Diffusion's at 512 px) are JPEG without
chroma subsampling (`.jpg`, 4:4:4) at JPEG_PREVIEW_QUALITY, their entry recording the
quality and the measured error (frame_errors); smaller ones stay lossless PNG
(preview_format; docs/performance.md, "One SD-sized run in the browser").

So the same latent gives the same pixels in every run of a bundle.
A preview is a function of the stored (float16) array, the map and the step's sigmas only.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# preview image name -> the array it shows (image and array share a name)
PREVIEWS = ("latents", "noise_pred", "noise_pred_uncond", "noise_pred_text")
FORMATS = {  # sprite format -> (file extension, mime, Pillow options)
    "webp": ("webp", "image/webp", {"quality": 82, "method": 4}),
    "png": ("png", "image/png", {"optimize": True}),
    "jpeg": ("jpg", "image/jpeg", {"quality": 85}),
}
MIME_FORMAT = {mime: fmt for fmt, (_, mime, _) in FORMATS.items()}  # "image/png" -> "png"

# Preview sprites of frames with at least this many pixels are JPEG 4:4:4 at this quality.
# Measured on the SD-sized stand-in (docs/performance.md, issue 15): 51 latent frames of
# 64x64 are 502 KiB as PNG and 167 KiB at quality 75, mean error 12.3 levels (worst frame
# 15.9; the x_t frames' WebP: 10.3 / 12.4); quality 80 (192 KiB) would put a played run
# over 1 MB. Smaller latents are shown enlarged pixel by pixel, where JPEG's blocks show,
# and cost little as PNG (16x16: 33 KiB a run).
JPEG_PREVIEW_PIXELS = 64 * 64
JPEG_PREVIEW_QUALITY = 75
ERROR_KEYS = ("mean_abs_error", "max_frame_mean_abs_error", "final_mean_abs_error")


# -------------------------------------------------------------------------- sprites

def sprite(frames: np.ndarray, fmt: str, quality: int | None = None,
           **pillow_options) -> tuple[bytes, dict]:
    """Pack frames (N, H, W, 3) uint8 into one grid image, row-major: (file bytes, entry).

    One request loads every frame of a kind; the client crops frame i at column
    i % columns, row i // columns. entry: mime, count, frame_width, frame_height, columns.
    quality: a lossy format's quality (1-100) in place of FORMATS' default;
    pillow_options: more of Pillow's save options (e.g. JPEG's subsampling=0).
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    n, h, w, _ = frames.shape
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    sheet = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = frame
    _, mime, options = FORMATS[fmt]
    if quality is not None and "quality" in options:
        options = {**options, "quality": int(quality)}
    options = {**options, **pillow_options}
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, format=fmt.upper(), **options)
    return buf.getvalue(), {"mime": mime, "count": n, "frame_width": w, "frame_height": h,
                            "columns": columns}


# ------------------------------------------------------------------------- previews

def crop_frames(data: bytes, entry: dict) -> np.ndarray:
    """A sprite file's frames back as (N, H, W, 3) uint8: the inverse of sprite()."""
    n, w, h, cols = (entry[k] for k in ("count", "frame_width", "frame_height", "columns"))
    with Image.open(io.BytesIO(data)) as im:
        sheet = np.asarray(im.convert("RGB"))
    return np.stack([sheet[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w]
                     for i in range(n)])


def frame_errors(original: np.ndarray, decoded: np.ndarray) -> dict:
    """How far a lossy sprite's frames are from the frames encoded, in 0-255 levels per
    channel: the mean |difference| over every frame, the largest frame's mean, and the
    final frame's (the run's image)."""
    diff = np.abs(decoded.astype(np.int16) - original.astype(np.int16))   # (N, H, W, 3)
    per_frame = diff.reshape(len(diff), -1).mean(axis=1)
    return {"mean_abs_error": round(float(per_frame.mean()), 3),
            "max_frame_mean_abs_error": round(float(per_frame.max()), 3),
            "final_mean_abs_error": round(float(per_frame[-1]), 3)}


def latent_preview(latents, matrix, bias) -> np.ndarray:
    """The cheap latent -> RGB preview: (N, C, h, w) -> uint8 (N, h, w, 3)."""
    rgb = np.einsum("nchw,ck->nhwk", np.asarray(latents, np.float32), matrix) + bias  # (N, h, w, 3)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def latents_frames(latents, matrix, bias, sigmas=None) -> np.ndarray:
    """(T+1, C, h, w) -> (T+1, h, w, 3). sigmas: the T steps' sigmas of a sigma scheduler
    (LMS, Euler), whose latent at step i is x0 + sigma_i * noise; it is shown as the UNet
    sees it, divided by sqrt(sigma_i^2 + 1) (the final latent has sigma 0). None (DDIM,
    whose latents are already sqrt(a) x0 + sqrt(1 - a) noise): shown as it is."""
    latents = np.asarray(latents, np.float32)
    scales = np.ones(len(latents), np.float32)                                   # (T+1,)
    if sigmas is not None:
        s = np.asarray(sigmas, np.float64)[: len(latents) - 1]
        scales[: len(s)] = np.sqrt(np.where(np.isfinite(s), s, 0.0) ** 2 + 1)
    return latent_preview(latents / scales[:, None, None, None], matrix, bias)


def noise_scale(matrix) -> float:
    """2.5 x the spread of unit-variance noise through the map: the scale of every noise
    preview of the model (a fixed one, so the same prediction looks the same in every run)."""
    m = np.asarray(matrix, np.float64)
    return 2.5 * float(np.sqrt((m ** 2).sum(0).mean())) or 1.0


def noise_frames(noise, matrix) -> np.ndarray:
    """(T, C, h, w) noise (or v) -> (T, h, w, 3) uint8, centred at grey, on the model's scale."""
    rgb = np.einsum("tchw,cd->thwd", np.asarray(noise, np.float32), matrix)
    return (np.clip(0.5 + 0.5 * rgb / noise_scale(matrix), 0, 1) * 255).round().astype(np.uint8)


def preview_frames(name: str, array: np.ndarray, latent_preview_: dict, sigmas) -> np.ndarray:
    """The frames of preview `name` from its array (as stored: float16), run.json's
    `latent_preview` {matrix (C x 3), bias (3)} and `scheduler.sigmas` (None for DDIM)."""
    if name not in PREVIEWS:
        raise ValueError(f"{name!r} has no preview; previews are {', '.join(PREVIEWS)}")
    matrix = np.asarray(latent_preview_["matrix"], np.float32)   # (C, 3)
    bias = np.asarray(latent_preview_["bias"], np.float32)       # (3,)
    array = np.asarray(array, np.float16)  # what a bundle stores, whatever came in
    if name == "latents":
        return latents_frames(array, matrix, bias, sigmas)
    return noise_frames(array, matrix)


def preview_format(frame_height: int, frame_width: int) -> tuple[str, int | None]:
    """The format and quality of a new preview sprite with frames of this size:
    ("jpeg", JPEG_PREVIEW_QUALITY) from JPEG_PREVIEW_PIXELS on, ("png", None) below."""
    if frame_height * frame_width >= JPEG_PREVIEW_PIXELS:
        return "jpeg", JPEG_PREVIEW_QUALITY
    return "png", None


def entry_format(entry: dict) -> tuple[str, int | None]:
    """The format and quality a stored preview entry records (a bundle written before
    JPEG previews has PNG ones of every size, rendered the same way again)."""
    fmt = MIME_FORMAT.get(entry.get("mime"))
    if fmt not in ("png", "jpeg"):
        raise ValueError(f"a preview is image/png or image/jpeg, not {entry.get('mime')!r}")
    return fmt, (int(entry["quality"]) if fmt == "jpeg" else None)


def encode_preview(frames: np.ndarray, fmt: str, quality: int | None) -> tuple[bytes, dict]:
    """Preview frames as a sprite: PNG, or JPEG 4:4:4 whose entry records its quality and
    measured error against the frames (frame_errors)."""
    if fmt == "png":
        return sprite(frames, "png")
    if fmt != "jpeg":
        raise ValueError(f"a preview is png or jpeg, not {fmt!r}")
    data, entry = sprite(frames, "jpeg", quality, subsampling=0)  # 0: 4:4:4, no chroma halving
    return data, {**entry, "quality": int(quality),
                  **frame_errors(frames, crop_frames(data, entry))}


def preview_sprite(name: str, array: np.ndarray, latent_preview_: dict, sigmas,
                   fmt: str | None = None, quality: int | None = None) -> tuple[bytes, dict]:
    """Preview `name` as a sprite: (file bytes, entry). sigmas: run.json's
    `scheduler.sigmas` (None for DDIM). fmt, quality: as a stored entry records them
    (entry_format); None: chosen by the frames' size (preview_format)."""
    frames = preview_frames(name, array, latent_preview_, sigmas)
    if fmt is None:
        fmt, quality = preview_format(*frames.shape[1:3])
    return encode_preview(frames, fmt, quality)

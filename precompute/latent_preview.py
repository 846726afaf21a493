"""The model's one latent -> RGB preview map (`latent_preview` in config.json and run.json).

The small "latent" pictures are a linear colour preview of the latent's channels:
rgb = latent @ matrix + bias (backend/previews.py draws them). The map belongs to the
model, not to a run: it is fitted once per bundle, from the VAE alone, and every run
of the bundle carries the same one, so the same latent gives the same pixels in every
run (a seed's step-0 noise looks the same for every prompt and guidance scale).

How it is fitted (`fit_latent_preview`): a fixed, seeded set of synthetic colour images
(flat backgrounds with coloured rectangles and gradients, which cover the colour cube)
goes through the VAE encoder (the posterior mean, times the VAE's scaling factor, as
the UNet's latents are); those latents go back through the decoder, and a least-squares
fit (loop.latent_rgb_factors) maps each latent pixel to the mean colour of the decoded
pixels it covers. The same model on the same device and dtype always gives the same map.
"""

from __future__ import annotations

import numpy as np

N_IMAGES = 24       # synthetic images the map is fitted on
MAX_SIDE = 256      # their side in pixels, at most (the map does not depend on the size)


def synthetic_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """n deterministic colour images (n, height, width, 3) uint8: a flat background, a
    few flat rectangles and a gradient band, colours drawn uniformly from the RGB cube."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, height, width, 3), np.uint8)
    for k in range(n):
        image = np.empty((height, width, 3), np.float64)
        image[:] = rng.uniform(0, 1, 3)
        for _ in range(3):
            y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
            y1, x1 = y0 + rng.integers(height // 8, height // 2), x0 + rng.integers(width // 8, width // 2)
            image[y0:y1, x0:x1] = rng.uniform(0, 1, 3)
        band = slice(rng.integers(0, height // 2), None)
        a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        ramp = np.linspace(0, 1, width)[None, :, None]
        image[band] = (1 - ramp) * a + ramp * b
        images[k] = (image * 255).round().astype(np.uint8)
    return images


def fit_latent_preview(components, height: int, width: int) -> dict:
    """The model's latent -> RGB map: {"matrix": C x 3, "bias": 3}, rounded to 6 decimals
    (what config.json and every run.json store)."""
    import torch

    from precompute import loop

    f = components.vae_scale_factor
    h = max(f, min(height, MAX_SIDE) // f * f)
    w = max(f, min(width, MAX_SIDE) // f * f)
    images = synthetic_images(N_IMAGES, h, w)                                     # (N, h, w, 3)
    vae = components.vae
    latents = []
    with torch.no_grad():
        for start in range(0, N_IMAGES, 8):
            chunk = torch.from_numpy(images[start:start + 8]).permute(0, 3, 1, 2)
            x = (chunk.float() / 127.5 - 1).to(components.device, components.dtype)  # [-1, 1]
            posterior = vae.encode(x).latent_dist
            latents.append((posterior.mean * vae.config.scaling_factor).float().cpu().numpy())
    latents = np.concatenate(latents)                                             # (N, C, h/f, w/f)
    decoded = loop.decode_latents(components, latents)                            # (N, h, w, 3)
    matrix, bias = loop.latent_rgb_factors(latents, decoded)
    return {"matrix": np.asarray(matrix, np.float64).round(6).tolist(),
            "bias": np.asarray(bias, np.float64).round(6).tolist()}


def bundle_latent_preview(root) -> dict:
    """The map every run of the bundle at `root` uses: its config.json's. A bundle made
    before the map was per model has none: `noisepath refresh` adds it."""
    from precompute.writer import read_config

    preview = read_config(root).get("latent_preview")
    if not isinstance(preview, dict):
        raise ValueError(f"{root}/config.json has no latent_preview (the bundle was made "
                         "before every run shared one preview map): run `noisepath refresh "
                         f"{root}` once, then this command again")
    return preview

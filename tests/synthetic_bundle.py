"""Builds small, valid bundles from plain numpy arrays (no torch) for tests.

The arrays are not a diffusion model's, but they go through the real writer, so
they have exactly the shapes, dtypes, files and checksums a precompute writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from precompute.writer import BundleWriter, prompt_id, run_id

PROMPTS = [
    ("a red circle on the left", "a red square on the left"),
    ("a very big blue star", "a blue star"),
]


def _tokens(text: str) -> dict:
    words = text.split()
    pieces = ["<|startoftext|>"] + [w + "</w>" for w in words] + ["<|endoftext|>"]
    n_real = len(pieces)
    pieces = pieces + ["<|endoftext|>"] * (77 - n_real)
    ids = [49406] + [100 + i for i in range(len(words))] + [49407] * (77 - n_real + 1)
    return {"input_ids": ids, "pieces": pieces, "n_real": n_real, "truncated": False,
            "dropped_pieces": []}


def _frames(rng, n, size) -> np.ndarray:
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)  # (N, H, W, 3)


def make_bundle(root: str | Path, *, steps: int = 5, seeds=(1, 2), guidance_scales=(0, 1, 7),
                latent: int = 8, image_size: int = 16, prompts=PROMPTS) -> Path:
    root = Path(root)
    rng = np.random.default_rng(0)
    c = 4
    writer = BundleWriter(root, {
        "title": "Synthetic test bundle", "description": "random arrays, real format",
        "model": "synthetic", "scheduler": "euler", "num_inference_steps": steps,
        "height": latent * 8, "width": latent * 8, "dtype": "float32", "image_size": image_size,
        "latent_shape": [c, latent, latent], "prediction_type": "epsilon",
        "model_info": {"cross_attention_dim": 8}, "scheduler_config": {},
    })
    texts = [""] + [t for pair in prompts for t in pair]
    for text in texts:
        writer.write_prompt(text, _tokens(text), rng.standard_normal((77, 8)))
    for i, (main, variant) in enumerate(prompts):
        writer.write_group({"id": f"group-{i}", "title": main,
                            "prompts": [prompt_id(main), prompt_id(variant)],
                            "highlights": {prompt_id(main): [[0, len(main.split()[0])]],
                                           prompt_id(variant): []}})
    for seed in seeds:
        for g in guidance_scales:
            for text in ([""] if g == 0 else texts[1:]):
                _write_run(writer, rng, text, seed, g, steps, c, latent, image_size)
    for seed in seeds:
        coords = {rid: rng.standard_normal((steps + 1, 2))
                  for rid, r in writer.rebuild_index()["runs"].items() if r["seed"] == seed}
        writer.write_trajectories(seed, "pca", coords)
    writer.rebuild_index()
    return root


def _write_run(writer, rng, text, seed, g, steps, c, latent, image_size):
    pid = prompt_id(text)
    shape = (steps, c, latent, latent)
    arrays = {"latents": rng.standard_normal((steps + 1, c, latent, latent)),
              "noise_pred": rng.standard_normal(shape),
              "pred_original_sample": rng.standard_normal(shape)}
    if g != 1:
        arrays["noise_pred_uncond"] = rng.standard_normal(shape)
    if g != 0:
        arrays["noise_pred_text"] = rng.standard_normal(shape)
    attention = None
    if g != 0:
        k = len(text.split()) + 2
        a = rng.random((k, steps, latent, latent))
        arrays["attention"] = a / a.sum(0, keepdims=True)
        arrays[f"attention_res{latent}"] = arrays["attention"]
        arrays[f"attention_res{latent // 2}"] = rng.random((k, steps, latent // 2, latent // 2))
        attention = {"tokens": k, "resolutions": [latent, latent // 2], "mid_block_resolution": None,
                     "combined": {"resolution": [latent, latent], "from": [latent]},
                     "layers": 4}
    images = {"decoded": (_frames(rng, steps + 1, image_size), "webp"),
              "pred_original_sample": (_frames(rng, steps, image_size), "webp"),
              "latents": (_frames(rng, steps + 1, latent), "png")}
    for name in ("noise_pred_uncond", "noise_pred_text", "noise_pred"):
        if name in arrays:
            images[name] = (_frames(rng, steps, latent), "png")
    ts = np.linspace(999, 0, steps).round().astype(int).tolist()
    writer.write_run({
        "run_id": run_id(pid, seed, g), "prompt_id": pid, "seed": seed,
        "guidance_scale": float(g), "num_inference_steps": steps,
        "scheduler": {"name": "euler", "timesteps": ts,
                      "sigmas": np.linspace(14.6, 0.03, steps).tolist(),
                      "alphas_cumprod": np.linspace(0.005, 0.99, steps).tolist(),
                      "weaken": np.linspace(2.0, 0.03, steps).tolist()},
        "latent_preview": {"matrix": rng.standard_normal((4, 3)).tolist(), "bias": [0.5] * 3},
        "attention": attention,
    }, arrays, images)

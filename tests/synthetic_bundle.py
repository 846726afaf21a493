"""Builds small, valid bundles from plain numpy arrays (no torch) for tests.

The arrays are not a diffusion model's, but they go through the real writer, so
they have exactly the shapes, dtypes, files and checksums a precompute writes, and
they keep the format's definitions: noise_pred is the guidance of its branches and
attention the mean of its levels (so a compact bundle can derive them).

exact=True draws every map from 256 levels k/64 - 2 that reach both ends, which 8-bit
quantization stores without loss: a compact bundle then decodes to exactly the
values of the full one.
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


def _exact(rng, shape) -> np.ndarray:
    """Values k/64 - 2 (k in 0..255), each 2-D map holding k = 0 and k = 255."""
    k = rng.integers(0, 256, shape)
    k[..., 0, 0], k[..., -1, -1] = 0, 255
    return (k / 64 - 2).astype(np.float32)


def make_bundle(root: str | Path, *, steps: int = 5, seeds=(1, 2), guidance_scales=(0, 1, 7),
                latent: int = 8, image_size: int = 16, prompts=PROMPTS, storage: str = "full",
                exact: bool = False) -> Path:
    root = Path(root)
    rng = np.random.default_rng(0)
    c = 4
    writer = BundleWriter(root, {"storage": storage,
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
                _write_run(writer, rng, text, seed, g, steps, c, latent, image_size, exact)
    for seed in seeds:
        coords = {rid: rng.standard_normal((steps + 1, 2))
                  for rid, r in writer.rebuild_index()["runs"].items() if r["seed"] == seed}
        writer.write_trajectories(seed, "pca", coords)
    writer.rebuild_index()
    return root


def _write_run(writer, rng, text, seed, g, steps, c, latent, image_size, exact=False):
    pid = prompt_id(text)
    shape = (steps, c, latent, latent)

    def draw(shape_):
        return _exact(rng, shape_) if exact else rng.standard_normal(shape_).astype(np.float32)

    arrays = {"latents": draw((steps + 1, c, latent, latent)),
              "pred_original_sample": draw(shape)}
    if g != 1:
        arrays["noise_pred_uncond"] = draw(shape)
    if g != 0:
        arrays["noise_pred_text"] = draw(shape)
    # classifier-free guidance as the precompute computes it (in float32)
    uncond = arrays.get("noise_pred_uncond", arrays.get("noise_pred_text"))
    text_ = arrays.get("noise_pred_text", uncond)
    arrays["noise_pred"] = uncond + np.float32(g) * (text_ - uncond)
    attention = None
    if g != 0:
        k = len(text.split()) + 2
        if exact:  # positive, like probabilities, and on the 8-bit grid
            fine = _exact(rng, (k, steps, latent, latent)) + 2.5
            coarse = _exact(rng, (k, steps, latent // 2, latent // 2)) + 2.5
        else:
            a = rng.random((k, steps, latent, latent))
            fine = (a / a.sum(0, keepdims=True)).astype(np.float32)
            coarse = rng.random((k, steps, latent // 2, latent // 2)).astype(np.float32)
        arrays[f"attention_res{latent}"], arrays[f"attention_res{latent // 2}"] = fine, coarse
        arrays["attention"] = fine  # the mean over `combined.from` below: one level
        attention = {"tokens": k, "resolutions": [latent, latent // 2], "mid_block_resolution": None,
                     "combined": {"resolution": [latent, latent], "from": [latent]},
                     "layers": 4}
    images = {"decoded": (_frames(rng, steps + 1, image_size), "webp"),
              "pred_original_sample": (_frames(rng, steps, image_size), "webp")}
    ts = np.linspace(999, 0, steps).round().astype(int).tolist()
    writer.write_run({
        "run_id": run_id(pid, seed, g), "prompt_id": pid, "seed": seed,
        "guidance_scale": float(g), "num_inference_steps": steps,
        "scheduler": {"name": "euler", "timesteps": ts,
                      "sigmas": np.linspace(14.6, 0.03, steps).tolist(),
                      "alphas_cumprod": np.linspace(0.005, 0.99, steps).tolist(),
                      "weaken": np.linspace(2.0, 0.03, steps).tolist()},
        "latent_preview": {"matrix": rng.standard_normal((4, 3)).round(6).tolist(),
                           "bias": [0.5] * 3},
        "attention": attention,
    }, arrays, images)


# -- the optional fewstep/ section ("Fifty steps, four, one", issue 16)

FEWSTEP_MODELS = [
    {"id": "teacher", "label": "Teacher (the demo model)", "kind": "teacher",
     "model": "static/demo-model", "scheduler": "ddim", "guidance_scale": 3.0,
     "prediction_type": "v_prediction"},
    {"id": "rectified-flow", "label": "2-rectified flow", "kind": "rectified_flow",
     "model": "static/demo-students/rectified-flow", "scheduler": "flow_euler",
     "guidance_scale": 1.0, "prediction_type": "flow"},
]
FEWSTEP_PATHS = [("teacher", 50), ("rectified-flow", 4), ("rectified-flow", 2),
                 ("rectified-flow", 1)]


def _fewstep_path(rng, noise, result, bend, steps):
    """A flow-style path in 2-D (the projection itself stands in for the latents): Euler
    steps from noise (time 1) to result (time 0) along a quadratic curve bent by `bend`
    (0: straight), with each call's implied prediction and the spec's straightness."""
    time = np.linspace(1.0, 0.0, steps + 1)
    s = 1.0 - time  # 0 at the noise, 1 at the result
    control = (noise + result) / 2 + bend
    xy = ((1 - s) ** 2)[:, None] * noise + (2 * (1 - s) * s)[:, None] * control \
        + (s ** 2)[:, None] * result                                  # (T+1, 2)
    xy[-1] = result
    drift = (xy[:-1] - xy[1:]) / (time[:-1] - time[1:])[:, None]     # eps_hat - x0_hat per call
    pred = xy[:-1] - time[:-1, None] * drift                          # x_t = x0_hat + t (eps_hat - x0_hat)
    chord = noise - result
    straightness = float(np.mean(np.sum((chord - drift) ** 2, axis=1)) / np.sum(chord ** 2))
    return time, xy, pred, straightness


def _fewstep_sprite(path: Path, target, preds, result, size: int) -> None:
    """frames*size x size PNG: each prediction drawn as the target picture faded towards
    grey by its distance from the result (a blurry guess far away), then the result."""
    from PIL import Image

    span = max(float(np.linalg.norm(preds[0] - result)), 1e-9)
    frames = []
    for p in [*preds, result]:
        sharp = 1.0 - min(1.0, float(np.linalg.norm(p - result)) / span) * 0.85
        frames.append((128 + sharp * (target - 128)).astype(np.uint8))
    Image.fromarray(np.concatenate(frames, axis=1)).save(path)  # (size, frames*size, 3)


def write_fewstep_section(root: str | Path, *, examples: int = 2, paths=FEWSTEP_PATHS,
                          size: int = 8) -> Path:
    """fewstep/ beside a synthetic bundle's runs, in the spec's format (index.json and
    one sprite per path): `examples` examples of the bundle's first prompt (seeds 1, 2,
    ...), each path from the example's one noise point. Returns the section's folder."""
    import hashlib
    import json

    root = Path(root)
    folder = root / "fewstep"
    (folder / "files").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(16)
    prompt = PROMPTS[0][0]
    pid = prompt_id(prompt)
    runs = json.loads((root / "bundle.json").read_text())["runs"]
    models = {m["id"] for m in FEWSTEP_MODELS}
    doc = {"format": "noisepath-fewstep", "format_version": 1, "models": FEWSTEP_MODELS,
           "examples": []}
    yy, xx = np.mgrid[:size, :size]
    for seed in range(1, examples + 1):
        example_id = f"{pid}--s{seed}"
        noise = rng.standard_normal(2) * 3
        result = rng.standard_normal(2)
        target = np.where(((xx - size / 3) ** 2 + (yy - size / 2) ** 2 < (size / 4) ** 2)[..., None],
                          [220, 40, 40], [40, 70, 200]).astype(np.float64)  # (size, size, 3)
        noise_bytes = rng.standard_normal((4, 8, 8)).astype(np.float32).tobytes()
        entries = []
        for model, steps in paths:
            assert model in models, model
            bend = np.array([2.5, 1.5]) if model == "teacher" else np.array([0.15, -0.1])
            end = result + (0 if model == "teacher" else rng.standard_normal(2) * 0.15)
            time, xy, pred, straightness = _fewstep_path(rng, noise, end, bend, steps)
            if model == "teacher":  # a VP teacher's noise level sqrt(1 - alpha_bar) falls
                # slowly at first: its first step's time rounds to 1, as the demo's does
                time = np.round(1 - (1 - time) ** 2, 3)
            path_id = f"{model}-{steps}"
            file = f"{example_id}--{path_id}.png"
            _fewstep_sprite(folder / "files" / file, target, pred, end, size)
            entries.append({
                "id": path_id, "model": model, "num_inference_steps": steps,
                "time": time.round(6).tolist(), "xy": xy.round(6).tolist(),
                "pred_xy": pred.round(6).tolist(), "chord": [xy[0].round(6).tolist(), xy[-1].round(6).tolist()],
                "straightness": round(straightness, 6),
                "images": {"file": file, "frames": steps + 1, "width": size, "height": size,
                           "sha256": hashlib.sha256((folder / "files" / file).read_bytes()).hexdigest()},
                "seconds": round(0.01 * steps + 0.02, 3)})
        run = run_id(pid, seed, 7)
        doc["examples"].append({
            "id": example_id, "prompt": prompt, "prompt_id": pid, "seed": seed,
            "run_id": run if run in runs else None,
            "noise_sha256": hashlib.sha256(noise_bytes).hexdigest(),
            "paths": entries, "projection": {"method": "pca", "explained": [0.61, 0.22]}})
    (folder / "index.json").write_text(json.dumps(doc, indent=1))
    return folder

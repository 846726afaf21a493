"""Measure a demo bundle from its own files: what the app shows, judged against the world.

    python -m precompute.demo.bundle_metrics static/demo-bundle [--model static/demo-model]

For every run whose prompt is a demo-world caption:
- adherence: the run's final image (the last frame of `decoded`) read back by the judge,
  per attribute, per guidance scale;
- attention: the run's stored cross-attention (`attention`, the combined map the app
  opens on, and under "attention by level" each level's own map), averaged over all
  steps and upsampled to the image, for each object word, scored against the object's
  region in the run's own final image as the judge reads it (pixel-ranking AUROC, and
  whether the map's peak lies inside the region);
- binding, in two-object prompts: whether each shape and colour word puts more mean
  attention on its own object's region than on the other object's.

Scenes where the judge cannot find the named object in the image are counted (`missing`)
and left out of the attention scores. Needs no torch, except `--model`, which calibrates
the judge's shape classifier on the model's VAE reconstructions (as evaluate.py does).
"""
from __future__ import annotations

import argparse
import json
from io import BytesIO

import numpy as np
from PIL import Image

from backend.bundle import Bundle
from backend.codec import upsample_bilinear
from precompute.demo import judge, world


def final_image(b: Bundle, rid: str) -> np.ndarray:
    """The run's final decoded image, (H, W, 3) uint8: the last frame of its sprite."""
    entry = b.runs[rid]["images"]["decoded"]
    index = entry["count"] - 1
    w, h, cols = entry["frame_width"], entry["frame_height"], entry["columns"]
    x, y = (index % cols) * w, (index // cols) * h
    data = (b.root / "runs" / rid / entry["file"]).read_bytes()
    with Image.open(BytesIO(data)) as sprite:
        return np.asarray(sprite.convert("RGB").crop((x, y, x + w, y + h)))


def word_maps(b: Bundle, rid: str, size: int, name: str = "attention") -> np.ndarray:
    """(K, size, size): each real token's map (the combined one, or array `name`), mean
    over steps."""
    att = np.asarray(b.array(rid, name), dtype=np.float32)  # (K, T, h, w)
    return upsample_bilinear(att.mean(axis=1), (size, size))


def token_of(prompt: dict, word: str, occurrence: int = 0) -> int:
    """Index among the prompt's real tokens of the occurrence-th `word` (one token each)."""
    pieces = prompt["tokens"]["pieces"][:prompt["tokens"]["n_real"]]
    hits = [i for i, p in enumerate(pieces) if p == word + "</w>"]
    return hits[occurrence]


def object_regions(reading: judge.Reading, scene: world.Scene) -> list[np.ndarray | None]:
    """For each named object, the judge's region at its named place (or None)."""
    regions = []
    for obj in scene.objects:
        found = [r for r in reading.objects if r.position == obj.position]
        if len(scene.objects) == 1 and not found and reading.objects:
            found = reading.objects[:1]  # one object drawn elsewhere: still its region
        regions.append(found[0].mask if found else None)
    return regions


def measure(bundle_dir, guidance_scale: float = 3.0) -> dict:
    """Adherence per guidance scale, and attention at `guidance_scale`, from the bundle:
    of the combined map, and of each level's own map."""
    b = Bundle(bundle_dir)
    adherence: dict[str, dict[str, list]] = {}
    scored = []  # (run id, scene, regions, prompt, image side) of the runs scored for attention
    levels: set[int] = set()
    for rid, run in sorted(b.runs.items()):
        if run.get("controlnet"):
            continue  # a sketch says where (and may disagree on purpose): bench_controlnet.py's
        try:
            scene = world.parse_caption(b.prompts[run["prompt_id"]]["text"])
        except ValueError:
            continue  # the empty prompt's shared guidance-0 runs, or a foreign prompt
        image = final_image(b, rid)
        reading = judge.read_scene(image)
        kind = "one object" if len(scene.objects) == 1 else "two objects"
        row = adherence.setdefault(f"{kind}, guidance {run['guidance_scale']:g}", {})
        for attr, hit in judge.score(reading, scene).items():
            row.setdefault(attr, []).append(hit)
        if run["guidance_scale"] == guidance_scale and run.get("attention"):
            scored.append((rid, scene, object_regions(reading, scene), b.prompts[run["prompt_id"]],
                           image.shape[0]))
            levels |= set(run["attention"]["resolutions"])
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    return {
        "adherence": {name: {a: mean(v) for a, v in row.items()} | {"n": len(next(iter(row.values())))}
                      for name, row in sorted(adherence.items())},
        "attention": {"guidance_scale": guidance_scale,
                      "combined from": b.runs[scored[0][0]]["attention"]["combined"]["from"]
                      if scored else None,
                      **attention_scores(b, scored, "attention")},
        "attention by level": {str(r): attention_scores(b, scored, f"attention_res{r}")
                               for r in sorted(levels, reverse=True)},
    }


def attention_scores(b: Bundle, scored: list, name: str) -> dict:
    """Localization (one object) and binding (two objects) of array `name`'s maps."""
    loc = {"shape": ([], []), "colour": ([], [])}  # kind -> (aurocs, peaks inside)
    binding = {"shape": [], "colour": []}
    missing, found = 0, 0
    for rid, scene, regions, prompt, side in scored:
        maps = word_maps(b, rid, side, name)  # (K, 64, 64)
        for i, obj in enumerate(scene.objects):
            if regions[i] is None:
                missing += 1
                continue
            found += 1
            for attr in ("shape", "colour"):
                word = getattr(obj, attr)
                occurrence = sum(getattr(o, attr) == word for o in scene.objects[:i])
                amap = maps[token_of(prompt, word, occurrence)]
                if len(scene.objects) == 1:
                    if 0 < regions[i].sum() < regions[i].size:  # AUROC needs both classes
                        loc[attr][0].append(judge.auroc(amap.ravel(), regions[i].ravel()))
                    loc[attr][1].append(bool(regions[i].ravel()[amap.argmax()]))
                elif regions[1 - i] is not None:
                    binding[attr].append(bool(amap[regions[i]].mean() > amap[regions[1 - i]].mean()))
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    return {
        **{f"one-object {attr} word": {"auroc": mean(a), "peak_inside": mean(p), "n": len(p)}
           for attr, (a, p) in loc.items()},
        **{f"two-object {attr} word on own object": {"rate": mean(v), "n": len(v)}
           for attr, v in binding.items()},
        "objects scored": found, "objects the judge did not find": missing,
    }


def calibrate_with_model(model: str) -> None:
    """Teach the judge's shape classifier the model's VAE (needs torch)."""
    from precompute.demo import evaluate

    pipe = evaluate.load(model)
    judge.calibrate(lambda images: evaluate.reconstruct(pipe, images))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m precompute.demo.bundle_metrics",
        description="Judge a demo bundle from its own files: adherence of every run's final "
                    "image, and localization and binding of its stored attention maps.")
    p.add_argument("bundle", help="bundle folder, e.g. static/demo-bundle")
    p.add_argument("--guidance-scale", type=float, default=3.0,
                   help="the runs whose attention is scored (default 3, the demo's default)")
    p.add_argument("--model", default=None,
                   help="pipeline folder whose VAE calibrates the shape reader (needs torch)")
    args = p.parse_args(argv)
    if args.model:
        calibrate_with_model(args.model)
    print(json.dumps(measure(args.bundle, args.guidance_scale), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

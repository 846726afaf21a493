"""The demo model's colour reading per object colour and per background, side by side.

    python benchmarks/bench_demo_colours.py demo-work/demo-model-old static/demo-model
    python benchmarks/bench_demo_colours.py static/demo-model --per-pair 1 --steps 10   # quick

The held-out draws (evaluate.held_out) sample colours and backgrounds at random, so a weak
pair (an orange object on a black background) can hide in a good average. This bench
writes one-object captions for every (object colour, background) pair of the world, --per-pair
of each (shape, size and position drawn from --seed), from both splits, and judges each
model's image of each caption from the same noise (evaluate.generate: DDIM, trailing
spacing, --guidance). The judge is calibrated on the first model's VAE round trips.
Prints each model's colour adherence overall, per object colour and per background, and the
pairs where the first two models differ.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from precompute.folders import pipeline_folder_problem  # noqa: E402 (after ROOT joins the path)

# world.POSITIONS' keys, in the order the seeded draws index (the documented numbers' order)
POSITIONS = ("left", "right", "center", "top", "bottom")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="pipeline folders (e.g. static/demo-model)")
    p.add_argument("--per-pair", type=int, default=2, help="captions per (colour, background) pair (default 2)")
    p.add_argument("--guidance", type=float, default=3.0, help="guidance scale (default 3, the app's)")
    p.add_argument("--steps", type=int, default=30, help="DDIM steps (default 30)")
    p.add_argument("--seed", type=int, default=7, help="draws the captions' shape, size and position")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    for m in args.models:
        if problem := pipeline_folder_problem(m):
            p.error(problem)
    if args.per_pair < 1:
        p.error("--per-pair must be at least 1")
    return args


def captions(per_pair: int, seed: int):
    """Scenes: per_pair one-object captions for every (object colour, background) pair."""
    import numpy as np

    from precompute.demo import world

    rng, scenes = np.random.default_rng(seed), []
    for bg in world.COLOURS:
        for colour in world.COLOURS:
            if colour == bg:
                continue
            for _ in range(per_pair):
                shape = world.SHAPES[rng.integers(len(world.SHAPES))]
                size = list(world.SIZES)[rng.integers(len(world.SIZES))]
                position = POSITIONS[rng.integers(len(POSITIONS))]
                scenes.append(world.Scene(background=bg, objects=(
                    world.SceneObject(colour=colour, shape=shape, position=position, size=size),)))
    return scenes


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from precompute.demo import evaluate, judge, world

    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    scenes = captions(args.per_pair, args.seed)
    hits, start = {}, time.monotonic()
    for i, m in enumerate(args.models):
        pipe = evaluate.load(m)
        if i == 0:
            judge.calibrate(lambda images: evaluate.reconstruct(pipe, images))
        images = evaluate.generate(pipe, [s.caption for s in scenes], args.guidance, 0, args.steps)
        hits[m] = np.array([judge.score(judge.read_scene(im), s)["colour"] for im, s in zip(images, scenes)])
    print(f"\n{len(scenes)} one-object captions ({args.per_pair} per colour/background pair, seed "
          f"{args.seed}), guidance {args.guidance:g}, DDIM {args.steps} steps, noise seed 0; "
          f"{time.monotonic() - start:.0f} s; load average at end: {os.getloadavg()[0]:.1f}\n")
    colours = list(world.COLOURS)
    for title, key in (("object colour", lambda s: s.objects[0].colour), ("background", lambda s: s.background)):
        print(f"| colour read right, by {title} | all | " + " | ".join(colours) + " |")
        print("|---|---|" + "---|" * len(colours))
        for m, h in hits.items():
            cells = [f"{h[[key(s) == c for s in scenes]].mean():.2f}" for c in colours]
            print(f"| {m} | {h.mean():.3f} | " + " | ".join(cells) + " |")
        print()
    if len(args.models) >= 2:
        a, b = hits[args.models[0]], hits[args.models[1]]
        pairs = lambda mask: sorted({f"{s.objects[0].colour} on {s.background}"  # noqa: E731
                                     for s, x in zip(scenes, mask) if x})
        print(f"worse in {args.models[1]}: {', '.join(pairs(a > b)) or 'none'}")
        print(f"better in {args.models[1]}: {', '.join(pairs(b > a)) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How far the demo model's colour count is from flipping under float noise.

    python benchmarks/bench_demo_colour_margins.py                       # tests/test_demo_quality.py's draw
    python benchmarks/bench_demo_colour_margins.py --n 4 --steps 5       # quick

tests/test_demo_quality.py asserts one-object colour adherence >= 0.95 on 48 held-out
captions at guidance 3: 46 of 48, exactly the threshold for the weights shipped on
3 December 2026. A count at its threshold is only safe if no image is near the judge's
decision. The judge reads an object's colour as the palette colour nearest its median
pixel (precompute/demo/judge.py), so an image's margin is the distance (RGB units) to the
second-nearest palette colour minus the distance to the nearest: moving the median by less
than half the margin cannot change the reading. This bench makes the test's images with the
test's setup (evaluate.held_out, DDIM --steps, guidance 3, seed 0) with one torch thread and
again with two (another order of float sums: a stand-in for another CPU), and prints the
largest pixel difference between the two, each one's counts, and the smallest margins, the
hits' and the misses' apart.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from precompute.folders import pipeline_folder_problem  # noqa: E402 (after ROOT joins the path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "static" / "demo-model"), help="pipeline folder (default: the shipped demo model)")
    p.add_argument("--n", type=int, default=48, help="held-out one-object captions (default 48, the test's)")
    p.add_argument("--steps", type=int, default=30, help="DDIM steps (default 30, the test's)")
    p.add_argument("--show", type=int, default=5, help="smallest margins to list (default 5)")
    args = p.parse_args(argv)
    if problem := pipeline_folder_problem(args.model, "--model"):
        p.error(problem)
    if args.n < 1:
        p.error("--n must be at least 1")
    return args


def margin(image, reading) -> float:
    """How far the judge's reading of the (first) object's colour is from another colour."""
    from precompute.demo import judge

    return judge.colour_margin(judge.median_colour(image.astype("float32"), reading.objects[0].mask))


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from precompute.demo import evaluate, judge

    start = time.perf_counter()
    pipe = evaluate.load(args.model)
    torch.set_num_threads(1)
    judge.calibrate(lambda images: evaluate.reconstruct(pipe, images))  # as the test does
    scenes = evaluate.held_out(args.n, two_objects=False)
    captions = [s.caption for s in scenes]
    images = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        images[threads] = evaluate.generate(pipe, captions, 3.0, 0, args.steps)
    torch.set_num_threads(1)
    diff = int(np.abs(images[1].astype(int) - images[2].astype(int)).max())
    print(f"{args.n} held-out one-object captions, guidance 3, DDIM {args.steps} steps, seed 0; "
          f"{time.perf_counter() - start:.0f} s\n")
    print(f"largest pixel difference, 1 against 2 torch threads: {diff} (of 255)")
    rows = []
    for threads in (1, 2):
        readings = [judge.read_scene(im) for im in images[threads]]
        hits = [judge.score(r, s)["colour"] for r, s in zip(readings, scenes)]
        print(f"{threads} thread(s): colour read right in {int(sum(hits))} of {args.n} ({np.mean(hits):.3f})")
        if threads == 1:
            rows = [(margin(im, r) if r.objects else 0.0, h, i, s.objects[0].colour,
                     r.objects[0].colour if r.objects else "nothing")
                    for i, (im, r, h, s) in enumerate(zip(images[1], readings, hits, scenes))]
    for label, keep in (("hits", 1.0), ("misses", 0.0)):
        chosen = sorted(r for r in rows if r[1] == keep)
        if not chosen:
            print(f"\n{label}: none")
            continue
        print(f"\n{label}: smallest margin {chosen[0][0]:.1f} RGB units (the median must move "
              f"{chosen[0][0] / 2:.1f} to change a reading)")
        print("| margin | caption # | asked | read |\n|---|---|---|---|")
        for m, _, i, asked, read in chosen[:args.show]:
            print(f"| {m:.1f} | {i} | {asked} | {read} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

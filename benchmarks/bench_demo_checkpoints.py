"""Pick between demo-model checkpoints on the selection draw, never on the test draw.

    python benchmarks/bench_demo_checkpoints.py demo-work/old static/demo-model
    python benchmarks/bench_demo_checkpoints.py A B --n 16 --guidance 3   # quick

docs/demo-model.md's tables and tests/test_demo_quality.py use evaluate.held_out's 48
held-out captions per kind (seed 11, the test draw). Choosing weights on those numbers
would fit the choice to them, so checkpoints are compared on a second, disjoint-seeded
draw (seed 12, --n per kind, 96 by default: the selection draw). Every pipeline folder
given is judged on the same captions from the same noise (evaluate.generate: DDIM, 30
steps, trailing spacing), one object and two objects, at each --guidance; the judge is
calibrated on the first folder's VAE round trips, as evaluate.py does, so a difference
between rows is the models' (pass folders that share a VAE, or read the rows with that in
mind). Prints one markdown table; --json also writes every number.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from precompute.folders import pipeline_folder_problem  # noqa: E402 (after ROOT joins the path)

ATTRS = ("background", "colour", "shape", "size", "position")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="pipeline folders (e.g. static/demo-model)")
    p.add_argument("--n", type=int, default=96, help="captions per kind (default 96)")
    p.add_argument("--captions-seed", type=int, default=12,
                   help="held_out's seed: 12, the selection draw (default); 11 is the test draw")
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0],
                   help="guidance scales (default 3, the app's)")
    p.add_argument("--steps", type=int, default=30, help="DDIM steps (default 30)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the numbers here")
    args = p.parse_args(argv)
    for m in args.models:
        if problem := pipeline_folder_problem(m):
            p.error(problem)
    if args.n < 1:
        p.error("--n must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from precompute.demo import evaluate, judge

    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    pipes = {m: evaluate.load(m) for m in args.models}
    first = pipes[args.models[0]]
    judge.calibrate(lambda images: evaluate.reconstruct(first, images))
    kinds = {"one object": evaluate.held_out(args.n, two_objects=False, seed=args.captions_seed),
             "two objects": evaluate.held_out(args.n, two_objects=True, seed=args.captions_seed)}
    start, results = time.monotonic(), {}
    for m, pipe in pipes.items():
        for kind, scenes in kinds.items():
            table = evaluate.adherence_table(pipe, scenes, scales=tuple(args.guidance),
                                             steps=args.steps)
            for g, row in table.items():
                results.setdefault(m, {})[f"{kind}, guidance {g:g}"] = row
    print(f"\n{args.n} captions per kind, held_out seed {args.captions_seed}, DDIM {args.steps} "
          f"steps, noise seed 0; {time.monotonic() - start:.0f} s; load average at end: "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| model | captions | " + " | ".join(ATTRS) + " |")
    print("|---|---|" + "---|" * len(ATTRS))
    for m, rows in results.items():
        for name, row in rows.items():
            cells = [f"{row[a]:.3f}" if a in row else "-" for a in ATTRS]
            print(f"| {m} | {name} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

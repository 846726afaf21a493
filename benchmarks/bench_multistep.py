"""What recording a multistep solver's split costs: the precompute's sweep with and without it.

    python benchmarks/bench_multistep.py                  # dpmpp_2m, unipc; 25 steps; 3 rounds
    python benchmarks/bench_multistep.py --steps 10 --rounds 2

precompute/multistep.py splits every step of LMS, PNDM, DPM-Solver++ and UniPC into this
UNet call's part and each earlier call's, by stepping copies of the scheduler (one more
copy per stored output, and one for the rest). This times the demo model's sweep
(precompute/loop.py run_guidance_sweep: one prompt at the demo bundle's guidance scales
0, 1, 3, 7, attention captured, on the CPU in fp32) with the split, and without it (the
tracker made to treat every scheduler as single-step: only the zero-output step weaken
needs, as before the split existed), alternating the two in each round; the smaller of the
rounds per setting, in CPU seconds of this process per run (the sweep's / 4 runs; one torch
thread, so that other processes on a busy machine change the count less than wall time)
and as a ratio.
Only schedulers that follow the demo model's zero-terminal-SNR schedule run (lms and pndm
are refused on it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = ROOT / "static" / "demo-model"
SCALES = (0.0, 1.0, 3.0, 7.0)  # the demo bundle's
CAPTION = "a red circle on the left"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schedulers", nargs="+", default=["dpmpp_2m", "unipc"])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args(argv)


def sweep_seconds(components, steps: int) -> float:
    from precompute.loop import run_guidance_sweep

    t0 = time.process_time()
    run_guidance_sweep(components, CAPTION, 1, SCALES, steps, 64, 64, capture_attention=True,
                       attention_levels=[16])
    return (time.process_time() - t0) / len(SCALES)


def main(argv=None) -> int:
    import torch

    from precompute import multistep
    from precompute.model import load_components

    args = parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f}, 1 torch thread, {args.steps} steps, "
          f"{args.rounds} rounds, CPU seconds per run (best round)")
    print(f"{'scheduler':<12} {'without':>9} {'with split':>11} {'ratio':>7}")
    for name in args.schedulers:
        components = load_components(str(MODEL), device="cpu", dtype="fp32", scheduler=name)
        sweep_seconds(components, 2)  # warm-up
        best = {"without": float("inf"), "with": float("inf")}
        for _ in range(args.rounds):
            with mock.patch.object(multistep, "is_multistep", lambda scheduler: False):
                best["without"] = min(best["without"], sweep_seconds(components, args.steps))
            best["with"] = min(best["with"], sweep_seconds(components, args.steps))
        print(f"{name:<12} {best['without']:>9.3f} {best['with']:>11.3f} "
              f"{best['with'] / best['without']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Each scheduler on the demo model: prompt adherence (the demo judge) and time per run.

    python benchmarks/bench_schedulers.py                       # 48 captions, 10 25 50 steps
    python benchmarks/bench_schedulers.py --captions 24 --steps 10 25

Adherence: the demo model's held-out one-object captions (precompute/demo/evaluate.py's
held_out, the same as tests/test_demo_quality.py), generated at guidance 3 (the demo's
default scale) with each scheduler at each step count, read back from the pixels by the
demo judge (precompute/demo/judge.py, calibrated on VAE round trips as the tests do).
The batched loop is evaluate.generate's with the scheduler swapped in and, for the
stochastic ones, the seed's generator passed to step() as the pipeline does.

Time per run: the precompute's own sweep (precompute/loop.py's run_guidance_sweep) of one
prompt at the demo bundle's guidance scales (0, 1, 3, 7) with attention capture, divided
by the 4 runs it makes; the faster of two repeats. UNet calls per run: len(timesteps).

Only schedulers that follow the demo model's zero-terminal-SNR schedule run (lms, pndm,
heun and kdpm2 have no rescale_betas_zero_snr in diffusers and are refused).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = ROOT / "static" / "demo-model"
ZERO_SNR_SCHEDULERS = ("ddim", "ddpm", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "unipc")
SCALES = (0.0, 1.0, 3.0, 7.0)  # the demo bundle's
GUIDANCE = 3.0                 # the demo's default_guidance_scale


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--captions", type=int, default=48, help="held-out captions judged (default 48)")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    p.add_argument("--schedulers", nargs="+", default=list(ZERO_SNR_SCHEDULERS))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return p.parse_args(argv)


def generate(pipe, scheduler, captions, guidance_scale, steps, seed=0):
    """evaluate.generate with `scheduler`, its step noise drawn from the seed's generator."""
    import inspect

    import torch

    from precompute.demo import evaluate

    n = len(captions)
    text, uncond = evaluate.encode(pipe, captions), evaluate.encode(pipe, [""] * n)
    scheduler.set_timesteps(steps)
    size = pipe.unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((n, 4, size, size), generator=generator) * scheduler.init_noise_sigma
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        pred = pipe.unet(model_input, t, torch.cat([uncond, text])).sample  # (2n, 4, 16, 16)
        noise_pred_uncond, noise_pred_text = pred.chunk(2)
        pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
        latents = scheduler.step(pred, t, latents, **extra).prev_sample
    return evaluate.to_uint8(pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample)


def time_per_run(name, steps, caption):
    """Seconds per run of the precompute's sweep (4 guidance scales, attention captured)."""
    from precompute.loop import run_guidance_sweep
    from precompute.model import load_components

    components = load_components(str(MODEL), device="cpu", dtype="fp32", scheduler=name)
    best, calls = float("inf"), None
    for _ in range(2):
        t0 = time.perf_counter()
        runs = run_guidance_sweep(components, caption, 1, SCALES, steps, 64, 64,
                                  capture_attention=True, attention_levels=[16])
        best = min(best, (time.perf_counter() - t0) / len(SCALES))
        calls = len(runs[0].timesteps)
    return best, calls


def main(argv=None) -> int:
    import numpy as np
    import torch

    from precompute.demo import evaluate, judge
    from precompute.model import make_scheduler

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with torch.no_grad():
        pipe = evaluate.load(str(MODEL))
        judge.calibrate(lambda images: evaluate.reconstruct(pipe, images))
        scenes = evaluate.held_out(args.captions, two_objects=False)
        captions = [s.caption for s in scenes]
        attrs = ("background", "colour", "shape", "size", "position")
        print(f"demo model, {args.captions} held-out one-object captions, guidance {GUIDANCE}, "
              f"seed 0; torch threads {torch.get_num_threads()}; load {os.getloadavg()[0]:.1f}",
              flush=True)
        print("| scheduler | steps | UNet calls | s per run | " + " | ".join(attrs) + " | mean |")
        print("|---|---|---|---|" + "---|" * (len(attrs) + 1))
        for name in args.schedulers:
            for steps in args.steps:
                try:  # the precompute's checks first (repeated timesteps, loop.py)
                    seconds, calls = time_per_run(name, steps, captions[0])
                except ValueError as e:
                    print(f"| {name} | {steps} | refused: {e} |", flush=True)
                    continue
                scheduler = make_scheduler(name, pipe.scheduler.config)
                images = generate(pipe, scheduler, captions, GUIDANCE, steps)
                row = judge.adherence(images, scenes)
                values = [row[a] for a in attrs]
                print(f"| {name} | {steps} | {calls} | {seconds:.2f} | "
                      + " | ".join(f"{v:.2f}" for v in values) + f" | {np.mean(values):.2f} |",
                      flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

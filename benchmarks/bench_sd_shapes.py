"""The precompute against our bare loop and a plain pipeline at SD 1.5's real shapes, on a CPU.

    nice .venv/bin/python benchmarks/bench_sd_shapes.py                 # 256 and 512 px, 2 steps
    .venv/bin/python benchmarks/bench_sd_shapes.py --quick              # narrow widths, seconds

An SD-1.5-shaped pipeline with RANDOM weights, built offline by benchmarks/gpu_check.py
(SD 1.5's UNet 320/640/1280/1280, AutoencoderKL 128/256/512/512 and CLIP ViT-L/14's text
tower, configs written there; nothing downloaded), then, at each size, side by side:
  (c)  plain StableDiffusionPipeline, one call per run, final images only;
  (b)  our loop (precompute/loop.py run_guidance_sweep, capture_attention=False), no
       decodes, no files;
  (a0) the whole precompute (precompute/run.py) into a fresh bundle, every file written
       in the loop's own process (--workers 0: before the writer pool);
  (a)  the same with the writer pool (--workers, default 1 on this 2-core CPU).
For (a0) and (a), the precompute's job loop reports its compute time (the sweeps, the
batched decodes, staging the runs' arrays) and the time it waited on writers, of which the
final drain (the last job's writes, which no later job can overlap); the target is
wall <= 1.1 x compute for the job loop. The projection to the full set (78 jobs: 26
prompts x 3 seeds) counts the measured waits per job, plus one final drain.
The latent-preview map (fitted once per bundle from 24 VAE encodes and decodes) is fitted
once, outside the timings, on fewer images (--preview-images), and reused by every
precompute; the precompute's seconds are the rest of it (prompts, jobs, trajectories,
index).
Each variant's CPU seconds (this process, one torch thread) are printed beside its wall
seconds: on a shared CPU they, not the wall times, give the ratios. Per-part costs (CPU
seconds per UNet row, per VAE decode) come from the same runs and project each ratio to
50 steps. Prints a table per size; --out writes JSON.
Random weights: images are noise, timings real. The CPU is shared: run with `nice`, read
the load average printed at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gpu_check  # noqa: E402  (the SD-1.5-shaped random pipeline and the timed variants)

FULL_SET_JOBS = gpu_check.FULL_SET["prompts"] * gpu_check.FULL_SET["seeds"]  # 26 x 3
TARGET = 1.10   # the job loop's wall time over its compute time (issue 15)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="narrow widths (the test's mode)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="default 256 512 (quick: 64 128)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2],
                   help="seeds (one job per prompt and seed: two give the pool a job to overlap)")
    p.add_argument("--one-seed-from", type=int, default=512,
                   help="sizes from this one up run the first seed only (time on a CPU)")
    p.add_argument("--serial-up-to", type=int, default=256,
                   help="the --workers 0 variant (a0) runs at sizes up to this one")
    p.add_argument("--guidance-scales", type=float, nargs="+", default=[7.0])
    p.add_argument("--workers", type=int, default=1, help="writer processes of variant (a)")
    p.add_argument("--storage", default="compact", choices=["full", "compact"])
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds over the variants at each size; each keeps its best time")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--preview-images", type=int, default=2,
                   help="images the latent-preview map is fitted on, once (the precompute: 24)")
    p.add_argument("--decode-batch-size", type=int, default=0,
                   help="0: the precompute's choice (pipeline_io), taken once per size for all "
                   "variants")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--table", type=Path, default=None,
                   help="print the table of a saved --out file (derived columns recomputed)")
    return p.parse_args(argv)


@contextlib.contextmanager
def cached_latent_preview(n_images: int):
    """Within: the latent-preview map is fitted once, on n_images, and every precompute
    reuses it (precompute/run.py imports fit_latent_preview when it runs)."""
    from precompute import latent_preview

    fit, n_before, cache = latent_preview.fit_latent_preview, latent_preview.N_IMAGES, {}

    def cached(components, height, width):
        if not cache:  # the map does not depend on the size (fitted at <= 256 px anyway)
            start = time.perf_counter()
            cache["map"] = fit(components, height, width)
            print(f"  latent-preview map, {n_images} images: "
                  f"{time.perf_counter() - start:.1f} s (not timed)", flush=True)
        return cache["map"]

    latent_preview.fit_latent_preview, latent_preview.N_IMAGES = cached, n_images
    try:
        yield
    finally:
        latent_preview.fit_latent_preview, latent_preview.N_IMAGES = fit, n_before


@contextlib.contextmanager
def fixed_decode_batch(batch: int):
    """Within: every precompute decodes `batch` latents at a time (the choice by free memory
    could differ between variants, and pads each job's latents to a multiple of it)."""
    from precompute import pipeline_io

    auto = pipeline_io.auto_decode_batch_size
    pipeline_io.auto_decode_batch_size = lambda components, height, width: batch
    try:
        yield
    finally:
        pipeline_io.auto_decode_batch_size = auto


def padded_decodes(scales, n_prompts: int, n_seeds: int, steps: int, batch: int) -> int:
    """VAE decodes the precompute runs: each job's x_t and x0 latents (2 steps + 1 a run),
    padded to a multiple of the batch (pipeline_io.decode_padded); a seed's guidance-0 run
    rides along with its first prompt's job."""
    guided, g0 = [s for s in scales if s != 0], 0.0 in scales
    runs = [len(guided) + int(g0 and i == 0) for i in range(n_prompts)] if guided else [int(g0)]
    return n_seeds * sum(-(-r * (2 * steps + 1) // batch) * batch for r in runs)


def variants_at(args, size: int):
    """(name, kind, workers) of the variants at one size, in the order they run."""
    out = [("(c) plain StableDiffusionPipeline", "plain", None),
           ("(b) loop, no captures or decodes", "loop", None)]
    if size <= args.serial_up_to:
        out.append(("(a0) precompute, --workers 0", "precompute", 0))
    out.append((f"(a) precompute, --workers {args.workers}", "precompute", args.workers))
    return out


def measure_size(components, args, size: int, workdir: str) -> dict:
    """Every variant at one size, `repeat` rounds in turn; each keeps its best round."""
    seeds = args.seeds[:1] if size >= args.one_seed_from else args.seeds
    prompts = gpu_check.PROMPTS[: args.prompts]
    work = gpu_check.workload(args.guidance_scales, len(prompts), len(seeds), args.steps)
    jobs = len(seeds) * len(prompts)
    print(f"{size} px: {len(prompts)} prompts x seeds {seeds} x guidance {args.guidance_scales}"
          f" = {work['runs']} runs in {jobs} jobs, {args.steps} steps", flush=True)
    from precompute.pipeline_io import auto_decode_batch_size

    batch = args.decode_batch_size or auto_decode_batch_size(components, size, size)
    work["decode_batch"] = batch
    work["precompute_decodes_padded"] = padded_decodes(args.guidance_scales, len(prompts),
                                                       len(seeds), args.steps, batch)
    best = {}
    for _ in range(args.repeat):
        for name, kind, workers in variants_at(args, size):
            v, cpu = {"seconds": 0.0}, time.process_time()
            if kind == "plain":
                v["seconds"], _ = gpu_check.timed(components, lambda: gpu_check.run_plain(
                    components, args, prompts, seeds, args.steps, size))
            elif kind == "loop":
                v["seconds"], _ = gpu_check.timed(components, lambda: gpu_check.run_loop(
                    components, args, prompts, seeds, args.steps, size))
            else:
                opts = argparse.Namespace(**{**vars(args), "workers": workers})
                with fixed_decode_batch(batch):
                    v["seconds"], summary = gpu_check.run_precompute(
                        components, opts, prompts, seeds, args.steps, size, workdir)
                v.update(job_loop(summary, jobs))
            v["cpu_seconds"] = round(time.process_time() - cpu, 2)
            print(f"  {name}: {v['seconds']:.1f} s ({v['cpu_seconds']:.1f} s CPU)", flush=True)
            if name not in best or v["seconds"] < best[name]["seconds"]:
                best[name] = v
    return {"size": size, "seeds": seeds, "jobs": jobs, "workload": work, "variants": best,
            "parts": parts(best, work, args.guidance_scales, len(prompts), len(seeds)),
            "load_average": gpu_check._load()}


def job_loop(summary: dict, jobs: int) -> dict:
    """The precompute's job loop: compute, waits on writers, wall / compute measured and
    projected to the full set's jobs: per job its compute and its in-loop wait, plus one
    final drain. With writer processes, a job's in-loop wait is at least what the writers
    fall behind in steady state, (write seconds per job / workers) - compute per job: a
    run of two jobs cannot show it (the queue holds two runs a worker)."""
    compute, wait = summary["compute_seconds"], summary["write_wait_seconds"]
    drain, workers = summary["write_drain_seconds"], summary["workers"]
    per_job_compute, per_job_wait = compute / jobs, (wait - drain) / jobs
    if workers:
        behind = summary["write_seconds"] / jobs / workers - per_job_compute
        per_job_wait = max(per_job_wait, behind)
    full = FULL_SET_JOBS * per_job_compute
    return {"computed": summary["computed"], "workers": workers,
            "compute_seconds": compute, "write_wait_seconds": wait, "write_drain_seconds": drain,
            "write_seconds": summary["write_seconds"], "bundle_bytes": summary["bundle_bytes"],
            "wall_over_compute": round((compute + wait) / compute, 3),
            "wall_over_compute_full_set": round((full + FULL_SET_JOBS * per_job_wait + drain)
                                                / full, 3)}


def parts(variants: dict, work: dict, scales, n_prompts: int, n_seeds: int) -> dict:
    """CPU seconds per UNet row (the loop) and per VAE decode (what the pool's precompute
    adds to the loop in this process, over the decodes it ran, padding included: the
    decodes, with the capture, staging and the bundle's prompts and index around them),
    and the 50-step projection (whose padding is negligible: 101 latents a run)."""
    loop = next(v for n, v in variants.items() if n.startswith("(b)"))["cpu_seconds"]
    pre = next(v for n, v in variants.items() if n.startswith("(a) "))["cpu_seconds"]
    row = loop / work["precompute_unet_rows"]
    decode = max(0.0, pre - loop) / work.get("precompute_decodes_padded",
                                             work["precompute_decodes"])
    at50 = gpu_check.workload(scales, n_prompts, n_seeds, 50)
    plain50 = at50["plain_unet_rows"] * row + at50["plain_decodes"] * decode
    pre50 = at50["precompute_unet_rows"] * row + at50["precompute_decodes"] * decode
    return {"seconds_per_unet_row": round(row, 3), "seconds_per_decode": round(decode, 3),
            "projected_50_steps": {"precompute_over_plain": round(pre50 / plain50, 2),
                                   "decode_share_of_precompute": round(
                                       at50["precompute_decodes"] * decode / pre50, 3)}}


def print_table(result: dict) -> None:
    for r in result["sizes"]:
        v = r["variants"]
        plain, loop = (v[n]["cpu_seconds"] for n in ("(c) plain StableDiffusionPipeline",
                                                      "(b) loop, no captures or decodes"))
        w = r["workload"]
        print(f"\n{r['size']} px, {w['runs']} runs in {r['jobs']} jobs, decode batch "
              f"{w.get('decode_batch', '?')}: {w.get('precompute_decodes_padded', '?')} decodes "
              f"for {w['precompute_decodes']} latents "
              f"(load average after: {r['load_average']})")
        print(f"{'variant':<36} {'seconds':>8} {'CPU s':>7} {'vs (b)':>7} {'vs (c)':>7} {'compute':>8} "
              f"{'waited':>7} {'drain':>6} {'wall/compute':>13} {'full set':>9}")
        for name, x in v.items():
            cols = ""
            if "compute_seconds" in x:
                cols = (f"{x['compute_seconds']:8.1f} {x['write_wait_seconds']:7.1f} "
                        f"{x['write_drain_seconds']:6.1f} {x['wall_over_compute']:13.3f} "
                        f"{x['wall_over_compute_full_set']:9.3f}")
            print(f"{name:<36} {x['seconds']:8.1f} {x['cpu_seconds']:7.1f} "
                  f"{x['cpu_seconds'] / loop:6.2f}x {x['cpu_seconds'] / plain:6.2f}x {cols}")
        p = r["parts"]
        print(f"per UNet row {p['seconds_per_unet_row']} s, per VAE decode "
              f"{p['seconds_per_decode']} s; at 50 steps: precompute / plain = "
              f"{p['projected_50_steps']['precompute_over_plain']}x, decodes "
              f"{p['projected_50_steps']['decode_share_of_precompute']:.0%} of the precompute")
    print("\nvs (b), vs (c): ratios of the CPU seconds of this process (one torch thread: "
          "not inflated by other processes' load; the writer pool's own CPU not counted)")
    print(f"target: the job loop's wall <= {TARGET} x its compute; 'full set' projects "
          f"{FULL_SET_JOBS} jobs (per-job compute and waits, one final drain). "
          f"Load average at start {result['load_average_start']}, end "
          f"{result['load_average_end']}; total {result['total_seconds']} s")


def reprint(path: Path) -> dict:
    result = json.loads(path.read_text())
    for r in result["sizes"]:
        for v in r["variants"].values():
            if "compute_seconds" in v:
                v.update(job_loop(v, r["jobs"]))
    print_table(result)
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.table:
        return reprint(args.table)
    import torch

    torch.set_num_threads(args.threads)
    sizes = args.sizes or ([64, 128] if args.quick else [256, 512])
    t0 = time.perf_counter()
    result = {"quick": args.quick, "steps": args.steps, "threads": args.threads,
              "guidance_scales": args.guidance_scales, "storage": args.storage,
              "versions": gpu_check._versions(), "load_average_start": gpu_check._load()}
    print(f"bench_sd_shapes: sizes {sizes}, {args.steps} steps, {args.threads} torch threads, "
          f"load average {result['load_average_start']}", flush=True)
    # calibrated at the smallest size: the output scales do not depend on it
    components = gpu_check.build_components(args.quick, torch.device("cpu"), torch.float32,
                                            min(sizes))
    result["build_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"  built in {result['build_seconds']} s", flush=True)
    # warm-up (not timed): one step and one decode at a small size (lazy imports, pools)
    from precompute.loop import run_guidance_sweep
    run_guidance_sweep(components, gpu_check.PROMPTS[0], 0, [7.0], 1, 64, 64)
    components.pipeline()(gpu_check.PROMPTS[0], num_inference_steps=1, height=64, width=64,
                          output_type="np")
    with tempfile.TemporaryDirectory(prefix="bench-sd-shapes-") as workdir, \
            cached_latent_preview(args.preview_images):
        from precompute import latent_preview
        latent_preview.fit_latent_preview(components, min(sizes), min(sizes))  # before any timing
        result["sizes"] = [measure_size(components, args, size, workdir) for size in sizes]
    result["load_average_end"] = gpu_check._load()
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    if args.out:  # first: the measurements outlive a failing table
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print_table(result)
    if args.out:
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

"""Times the precompute against plain StableDiffusionPipeline for the same runs.

    python benchmarks/bench_precompute.py --model tiny                  # CPU, seconds
    python benchmarks/bench_precompute.py --model sd15-random --device cuda --steps 50

Runs = prompts x seeds x guidance scales. Variants, all over the same runs:
  (a) our loop with every capture (attention) and every step decoded (x_t and the
      predicted x0, full VAE, one batched decode per job: precompute/pipeline_io.py),
      plus the latent-preview fit: the real precompute's model work, without writing
      files (benchmarks/gpu_check.py times the whole precompute, files included);
  (a') the same loop with attention capture only (measures the capture overhead);
  (b) the same loop with neither captures nor decodes;
  (c) plain StableDiffusionPipeline making only final images, one call per
      (prompt, seed, guidance scale), as a user would.
Our loop batches all guidance scales of one (prompt, seed) into one UNet call per step
and computes each seed's guidance-0 run once for all prompts.

--model: "tiny" (built into a temp dir), "sd15-random" (SD 1.5 shapes, random weights;
meant for a GPU), or any diffusers checkpoint (hub id or folder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS = ["a photo of an astronaut riding a horse on the moon", "a watercolor painting of a red cat"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="tiny", help='"tiny", "sd15-random", or a checkpoint id/folder')
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on cuda, else fp32) | fp16 | bf16 | fp32")
    p.add_argument("--scheduler", default="lms", choices=["lms", "ddim", "euler"])
    p.add_argument("--steps", type=int, default=None, help="num_inference_steps (default: 10 tiny, 50 otherwise)")
    p.add_argument("--size", type=int, default=None, help="image height = width (default: 16 tiny, 512 otherwise)")
    p.add_argument("--prompts", type=int, default=2, help="how many prompts (max %d)" % len(PROMPTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--guidance-scales", type=float, nargs="+", default=[0.0, 1.0, 7.0, 20.0])
    p.add_argument("--decode-batch-size", type=int, default=0,
                   help="0: as the precompute picks it (pipeline_io.auto_decode_batch_size)")
    p.add_argument("--repeat", type=int, default=1, help="rounds over all variants; each keeps its best time")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; use 1 on a busy machine)")
    return p.parse_args(argv)


def load(args, workdir: Path):
    from precompute.model import Components, load_components, make_scheduler, pick_device, pick_dtype

    if args.model == "tiny":
        from tests.tiny_sd import build_tiny_pipeline

        return load_components(build_tiny_pipeline(workdir / "tiny"), args.device, args.dtype, args.scheduler)
    if args.model == "sd15-random":
        from tests.tiny_sd import build_sd15_random_components

        parts = build_sd15_random_components()
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)
        for name in ("unet", "vae", "text_encoder"):
            parts[name].to(device, dtype).requires_grad_(False)
        return Components(
            tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"], unet=parts["unet"],
            vae=parts["vae"], scheduler=make_scheduler(args.scheduler, parts["scheduler"].config),
            device=device, dtype=dtype, model_id="sd15-random")
    return load_components(args.model, args.device, args.dtype, args.scheduler)


def synchronize(components):
    import torch

    if components.device.type == "cuda":
        torch.cuda.synchronize(components.device)
    elif components.device.type == "mps":
        torch.mps.synchronize()


def precompute(components, args, prompts, steps, size, capture, decode):
    """Our loop over all runs; returns the number of UNet rows it ran per step, summed."""
    from precompute.loop import latent_rgb_factors, run_guidance_sweep
    from precompute.pipeline_io import auto_decode_batch_size, decode_job

    scales = args.guidance_scales
    rows = 0
    for seed in args.seeds:
        jobs = [(None, [0.0])] if 0 in scales else []
        jobs += [(prompt, [s for s in scales if s != 0]) for prompt in prompts]
        for prompt, job_scales in jobs:
            if not job_scales:
                continue
            rows += sum(s != 1 for s in job_scales) + sum(s != 0 for s in job_scales)
            results = run_guidance_sweep(components, prompt, seed, job_scales, steps, size, size,
                                         capture_attention=capture)
            if decode:  # one batched decode of the job's x_t and x0, as the precompute does
                batch = args.decode_batch_size or auto_decode_batch_size(components, size, size)
                for r, frames in zip(results, decode_job(components, results, batch)):
                    latent_rgb_factors(r.latents[-1], frames.decoded[-1])
    synchronize(components)
    return rows


def plain_pipeline(components, args, prompts, steps, size):
    """One StableDiffusionPipeline call per run, final image only; returns UNet rows per step."""
    import torch

    pipe = components.pipeline()
    rows = 0
    for prompt in prompts:
        for seed in args.seeds:
            for s in args.guidance_scales:
                rows += 2 if s > 1 else 1  # the pipeline skips the unconditional row at s <= 1
                generator = torch.Generator(components.device).manual_seed(seed)
                pipe(prompt, guidance_scale=s, num_inference_steps=steps, height=size, width=size,
                     generator=generator, output_type="np")
    synchronize(components)
    return rows


def main(argv=None):
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    small = args.model == "tiny"
    steps = args.steps or (10 if small else 50)
    size = args.size or (16 if small else 512)
    prompts = PROMPTS[: args.prompts]
    with tempfile.TemporaryDirectory(prefix="noisepath-bench-") as workdir:
        components = load(args, Path(workdir))
    n_runs = len(prompts) * len(args.seeds) * len(args.guidance_scales)
    print(f"model {components.model_id} | device {components.device} | dtype {components.dtype} | "
          f"torch threads {torch.get_num_threads()} | scheduler {args.scheduler} | {steps} steps | "
          f"{size}x{size} | {len(prompts)} prompts x {len(args.seeds)} seeds x guidance "
          f"{args.guidance_scales} = {n_runs} runs")

    # warm-up: first calls allocate and pick kernels
    from precompute.loop import run_guidance_sweep

    run_guidance_sweep(components, prompts[0], 0, [7.0], 2, size, size)
    components.pipeline()(prompts[0], num_inference_steps=2, height=size, width=size, output_type="np")

    variants = [
        ("(a)  precompute: attention capture + decode every step", lambda: precompute(
            components, args, prompts, steps, size, capture=True, decode=True)),
        ("(a') same loop, attention capture only", lambda: precompute(
            components, args, prompts, steps, size, capture=True, decode=False)),
        ("(b)  same loop, no captures, no decodes", lambda: precompute(
            components, args, prompts, steps, size, capture=False, decode=False)),
        ("(c)  plain StableDiffusionPipeline, final images", lambda: plain_pipeline(
            components, args, prompts, steps, size)),
    ]
    # rounds of all variants in turn, best time of each: drift in machine load hits all alike
    times, rows = {name: float("inf") for name, _ in variants}, {}
    for _ in range(args.repeat):
        for name, fn in variants:
            start = time.perf_counter()
            rows[name] = fn()
            times[name] = min(times[name], time.perf_counter() - start)

    plain = times[variants[3][0]]
    loop_only = times[variants[2][0]]
    print(f"\n{'variant':<52} {'seconds':>9} {'vs (b)':>8} {'vs (c)':>8} {'UNet rows':>10}")
    for name, _ in variants:
        t = times[name]
        print(f"{name:<52} {t:9.2f} {100 * (t / loop_only - 1):+7.0f}% {100 * (t / plain - 1):+7.0f}% "
              f"{rows[name] * steps:10d}")
    print("\nvs (b): overhead of captures/decodes over the bare loop; vs (c): against plain "
          "pipeline calls.\nUNet rows: batch rows through the UNet in total (steps x rows per step).")


if __name__ == "__main__":
    main()

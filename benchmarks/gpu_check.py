"""The precompute at Stable Diffusion 1.5's real shapes against a plain pipeline, on one GPU.

    bash benchmarks/gpu_check.sh                 # GPU: 512 px, 50 steps (about 3-5 min)
    bash benchmarks/gpu_check.sh --quick         # any CPU: tiny widths, 64 px, 2 steps

An SD-1.5-shaped pipeline with RANDOM weights (UNet2DConditionModel, AutoencoderKL and
CLIPTextModel built from SD 1.5's configs written below; nothing is downloaded: the GPU
machine has no network), the same runs (prompts x seeds x guidance scales) four ways:
  (a)  `precompute()` (precompute/run.py): the real precompute into a temporary bundle:
       attention capture, every x_t and predicted x0 decoded by the full VAE in batches,
       files written by the writer pool (--workers);
  (a0) the same with --workers 0: every file written in the loop's own process (before
       the writer pool), to measure how long the loop waited on writing;
  (a2) the same with --preview-decoder: a random AutoencoderTiny (TAESD's config) for the
       in-between frames, the full VAE for each run's final image;
  (b)  our loop alone, no captures, no decodes, no files;
  (c)  plain StableDiffusionPipeline, one call per run, final images only.
Then: the FLOPs (torch.utils.flop_counter: 2 x multiply-adds of every convolution and
matrix product, attention counted through diffusers' plain AttnProcessor; norms, softmax
and element-wise work are not counted) of one UNet row and one VAE decode, the fraction of
the GPU's bf16 peak each variant reached, and the projection to the full set (the 26
prompts of precompute/prompts/diffusion-explainer.toml x 3 seeds x 4 scales = 237 runs);
VAE decode throughput by batch size, channels_last, bf16 against fp32 (same weights);
optionally torch.compile (--compile, slow to build).
Writes JSON (--out) and prints a table. Random weights: images are noise, timings real.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ["a photo of an astronaut riding a horse on the moon",
           "a watercolor painting of a red cat"]
FULL_SET = {"prompts": 26, "seeds": 3, "guidance_scales": [0.0, 1.0, 7.0, 20.0]}  # 237 runs
H200_BF16_DENSE_TFLOPS = 989.0   # NVIDIA's H100/H200 SXM dense bf16 figure (no sparsity)

# ---- SD 1.5's configs (stable-diffusion-v1-5: unet/, vae/, text_encoder/ config.json)
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False,
    flip_sin_to_cos=True, freq_shift=0, act_fn="silu", layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), downsample_padding=1, mid_block_scale_factor=1,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, act_fn="silu",
    block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215)
SD15_TEXT = dict(  # CLIP ViT-L/14's text tower; vocab_size is the offline tokenizer's
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    projection_dim=768)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      num_train_timesteps=1000, steps_offset=1)
# --quick: the same topology (4 levels, scale factor 8, 12 text layers' worth of shape
# kept small) at widths a CPU runs in seconds
QUICK_WIDTHS = dict(unet=(32, 32, 64, 64), vae=(32, 32, 32, 32), text=32)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny widths, 64 px, 2 steps (CPU test)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto: bf16 on cuda, fp32 elsewhere")
    p.add_argument("--size", type=int, default=None, help="default 512 (quick: 64)")
    p.add_argument("--steps", type=int, default=None, help="default 50 (quick: 2)")
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 1 2 (quick: 1)")
    p.add_argument("--guidance-scales", type=float, nargs="+", default=[0.0, 1.0, 7.0, 20.0])
    p.add_argument("--workers", type=int, default=None, help="writer processes (default: "
                   "the precompute's default; quick: 1)")
    p.add_argument("--storage", default="full", choices=["full", "compact"])
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 on a CPU, which is shared here; torch's "
                   "choice on a GPU machine)")
    p.add_argument("--skip", nargs="*", default=[], help="parts to leave out: serial, preview, "
                   "plain, loop, decode, channels_last, bf16, peak")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd UNet")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"the device's dense peak for the dtype (default: {H200_BF16_DENSE_TFLOPS:g} "
                   "on an H100/H200 in bf16/fp16; else the measured matrix-product rate)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


# ------------------------------------------------------------------ building the model

def init_random(module, seed: int):
    """Random weights on the module's device: N(0, 1/fan_in) matrices, norms 1, biases 0."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim == 1:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                cpu = torch.randn(param.shape, generator=g) if param.device.type == "cpu" else None
                if cpu is None:
                    param.normal_(generator=torch.Generator(param.device).manual_seed(seed))
                else:
                    param.copy_(cpu)
                param.mul_(1 / math.sqrt(param[0].numel()))
            seed += 1
    return module.eval().requires_grad_(False)


def build_components(quick: bool, device, dtype, size: int):
    """The SD-1.5-shaped (or, quick, narrow) random pipeline as precompute Components."""
    import torch
    from diffusers import AutoencoderKL, LMSDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from precompute.model import Components
    from tests.tiny_sd import build_tokenizer

    unet_cfg, vae_cfg, text_cfg = dict(SD15_UNET), dict(SD15_VAE), dict(SD15_TEXT)
    if quick:
        w = QUICK_WIDTHS
        unet_cfg.update(block_out_channels=w["unet"], cross_attention_dim=w["text"],
                        attention_head_dim=4, layers_per_block=1)
        vae_cfg.update(block_out_channels=w["vae"], layers_per_block=1)
        text_cfg.update(hidden_size=w["text"], intermediate_size=2 * w["text"],
                        num_hidden_layers=2, num_attention_heads=2, projection_dim=w["text"])
    unet_cfg["sample_size"] = size // 8
    vae_cfg["sample_size"] = size
    tokenizer = build_tokenizer()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **text_cfg))
    modules = []
    for i, m in enumerate((unet, vae, text_encoder)):
        modules.append(init_random(m.to_empty(device=device), 1000 * i))
    text_model = getattr(text_encoder, "text_model", text_encoder)
    text_model.embeddings.position_ids.copy_(torch.arange(77, device=device)[None])
    calibrate(unet, vae, text_encoder, device, size)
    for m in modules:
        m.to(dtype)
    scheduler = LMSDiscreteScheduler(**SD15_SCHEDULER)
    return Components(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae,
                      scheduler=scheduler, device=torch.device(device), dtype=dtype,
                      model_id="sd15-random-quick" if quick else "sd15-random")


@contextlib.contextmanager
def _no_grad():
    import torch
    with torch.no_grad():
        yield


def calibrate(unet, vae, text_encoder, device, size):
    """Scale the output convolutions so the random UNet predicts unit-variance noise and the
    VAE decodes to about [-1, 1], as trained ones do: keeps 50 random steps finite."""
    import torch

    with _no_grad():
        g = torch.Generator(device="cpu").manual_seed(0)
        latents = torch.randn(1, 4, size // 8, size // 8, generator=g).to(device)
        ids = torch.zeros(1, 77, dtype=torch.long, device=device)
        hidden = text_encoder(ids)[0]
        out = unet(latents, 500, encoder_hidden_states=hidden, return_dict=False)[0]
        unet.conv_out.weight.mul_(1 / out.float().std().clamp_min(1e-6))
        unet.conv_out.bias.zero_()
        image = vae.decode(latents, return_dict=False)[0]
        vae.decoder.conv_out.weight.mul_(0.5 / image.float().std().clamp_min(1e-6))
        vae.decoder.conv_out.bias.zero_()


def random_tiny_decoder(components, quick: bool):
    """An AutoencoderTiny with TAESD's config (quick: narrower), random weights."""
    from diffusers import AutoencoderTiny

    kwargs = {}
    if quick:
        kwargs = dict(encoder_block_out_channels=(16,) * 4, decoder_block_out_channels=(16,) * 4)
    vae = AutoencoderTiny(**kwargs)
    return init_random(vae.to(components.device), 7).to(components.dtype)


# --------------------------------------------------------------------------- FLOPs

def count_flops(components, size: int) -> dict:
    """FLOPs of one UNet row (one latent, one text) and of one VAE decode at `size` px."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    unet, vae, device, dtype = components.unet, components.vae, components.device, components.dtype
    saved = unet.attn_processors, vae.attn_processors
    unet.set_attn_processor(AttnProcessor())   # bmm attention, which the counter counts
    vae.set_attn_processor(AttnProcessor())
    try:
        with _no_grad():
            latents = torch.zeros(1, 4, size // 8, size // 8, device=device, dtype=dtype)
            hidden = torch.zeros(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
            with FlopCounterMode(display=False) as unet_count:
                unet(latents, 500, encoder_hidden_states=hidden, return_dict=False)
            with FlopCounterMode(display=False) as vae_count:
                vae.decode(latents, return_dict=False)
            ids = torch.zeros(1, 77, dtype=torch.long, device=device)
            with FlopCounterMode(display=False) as text_count:
                components.text_encoder(ids)
    finally:
        unet.set_attn_processor(saved[0])
        vae.set_attn_processor(saved[1])
    return {"unet_row": unet_count.get_total_flops(), "vae_decode": vae_count.get_total_flops(),
            "text_encoder": text_count.get_total_flops()}


def workload(scales, n_prompts: int, n_seeds: int, steps: int) -> dict:
    """UNet rows x steps, decodes and runs of the precompute and of the plain pipeline.
    The precompute runs a seed's guidance-0 run once for all prompts and batches a job's
    scales (rows: an unconditional one per scale != 1, a text one per scale != 0)."""
    guided = [s for s in scales if s != 0]
    g0 = 0.0 in scales
    runs = n_seeds * (n_prompts * len(guided) + g0)
    rows = n_seeds * (n_prompts * (sum(s != 1 for s in guided) + len(guided)) + g0)
    plain_rows = n_seeds * (n_prompts * sum(2 if s > 1 else 1 for s in guided) + g0)
    return {"runs": runs, "precompute_unet_rows": rows * steps,
            "precompute_decodes": runs * (2 * steps + 1),
            "plain_unet_rows": plain_rows * steps, "plain_decodes": runs}


def flops_of(counts: dict, work: dict, kind: str) -> float:
    return (work[f"{kind}_unet_rows"] * counts["unet_row"]
            + work[f"{kind}_decodes"] * counts["vae_decode"])


# --------------------------------------------------------------------------- timing

def synchronize(components):
    import torch
    if components.device.type == "cuda":
        torch.cuda.synchronize(components.device)


def timed(components, fn):
    synchronize(components)
    start = time.perf_counter()
    value = fn()
    synchronize(components)
    return time.perf_counter() - start, value


def run_precompute(components, args, prompts, seeds, steps, size, workdir, preview=None):
    """precompute/run.py's precompute() into a fresh bundle: (seconds, its summary)."""
    from precompute.prompts import single_prompt_set
    from precompute.run import Options, precompute

    out = Path(tempfile.mkdtemp(prefix="bundle-", dir=workdir))
    settings = {"model": components.model_id, "scheduler": "lms", "num_inference_steps": steps,
                "height": size, "width": size, "seeds": seeds,
                "guidance_scales": args.guidance_scales, "storage": args.storage}
    opts = Options(device=str(components.device), projection="pca", progress=False,
                   log=io.StringIO(), components=components, preview_decoder=preview,
                   **({} if args.workers is None else {"workers": args.workers}))
    seconds, summary = timed(components, lambda: precompute(
        single_prompt_set(prompts[0], prompts[1:]), out, settings, opts))
    summary["bundle_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary["bundle"] = str(out)
    return seconds, summary


def run_loop(components, args, prompts, seeds, steps, size):
    from precompute.loop import run_guidance_sweep

    guided = [s for s in args.guidance_scales if s != 0]
    for seed in seeds:
        if 0.0 in args.guidance_scales:
            run_guidance_sweep(components, None, seed, [0.0], steps, size, size,
                               capture_attention=False)
        for prompt in prompts:
            run_guidance_sweep(components, prompt, seed, guided, steps, size, size,
                               capture_attention=False)


def run_plain(components, args, prompts, seeds, steps, size):
    """One StableDiffusionPipeline call per distinct run (guidance 0 once per seed)."""
    import torch

    pipe = components.pipeline()
    pipe.set_progress_bar_config(disable=True)
    for seed in seeds:
        calls = [("", 0.0)] if 0.0 in args.guidance_scales else []
        calls += [(p, s) for p in prompts for s in args.guidance_scales if s != 0]
        for prompt, s in calls:
            pipe(prompt, guidance_scale=s, num_inference_steps=steps, height=size, width=size,
                 generator=torch.Generator("cpu").manual_seed(seed), output_type="np")


def decode_throughput(components, size: int, batches) -> list[dict]:
    """Images per second and peak memory per image of VAE decodes at each batch size."""
    import torch

    from precompute.loop import decode_latents
    from precompute.pipeline_io import auto_decode_batch_size

    auto = auto_decode_batch_size(components, size, size)
    rows = []
    for b in sorted(set([*batches, auto])):
        latents = torch.randn(max(b, 2 * min(b, 8)), 4, size // 8, size // 8).numpy()
        decode_latents(components, latents[:b], b)  # warm-up: kernels for this shape
        if components.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(components.device)
            base = torch.cuda.memory_allocated(components.device)
        seconds, _ = timed(components, lambda: decode_latents(components, latents, b))
        row = {"batch": b, "auto": b == auto, "images_per_s": round(len(latents) / seconds, 2)}
        if components.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(components.device) - base
            row["peak_bytes_per_image"] = int(peak / b)
        rows.append(row)
    return rows


def unet_step_seconds(components, size: int, rows: int, calls: int) -> float:
    import torch

    unet = components.unet
    latents = torch.randn(rows, 4, size // 8, size // 8, device=components.device,
                          dtype=components.dtype)
    hidden = torch.randn(rows, 77, unet.config.cross_attention_dim, device=components.device,
                         dtype=components.dtype)
    with _no_grad():
        unet(latents, 500, encoder_hidden_states=hidden)
        seconds, _ = timed(components, lambda: [unet(latents, 500, encoder_hidden_states=hidden)
                                                for _ in range(calls)])
    return seconds / calls


def channels_last_check(components, size: int, calls: int) -> dict:
    """UNet step time with and without channels_last, and the largest output difference."""
    import torch

    unet = components.unet
    g = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn(5, 4, size // 8, size // 8, generator=g).to(components.device,
                                                                      components.dtype)
    hidden = torch.randn(5, 77, unet.config.cross_attention_dim, generator=g).to(
        components.device, components.dtype)
    with _no_grad():
        before = unet(latents, 500, encoder_hidden_states=hidden)[0].float()
        default = unet_step_seconds(components, size, 5, calls)
        unet.to(memory_format=torch.channels_last)
        after = unet(latents, 500, encoder_hidden_states=hidden)[0].float()
        last = unet_step_seconds(components, size, 5, calls)
        unet.to(memory_format=torch.contiguous_format)
    return {"rows": 5, "seconds_default": round(default, 4), "seconds_channels_last": round(last, 4),
            "speedup": round(default / last, 3),
            "max_abs_difference_over_scale": float((before - after).abs().max()
                                                   / before.abs().max())}


def bf16_check(components_lo, size: int, steps: int, prompt: str) -> dict:
    """The same run (guidance 7) in float32 and in the low precision, same weights."""
    import copy

    import numpy as np
    import torch

    from precompute.loop import decode_latents, run_guidance_sweep

    fp32 = copy.copy(components_lo)
    fp32.unet = copy.deepcopy(components_lo.unet).float()
    fp32.vae = copy.deepcopy(components_lo.vae).float()
    fp32.text_encoder = copy.deepcopy(components_lo.text_encoder).float()
    fp32.dtype = torch.float32
    out = {}
    runs = {}
    for name, c in (("fp32", fp32), ("low", components_lo)):
        (runs[name],) = run_guidance_sweep(c, prompt, 1, [7.0], steps, size, size,
                                           capture_attention=False)
        runs[name].image = decode_latents(c, runs[name].latents[-1:], 1)[0]
    for key in ("latents", "pred_original_sample", "noise_pred"):
        a, b = getattr(runs["fp32"], key), getattr(runs["low"], key)
        out[f"{key}_relative_l2"] = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    diff = np.abs(runs["fp32"].image.astype(np.int16) - runs["low"].image)
    out["final_image_mean_abs_levels"] = float(diff.mean())
    del fp32
    if components_lo.device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def matmul_tflops(components) -> float:
    """The measured rate of a large matrix product in the model's dtype (TFLOP/s)."""
    import torch

    n = 8192 if components.device.type == "cuda" else 512
    a = torch.randn(n, n, device=components.device, dtype=components.dtype)
    for _ in range(3):
        a @ a
    reps = 10
    seconds, _ = timed(components, lambda: [a @ a for _ in range(reps)])
    return 2 * n ** 3 * reps / seconds / 1e12


def compile_check(components, size: int, calls: int) -> dict:
    import torch

    eager = unet_step_seconds(components, size, 5, calls)
    original = components.unet
    start = time.perf_counter()
    components.unet = torch.compile(original)
    unet_step_seconds(components, size, 5, 1)  # compiles
    build = time.perf_counter() - start
    compiled = unet_step_seconds(components, size, 5, calls)
    components.unet = original
    return {"seconds_eager": round(eager, 4), "seconds_compiled": round(compiled, 4),
            "speedup": round(eager / compiled, 3), "compile_seconds": round(build, 1)}


# ---------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    import torch

    from precompute.model import pick_device, pick_dtype

    device = pick_device(args.device)
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    dtype = (torch.bfloat16 if device.type == "cuda" else torch.float32) \
        if args.dtype == "auto" else pick_dtype(args.dtype, device)
    size = args.size or (64 if args.quick else 512)
    steps = args.steps or (2 if args.quick else 50)
    seeds = args.seeds or ([1] if args.quick else [1, 2])
    if args.quick and args.workers is None:
        args.workers = 1
    prompts = PROMPTS[: args.prompts]
    skip = set(args.skip)
    t0 = time.perf_counter()
    result = {"quick": args.quick, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
              "size": size, "steps": steps, "prompts": len(prompts), "seeds": seeds,
              "guidance_scales": args.guidance_scales, "storage": args.storage,
              "versions": _versions(), "load_average": _load()}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    print(f"gpu_check: {result.get('gpu', device)} {result['dtype']} {size}px {steps} steps, "
          f"{len(prompts)} prompts x {len(seeds)} seeds x {args.guidance_scales}", flush=True)

    components = build_components(args.quick, device, dtype, size)
    result["build_seconds"] = round(time.perf_counter() - t0, 1)
    counts = count_flops(components, size)
    result["flops"] = counts
    work = workload(args.guidance_scales, len(prompts), len(seeds), steps)
    result["workload"] = work
    # warm-up: kernels for these shapes (not timed)
    from precompute.loop import run_guidance_sweep
    run_guidance_sweep(components, prompts[0], 0, [7.0], 1, size, size)
    components.pipeline()(prompts[0], num_inference_steps=1, height=size, width=size,
                          output_type="np")

    variants = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        seconds, summary = run_precompute(components, args, prompts, seeds, steps, size, workdir)
        variants["(a) precompute"] = {"seconds": seconds, "summary": summary,
                                      "flops": flops_of(counts, work, "precompute")}
        print(_line("(a) precompute", seconds), flush=True)
        if "serial" not in skip:
            serial = argparse.Namespace(**{**vars(args), "workers": 0})
            seconds, summary = run_precompute(components, serial, prompts, seeds, steps, size,
                                              workdir)
            variants["(a0) precompute, --workers 0"] = {
                "seconds": seconds, "summary": summary,
                "flops": flops_of(counts, work, "precompute")}
            print(_line("(a0) precompute, --workers 0", seconds), flush=True)
        if "preview" not in skip:
            from precompute.preview_decoder import PreviewDecoder

            preview = PreviewDecoder(random_tiny_decoder(components, args.quick), "taesd-random")
            seconds, summary = run_precompute(components, args, prompts, seeds, steps, size,
                                              workdir, preview=preview)
            variants["(a2) precompute, preview decoder"] = {"seconds": seconds, "summary": summary}
            print(_line("(a2) precompute, preview decoder", seconds), flush=True)
    if "loop" not in skip:
        seconds, _ = timed(components, lambda: run_loop(components, args, prompts, seeds, steps, size))
        variants["(b) loop, no captures or decodes"] = {
            "seconds": seconds, "flops": work["precompute_unet_rows"] * counts["unet_row"]}
        print(_line("(b) loop, no captures or decodes", seconds), flush=True)
    if "plain" not in skip:
        seconds, _ = timed(components, lambda: run_plain(components, args, prompts, seeds, steps, size))
        variants["(c) plain StableDiffusionPipeline"] = {"seconds": seconds,
                                                          "flops": flops_of(counts, work, "plain")}
        print(_line("(c) plain StableDiffusionPipeline", seconds), flush=True)
    result["variants"] = variants

    calls = 2 if args.quick else 10
    if "decode" not in skip:
        result["decode_batches"] = decode_throughput(components, size, [1, 8] if args.quick
                                                     else [1, 4, 8, 16])
    if "channels_last" not in skip:
        result["channels_last"] = channels_last_check(components, size, calls)
    if "bf16" not in skip and dtype != torch.float32:
        result["low_precision_vs_fp32"] = bf16_check(components, size, steps, prompts[0])
    if args.compile:
        result["compile"] = compile_check(components, size, calls)
    measured_peak = None if "peak" in skip else matmul_tflops(components)
    result["matmul_tflops_measured"] = measured_peak
    peak = args.peak_tflops or (H200_BF16_DENSE_TFLOPS if "H200" in result.get("gpu", "")
                                or "H100" in result.get("gpu", "") else measured_peak)
    result["peak_tflops"] = peak
    result["projection"] = project(result, counts, steps, peak)
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    print_table(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"\nwrote {args.out}")
    return result


def project(result, counts, steps, peak) -> dict:
    """The full set (237 runs) from the measured FLOP rate of each variant, and at peak."""
    full = workload(FULL_SET["guidance_scales"], FULL_SET["prompts"], FULL_SET["seeds"], steps)
    out = {"runs": full["runs"], "precompute_flops": flops_of(counts, full, "precompute")}
    if peak:
        out["seconds_at_peak"] = round(out["precompute_flops"] / (peak * 1e12), 1)
    for name, v in result["variants"].items():
        if name.startswith("(a) "):
            rate = v["flops"] / v["seconds"]
            out["precompute_seconds"] = round(out["precompute_flops"] / rate, 1)
            v["tflops"] = round(rate / 1e12, 2)
            out["precompute_seconds_by_runs"] = round(v["seconds"] / result["workload"]["runs"]
                                                      * full["runs"], 1)
        elif "flops" in v:
            v["tflops"] = round(v["flops"] / v["seconds"] / 1e12, 2)
        if peak and "tflops" in v:
            v["fraction_of_peak"] = round(v["tflops"] / peak, 4)
        if name.startswith("(a2)"):
            out["preview_decoder_seconds_by_runs"] = round(
                v["seconds"] / result["workload"]["runs"] * full["runs"], 1)
    return out


def print_table(result):
    base = result["variants"].get("(c) plain StableDiffusionPipeline", {}).get("seconds")
    print(f"\n{'variant':<36} {'seconds':>8} {'vs (c)':>7} {'TFLOP/s':>8} {'of peak':>8} "
          f"{'wait on writers':>16}")
    for name, v in result["variants"].items():
        s = v.get("summary") or {}
        wait = (f"{s['write_wait_seconds']:.2f} of {s['seconds']:.1f} s"
                if "write_wait_seconds" in s else "")
        print(f"{name:<36} {v['seconds']:8.2f} "
              f"{(v['seconds'] / base if base else float('nan')):6.2f}x "
              f"{v.get('tflops', float('nan')):8.3g} {v.get('fraction_of_peak', float('nan')):8.1%} "
              f"{wait:>16}")
    f = result["flops"]
    print(f"\nFLOPs: UNet row {f['unet_row'] / 1e12:.4g} T, VAE decode {f['vae_decode'] / 1e12:.4g} T, "
          f"text encoder {f['text_encoder'] / 1e9:.3g} G; peak {result['peak_tflops'] or 0:.4g} "
          f"TFLOP/s (measured matrix product: {result['matmul_tflops_measured'] or 0:.4g})")
    p = result["projection"]
    print(f"full set ({p['runs']} runs): {p['precompute_flops'] / 1e15:.4g} PFLOP; at peak "
          f"{p.get('seconds_at_peak', float('nan'))} s; at (a)'s rate {p.get('precompute_seconds')} s "
          f"(by runs: {p.get('precompute_seconds_by_runs')} s); with the preview decoder "
          f"{p.get('preview_decoder_seconds_by_runs', '-')} s by runs")
    for key in ("decode_batches", "channels_last", "low_precision_vs_fp32", "compile"):
        if key in result:
            print(f"{key}: {json.dumps(result[key])}")
    print(f"total {result['total_seconds']} s")


def _line(name, seconds):
    return f"  {name}: {seconds:.2f} s"


def _versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "numpy", "pillow"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


if __name__ == "__main__":
    main()

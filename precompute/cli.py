"""`noisepath precompute`: record every denoising step of a Stable Diffusion model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from precompute.prompts import (SCHEDULERS, STORAGES, PromptFileError, check_control,
                                check_control_settings, check_settings, load_prompt_file,
                                single_prompt_set)

EXAMPLES = """
examples:
  # the reference product's 26 prompts on SD 1.5 (a GPU, and the model from the hub)
  noisepath precompute --prompts precompute/prompts/diffusion-explainer.toml --out sd15-bundle

  # a sketch says where, the prompt says what: a ControlNet at two conditioning scales
  # (each run is also there without control, from the same noise; docs/bundle-format.md)
  noisepath precompute --prompt "a red house by a lake" --control-image edges.png \
      --controlnet lllyasviel/sd-controlnet-canny --controlnet-conditioning-scales 0.5 1 \
      --guidance-scales 7.5 --out house-bundle

  # one prompt and a variant, quickly, on any diffusers SD checkpoint (hub id or folder)
  noisepath precompute --prompt "a castle by a sea, trending on artstation" \\
      --variant "a castle by a sea" --seeds 1 --guidance-scales 0 1 7 --steps 30 \\
      --model stabilityai/stable-diffusion-2-1-base --out castle-bundle

Re-running the same command resumes: finished runs are kept and skipped. Two processes
(or one per GPU under `accelerate launch`) can fill one bundle together.
Flags override the prompt file's [settings]; unset ones fall back to the file, then to
the defaults (SD 1.5 with its own scheduler, 50 steps, 512x512, seeds 1 2 3, guidance
0 1 7 20).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EXAMPLES
    src = p.add_argument_group("what to run (a prompt file, or one prompt with variants)")
    src.add_argument("--prompts", type=Path, metavar="PROMPTS.toml",
                     help="a prompt file (see precompute/prompts/diffusion-explainer.toml)")
    src.add_argument("--prompt", help="one main prompt (instead of --prompts)")
    src.add_argument("--variant", action="append", default=[], metavar="TEXT",
                     help="a variant of --prompt to compare with (repeatable)")
    p.add_argument("--out", type=Path, required=True, metavar="BUNDLE_DIR",
                   help="the bundle folder to create or add runs to")
    s = p.add_argument_group("settings (override the prompt file's [settings])")
    s.add_argument("--model", help="a diffusers Stable Diffusion checkpoint: hub id or local "
                   "folder (default: stable-diffusion-v1-5/stable-diffusion-v1-5)")
    s.add_argument("--scheduler", choices=SCHEDULERS, metavar="NAME",
                   help=f"one of {', '.join(SCHEDULERS)} (default: the checkpoint's own, "
                   "e.g. pndm for SD 1.5; a named one keeps the checkpoint's betas and "
                   "prediction type). heun and kdpm2 make two UNet calls per step, pndm more "
                   "in its first steps: the bundle records every call; euler_a, ddpm and "
                   "ddim with --eta add noise at each step, which the bundle records")
    s.add_argument("--eta", type=float, metavar="ETA",
                   help="DDIM's eta from 0 (default, deterministic) to 1 (with --scheduler ddim)")
    s.add_argument("--guidance-rescale", type=float, dest="guidance_rescale", metavar="PHI",
                   help="guidance_rescale from 0 (default) to 1: Lin et al. 2023's fix of "
                   "over-exposure at high guidance, recommended for zero-terminal-SNR and "
                   "v-prediction models (0.7)")
    s.add_argument("--negative-prompt", dest="negative_prompt", metavar="TEXT",
                   help="the prompt of classifier-free guidance's unconditional row instead "
                   "of the empty prompt (a prompt file's groups may set their own)")
    s.add_argument("--steps", type=int, dest="num_inference_steps", metavar="N",
                   help="num_inference_steps (default: 50)")
    s.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="default: 1 2 3")
    s.add_argument("--guidance-scales", type=float, nargs="+", metavar="G",
                   dest="guidance_scales", help="default: 0 1 7 20")
    s.add_argument("--height", type=int, help="image height in pixels (default: 512; SDXL: 1024)")
    s.add_argument("--width", type=int, help="image width in pixels (default: 512; SDXL: 1024)")
    s.add_argument("--image-size", type=int, dest="image_size",
                   help="side of the stored frames (default: min(256, height, width))")
    s.add_argument("--storage", choices=STORAGES,
                   help="full (default): every array as float16 .npy, exact to float16; "
                   "compact: arrays quantized to 8 bits per map and compressed, the guided "
                   "prediction, combined attention and previews derived when served: about "
                   "5x smaller, values within a recorded error (about 1/500 of each map's range)")
    s.add_argument("--attention-levels", type=int, nargs="+", metavar="H",
                   dest="attention_levels",
                   help="the cross-attention levels, by map height, that the combined map "
                   "averages: SD 1.x at 512x512 has 64, 32 and 16, the demo model 16 and 8 "
                   "(default: every level but the mid block; the bundle keeps each level's "
                   "own map either way)")
    cn = p.add_argument_group("ControlNet (a control image says where, the prompt says what)")
    cn.add_argument("--controlnet", metavar="PATH_OR_ID",
                    help="a diffusers ControlNetModel for the model (e.g. "
                    "lllyasviel/sd-controlnet-canny or lllyasviel/control_v11p_sd15_scribble "
                    "for SD 1.5); the prompts with a control image run with it")
    cn.add_argument("--control-image", type=Path, dest="control_image", metavar="IMAGE",
                    help="the control image of --prompt and its variants (a prompt file's "
                    "groups name theirs: control_image = \"...\"); README: how to make one")
    cn.add_argument("--controlnet-conditioning-scales", type=float, nargs="+", metavar="S",
                    dest="controlnet_conditioning_scales",
                    help="controlnet_conditioning_scale, swept like the guidance scale "
                    "(default: 1); the run without control (scale 0) is always recorded")
    cn.add_argument("--control-guidance-start", type=float, dest="control_guidance_start",
                    metavar="F", help="the fraction of the steps where control starts (default 0)")
    cn.add_argument("--control-guidance-end", type=float, dest="control_guidance_end",
                    metavar="F", help="the fraction of the steps where control ends (default 1)")
    r = p.add_argument_group("how to run")
    r.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                   help="auto: cuda, then mps, then cpu")
    r.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                   help="auto: float16 on cuda, float32 elsewhere")
    r.add_argument("--projection", default="umap", choices=["umap", "pca"],
                   help="how trajectories are projected to 2-D")
    r.add_argument("--decode-batch-size", type=int, default=0, metavar="N",
                   help="latents decoded by the VAE at once; a job's frames are decoded "
                   "together (default 0: as many as half the GPU's free memory holds, 8 on "
                   "a CPU; lower it if memory runs out)")
    r.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes that encode and write the files while the model computes "
                   "the next job (default: a quarter of the cores, 1 to 4; 0: write in this "
                   "process, waiting for each run)")
    r.add_argument("--preview-decoder", metavar="PATH_OR_ID", dest="preview_decoder",
                   help="a diffusers AutoencoderTiny (e.g. madebyollin/taesd for SD 1.x) that "
                   "decodes the in-between frames, far cheaper than the full VAE; each run's "
                   "final image still comes from the full VAE, and the app labels the other "
                   "frames approximate with their measured difference (default: full VAE)")
    r.add_argument("--channels-last", action="store_true", dest="channels_last",
                   help="run the UNet and VAE in channels_last memory format (can be faster "
                   "on GPUs; measure with benchmarks/gpu_check.sh)")
    r.add_argument("--threads", type=int, default=0, metavar="N",
                   help="CPU threads for torch (default: torch's choice, one per core). On a "
                   "CPU that is busy with other work, 1 can be many times faster; to use "
                   "every core then, start one precompute per core on the same --out (they "
                   "share the work)")
    r.add_argument("--no-progress", action="store_true", help="print a line per run instead "
                   "of progress bars")


# settings whose flag is not --<key with dashes>
FLAGS = {"num_inference_steps": "--steps"}


def out_problem(out: Path) -> str | None:
    """Why --out cannot become a bundle folder, or None: checked before any model loads."""
    if out.exists() and not out.is_dir():
        return f"--out {out}: exists and is not a folder"
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        return f"--out {out}: {existing} is a file, so no folder can be made inside it"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--out {out}: {existing} is not writable by this user"
    return None


def check_how_to_run(args) -> str | None:
    """The first problem with the flags that say how to run, or None."""
    if args.threads < 0:
        return "--threads must be 0 (torch's default) or more"
    if args.decode_batch_size < 0:
        return ("--decode-batch-size must be 0 (by the device's memory) or more (latents the "
                "VAE decodes at once)")
    if args.workers is not None and args.workers < 0:
        return "--workers must be 0 (write in this process) or more"
    return out_problem(args.out)


def run(args) -> int:
    from precompute.run import Options, precompute
    from precompute.writer import BundleConfigMismatch

    if bool(args.prompts) == bool(args.prompt):
        print("noisepath precompute: give either --prompts FILE or --prompt TEXT", file=sys.stderr)
        return 2
    if args.variant and not args.prompt:
        print("noisepath precompute: --variant needs --prompt", file=sys.stderr)
        return 2
    if args.control_image and not args.prompt:
        print("noisepath precompute: --control-image goes with --prompt (a prompt file's groups "
              "name theirs: control_image = \"...\")", file=sys.stderr)
        return 2
    try:
        prompt_set = (load_prompt_file(args.prompts) if args.prompts
                      else single_prompt_set(args.prompt, args.variant, args.control_image))
        settings = {k: getattr(args, k) for k in
                    ("model", "scheduler", "num_inference_steps", "seeds", "guidance_scales",
                     "height", "width", "image_size", "storage", "attention_levels", "eta",
                     "guidance_rescale", "negative_prompt", "controlnet",
                     "controlnet_conditioning_scales", "control_guidance_start",
                     "control_guidance_end")
                    if getattr(args, k) is not None}

        def bad_flag(key, message):
            flag = FLAGS.get(key, f"--{key.replace('_', '-')}")
            raise PromptFileError("command line", None, flag, message)
        check_settings(settings, bad_flag)
        check_control_settings({**prompt_set.settings, **settings}, bad_flag)  # start < end
        check_control(prompt_set, {**prompt_set.settings, **settings}, bad_flag)
    except PromptFileError as e:
        print(f"noisepath precompute: {e}", file=sys.stderr)
        return 2
    problem = check_how_to_run(args)
    if problem:
        print(f"noisepath precompute: {problem}", file=sys.stderr)
        return 2
    opts = Options(device=args.device, dtype=args.dtype, projection=args.projection,
                   decode_batch_size=args.decode_batch_size, threads=args.threads,
                   workers=args.workers, preview_decoder=args.preview_decoder,
                   channels_last=args.channels_last,
                   progress=not args.no_progress, log=sys.stderr)
    try:
        precompute(prompt_set, args.out, settings, opts)
    except (BundleConfigMismatch, ValueError, OSError) as e:
        print(f"noisepath precompute: {e}", file=sys.stderr)
        return 1
    return 0

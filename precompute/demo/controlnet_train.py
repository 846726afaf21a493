"""A ControlNet for the demo model, trained on the shapes world: a sketch says where.

    noisepath train-demo controlnet --out demo-work/controlnet            # train
    noisepath train-demo controlnet --out demo-work/controlnet --resume   # continue

ControlNet (Zhang et al. 2023) at toy size, on a CPU: `ControlNetModel.from_unet` copies the
shipped demo UNet's encoder (static/demo-model), whose residuals enter the frozen UNet's
skip connections through zero-initialised convolutions. Only the ControlNet trains; the
UNet, the text encoder and the VAE stay frozen.

The data are the world's ground truth. The control image is a rough sketch of where the
objects go (sketch.py, `draw_sketch`): per object an outline, a filled blob or a hatched
scribble of a wobbly, smoothed version of its mask (a star's points and a square's corners
rounded off, the size and place jittered by a pixel or two), grey or white on black: a
function of the objects' geometry only, never of their colour. In a share of the samples
(`--strip-positions`) the caption loses its position words ("a large red circle, on a blue
background"), so the sketch alone says where; a tenth of the captions are dropped ("")
as in the teacher's training, because at sampling time the unconditional branch of
classifier-free guidance gets the control too (StableDiffusionControlNetPipeline,
guess_mode=False).

The objective is the teacher's (train.py): v-prediction MSE on the zero-terminal-SNR
schedule, timesteps uniform over 0..999, with the ControlNet's residuals added to the
UNet exactly as StableDiffusionControlNetPipeline adds them
(`down_block_additional_residuals`, `mid_block_additional_residual`). The control image
is in [0, 1], as the pipeline's prepare_image gives it. Options for experiments (measured
in docs/demo-model.md): `--init` fine-tunes a trained ControlNet, `--timesteps cubic` draws
mostly high-noise timesteps (as T2I-Adapter does), `--object-weight W` weighs the latents
the sketch covers 1 + W times as much.

Seeded (the batches and sketches are a function of the seed and the step), resumable
(`controlnet.pt`: weights, EMA, optimizer, step, losses), with a progress bar, a loss
chart (`loss_controlnet.png`) and the EMA ControlNet exported as a diffusers
ControlNetModel folder (`<out>/controlnet/`) at every checkpoint, written atomically.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backend.cli import DefaultsHelpFormatter
from precompute.demo import world
from precompute.demo.sketch import SKETCH_KINDS, caption_without_positions, draw_sketch
from precompute.demo.reflow import StageError, hold_lock, load_teacher, optimizer_step, train_steps
from precompute.demo.train import (Deadline, encode_text, plot_losses, save_atomic, smooth,
                                   step_rng, to_tensor)
from precompute.folders import pipeline_folder_problem

CHECKPOINT, FOLDER = "controlnet.pt", "controlnet"
RNG_TRAIN, RNG_VAL = 50, 51  # step_rng stage numbers of this module's random streams


@dataclass
class ControlConfig:
    out: str = "demo-work/controlnet"
    base: str = "static/demo-model"  # the pipeline whose UNet the ControlNet drives
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    steps: int = 4000
    batch: int = 32
    lr: float = 5e-4
    lr_final: float = 5e-5  # cosine decay from lr to this at `steps`
    warmup: int = 100
    ema_decay: float = 0.995
    caption_dropout: float = 0.1
    strip_positions: float = 0.5  # share of captions without position words
    two_object_fraction: float = world.TWO_OBJECT_FRACTION
    timesteps: str = "uniform"  # how training timesteps are drawn: one of TIMESTEP_SAMPLING
    init: str = ""  # a ControlNetModel folder to start from (fine-tuning); "": from_unet
    object_weight: float = 0.0  # extra loss weight on the sketched regions' latents (0: none)
    val_size: int = 32
    eval_every: int = 100
    minutes: float = 0.0  # 0: no time limit
    stop_at: int = 0  # > 0: stop at this step (the schedule still ends at `steps`)
    checkpoint_minutes: float = 4.0


# Fields that decide what a run's batches and weights are: a resumed run must keep them.
RUN_DEFINING = ("base", "seed", "batch", "caption_dropout", "strip_positions",
                "two_object_fraction", "val_size", "timesteps", "init", "object_weight")
# "uniform": t uniform over 0..T-1, the teacher's. "cubic": t = (1 - u^3) T with u uniform,
# as T2I-Adapter (Mou et al. 2023) trains its adapters: most samples at high noise, where
# the layout is decided and the noisy latent does not yet show where the object is.
TIMESTEP_SAMPLING = ("uniform", "cubic")


def sample_batch(cfg: ControlConfig, rng: np.random.Generator, n: int, split: str,
                 strip: float, dropout: float):
    """n scenes: images (n, 64, 64, 3), control images (n, 3, 64, 64) in [0, 1], captions
    (a share `strip` without position words, a share `dropout` empty), scenes, regions."""
    images, _, scenes = world.sample_batch(rng, n, split, cfg.two_object_fraction)
    sketches, regions = zip(*(draw_sketch(s, rng) for s in scenes))
    stripped, dropped = rng.random(n) < strip, rng.random(n) < dropout
    captions = ["" if d else caption_without_positions(s) if p else s.caption
                for s, p, d in zip(scenes, stripped, dropped)]
    control = torch.from_numpy(np.stack(sketches)).permute(0, 3, 1, 2).float() / 255.0
    return images, control, captions, scenes, list(regions)


# --- the model and its objective ------------------------------------------------------------

def build_controlnet(unet, vae_scale_factor: int):
    """ControlNetModel.from_unet with a conditioning embedding that downsamples the control
    image by the VAE's factor (4 for the demo model; SD's default embedding does 8)."""
    from diffusers import ControlNetModel

    downsamplings = int(math.log2(vae_scale_factor))
    channels = tuple(16 * 2 ** i for i in range(downsamplings + 1))  # (16, 32, 64)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)


def sample_timesteps(n: int, num_train_timesteps: int, sampling: str,
                     gen: torch.Generator) -> torch.Tensor:
    """n training timesteps, drawn as TIMESTEP_SAMPLING names: (n,) int64 in 0..T-1."""
    if sampling == "uniform":
        return torch.randint(0, num_train_timesteps, (n,), generator=gen)
    u = torch.rand(n, generator=gen)
    t = ((1 - u ** 3) * num_train_timesteps).long()  # P(t > T/2) = 0.79
    return t.clamp(0, num_train_timesteps - 1)


def region_weight(regions: list[np.ndarray], latent_size: int, object_weight: float
                  ) -> torch.Tensor:
    """Per-latent loss weights 1 + object_weight * (the share of each latent pixel that a
    sketched region covers): (B, 1, h, w). Regions: per scene (objects, 64, 64) bool."""
    union = np.stack([r.any(axis=0) for r in regions]).astype(np.float32)  # (B, 64, 64)
    cover = F.adaptive_avg_pool2d(torch.from_numpy(union)[:, None], latent_size)
    return 1.0 + object_weight * cover


def controlnet_loss(cfg, base, controlnet, scheduler, images, control, captions, gen,
                    use_control: bool = True, sampling: str = "uniform",
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """train.diffusion_loss with the ControlNet's residuals added to the frozen UNet as
    StableDiffusionControlNetPipeline adds them (conditioning scale 1); the timesteps drawn
    as `sampling` says (the held-out loss keeps "uniform", so runs compare); with `weight`
    (B, 1, h, w), a weighted mean of the squared errors (region_weight)."""
    with torch.no_grad():
        latents = base.vae.encode(to_tensor(images).to(cfg.device)).latent_dist.sample(gen)
        latents = latents * base.vae.config.scaling_factor  # (B, 4, 16, 16)
        hidden = encode_text(base.tokenizer, base.text_encoder, captions, cfg.device)
    noise = torch.randn(latents.shape, generator=gen).to(cfg.device)
    t = sample_timesteps(len(images), scheduler.config.num_train_timesteps, sampling, gen)
    t = t.to(cfg.device)
    noisy = scheduler.add_noise(latents, noise, t)  # x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
    target = scheduler.get_velocity(latents, noise, t)  # v = sqrt(a_t) eps - sqrt(1 - a_t) x_0
    residuals = {}
    if use_control:
        down, mid = controlnet(noisy, t, encoder_hidden_states=hidden,
                               controlnet_cond=control.to(cfg.device), conditioning_scale=1.0,
                               guess_mode=False, return_dict=False)
        residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    pred = base.unet(noisy, t, hidden, **residuals).sample  # (B, 4, 16, 16)
    if weight is None:
        return F.mse_loss(pred, target)
    weight = weight.to(pred).expand_as(pred)
    return (weight * (pred - target) ** 2).sum() / weight.sum()


def learning_rate(cfg: ControlConfig, step: int) -> float:
    """Linear warm-up, then a cosine from cfg.lr to cfg.lr_final at cfg.steps."""
    warm = min(1.0, (step + 1) / cfg.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, cfg.steps))))
    return warm * (cfg.lr_final + (cfg.lr - cfg.lr_final) * cosine)


def export_controlnet(controlnet, folder: Path, state: dict) -> None:
    """Save a ControlNetModel folder atomically: written beside, then swapped in, so a
    reader (or a kill) never meets a half-written folder."""
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    controlnet.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / "training_state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load_pipeline(base: str | Path, controlnet: str | Path, device: str = "cpu"):
    """StableDiffusionControlNetPipeline of the base pipeline folder and a ControlNet folder,
    fp32, sampling with the base's own scheduler (DDIM, trailing spacing, for the demo)."""
    from diffusers import (ControlNetModel, StableDiffusionControlNetPipeline,
                           StableDiffusionPipeline)

    sd = StableDiffusionPipeline.from_pretrained(str(base), dtype=torch.float32)
    net = ControlNetModel.from_pretrained(str(controlnet), torch_dtype=torch.float32)
    pipe = StableDiffusionControlNetPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
        controlnet=net, scheduler=sd.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- training -------------------------------------------------------------------------------

def train(cfg: ControlConfig) -> bool:
    """Train (or resume) to cfg.steps (or cfg.stop_at / cfg.minutes); True once finished."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    lock = hold_lock(out)
    try:
        return _train(cfg, out)
    finally:
        lock.unlink(missing_ok=True)


@functools.lru_cache(maxsize=1)
def load_base(folder: str, device: str):
    """The frozen base pipeline (DDIM), loaded once per process: training never changes it."""
    return load_teacher(folder, device)


def _train(cfg: ControlConfig, out: Path) -> bool:
    from precompute.demo import model as demo_model

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    base = load_base(str(cfg.base), cfg.device)
    controlnet = build_controlnet(base.unet, base.vae_scale_factor)
    if cfg.init:  # fine-tune a trained ControlNet (fp16 weights load in fp32)
        from diffusers import ControlNetModel

        start = ControlNetModel.from_pretrained(cfg.init, torch_dtype=torch.float32)
        controlnet.load_state_dict(start.state_dict())
    controlnet = controlnet.to(cfg.device).train()
    ema = copy.deepcopy(controlnet).eval()
    opt = torch.optim.AdamW(controlnet.parameters(), lr=cfg.lr, betas=(0.9, 0.99),
                            weight_decay=0.01)
    state = {"step": 0, "losses": [], "val": []}
    if (out / CHECKPOINT).exists():
        state = torch.load(out / CHECKPOINT, weights_only=False)
        for module, key in ((controlnet, "controlnet"), (ema, "ema"), (opt, "opt")):
            module.load_state_dict(state[key])
    scheduler = demo_model.training_scheduler()
    val = sample_batch(cfg, step_rng(cfg, RNG_VAL, 0), cfg.val_size, "test", strip=1.0, dropout=0.0)

    def validate(use_control: bool) -> float:
        """v-MSE on held-out scenes, captions without position words, fixed noise."""
        with torch.no_grad():
            return controlnet_loss(cfg, base, ema, scheduler, val[0], val[1], val[2],
                                   torch.Generator().manual_seed(cfg.seed + 1), use_control).item()

    without = validate(False)  # the UNet alone: what the sketch has to beat

    def checkpoint():
        save_atomic({**state, "controlnet": controlnet.state_dict(), "ema": ema.state_dict(),
                     "opt": opt.state_dict()}, out / CHECKPOINT)
        plot_losses({"train": smooth(state["losses"]),
                     "held-out, sketch": [(s, v) for s, v in state["val"]],
                     "held-out, no control": [(s, without) for s, _ in state["val"]]},
                    out / "loss_controlnet.png",
                    "ControlNet (v-prediction MSE; captions without position words held out)")
        export_controlnet(ema, out / FOLDER, {
            "steps": state["step"], "of_steps": cfg.steps, "seed": cfg.seed, "base": cfg.base,
            "strip_positions": cfg.strip_positions, "sketch_kinds": list(SKETCH_KINDS),
            "timesteps": cfg.timesteps, "init": cfg.init or None,
            "object_weight": cfg.object_weight,
            "last_val": state["val"][-1] if state["val"] else None,
            "val_without_control": without})

    def train_step(step: int) -> float:
        rng = step_rng(cfg, RNG_TRAIN, step)
        images, control, captions, _, regions = sample_batch(
            cfg, rng, cfg.batch, "train", cfg.strip_positions, cfg.caption_dropout)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        weight = (region_weight(regions, images.shape[1] // base.vae_scale_factor,
                                cfg.object_weight) if cfg.object_weight else None)
        loss = controlnet_loss(cfg, base, controlnet, scheduler, images, control, captions, gen,
                               sampling=cfg.timesteps, weight=weight)
        optimizer_step(opt, controlnet, ema, loss, learning_rate(cfg, step), cfg.ema_decay, step)
        return loss.item()

    def evaluate(step: int) -> str:
        state["val"].append((step, validate(True)))
        return f"controlnet step {step}: held-out v-MSE with the sketch " \
               f"{state['val'][-1][1]:.4f}, the UNet alone {without:.4f}"

    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    train_steps("controlnet", state, end, train_step, evaluate, cfg.eval_every,
                Deadline(cfg.minutes, cfg.checkpoint_minutes), checkpoint,
                out / FOLDER / "training_state.json")
    return state["step"] >= cfg.steps


def export(folder: str | Path, target: str | Path) -> None:
    """Copy a trained ControlNet folder with half-precision weights (what ships; load it
    with torch_dtype=torch.float32 on a CPU)."""
    from diffusers import ControlNetModel

    folder, target = Path(folder), Path(target)
    state = json.loads((folder / "training_state.json").read_text())
    target.parent.mkdir(parents=True, exist_ok=True)
    half = ControlNetModel.from_pretrained(str(folder), torch_dtype=torch.float16)
    export_controlnet(half, target, state)


# --- command line ---------------------------------------------------------------------------

class OneLineParser(argparse.ArgumentParser):
    """Bad input: one line on stderr ("<prog>: error: ..."), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    d = ControlConfig()
    p = OneLineParser(
        prog="noisepath train-demo controlnet",
        formatter_class=DefaultsHelpFormatter,
        description="Train a ControlNet (ControlNetModel.from_unet) for the demo model on the "
                    "shapes world: the control image is a rough grey sketch of where the "
                    "objects go, the caption often has no position words. The UNet, text "
                    "encoder and VAE stay frozen. Resumable; a checkpoint, a loss chart "
                    "(loss_controlnet.png) and the EMA ControlNet (controlnet/, a diffusers "
                    "ControlNetModel folder) under --out. docs/demo-model.md, 'Demo ControlNet'.")
    p.add_argument("--out", default=d.out, help="work folder (checkpoint, controlnet/)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (otherwise --out must not hold one)")
    p.add_argument("--base", default=d.base, help="the pipeline folder whose UNet it drives")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps")
    p.add_argument("--batch", type=int, default=d.batch, help="training batch size")
    p.add_argument("--lr", type=float, default=d.lr,
                   help="peak learning rate (after --warmup steps; a cosine to --lr-final)")
    p.add_argument("--lr-final", type=float, default=d.lr_final)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--strip-positions", type=float, default=d.strip_positions,
                   help="share of the training captions without position words")
    p.add_argument("--caption-dropout", type=float, default=d.caption_dropout,
                   help="share of the training captions replaced by '' (the unconditional "
                        "branch of guidance also gets the control)")
    p.add_argument("--two-object-fraction", type=float, default=d.two_object_fraction,
                   help="share of the training scenes with two objects")
    p.add_argument("--timesteps", choices=TIMESTEP_SAMPLING, default=d.timesteps,
                   help="how training timesteps are drawn: uniform (the teacher's) or cubic "
                        "(t = (1 - u^3) T, mostly high noise, where the layout is decided)")
    p.add_argument("--init", default=d.init, metavar="FOLDER",
                   help="start from this ControlNetModel folder (fine-tune, e.g. "
                        "static/demo-controlnet) instead of a fresh copy of the UNet's encoder")
    p.add_argument("--object-weight", type=float, default=d.object_weight, metavar="W",
                   help="weigh the loss on the latents the sketch covers 1 + W times as much "
                        "(0: the teacher's plain mean; the held-out loss stays plain)")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="steps between held-out evaluations")
    p.add_argument("--val-size", type=int, default=d.val_size,
                   help="held-out scenes (captions without position words) evaluated")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="stop (with a checkpoint) after this many minutes; 0 = no limit")
    p.add_argument("--stop-at", type=int, default=0, metavar="STEP",
                   help="stop at this step (the learning-rate schedule still ends at --steps)")
    p.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="CPU threads for torch (1 is fastest on a shared, busy machine)")
    p.add_argument("--export", default=None, metavar="FOLDER",
                   help="afterwards, copy the finished ControlNet to FOLDER with fp16 weights "
                        "(e.g. static/demo-controlnet)")
    return p


def recipe_problem(base: Path) -> str | None:
    """Why the base pipeline was not trained with the demo's recipe (v-prediction, zero
    terminal SNR), which controlnet_loss's objective is, or None."""
    try:
        config = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError):
        return "no readable scheduler/scheduler_config.json"
    if config.get("prediction_type") != "v_prediction" or not config.get("rescale_betas_zero_snr"):
        return (f"its scheduler has prediction_type {config.get('prediction_type')!r}, "
                f"rescale_betas_zero_snr {config.get('rescale_betas_zero_snr')!r}: the demo "
                "ControlNet trains with the demo model's recipe (v_prediction, zero terminal SNR)")
    return None


def parse_args(argv: list[str] | None = None) -> tuple[ControlConfig, argparse.Namespace]:
    p = build_parser()
    args = p.parse_args(argv)
    for name in ("steps", "batch", "warmup", "eval_every", "val_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.stop_at < 0 or args.stop_at > args.steps:
        p.error(f"--stop-at {args.stop_at}: a step from 1 to --steps ({args.steps}), or 0")
    for name in ("lr", "lr_final", "minutes", "checkpoint_minutes"):
        if not getattr(args, name) >= 0 or not math.isfinite(getattr(args, name)):
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be a finite "
                    "number, not negative")
    if args.lr == 0:
        p.error("--lr 0: nothing would train")
    if not 0 <= args.object_weight <= 100:
        p.error(f"--object-weight {args.object_weight}: a number from 0 to 100")
    for name in ("strip_positions", "caption_dropout", "two_object_fraction"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: a share between 0 and 1")
    if problem := pipeline_folder_problem(args.base, "--base"):
        p.error(problem)
    problem = recipe_problem(Path(args.base))
    if problem:
        p.error(f"--base {args.base}: {problem}")
    if args.init and not (Path(args.init) / "config.json").exists():
        p.error(f"--init {args.init}: not a ControlNetModel folder (no config.json)")
    cfg = ControlConfig(
        out=args.out, base=args.base, seed=args.seed, device=args.device, threads=args.threads,
        steps=args.steps, batch=args.batch, lr=args.lr, lr_final=args.lr_final,
        warmup=args.warmup, caption_dropout=args.caption_dropout,
        strip_positions=args.strip_positions, two_object_fraction=args.two_object_fraction,
        timesteps=args.timesteps, init=args.init, object_weight=args.object_weight,
        eval_every=args.eval_every,
        val_size=args.val_size, minutes=args.minutes, stop_at=args.stop_at,
        checkpoint_minutes=args.checkpoint_minutes)
    saved = Path(args.out) / "config.json"
    if saved.exists() and not args.resume:
        p.error(f"{args.out} holds a run: pass --resume to continue it, or pick another --out")
    if args.resume and not saved.exists():
        p.error(f"--resume: {args.out} holds no run (no config.json)")
    if saved.exists():
        try:
            before = json.loads(saved.read_text())
        except (OSError, ValueError) as e:
            p.error(f"{saved}: unreadable ({e})")
        for name in RUN_DEFINING:
            if name in before and before[name] != getattr(cfg, name):
                p.error(f"--{name.replace('_', '-')} {getattr(cfg, name)} differs from the "
                        f"run's {before[name]} ({saved}): a resumed run keeps its batches")
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    """`noisepath train-demo controlnet`: train (or resume) the demo ControlNet."""
    cfg, args = parse_args(argv)
    try:
        done = train(cfg)
    except StageError as e:
        print(f"noisepath train-demo controlnet: {e}", file=sys.stderr)
        return 2
    folder = Path(cfg.out) / FOLDER
    print(f"controlnet: {'complete' if done else 'stopped; --resume continues it'} ({folder})")
    if args.export:
        if not done:
            print("noisepath train-demo controlnet: the run is not finished; nothing exported",
                  file=sys.stderr)
            return 2
        export(folder, args.export)
        print(f"exported {folder} (fp16) to {args.export}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

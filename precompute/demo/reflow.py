"""Students of the demo model: a 2-rectified flow and a one-step student (InstaFlow's recipe,
Liu et al. 2023, at toy size, on a CPU), made from a trained teacher (static/demo-model).

    noisepath train-demo students --out demo-work/students            # all three stages
    noisepath train-demo students --out demo-work/students --resume   # continue where it stopped

Three stages, each resumable, run in order by `--stage all`:

- "pairs": draw a noise z per index (a function of the seed and the index), sample the
  teacher's probability-flow ODE from it (diffusers' StableDiffusionPipeline with a DDIM
  scheduler, eta 0, 50 steps, at the guidance the app opens on), keep (z, caption, x0)
  triples in shards under `<out>/pairs/`. Captions come from the world's training split.
- "reflow": train a student initialised from the teacher's UNet on the straight lines
  between each pair's noise and result (velocity target z - x0, sigma uniform on [0, 1]):
  the 2-rectified flow, exported to `<out>/rectified-flow/`.
- "distill": sample the 2-rectified flow's own ODE (Euler, 25 steps, from fresh noise) into
  `<out>/student-pairs/`, then train a one-step student, initialised from the 2-rectified
  flow, to map each noise to its result in one step (InstaFlow's second stage; mean squared
  error on latents where InstaFlow used LPIPS on images), exported to `<out>/one-step/`.

The text encoder is the teacher's, frozen, so tokens and embeddings stay the same; only the
UNet is trained. The students are StableDiffusionPipeline folders whose scheduler is
diffusers' FlowMatchEulerDiscreteScheduler (shift 1) and whose UNet predicts a velocity.
Time convention (diffusers' flow matching, as in SD3): sigma = 1 is pure noise, sigma = 0
the image, x_sigma = (1 - sigma) x0 + sigma z, the UNet is called with timestep
1000 sigma and predicts v = z - x0; an Euler step is x_sigma' = x_sigma + (sigma' - sigma) v,
so one step from sigma = 1 gives x0 = z - v. (InstaFlow's t is 1 - sigma and its velocity
x0 - z, the opposite sign.) The teacher's guidance is baked in: sample the students with
guidance_scale 1 (no classifier-free guidance). StableDiffusionPipeline reads the
scheduler's init_noise_sigma, which FlowMatchEulerDiscreteScheduler lacks: load_student
sets it to 1 (the noise is used as drawn).

Training is seeded (the batches are a function of the seed and the step), writes a
checkpoint (`<stage>.pt`: weights, EMA, optimizer, step, losses), a loss chart
(`loss_<stage>.png`) and the EMA pipeline every few minutes, like train.py.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from backend.cli import DefaultsHelpFormatter
from precompute.demo import model as demo_model
from precompute.demo import world
from precompute.folders import pipeline_folder_problem
from precompute.demo.train import Deadline, encode_text, plot_losses, save_atomic, smooth, step_rng

STAGES = ("pairs", "reflow", "distill")
NUM_TRAIN_TIMESTEPS = 1000  # FlowMatchEulerDiscreteScheduler's: the UNet sees 1000 sigma
PAIRS_DIR, STUDENT_PAIRS_DIR = "pairs", "student-pairs"
PIPELINES = {"reflow": "rectified-flow", "distill": "one-step"}
# step_rng stage numbers: each random stream of this module has its own
RNG_PAIR_NOISE, RNG_PAIR_CAPTION, RNG_REFLOW = 10, 11, 20
RNG_STUDENT_NOISE, RNG_STUDENT_CAPTION, RNG_DISTILL = 30, 31, 40
TIME_CONVENTION = ("diffusers flow matching: sigma 1 = noise, 0 = image; x = (1 - sigma) x0 + "
                   "sigma z; UNet(x, 1000 sigma) = z - x0; Euler x' = x + (sigma' - sigma) v")


def app_guidance_scale() -> float:
    """The guidance the app opens on: the demo prompt file's default_guidance_scale."""
    path = Path(__file__).resolve().parents[1] / "prompts" / "demo.toml"
    try:
        return float(tomllib.loads(path.read_text())["default_guidance_scale"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return 3.0


@dataclass
class ReflowConfig:
    out: str = "demo-work/students"
    teacher: str = "static/demo-model"
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    # stage "pairs": the teacher's ODE
    pairs: int = 5000  # rounded up to whole shards (5008)
    shard_size: int = 16  # pairs per shard, generated as one batch
    teacher_steps: int = 50
    guidance_scale: float = 3.0  # the app's default (app_guidance_scale())
    two_object_fraction: float = 0.5  # as in the shipped teacher's last training stages
    val_pairs: int = 64  # the last pairs of each set: never trained on, the held-out curves
    # stage "reflow": the 2-rectified flow
    reflow_steps: int = 4000
    # stage "distill": the 2-rectified flow's own ODE, then the one-step student
    student_pairs: int = 5000
    student_steps: int = 25  # Euler steps of the 2-rectified flow per student pair
    distill_steps: int = 2000
    batch: int = 32
    lr: float = 2e-4
    lr_final: float = 2e-5  # cosine decay from lr to this at the stage's last step
    warmup: int = 100
    ema_decay: float = 0.998
    minutes: float = 0.0  # 0: no time limit
    stop_at: int = 0  # > 0: stop the training stage that is running at this step
    checkpoint_minutes: float = 4.0
    eval_every: int = 100


# Fields that decide what a run's pairs and batches are: a resumed run must keep them.
RUN_DEFINING = ("teacher", "seed", "shard_size", "teacher_steps", "guidance_scale",
                "two_object_fraction", "val_pairs", "student_steps", "batch")


# --- pipelines ------------------------------------------------------------------------------

def flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=1.0)
    scheduler.init_noise_sigma = 1.0  # read by StableDiffusionPipeline.prepare_latents
    return scheduler


def load_teacher(folder: str | Path, device: str = "cpu"):
    """The teacher as a StableDiffusionPipeline sampling with DDIM (eta 0: its ODE)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32).to(device)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.unet, pipe.text_encoder, pipe.vae):
        part.eval().requires_grad_(False)
    return pipe


def load_student(folder: str | Path, device: str = "cpu"):
    """A student pipeline folder (FlowMatchEulerDiscreteScheduler, velocity UNet), ready to
    sample: pipe(prompt, num_inference_steps=1, guidance_scale=1.0)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32).to(device)
    pipe.scheduler.init_noise_sigma = 1.0  # absent from FlowMatchEulerDiscreteScheduler
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export_student(teacher, unet, folder: Path, state: dict) -> None:
    """The teacher's VAE, text encoder and tokenizer with the student's UNet and the flow
    scheduler, as a pipeline folder (fp32; `export` makes the fp16 copy that ships)."""
    pipe = demo_model.make_pipeline(teacher.vae, teacher.text_encoder, teacher.tokenizer, unet,
                                    scheduler=flow_scheduler())
    pipe.save_pretrained(str(folder), safe_serialization=True)
    (folder / "training_state.json").write_text(json.dumps(state, indent=1))


def export(folder: str | Path, target: str | Path) -> None:
    """Re-save a student folder with half-precision weights (the VAE and text encoder files
    equal the fp16 teacher's, so git stores them once; only the UNet is new)."""
    import shutil

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float16)
    pipe.save_pretrained(str(target), safe_serialization=True)
    shutil.copy(Path(folder) / "training_state.json", Path(target) / "training_state.json")


# --- stage "pairs" (and the distillation's student pairs) ------------------------------------

def pair_noise(cfg: ReflowConfig, stream: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Pair `index`'s starting noise: a function of (seed, stream, index) alone, so a shard
    is the same whatever batch it is generated in."""
    rng = step_rng(cfg, stream, index)
    return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))


def pair_caption(cfg: ReflowConfig, stream: int, index: int) -> str:
    scene = world.sample_scene(step_rng(cfg, stream, index), "train", cfg.two_object_fraction)
    return scene.caption


def shard_count(count: int, shard_size: int) -> int:
    return math.ceil(count / shard_size)


def shard_path(folder: Path, k: int) -> Path:
    return folder / f"shard_{k:05d}.pt"


def make_pairs(cfg: ReflowConfig, pipe, folder: Path, count: int, streams: tuple[int, int],
               deadline: Deadline, desc: str, **sample) -> bool:
    """Write the shards of `count` pairs (rounded up to whole shards) that are not there
    yet; True once all are. Each shard: noise (n, 4, 16, 16), latents (n, 4, 16, 16), the
    result the pipeline's sampler reached from that noise (scaled latents, as the UNet sees
    them), captions and indices."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = shard_count(count, cfg.shard_size)
    todo = [k for k in range(shards) if not shard_path(folder, k).exists()]
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    total = shards * cfg.shard_size
    bar = tqdm(total=total, initial=total - len(todo) * cfg.shard_size, desc=desc, unit="pair",
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30)
    clock = Clock()
    for n, k in enumerate(todo):
        if n and n % 25 == 0:
            tqdm.write(f"{desc}: {clock.rate(n * cfg.shard_size, 'pair')}")
        if deadline.expired():
            bar.close()
            return False
        indices = list(range(k * cfg.shard_size, (k + 1) * cfg.shard_size))
        noise = torch.stack([pair_noise(cfg, streams[0], i, shape) for i in indices])  # (n, 4, 16, 16)
        captions = [pair_caption(cfg, streams[1], i) for i in indices]
        with torch.no_grad():
            latents = pipe(captions, latents=noise.to(pipe.device), output_type="latent",
                           **sample).images.float().cpu()  # (n, 4, 16, 16)
        save_atomic({"noise": noise, "latents": latents, "captions": captions,
                     "indices": indices}, shard_path(folder, k))
        bar.update(len(indices))
    bar.close()
    if todo:
        tqdm.write(f"{desc}: {clock.rate(len(todo) * cfg.shard_size, 'pair')}")
    return True


class Clock:
    """Wall and CPU seconds since it was made: speed on a shared machine is the CPU time."""

    def __init__(self):
        self.wall, self.cpu = time.monotonic(), time.process_time()

    def rate(self, n: int, unit: str) -> str:
        wall, cpu = time.monotonic() - self.wall, time.process_time() - self.cpu
        return (f"{n} {unit}s in {wall:.0f} s: {n / max(wall, 1e-9):.3f} {unit}s/s, "
                f"{cpu / max(n, 1):.3f} CPU s per {unit}")


def train_steps(desc: str, state: dict, end: int, train_step, evaluate, eval_every: int,
                deadline, checkpoint, exported: Path) -> None:
    """The training loop of the students and the ControlNet (controlnet_train.py), from
    state["step"] to `end`: `train_step(step)` does one optimizer step and returns its loss,
    recorded in state["losses"]; every `eval_every` steps `evaluate(step)` (None: never)
    appends to state["val"] and returns its line for the log. A checkpoint every few
    minutes (`deadline`) with the speed, and at the end when a step was taken or nothing
    was exported yet (`exported` missing); stops early when the deadline expires."""
    start, clock = state["step"], Clock()
    bar = tqdm(range(start, end), desc=desc, initial=start, total=end,
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30)
    for step in bar:
        loss = train_step(step)
        state["step"] = step + 1
        state["losses"].append((step + 1, loss))
        if evaluate is not None and (step + 1) % eval_every == 0:
            tqdm.write(evaluate(step + 1))
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if deadline.save_due():
            tqdm.write(f"{desc} step {step + 1}: {clock.rate(step + 1 - start, 'step')}")
            checkpoint()
        if deadline.expired():
            break
    bar.close()
    if state["step"] > start:
        tqdm.write(f"{desc} step {state['step']}: {clock.rate(state['step'] - start, 'step')}")
    if state["step"] > start or not exported.exists():
        checkpoint()


def load_pairs(folder: Path, count: int, shard_size: int) -> dict:
    """All shards of a finished pair set, concatenated (noise, latents, captions)."""
    shards = [torch.load(shard_path(folder, k), weights_only=False)
              for k in range(shard_count(count, shard_size))]
    return {"noise": torch.cat([s["noise"] for s in shards]),
            "latents": torch.cat([s["latents"] for s in shards]),
            "captions": [c for s in shards for c in s["captions"]]}


def teacher_pairs(cfg: ReflowConfig, teacher, deadline: Deadline) -> bool:
    return make_pairs(cfg, teacher, Path(cfg.out) / PAIRS_DIR, cfg.pairs,
                      (RNG_PAIR_NOISE, RNG_PAIR_CAPTION), deadline, "pairs (teacher)",
                      num_inference_steps=cfg.teacher_steps, guidance_scale=cfg.guidance_scale,
                      eta=0.0)


# --- training: the 2-rectified flow and the one-step student --------------------------------

def flow_loss(unet, hidden, noise, latents, sigma) -> torch.Tensor:
    """Mean squared error of the UNet's velocity against the straight line's, z - x0, at
    x_sigma = (1 - sigma) x0 + sigma z (timestep 1000 sigma)."""
    s = sigma.view(-1, 1, 1, 1)
    x = (1 - s) * latents + s * noise  # (B, 4, 16, 16)
    v = unet(x, sigma * NUM_TRAIN_TIMESTEPS, hidden).sample  # (B, 4, 16, 16)
    return F.mse_loss(v, noise - latents)


def learning_rate(cfg: ReflowConfig, step: int, steps: int) -> float:
    """Linear warm-up, then a cosine from cfg.lr to cfg.lr_final at `steps`; a function of
    the step, so resuming changes nothing."""
    warm = min(1.0, (step + 1) / cfg.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, steps))))
    return warm * (cfg.lr_final + (cfg.lr - cfg.lr_final) * cosine)


def ema_update(ema, net, decay: float) -> None:
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters()):
            pe.lerp_(p, 1 - decay)


def optimizer_step(opt, net, ema, loss, lr: float, ema_decay: float, step: int) -> None:
    """One optimizer step of a student or a ControlNet at learning rate `lr`, gradients
    clipped to norm 1, then the EMA copy (its decay warms up as (1 + step) / (10 + step)
    until `ema_decay`)."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    ema_update(ema, net, min(ema_decay, (1 + step) / (10 + step)))


def held_out(pairs: dict, val: int) -> tuple[int, slice]:
    """The last `val` pairs (at most a tenth) are never trained on."""
    val = min(val, len(pairs["captions"]) // 10)
    n = len(pairs["captions"])
    return n - val, slice(n - val, n)


def validate(cfg, unet, teacher, own: dict, reference: dict, one_step: bool
             ) -> tuple[float, float]:
    """(held-out loss of the stage's own objective, held-out one-step error against the
    teacher's 50-step results), both on pairs never trained on. The reflow objective is
    measured at fixed sigmas (0.5/8, 1.5/8, ... 7.5/8 in turn), the one-step one at 1."""
    def batch(pairs, one_step):
        _, val = held_out(pairs, cfg.val_pairs)
        z, x0, caps = pairs["noise"][val], pairs["latents"][val], pairs["captions"][val]
        if not caps:
            return math.nan
        sigma = torch.ones(len(caps)) if one_step else (torch.arange(len(caps)) % 8 + 0.5) / 8
        hidden = encode_text(teacher.tokenizer, teacher.text_encoder, caps, cfg.device)
        return flow_loss(unet, hidden, z.to(cfg.device), x0.to(cfg.device), sigma.to(cfg.device)).item()

    with torch.no_grad():
        return batch(own, one_step), batch(reference, True)


def train_student(cfg: ReflowConfig, stage: str, teacher, init_unet, pairs: dict,
                  reference: dict, steps: int, deadline: Deadline) -> bool:
    """Train (or resume) a student UNet on `pairs`: stage "reflow" on the straight lines at
    sigma ~ U(0, 1), stage "distill" at sigma = 1 only (one step from noise to result).
    Returns True once it has reached `steps`; exports the EMA weights at every checkpoint."""
    out = Path(cfg.out)
    path, folder = out / f"{stage}.pt", out / PIPELINES[stage]
    unet, ema = copy.deepcopy(init_unet).train(), copy.deepcopy(init_unet).eval()
    unet.requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.01)
    state = {"step": 0, "losses": [], "val": []}
    if path.exists():
        state = torch.load(path, weights_only=False)
        for module, key in ((unet, "unet"), (ema, "ema"), (opt, "opt")):
            module.load_state_dict(state[key])
    n_train, _ = held_out(pairs, cfg.val_pairs)
    rng_stage = RNG_REFLOW if stage == "reflow" else RNG_DISTILL

    def checkpoint():
        save_atomic({**state, "unet": unet.state_dict(), "ema": ema.state_dict(),
                     "opt": opt.state_dict()}, path)
        what = "2-rectified flow: velocity MSE" if stage == "reflow" else "one-step student: MSE"
        plot_losses({"train": smooth(state["losses"]),
                     "held-out": [(s, a) for s, a, _ in state["val"]],
                     "one step vs teacher": [(s, b) for s, _, b in state["val"]]},
                    out / f"loss_{stage}.png", what)
        export_student(teacher, ema, folder, {
            "stage": stage, "steps": state["step"], "of_steps": steps, "seed": cfg.seed,
            "teacher": cfg.teacher, "teacher_guidance_scale": cfg.guidance_scale,
            "teacher_steps": cfg.teacher_steps, "pairs": n_train, "guidance_scale": 1.0,
            "num_inference_steps": 1 if stage == "distill" else None,
            "time_convention": TIME_CONVENTION,
            "last_val": state["val"][-1] if state["val"] else None})

    def train_step(step: int) -> float:
        rng = step_rng(cfg, rng_stage, step)
        idx = torch.from_numpy(rng.integers(0, n_train, cfg.batch))
        sigma = torch.from_numpy(rng.random(cfg.batch, dtype=np.float32))
        if stage == "distill":
            sigma = torch.ones(cfg.batch)
        with torch.no_grad():
            hidden = encode_text(teacher.tokenizer, teacher.text_encoder,
                                 [pairs["captions"][i] for i in idx], cfg.device)
        loss = flow_loss(unet, hidden, pairs["noise"][idx].to(cfg.device),
                         pairs["latents"][idx].to(cfg.device), sigma.to(cfg.device))
        optimizer_step(opt, unet, ema, loss, learning_rate(cfg, step, steps), cfg.ema_decay, step)
        return loss.item()

    def evaluate(step: int) -> str:
        state["val"].append((step, *validate(cfg, ema, teacher, pairs, reference,
                                             stage == "distill")))
        return f"{stage} step {step}: held-out {state['val'][-1][1]:.4f}, " \
               f"one step vs teacher {state['val'][-1][2]:.4f}"

    end = min(steps, cfg.stop_at) if cfg.stop_at else steps
    train_steps(stage, state, end, train_step, evaluate if n_train < len(pairs["captions"]) else None,
                cfg.eval_every, deadline, checkpoint, folder / "training_state.json")
    return state["step"] >= steps


# --- the stages -------------------------------------------------------------------------------

def run(cfg: ReflowConfig, stages: tuple[str, ...] = STAGES) -> dict[str, bool]:
    """Run (or resume) the given stages in order; each needs the ones before it finished.
    Returns which stages are complete (a stage that stops early ends the run)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    lock = hold_lock(out)
    try:
        return _run(cfg, stages, out)
    finally:
        lock.unlink(missing_ok=True)


def hold_lock(out: Path) -> Path:
    """`<out>/run.lock` holds the running process's id: a second process on the same folder
    (a resume while the run still goes) is refused. A lock left by a killed process (its
    id no longer running) is taken over."""
    lock = out / "run.lock"
    try:
        pid = int(lock.read_text())
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
        alive = pid != os.getpid()
    except (OSError, ValueError):  # no lock, an unreadable one, or no such process
        alive = False
    if alive:
        raise StageError(f"{out} is in use by process {pid} ({lock}): wait for it to end or "
                         "stop it first")
    lock.write_text(str(os.getpid()))
    return lock


def _run(cfg: ReflowConfig, stages: tuple[str, ...], out: Path) -> dict[str, bool]:
    check_order(cfg, stages)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    teacher = load_teacher(cfg.teacher, cfg.device)
    deadline = Deadline(cfg.minutes, cfg.checkpoint_minutes)
    done = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        if stage == "pairs":
            done[stage] = teacher_pairs(cfg, teacher, deadline)
        elif stage == "reflow":
            done[stage] = reflow_stage(cfg, teacher, deadline)
        else:
            done[stage] = distill_stage(cfg, teacher, deadline)
        if not done[stage]:
            break
    return done


def check_order(cfg: ReflowConfig, stages: tuple[str, ...]) -> None:
    """Refuse (StageError, before anything loads) a stage whose input another stage, not
    asked for, has not finished."""
    out = Path(cfg.out)
    if "reflow" in stages and "pairs" not in stages and \
            not _pairs_complete(out / PAIRS_DIR, cfg.pairs, cfg.shard_size):
        raise StageError(f"stage reflow needs the teacher's {cfg.pairs} pairs: run stage pairs "
                         "to its end first")
    if "distill" in stages and "reflow" not in stages and \
            _stage_step(out / "reflow.pt") < cfg.reflow_steps:
        raise StageError(f"stage distill needs the 2-rectified flow trained to step "
                         f"{cfg.reflow_steps}: run stage reflow to its end first")


class StageError(RuntimeError):
    """A stage asked for before the one it builds on has finished."""


def _pairs_complete(folder: Path, count: int, shard_size: int) -> bool:
    return all(shard_path(folder, k).exists() for k in range(shard_count(count, shard_size)))


def _stage_step(path: Path) -> int:
    return torch.load(path, weights_only=False)["step"] if path.exists() else 0


def _finished(out: Path, stage: str, steps: int) -> bool:
    return _stage_step(out / f"{stage}.pt") >= steps and \
        (out / PIPELINES[stage] / "training_state.json").exists()


def reflow_stage(cfg: ReflowConfig, teacher, deadline: Deadline) -> bool:
    out = Path(cfg.out)
    if _finished(out, "reflow", cfg.reflow_steps):
        return True
    pairs = load_pairs(out / PAIRS_DIR, cfg.pairs, cfg.shard_size)
    return train_student(cfg, "reflow", teacher, teacher.unet, pairs, pairs, cfg.reflow_steps,
                         deadline)


def distill_stage(cfg: ReflowConfig, teacher, deadline: Deadline) -> bool:
    out = Path(cfg.out)
    if _finished(out, "distill", cfg.distill_steps):
        return True
    flow = load_student(out / PIPELINES["reflow"], cfg.device)
    complete = make_pairs(cfg, flow, out / STUDENT_PAIRS_DIR, cfg.student_pairs,
                          (RNG_STUDENT_NOISE, RNG_STUDENT_CAPTION), deadline,
                          "pairs (2-rectified flow)", num_inference_steps=cfg.student_steps,
                          guidance_scale=1.0)
    if not complete:
        return False
    pairs = load_pairs(out / STUDENT_PAIRS_DIR, cfg.student_pairs, cfg.shard_size)
    reference = load_pairs(out / PAIRS_DIR, cfg.pairs, cfg.shard_size)
    return train_student(cfg, "distill", teacher, flow.unet, pairs, reference, cfg.distill_steps,
                         deadline)


# --- command line ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    d = ReflowConfig()
    p = argparse.ArgumentParser(
        prog="noisepath train-demo students",
        formatter_class=DefaultsHelpFormatter,
        description="Make the demo model's students on a CPU (InstaFlow's recipe): "
                    "'pairs' samples the teacher's 50-step DDIM ODE from seeded noise at the "
                    "app's guidance and keeps (noise, caption, result); 'reflow' trains a "
                    "2-rectified flow (initialised from the teacher) on the straight lines "
                    "between them; 'distill' samples the 2-rectified flow's own ODE and trains "
                    "a one-step student on it. Resumable; checkpoints, loss charts "
                    "(loss_*.png) and the students' pipelines (rectified-flow/, one-step/: "
                    "FlowMatchEulerDiscreteScheduler, velocity UNet, sample with guidance 1) "
                    "under --out. docs/demo-model.md, 'Students'.")
    p.add_argument("--out", default=d.out, help="work folder (pairs, checkpoints, pipelines)")
    p.add_argument("--stage", choices=STAGES + ("all",), default="all",
                   help="the stage to run; 'all' runs pairs, reflow and distill in order, "
                        "skipping what is finished")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (otherwise --out must not hold one)")
    p.add_argument("--teacher", default=d.teacher, help="the teacher's pipeline folder")
    p.add_argument("--pairs", type=int, default=d.pairs,
                   help="teacher pairs to generate (rounded up to whole shards); raising it "
                        "on --resume adds shards")
    p.add_argument("--shard-size", type=int, default=d.shard_size,
                   help="pairs per shard (one batch of the teacher)")
    p.add_argument("--teacher-steps", type=int, default=d.teacher_steps,
                   help="DDIM steps of the teacher's ODE")
    p.add_argument("--guidance", type=float, default=app_guidance_scale(),
                   help="the teacher's guidance scale (default: the app's, "
                        "precompute/prompts/demo.toml)")
    p.add_argument("--two-object-fraction", type=float, default=d.two_object_fraction,
                   help="share of the pairs' captions with two objects")
    p.add_argument("--reflow-steps", type=int, default=d.reflow_steps,
                   help="training steps of the 2-rectified flow")
    p.add_argument("--student-pairs", type=int, default=d.student_pairs,
                   help="pairs sampled from the 2-rectified flow for the distillation")
    p.add_argument("--student-steps", type=int, default=d.student_steps,
                   help="Euler steps of the 2-rectified flow per distillation pair")
    p.add_argument("--distill-steps", type=int, default=d.distill_steps,
                   help="training steps of the one-step student")
    p.add_argument("--batch", type=int, default=d.batch, help="training batch size")
    p.add_argument("--lr", type=float, default=d.lr,
                   help="peak learning rate (after --warmup steps; a cosine to --lr-final)")
    p.add_argument("--lr-final", type=float, default=d.lr_final)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--val-pairs", type=int, default=d.val_pairs,
                   help="the last pairs of each set (at most a tenth), never trained on: the "
                        "held-out curves")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="steps between held-out evaluations")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="stop (with a checkpoint) after this many minutes; 0 = no limit")
    p.add_argument("--stop-at", type=int, default=0, metavar="STEP",
                   help="stop the training stage that is running at this step (its learning "
                        "rate schedule still ends at its step count)")
    p.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="CPU threads for torch (1 is fastest on a shared, busy machine)")
    p.add_argument("--export", default=None, metavar="FOLDER",
                   help="afterwards, copy the finished one-step student (or with --export-stage "
                        "reflow the 2-rectified flow) to FOLDER with fp16 weights")
    p.add_argument("--export-stage", choices=("reflow", "distill"), default="distill")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[ReflowConfig, argparse.Namespace]:
    p = build_parser()
    args = p.parse_args(argv)
    for name in ("pairs", "student_pairs", "shard_size", "teacher_steps", "student_steps",
                 "batch", "warmup", "eval_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    for name in ("reflow_steps", "distill_steps", "val_pairs", "stop_at"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must not be negative")
    if not 0.0 <= args.two_object_fraction <= 1.0:
        p.error(f"--two-object-fraction {args.two_object_fraction}: a share between 0 and 1")
    if problem := pipeline_folder_problem(args.teacher, "--teacher"):
        p.error(problem)
    cfg = ReflowConfig(
        out=args.out, teacher=args.teacher, seed=args.seed, device=args.device,
        threads=args.threads, pairs=args.pairs, shard_size=args.shard_size,
        teacher_steps=args.teacher_steps, guidance_scale=args.guidance,
        two_object_fraction=args.two_object_fraction, val_pairs=args.val_pairs,
        reflow_steps=args.reflow_steps, student_pairs=args.student_pairs,
        student_steps=args.student_steps, distill_steps=args.distill_steps, batch=args.batch,
        lr=args.lr, lr_final=args.lr_final, warmup=args.warmup, minutes=args.minutes,
        stop_at=args.stop_at, checkpoint_minutes=args.checkpoint_minutes,
        eval_every=args.eval_every)
    saved = Path(args.out) / "config.json"
    if saved.exists() and not args.resume:
        p.error(f"{args.out} holds a run: pass --resume to continue it, or pick another --out")
    if saved.exists():
        before = json.loads(saved.read_text())
        for name in RUN_DEFINING:
            if name in before and before[name] != getattr(cfg, name):
                option = {"guidance_scale": "guidance"}.get(name, name).replace("_", "-")
                p.error(f"--{option} {getattr(cfg, name)} differs from the run's {before[name]} "
                        f"({saved}): a resumed run keeps its pairs and batches")
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    """`noisepath train-demo students`: make (or resume) the students, optionally export."""
    cfg, args = parse_args(argv)
    stages = STAGES if args.stage == "all" else (args.stage,)
    try:
        done = run(cfg, stages)
    except StageError as e:
        print(f"noisepath train-demo students: {e}", file=sys.stderr)
        return 2
    for stage, complete in done.items():
        print(f"{stage}: {'complete' if complete else 'stopped; --resume continues it'}")
    if args.export:
        folder = Path(cfg.out) / PIPELINES[args.export_stage]
        state = folder / "training_state.json"
        state = json.loads(state.read_text()) if state.exists() else {"steps": 0, "of_steps": 1}
        if state["steps"] < state["of_steps"]:
            print(f"noisepath train-demo students: stage {args.export_stage} is not finished; "
                  "nothing exported", file=sys.stderr)
            return 2
        export(folder, args.export)
        print(f"exported {folder} (fp16) to {args.export}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train the demo model from scratch and save it as a Stable Diffusion pipeline folder.

    python -m precompute.demo.train --out demo-work --minutes 90
    python -m precompute.demo.train --out demo-work --resume      # continue where it stopped

Stage 1 trains the VAE to reconstruct rendered scenes (L1 + MSE + a small KL term), then
measures the latent scaling factor (1 / std of the latents, SD 1.5's is 0.18215).
Stage 2 trains the UNet and the text encoder together on v-prediction with the
zero-terminal-SNR schedule (model.SCHEDULE), dropping 10% of the captions so the same
network also learns the unconditional prediction that classifier-free guidance needs.
Every few minutes it writes a checkpoint (resumable: the batches are a function of the
seed and the step) and exports the EMA weights as a pipeline folder (`<out>/pipeline`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from precompute.demo import model as demo_model
from precompute.demo import sketch, world
from precompute.folders import pipeline_folder_problem


@dataclass
class TrainConfig:
    out: str = "demo-work"
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    size: str = "demo"  # "demo" or "micro" (tests)
    vae_steps: int = 1200
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 20000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    unet_lr_final: float = 0.0  # > 0: cosine decay from unet_lr to this at unet_steps
    warmup: int = 100
    caption_dropout: float = 0.1
    strip_positions: float = 0.0  # share of the UNet's captions without position words
    two_object_fraction: float = world.TWO_OBJECT_FRACTION  # of the UNet's training scenes
    ema_decay: float = 0.998
    minutes: float = 0.0  # 0: no time limit, stop at the step targets
    stop_at: int = 0  # > 0: stop the UNet at this step (the schedule still ends at unet_steps)
    checkpoint_minutes: float = 4.0
    decoder_only: bool = False  # run stage 1b (decoder fine-tuning) instead of stage 2
    decoder_steps: int = 3000
    eval_every: int = 100
    init_from: str | None = None  # a pipeline folder to start stage 2 from (see init_from)
    fresh_unet: bool = False  # with init_from: take only its VAE and tokenizer
    model: demo_model.ModelConfig = field(default_factory=demo_model.ModelConfig)


def step_rng(cfg: TrainConfig, stage: int, step: int) -> np.random.Generator:
    """Batches depend only on (seed, stage, step), so a resumed run sees the same data."""
    return np.random.default_rng([cfg.seed, stage, step])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()  # (B, 3, 64, 64)
    return x / 127.5 - 1.0


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def plot_losses(curves: dict[str, list[tuple[int, float]]], path: Path, title: str) -> None:
    """A log-scale loss chart drawn with Pillow (no matplotlib in the precompute extra)."""
    from PIL import Image, ImageDraw

    w, h, pad = 640, 360, 48
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    points = [p for c in curves.values() for p in c if p[1] > 0]
    if not points:
        return
    # x from the first step drawn (a run continued with --init-from starts late), not 0
    x_min = min(p[0] for p in points) - 1
    x_max = max(max(p[0] for p in points), x_min + 1)
    lo, hi = math.log10(min(p[1] for p in points)), math.log10(max(p[1] for p in points))
    hi = hi if hi > lo else lo + 1
    sx = lambda s: pad + (w - 2 * pad) * (s - x_min) / (x_max - x_min)  # noqa: E731
    sy = lambda v: h - pad - (h - 2 * pad) * (math.log10(v) - lo) / (hi - lo)  # noqa: E731
    d.rectangle([pad, pad, w - pad, h - pad], outline="gray")
    ticks = (1, 2, 5) if hi - lo > 1 else range(1, 10)  # under a decade: every 0.1, 0.2, ...
    for e in range(math.floor(lo), math.ceil(hi) + 1):
        for m in ticks:
            v = m * 10.0 ** e
            if lo <= math.log10(v) <= hi:
                d.line([pad, sy(v), w - pad, sy(v)], fill=(225, 225, 225))
                d.text((4, sy(v) - 6), f"{v:g}", fill="black")
    d.text((pad, 12), title, fill="black")
    d.text((pad, h - pad + 8), f"step {x_min}", fill="black")
    d.text((w - pad - 60, h - pad + 8), f"step {x_max}", fill="black")
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    for i, (name, curve) in enumerate(curves.items()):
        pts = [(sx(s), sy(v)) for s, v in curve if v > 0]
        colour = palette[i % len(palette)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        d.text((pad + 10 + 170 * i, h - pad + 24), name, fill=colour)
    img.save(path)


def smooth(curve: list[tuple[int, float]], k: int = 25) -> list[tuple[int, float]]:
    out = []
    for i in range(0, len(curve), k):
        chunk = curve[i:i + k]
        out.append((chunk[-1][0], float(np.mean([v for _, v in chunk]))))
    return out


class Deadline:
    def __init__(self, minutes: float, every_minutes: float):
        self.start = time.monotonic()
        self.limit = minutes * 60 if minutes > 0 else math.inf
        self.every = every_minutes * 60
        self.last_save = self.start

    def expired(self) -> bool:
        return time.monotonic() - self.start > self.limit

    def save_due(self) -> bool:
        if time.monotonic() - self.last_save > self.every:
            self.last_save = time.monotonic()
            return True
        return False


# --- stage 1: the VAE -----------------------------------------------------------------------

def train_vae(cfg: TrainConfig, vae, out: Path, deadline: Deadline) -> int | None:
    """Train until cfg.vae_steps; returns the VAE's step count once the stage is complete,
    None when the deadline stopped it first. A finished VAE
    (its scaling factor measured) trains on when cfg.vae_steps is above its step count:
    how to sharpen the shipped VAE (with --init-from), after which the UNet, continuing,
    adapts to the latents that moved."""
    path = out / "vae.pt"
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    state = {"step": 0, "losses": [], "scaling_factor": None}
    if path.exists():
        state = torch.load(path, weights_only=False)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
    if state["scaling_factor"] is not None and state["step"] >= cfg.vae_steps:
        vae.register_to_config(scaling_factor=state["scaling_factor"])
        return state["step"]

    def checkpoint():
        save_atomic({**state, "vae": vae.state_dict(), "opt": opt.state_dict()}, path)
        plot_losses({"vae L1": smooth(state["losses"])}, out / "loss_vae.png", "VAE reconstruction")

    vae.train()
    bar = tqdm(range(state["step"], cfg.vae_steps), desc="vae", initial=state["step"],
               total=cfg.vae_steps, dynamic_ncols=True)
    for step in bar:
        images, _, _ = world.sample_batch(step_rng(cfg, 1, step), cfg.vae_batch)
        x = to_tensor(images).to(cfg.device)  # (B, 3, 64, 64)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=None)  # (B, 4, 16, 16)
        recon = vae.decode(z).sample  # (B, 3, 64, 64)
        l1 = F.l1_loss(recon, x)
        loss = l1 + F.mse_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()
        for group in opt.param_groups:  # cosine decay to a tenth, a function of the step
            group["lr"] = cfg.vae_lr * (0.55 + 0.45 * math.cos(math.pi * step / cfg.vae_steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)  # lr 1e-3 alone spiked
        opt.step()
        state["step"] = step + 1
        state["losses"].append((step + 1, l1.item()))
        bar.set_postfix(l1=f"{l1.item():.4f}")
        if deadline.save_due():
            checkpoint()
        if deadline.expired():
            checkpoint()
            return None

    # SD scales latents to about unit variance before diffusion: measure that factor.
    vae.eval()
    with torch.no_grad():
        images, _, _ = world.sample_batch(step_rng(cfg, 9, 0), 256)
        z = vae.encode(to_tensor(images).to(cfg.device)).latent_dist.sample()  # (256, 4, 16, 16)
    state["scaling_factor"] = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=state["scaling_factor"])
    checkpoint()
    return state["step"]


def train_decoder(cfg: TrainConfig, vae, out: Path, deadline: Deadline) -> None:
    """Stage 1b (optional, can run beside stage 2): fine-tune only the VAE decoder with the
    encoder frozen. The latent space does not move, so the UNet is unaffected; sharper
    decodes of the same latents. Saved to decoder.pt, picked up by every export."""
    path = out / "decoder.pt"
    decoder = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(decoder, lr=cfg.vae_lr / 3)
    state = {"step": 0, "losses": []}
    if path.exists():
        state = torch.load(path, weights_only=False)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])

    def checkpoint():
        save_atomic({**state, "vae": vae.state_dict(), "opt": opt.state_dict()}, path)
        plot_losses({"decoder L1": smooth(state["losses"])}, out / "loss_decoder.png",
                    "VAE decoder fine-tuning (encoder frozen)")

    vae.encoder.requires_grad_(False), vae.quant_conv.requires_grad_(False)
    bar = tqdm(range(state["step"], cfg.decoder_steps), desc="decoder", initial=state["step"],
               total=cfg.decoder_steps, dynamic_ncols=True)
    for step in bar:
        images, _, _ = world.sample_batch(step_rng(cfg, 3, step), cfg.vae_batch)
        x = to_tensor(images).to(cfg.device)  # (B, 3, 64, 64)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()  # (B, 4, 16, 16)
        recon = vae.decode(z).sample  # (B, 3, 64, 64)
        l1 = F.l1_loss(recon, x)
        loss = l1 + F.mse_loss(recon, x)
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr / 3 * (0.55 + 0.45 * math.cos(math.pi * step / cfg.decoder_steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder, 1.0)
        opt.step()
        state["step"] = step + 1
        state["losses"].append((step + 1, l1.item()))
        bar.set_postfix(l1=f"{l1.item():.4f}")
        if deadline.save_due() or deadline.expired() or step + 1 == cfg.decoder_steps:
            checkpoint()
        if deadline.expired():
            return


def load_decoder(vae, out: Path) -> None:
    """Use the fine-tuned decoder if stage 1b has written one (encoder weights identical)."""
    if (out / "decoder.pt").exists():
        decoded = torch.load(out / "decoder.pt", weights_only=False)["vae"]
        vae.load_state_dict({k: v for k, v in decoded.items() if not k.startswith(("encoder.", "quant_conv."))},
                            strict=False)


# --- stage 2: the UNet and the text encoder -------------------------------------------------

def encode_text(tokenizer, text_encoder, captions: list[str], device: str) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=demo_model.MAX_LENGTH,
                    truncation=True, return_tensors="pt").input_ids.to(device)  # (B, 77)
    return text_encoder(ids)[0]  # (B, 77, hidden)


def diffusion_loss(cfg, vae, unet, text_encoder, tokenizer, scheduler, images, captions, gen):
    with torch.no_grad():
        latents = vae.encode(to_tensor(images).to(cfg.device)).latent_dist.sample(gen)
        latents = latents * vae.config.scaling_factor  # (B, 4, 16, 16)
    noise = torch.randn(latents.shape, generator=gen).to(cfg.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(images),), generator=gen)
    t = t.to(cfg.device)
    noisy = scheduler.add_noise(latents, noise, t)  # x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
    target = scheduler.get_velocity(latents, noise, t)  # v = sqrt(a_t) eps - sqrt(1 - a_t) x_0
    hidden = encode_text(tokenizer, text_encoder, captions, cfg.device)
    pred = unet(noisy, t, hidden).sample  # (B, 4, 16, 16)
    return F.mse_loss(pred, target)


def export_pipeline(vae, text_encoder, tokenizer, unet, folder: Path, dtype=torch.float32):
    pipe = demo_model.make_pipeline(vae, text_encoder, tokenizer, unet)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    if dtype != torch.float32:  # re-save the weights in half precision, a smaller folder
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.from_pretrained(str(folder), dtype=dtype).save_pretrained(str(folder))


def unet_lr(cfg: TrainConfig, step: int, start_step: int = 0) -> float:
    """The learning rate at a step (a function of the step, so resuming changes nothing):
    linear warm-up over cfg.warmup steps from where the optimizer started, then constant,
    or a cosine decay to cfg.unet_lr_final at cfg.unet_steps when that is set."""
    warm = min(1.0, (step - start_step + 1) / cfg.warmup)
    if cfg.unet_lr_final <= 0:
        return cfg.unet_lr * warm
    done = min(1.0, max(0.0, (step - start_step) / max(1, cfg.unet_steps - start_step)))
    cosine = 0.5 * (1 + math.cos(math.pi * done))
    return warm * (cfg.unet_lr_final + (cfg.unet_lr - cfg.unet_lr_final) * cosine)


def training_captions(cfg: TrainConfig, rng: np.random.Generator, step: int,
                      captions: list[str], scenes: list[world.Scene]) -> list[str]:
    """A batch's captions as the UNet sees them: a share cfg.caption_dropout replaced by ""
    (for classifier-free guidance) and, of the rest, a share cfg.strip_positions without
    their position words. The second draw comes from its own generator, so a share of 0
    leaves every batch as it was before the option existed."""
    drop = rng.random(len(captions)) < cfg.caption_dropout
    captions = ["" if d else c for c, d in zip(captions, drop)]
    if cfg.strip_positions > 0:
        strip = np.random.default_rng([cfg.seed, 2, step, 1]).random(len(captions))
        captions = [sketch.caption_without_positions(s) if c and u < cfg.strip_positions
                    else c for c, s, u in zip(captions, scenes, strip)]
    return captions


def train_unet(cfg: TrainConfig, vae, unet, text_encoder, tokenizer, out: Path,
               deadline: Deadline, vae_steps: int) -> bool:
    """vae_steps: the VAE's own step count, recorded in the exported training_state.json."""
    import copy

    path = out / "unet.pt"
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    state = {"step": 0, "start_step": 0, "losses": [], "val": []}
    if path.exists():
        state = torch.load(path, weights_only=False)
        for module, key in ((unet, "unet"), (text_encoder, "text"), (ema_unet, "ema_unet"),
                            (ema_text, "ema_text"), (opt, "opt")):
            module.load_state_dict(state[key])
    state.setdefault("start_step", 0)  # where the optimizer started (after --init-from)
    scheduler = demo_model.training_scheduler()
    vae.eval().requires_grad_(False)

    # A fixed validation batch of held-out captions: loss with and without the caption.
    val_images, val_captions, _ = world.sample_batch(step_rng(cfg, 8, 0), 64, split="test")

    def validate(net, text) -> tuple[float, float]:
        with torch.no_grad():
            losses = [diffusion_loss(cfg, vae, net, text, tokenizer, scheduler, val_images, caps,
                                     torch.Generator().manual_seed(cfg.seed + 1)).item()
                      for caps in (val_captions, [""] * len(val_captions))]
        return losses[0], losses[1]

    def checkpoint():
        save_atomic({**state, "unet": unet.state_dict(), "text": text_encoder.state_dict(),
                     "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                     "opt": opt.state_dict()}, path)
        curves = {"train v-MSE": smooth(state["losses"]),
                  "held-out, caption": [(s, a) for s, a, _ in state["val"]],
                  "held-out, no caption": [(s, b) for s, _, b in state["val"]]}
        plot_losses(curves, out / "loss_unet.png", "UNet + text encoder (v-prediction MSE)")
        load_decoder(vae, out)
        export_pipeline(vae, ema_text, tokenizer, ema_unet, out / "pipeline")
        (out / "pipeline" / "training_state.json").write_text(json.dumps(
            {"vae_steps": vae_steps, "unet_steps": state["step"], "seed": cfg.seed,
             "last_val": state["val"][-1] if state["val"] else None}, indent=1))

    unet.train(), text_encoder.train()
    end = min(cfg.unet_steps, cfg.stop_at) if cfg.stop_at else cfg.unet_steps
    bar = tqdm(range(state["step"], end), desc="unet", initial=state["step"], total=end,
               dynamic_ncols=True)
    for step in bar:
        rng = step_rng(cfg, 2, step)
        images, captions, scenes = world.sample_batch(rng, cfg.unet_batch,
                                                      two_object_fraction=cfg.two_object_fraction)
        captions = training_captions(cfg, rng, step, captions, scenes)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        loss = diffusion_loss(cfg, vae, unet, text_encoder, tokenizer, scheduler, images,
                              captions, gen)
        for group in opt.param_groups:
            group["lr"] = unet_lr(cfg, step, state["start_step"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, net in ((ema_unet, unet), (ema_text, text_encoder)):
                for pe, p in zip(ema.parameters(), net.parameters()):
                    pe.lerp_(p, 1 - decay)
        state["step"] = step + 1
        state["losses"].append((step + 1, loss.item()))
        if (step + 1) % cfg.eval_every == 0:
            state["val"].append((step + 1, *validate(ema_unet, ema_text)))
            tqdm.write(f"step {step + 1}: held-out v-MSE with caption {state['val'][-1][1]:.4f}, "
                       f"without {state['val'][-1][2]:.4f}")
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if deadline.save_due():
            checkpoint()
        if deadline.expired():
            break
    checkpoint()
    return state["step"] >= cfg.unet_steps


def init_from(cfg: TrainConfig, folder: str | Path, out: Path) -> None:
    """Start a work folder from an exported pipeline (e.g. the shipped static/demo-model):
    its tokenizer, its VAE as a finished stage 1 and its (EMA) UNet and text encoder as the
    starting weights of stage 2, continuing the step count of its training_state.json
    with a fresh optimizer (and a new warm-up). The way to keep training the shipped model
    when the original checkpoints are gone."""
    import shutil

    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32)
    steps = json.loads((folder / "training_state.json").read_text()) \
        if (folder / "training_state.json").exists() else {}
    shutil.copytree(folder / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    vae_steps = steps.get("vae_steps", cfg.vae_steps)
    save_atomic({"step": vae_steps, "losses": [], "vae": pipe.vae.state_dict(),
                 "opt": torch.optim.AdamW(pipe.vae.parameters()).state_dict(),
                 "scaling_factor": pipe.vae.config.scaling_factor}, out / "vae.pt")
    if cfg.fresh_unet:
        return  # stage 2 starts from scratch on the pipeline's VAE
    params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
    start = steps.get("unet_steps", 0)
    save_atomic({"step": start, "start_step": start, "losses": [], "val": [],
                 "unet": pipe.unet.state_dict(), "text": pipe.text_encoder.state_dict(),
                 "ema_unet": pipe.unet.state_dict(), "ema_text": pipe.text_encoder.state_dict(),
                 "opt": torch.optim.AdamW(params).state_dict(), "init_from": str(folder)},
                out / "unet.pt")


# --- entry point ----------------------------------------------------------------------------

def train(cfg: TrainConfig) -> Path:
    """Run (or resume) both stages; returns the exported pipeline folder."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1, default=str))
    if cfg.init_from and not (out / "unet.pt").exists():
        init_from(cfg, cfg.init_from, out)
    tokenizer_dir = out / "tokenizer"
    if (tokenizer_dir / "tokenizer_config.json").exists():
        tokenizer = demo_model.load_tokenizer(tokenizer_dir)
    else:
        tokenizer = demo_model.train_tokenizer(world.caption_corpus(), tokenizer_dir)
    vae = demo_model.build_vae(cfg.model).to(cfg.device)
    text_encoder = demo_model.build_text_encoder(cfg.model, tokenizer).to(cfg.device)
    unet = demo_model.build_unet(cfg.model).to(cfg.device)
    deadline = Deadline(cfg.minutes, cfg.checkpoint_minutes)
    vae_steps = train_vae(cfg, vae, out, deadline)  # None: the deadline came first
    if vae_steps is not None and cfg.decoder_only:
        train_decoder(cfg, vae, out, deadline)
    elif vae_steps is not None and not deadline.expired():
        train_unet(cfg, vae, unet, text_encoder, tokenizer, out, deadline, vae_steps)
    return out / "pipeline"


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(
        prog="noisepath train-demo",
        description="Train the demo model (a tiny Stable Diffusion on a shapes world) from "
                    "scratch: the VAE first, then the UNet and text encoder. Writes resumable "
                    "checkpoints, loss curves (loss_*.png) and a pipeline folder under --out.",
        epilog="noisepath train-demo students [...]: make the teacher's students (pairs from "
               "its 50-step ODE, a 2-rectified flow, a one-step student; precompute/demo/"
               "reflow.py); `noisepath train-demo students --help` lists its options. "
               "noisepath train-demo controlnet [...]: train a ControlNet for it on sketches "
               "of the shapes world (precompute/demo/controlnet_train.py).")
    p.add_argument("--out", default="demo-work", help="work folder (checkpoints, pipeline/)")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="stop (with a checkpoint) after this many minutes; 0 = no limit")
    p.add_argument("--steps", type=int, default=TrainConfig.unet_steps,
                   help="UNet training steps to reach (the VAE takes --vae-steps first)")
    p.add_argument("--stop-at", type=int, default=0, metavar="STEP",
                   help="stop the UNet (with a checkpoint) at this step while the learning-rate "
                        "schedule still ends at --steps: how to reproduce shipped weights that "
                        "were cut by --minutes (docs/demo-model.md names the step)")
    p.add_argument("--vae-steps", type=int, default=None,
                   help="VAE training steps to reach (stage 1; default %d, or the count the "
                        "run or --init-from pipeline already has). Above a finished VAE's own "
                        "count, its encoder and decoder train on from there and its scaling "
                        "factor is measured again; the UNet then continues on the moved "
                        "latents" % TrainConfig.vae_steps)
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoints in --out (otherwise --out must not "
                        "hold any)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (1 is fastest on a shared, busy machine)")
    p.add_argument("--size", choices=("demo", "micro"), default="demo",
                   help="network sizes: the shipped demo model, or a micro one for tests")
    p.add_argument("--batch", type=int, default=TrainConfig.unet_batch, help="UNet batch size")
    p.add_argument("--checkpoint-minutes", type=float, default=4.0)
    p.add_argument("--export", default=None, metavar="FOLDER",
                   help="afterwards, copy the pipeline to FOLDER with fp16 weights (the "
                        "shipped model lives in static/demo-model)")
    p.add_argument("--decoder-only", action="store_true",
                   help="after the VAE stage, fine-tune only its decoder (--decoder-steps) "
                        "instead of training the UNet; can run beside a UNet run on --out")
    p.add_argument("--decoder-steps", type=int, default=TrainConfig.decoder_steps)
    p.add_argument("--init-from", default=None, metavar="PIPELINE",
                   help="start from an exported pipeline folder (e.g. static/demo-model): "
                        "its VAE, tokenizer and weights, continuing its step count with a "
                        "fresh optimizer; the way to keep training the shipped model")
    p.add_argument("--fresh-unet", action="store_true",
                   help="with --init-from: take only its VAE and tokenizer; train a new UNet "
                        "and text encoder from scratch (e.g. with other --unet-channels)")
    p.add_argument("--unet-channels", default=None, metavar="C1,C2,C3",
                   help="the UNet's block_out_channels (default: %s)"
                        % ",".join(map(str, demo_model.ModelConfig.unet_channels)))
    p.add_argument("--lr", type=float, default=TrainConfig.unet_lr, help="UNet learning rate")
    p.add_argument("--lr-final", type=float, default=0.0,
                   help="if > 0, decay the UNet learning rate along a cosine to this value "
                        "at --steps (default: constant after the warm-up)")
    p.add_argument("--strip-positions", type=float, default=None, metavar="SHARE",
                   help="share of the UNet's captions without their position words "
                        "('a large red circle, on a blue background'), so the model also "
                        "reads captions that leave the place open (default 0; a resumed "
                        "run keeps its own)")
    p.add_argument("--two-object-fraction", type=float, default=world.TWO_OBJECT_FRACTION,
                   help="share of the UNet's training scenes with two objects (default "
                        "%(default)s); raise it to teach binding (which word goes with which "
                        "object) when continuing a model with --init-from")
    p.add_argument("--export-only", action="store_true",
                   help="skip training: only export --out's current pipeline to --export")
    args = p.parse_args(argv)
    if args.export_only:
        if not args.export:
            p.error("--export-only needs --export FOLDER")
        args.resume = True
    has_checkpoint = any((Path(args.out) / f).exists() for f in ("vae.pt", "unet.pt", "decoder.pt"))
    if args.stop_at < 0 or (args.stop_at and args.stop_at > args.steps):
        p.error(f"--stop-at {args.stop_at}: a step from 1 to --steps ({args.steps})")
    saved = Path(args.out) / "config.json"
    if args.strip_positions is None:  # a resumed run keeps its share
        args.strip_positions = (json.loads(saved.read_text()).get("strip_positions", 0.0)
                                if args.resume and saved.exists() else 0.0)
    if not 0.0 <= args.strip_positions <= 1.0:
        p.error(f"--strip-positions {args.strip_positions}: a share between 0 and 1")
    if not 0.0 <= args.two_object_fraction <= 1.0:
        p.error(f"--two-object-fraction {args.two_object_fraction}: a share between 0 and 1")
    if args.fresh_unet and not args.init_from:
        p.error("--fresh-unet needs --init-from PIPELINE (whose VAE to keep)")
    model = demo_model.MICRO if args.size == "micro" else demo_model.ModelConfig()
    if args.unet_channels:
        try:
            channels = tuple(int(c) for c in args.unet_channels.split(","))
        except ValueError:
            p.error(f"--unet-channels {args.unet_channels}: expected integers like 64,128,128")
        if len(channels) != 3 or min(channels) < 1 or any(c % min(32, channels[0]) for c in channels):
            p.error(f"--unet-channels {args.unet_channels}: three widths, each a multiple of "
                    "the group-norm group count, min(32, first width)")
        model = replace(model, unet_channels=channels)
    if args.resume and not args.unet_channels and saved.exists():  # keep the run's own sizes
        saved_channels = json.loads(saved.read_text()).get("model", {}).get("unet_channels")
        if saved_channels:
            model = replace(model, unet_channels=tuple(saved_channels))
    if args.vae_steps is None:  # no more VAE training than the run or pipeline has had
        args.vae_steps = TrainConfig.vae_steps
        state = (saved if args.resume else Path(args.init_from or "") / "training_state.json")
        if (args.resume or args.init_from) and state.is_file():
            args.vae_steps = json.loads(state.read_text()).get("vae_steps", args.vae_steps)
    if args.init_from and has_checkpoint:
        p.error(f"{args.out} already holds checkpoints: --init-from needs an empty --out")
    if args.init_from and (problem := pipeline_folder_problem(args.init_from, "--init-from")):
        p.error(problem)
    if has_checkpoint and not args.resume:
        p.error(f"{args.out} holds checkpoints: pass --resume to continue, or pick another --out")
    cfg = TrainConfig(
        out=args.out, seed=args.seed, device=args.device, threads=args.threads, size=args.size,
        vae_steps=args.vae_steps, unet_steps=args.steps, unet_batch=args.batch,
        minutes=args.minutes, checkpoint_minutes=args.checkpoint_minutes, stop_at=args.stop_at,
        decoder_only=args.decoder_only, decoder_steps=args.decoder_steps,
        unet_lr=args.lr, unet_lr_final=args.lr_final, init_from=args.init_from,
        fresh_unet=args.fresh_unet, two_object_fraction=args.two_object_fraction,
        strip_positions=args.strip_positions, model=model)
    return cfg, args


def export(folder: str | Path, target: str | Path) -> None:
    """Re-save a pipeline folder with half-precision weights (half the size; load it with
    dtype=torch.float32 to run on a CPU)."""
    import shutil

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float16)
    pipe.save_pretrained(str(target), safe_serialization=True)
    if (Path(folder) / "training_state.json").exists():
        shutil.copy(Path(folder) / "training_state.json", Path(target) / "training_state.json")


def main(argv: list[str] | None = None) -> int:
    """`noisepath train-demo`: train (or resume) the demo model, optionally export it;
    `noisepath train-demo students ...` makes its students (precompute/demo/reflow.py),
    `noisepath train-demo controlnet ...` its ControlNet (precompute/demo/controlnet_train.py)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["students"]:
        from precompute.demo import reflow

        return reflow.main(argv[1:])
    if argv[:1] == ["controlnet"]:
        from precompute.demo import controlnet_train

        return controlnet_train.main(argv[1:])
    cfg, args = parse_args(argv)
    folder = Path(cfg.out) / "pipeline" if args.export_only else train(cfg)
    print(f"pipeline folder: {folder}")
    if args.export:
        export(folder, args.export)
        print(f"exported (fp16) to {args.export}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

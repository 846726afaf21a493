"""Measure the demo model: prompt adherence judged from pixels, and cross-attention maps.

    python -m precompute.demo.evaluate --model static/demo-model --out demo-work/eval

1. The judge's own accuracy on held-out renders and on their VAE reconstructions.
2. Adherence: held-out captions (never seen in training) generated with DDIM, trailing
   spacing, at several guidance scales, each image read back by the judge.
3. Attention: real held-out scenes noised to each sampler timestep; the UNet's
   cross-attention probabilities (the levels the demo bundle's combined map averages,
   16x16, or those of --attention-levels; heads averaged) for each object word, scored
   against the object's ground-truth mask (AUROC, peak inside, and in
   two-object scenes whether the word prefers its own object over the other one).
4. A samples grid (captions x guidance scales) for the docs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from precompute.demo import judge, world

GUIDANCE_SCALES = (0.0, 1.0, 3.0, 7.0)
# the cross-attention levels (map heights) scored, as the demo bundle's combined map
# (precompute/prompts/demo.toml, attention_levels): the 8x8 level spreads colour words
# over the whole image (docs/demo-model.md, "Cross-attention")
ATTENTION_LEVELS = (16,)


def load(folder: str):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32)


def encode(pipe, captions: list[str]) -> torch.Tensor:
    ids = pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    return pipe.text_encoder(ids)[0]  # (B, 77, hidden)


def to_uint8(decoded: torch.Tensor) -> np.ndarray:
    x = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, 3, 64, 64)
    return x.permute(0, 2, 3, 1).numpy()  # (B, 64, 64, 3)


@torch.no_grad()
def generate(pipe, captions: list[str], guidance_scale: float, seed: int = 0,
             num_inference_steps: int = 30) -> np.ndarray:
    """Classifier-free guidance, uncond + s * (text - uncond), for any s (0 = unconditional;
    diffusers' pipeline switches guidance off for s <= 1, so this loop is written out)."""
    n = len(captions)
    text, uncond = encode(pipe, captions), encode(pipe, [""] * n)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_inference_steps)
    size = pipe.unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((n, 4, size, size), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        pred = pipe.unet(model_input, t, torch.cat([uncond, text])).sample  # (2B, 4, 16, 16)
        noise_pred_uncond, noise_pred_text = pred.chunk(2)
        pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
        latents = scheduler.step(pred, t, latents).prev_sample
    return to_uint8(pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample)


@torch.no_grad()
def reconstruct(pipe, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return to_uint8(pipe.vae.decode(pipe.vae.encode(x).latent_dist.mode()).sample)


def held_out(n: int, two_objects: bool, seed: int = 11) -> list[world.Scene]:
    rng, out = np.random.default_rng(seed), []
    while len(out) < n:
        scene = world.sample_scene(rng, split="test")
        if (len(scene.objects) == 2) == two_objects:
            out.append(scene)
    return out


def adherence_table(pipe, scenes, scales=GUIDANCE_SCALES, seeds=(0,), steps=30) -> dict:
    rows = {}
    for s in scales:
        images = np.concatenate([generate(pipe, [x.caption for x in scenes], s, seed, steps)
                                 for seed in seeds])
        rows[s] = judge.adherence(images, list(scenes) * len(seeds))
    return rows


# --- cross-attention ------------------------------------------------------------------------

class AttentionRecorder:
    """An attn2 processor that also keeps softmax(Q K^T / sqrt(d)) averaged over heads."""

    def __init__(self, store: list, name: str):
        self.store, self.name = store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        q = attn.to_q(hidden_states)  # (B, HW, C)
        k, v = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        b, heads = q.shape[0], attn.heads
        split = lambda x: x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)  # (B, heads, tokens, d)
        probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)  # (B, heads, HW, 77)
        self.store.append((self.name, probs.mean(1)))  # (B, HW, 77)
        out = (probs @ v).transpose(1, 2).reshape(b, -1, heads * v.shape[-1])
        return attn.to_out[1](attn.to_out[0](out))


@torch.no_grad()
def word_maps(pipe, scenes, num_inference_steps: int = 30, seed: int = 0,
              levels=ATTENTION_LEVELS) -> np.ndarray:
    """Per scene, per token, a 64x64 map: attention summed over the cross-attention layers
    of the given levels (map heights), heads and sampler timesteps, for real scenes noised
    to each t."""
    unet, scheduler = pipe.unet, pipe.scheduler
    store: list = []
    originals = dict(unet.attn_processors)
    procs = {name: (AttentionRecorder(store, name) if name.endswith("attn2.processor") else proc)
             for name, proc in unet.attn_processors.items()}
    unet.set_attn_processor(procs)
    images = np.stack([world.render(s) for s in scenes])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    latents = pipe.vae.encode(x).latent_dist.mode() * pipe.vae.config.scaling_factor
    text = encode(pipe, [s.caption for s in scenes])
    scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(scenes), 77, 64, 64)
    for t in scheduler.timesteps:
        noise = torch.randn(latents.shape, generator=generator)
        noisy = scheduler.add_noise(latents, noise, t.repeat(len(scenes)))
        store.clear()
        unet(noisy, t, text)
        for name, probs in store:
            side = int(probs.shape[1] ** 0.5)
            if side not in levels or name.startswith("mid_block"):
                continue
            maps = probs.transpose(1, 2).reshape(len(scenes), 77, side, side)
            total += F.interpolate(maps, size=(64, 64), mode="bilinear", align_corners=False)
    unet.set_attn_processor(originals)
    return total.numpy()  # (scenes, 77, 64, 64)


def token_index(pipe, caption: str, word: str, occurrence: int = 0) -> int:
    tokens = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(caption).input_ids)
    hits = [i for i, tok in enumerate(tokens) if tok == word + "</w>"]
    return hits[occurrence]


def attention_scores(pipe, n: int = 48, seed: int = 12, levels=ATTENTION_LEVELS) -> dict:
    """Localization of shape and colour words in one-object scenes; binding in two-object
    scenes (own object vs the other object), with a wrong-shape-word control."""
    singles, pairs = held_out(n, False, seed), held_out(n, True, seed)
    out: dict = {"levels": list(levels)}
    maps = word_maps(pipe, singles, levels=levels)
    for kind in ("shape", "colour", "background"):
        aurocs, peaks = [], []
        for scene, m in zip(singles, maps):
            obj = scene.objects[0]
            word = {"shape": obj.shape, "colour": obj.colour, "background": "background"}[kind]
            occurrence = 0
            amap = m[token_index(pipe, scene.caption, word, occurrence)]
            mask = world.masks(scene)[0]
            aurocs.append(judge.auroc(amap.ravel(), mask.ravel()))
            peaks.append(bool(mask.ravel()[amap.argmax()]))
        out[f"one-object {kind} word"] = {"auroc": float(np.mean(aurocs)),
                                          "peak_inside": float(np.mean(peaks)),
                                          "chance_peak": float(np.mean([world.masks(s)[0].mean() for s in singles]))}
    maps = word_maps(pipe, pairs, levels=levels)
    wrong = [world.Scene(s.background, (world.SceneObject(
        s.objects[0].colour, world.SHAPES[(world.SHAPES.index(s.objects[0].shape) + 1) % 4],
        s.objects[0].position), s.objects[1])) for s in pairs]
    for kind in ("shape", "colour"):
        wins = []
        for scene, m in zip(pairs, maps):
            masks = world.masks(scene)
            for i, obj in enumerate(scene.objects):
                word = getattr(obj, kind)
                occurrence = sum(getattr(o, kind) == word for o in scene.objects[:i])
                amap = m[token_index(pipe, scene.caption, word, occurrence)]
                wins.append(amap[masks[i]].mean() > amap[masks[1 - i]].mean())
        out[f"two-object {kind} word on own object"] = float(np.mean(wins))
    control_maps = word_maps(pipe, wrong, levels=levels)
    wins = []
    for scene, m in zip(wrong, control_maps):
        masks = world.masks(scene)
        word = scene.objects[0].shape
        occurrence = 0
        amap = m[token_index(pipe, scene.caption, word, occurrence)]
        wins.append(amap[masks[0]].mean() > amap[masks[1]].mean())
    out["control: wrong shape word on the first object"] = float(np.mean(wins))
    return out


def samples_grid(pipe, captions: list[str], path: Path, scales=GUIDANCE_SCALES, seeds=(0, 1)):
    from PIL import Image, ImageDraw

    cols = [(s, seed) for s in scales for seed in seeds]
    tiles = {c: generate(pipe, captions, c[0], c[1]) for c in cols}  # each (rows, 64, 64, 3)
    lines = []  # per caption: each object on a line, then its background
    for caption in captions:
        objects, background = caption.split(", on ")
        first, *rest = objects.split(" and ")
        lines.append([first, *("and " + r for r in rest), "on " + background])
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cell, head = 66, 18
    label_w = 8 + int(max(measure.textlength(text) for block in lines for text in block))
    grid = Image.new("RGB", (label_w + cell * len(cols), head + cell * len(captions)), "white")
    d = ImageDraw.Draw(grid)
    for j, (s, seed) in enumerate(cols):
        d.text((label_w + j * cell + 2, 3), f"g={s:g} s{seed}", fill="black")
        for i in range(len(captions)):
            grid.paste(Image.fromarray(tiles[(s, seed)][i]), (label_w + j * cell, head + i * cell))
    for i, block in enumerate(lines):
        top = head + i * cell + (cell - 14 * len(block)) // 2
        for j, text in enumerate(block):
            d.text((4, top + 14 * j), text, fill="black")
    grid.save(path)


def markdown(metrics: dict) -> str:
    """The metrics as the tables docs/demo-model.md shows."""
    lines = ["| images | background | colour | shape | size | position |", "|---|---|---|---|---|---|"]
    for name in ("judge on renders", "judge on VAE reconstructions"):
        row = metrics[name]
        lines.append(f"| {name} | " + " | ".join(f"{row.get(a, float('nan')):.2f}" for a in judge.ATTRIBUTES) + " |")
    for kind in ("one object", "two objects"):
        for scale, row in metrics.get(f"adherence, {kind}", {}).items():
            cells = " | ".join(f"{row[a]:.2f}" if a in row else "-" for a in judge.ATTRIBUTES)
            lines.append(f"| generated, {kind}, {scale} | {cells} |")
    if "attention" in metrics:
        lines += ["", "| attention | value |", "|---|---|"]
        for name, value in metrics["attention"].items():
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v:.2f}" for k, v in value.items())
            elif isinstance(value, list):
                value = " + ".join(f"{h}x{h}" for h in value)
            else:
                value = f"{value:.2f}"
            lines.append(f"| {name} | {value} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Measure the demo model's adherence and attention.")
    p.add_argument("--model", required=True, help="pipeline folder")
    p.add_argument("--out", default="demo-work/eval", help="folder for metrics.json and pictures")
    p.add_argument("--n", type=int, default=64, help="held-out captions per scene kind")
    p.add_argument("--steps", type=int, default=30, help="sampler steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-attention", action="store_true")
    p.add_argument("--attention-levels", type=int, nargs="+", default=list(ATTENTION_LEVELS),
                   metavar="H", help="cross-attention levels (map heights) whose maps are "
                   "scored, summed (default: 16, as the demo bundle's combined map)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load(args.model)
    vae_round_trip = lambda im: reconstruct(pipe, im)  # noqa: E731
    metrics: dict = {"judge on VAE reconstructions, renders only":
                     judge.judge_accuracy(200, transform=vae_round_trip)["shape"]}
    judge.calibrate(vae_round_trip)
    metrics["judge on renders"] = judge.judge_accuracy(200)
    metrics["judge on VAE reconstructions"] = judge.judge_accuracy(200, transform=vae_round_trip)
    print(json.dumps(metrics, indent=1), flush=True)
    for kind, two in (("one object", False), ("two objects", True)):
        table = adherence_table(pipe, held_out(args.n, two), steps=args.steps)
        metrics[f"adherence, {kind}"] = {f"guidance {s:g}": row for s, row in table.items()}
        print(kind, json.dumps(metrics[f"adherence, {kind}"], indent=1), flush=True)
    if not args.skip_attention:
        metrics["attention"] = attention_scores(pipe, levels=tuple(args.attention_levels))
        print(json.dumps(metrics["attention"], indent=1), flush=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(markdown(metrics), flush=True)
    captions = list(dict.fromkeys([s.caption for s in held_out(8, False)]))[:6]
    captions += [s.caption for s in held_out(3, True)]
    samples_grid(pipe, captions, out / "samples.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

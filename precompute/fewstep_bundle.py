"""`python -m precompute.fewstep_bundle BUNDLE --teacher FOLDER --student ID=FOLDER ...`:
add the "Fifty steps, four, one" comparison to a bundle (its `fewstep/` section,
docs/bundle-format.md "Few-step comparison").

For each example (a prompt of the bundle and a seed), the same noise goes through the
teacher at 50, 4 and 1 steps and through each student at its step counts (a 2-rectified
flow at 1, 2 and 4, a one-step student at 1; `--steps` changes them). Every path is a run
of `noisepath precompute` (precompute.run.precompute: the same instrumented loop and
writer), into a temporary bundle per (model, num_inference_steps) under
BUNDLE/fewstep/.tmp/, which an interrupted build resumes from. The section is then made
from those runs' recorded arrays and frames: one PCA per example over every path's
latents, each path's chord and straightness, and a sprite of the predicted final image
after every call. It is staged in BUNDLE/.tmp/ and renamed into place; the temporary
bundles are removed. No run of the bundle changes. A second run with the same models
(their files' SHA-256), examples and steps says it is up to date and computes nothing.
Sprites are WebP at quality 82 (`--sprite-format png`: PNG).

Same noise: every path of an example must record the same x_T, bitwise (the loop draws
it from a CPU generator seeded with the seed, loop.NOISE, times init_noise_sigma, which
is 1 for DDIM and the flow schedulers); the build stops, naming the path, otherwise.

The teacher runs its own scheduler with timestep_spacing "trailing" (Lin et al. 2023,
"Common Diffusion Noise Schedules and Sample Steps are Flawed"): its first call is at the
last training timestep, so one step starts from pure noise (the demo model's own config
says trailing, with zero terminal SNR: alpha_bar is 0 there). SD 1.5's "leading" would
start a 1-step run at timestep 1, nearly the image. The students (flow-matching pipeline
folders, precompute/demo/reflow.py) run flow Euler on InstaFlow's grid at guidance 1:
their teacher's guidance is baked in.

Straightness of a path (the number the app shows) is precompute/straightness.py's
`relative`, the one benchmarks/bench_students.py measures (docs/performance.md): in flow
time sigma (the teacher's latents as y = x_t / (a + s), sigma = s / (a + s)),

    straightness = sum_i (sigma_i - sigma_i+1) / L ||chord - v_i||^2 / ||chord||^2,
    chord = (y(sigma_0) - y(sigma_N)) / L,   L = sigma_0 - sigma_N,

with v_i = eps_hat_i - x0_hat_i the velocity the model implies at call i (x0_hat_i its
pred_original_sample, eps_hat_i from the stored x_t and x0_hat_i by the scheduler's
parameterisation) and sigma_N where the last step lands (0 for a flow student, DDIM's
alpha_bar_0 for the teacher: `end_level`). 0 when every step moves along the chord at
constant speed; a 1-step path is 0 by construction (one segment).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.fewstep_examples import FORMAT, INDEX, SECTION, VERSION
from precompute.folders import pipeline_folder_problem
from precompute.straightness import DEFINITION as STRAIGHTNESS_DEFINITION
from precompute.straightness import (FlowPath, ddim_final_alpha_bar, flow_path, flow_velocity,
                                     vp_path, vp_to_flow)
from precompute.straightness import straightness as path_straightness
from precompute.writer import replace_section

DEFAULT_STEPS = {"teacher": [50, 4, 1], "rectified-flow": [1, 2, 4], "one-step": [1]}
KINDS = {"rectified-flow": ("rectified_flow", "2-rectified flow"),
         "one-step": ("one_step", "One-step student")}
SPACING = "trailing"  # the teacher's timestep_spacing: its first call at pure noise
SPRITE_QUALITY = 82   # WebP: the quality of the runs' own frames the sprites are made from
WEBP_MAX_SIDE = 16383
DECIMALS = 4          # of the map's coordinates and the time axis
# What a path's `time` means (time_axis), named in each section (`time_definition`) so that
# a section built on another axis (before 2 December 2026: the teacher's sqrt(1 - alpha_bar))
# is not taken as up to date. Change it when the axis's meaning changes.
TIME_DEFINITION = "flow sigma; the teacher's s / (a + s); 0 the result"


@dataclass
class Model:
    """A model of the comparison and the step counts it runs at."""
    id: str
    kind: str                 # teacher | rectified_flow | one_step | student
    label: str
    folder: str               # as given (the index's `model`)
    steps: list[int]
    guidance_scale: float
    sha256: str = ""          # of the folder's files: the up-to-date check
    facts: dict = field(default_factory=dict)  # scheduler, prediction_type, spacing


@dataclass
class Example:
    prompt_id: str
    prompt: str
    seed: int
    run_id: str | None = None  # the teacher's run in the bundle, when it has the same one

    @property
    def id(self) -> str:
        return f"{self.prompt_id}--s{self.seed}"


def fail(message: str):
    raise SystemExit(f"fewstep_bundle: {message}")


# ------------------------------------------------------------------------ the plan

def folder_sha256(folder: Path) -> str:
    """SHA-256 over a model folder's files (relative names and bytes, sorted)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        h.update(rel.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def parse_pairs(values: list[str], flag: str) -> dict[str, str]:
    """ID=VALUE arguments as a dict (one line of error for anything else)."""
    from backend.format import ID

    pairs = {}
    for text in values:
        key, eq, value = text.partition("=")
        if not eq or not ID.fullmatch(key) or not value:
            fail(f"{flag} {text!r}: expected ID=VALUE (an id of letters, digits, - and _)")
        if key in pairs:
            fail(f"{flag}: {key!r} is given twice")
        pairs[key] = value
    return pairs


def parse_steps(values: list[str], ids: list[str]) -> dict[str, list[int]]:
    """--steps ID=N,N,... -> {id: [N, ...]} over DEFAULT_STEPS (1 for another student)."""
    steps = {i: list(DEFAULT_STEPS.get(i, [1])) for i in ids}
    for key, text in parse_pairs(values, "--steps").items():
        if key not in steps:
            fail(f"--steps {key}=...: no model has id {key!r} (models: {', '.join(ids)})")
        try:
            counts = [int(x) for x in text.split(",")]
        except ValueError:
            fail(f"--steps {key}={text}: expected step counts like 50,4,1")
        if not counts or any(not 1 <= n <= 1000 for n in counts) or len(set(counts)) < len(counts):
            fail(f"--steps {key}={text}: step counts must be distinct, from 1 to 1000")
        steps[key] = counts
    return steps


def plan_models(args, config: dict) -> list[Model]:
    students = parse_pairs(args.student, "--student")
    if "teacher" in students:
        fail("--student teacher=...: 'teacher' is the --teacher's id")
    teacher = args.teacher or config.get("model")
    if not teacher:
        fail("give --teacher FOLDER (the bundle's config.json names no model)")
    guidance = args.guidance if args.guidance is not None else config.get("default_guidance_scale")
    if guidance is None:
        fail("the bundle has no default_guidance_scale: pass --guidance (the teacher's)")
    folders = {"teacher": teacher, **students}
    steps = parse_steps(args.steps, list(folders))
    models = []
    for mid, folder in folders.items():
        path = Path(folder)
        if problem := pipeline_folder_problem(folder, "--teacher" if mid == "teacher"
                                              else f"--student {mid}="):
            fail(problem)
        if mid == "teacher":
            demo = (path / "training_state.json").is_file()
            kind, label = "teacher", "Teacher (the demo model)" if demo else "Teacher"
        else:
            kind, label = KINDS.get(mid, ("student", mid.replace("-", " ").capitalize()))
        models.append(Model(mid, kind, label, folder, sorted(steps[mid], reverse=True),
                            float(guidance) if mid == "teacher" else 1.0))
    return models


def plan_examples(index: dict, prompts: list[str] | None, seeds: list[int] | None) -> list[Example]:
    """The examples: --prompts (default: each group's first prompt) x --seeds (default:
    the bundle's first seed)."""
    if prompts is None:
        prompts = list(dict.fromkeys(g["prompts"][0] for g in index["groups"] if g["prompts"]))
    for pid in prompts:
        if pid not in index["prompts"] or pid == "empty":
            fail(f"--prompts {pid}: not a prompt id of the bundle (bundle.json's prompts)")
    if not prompts:
        fail("the bundle has no prompt to compare on")
    seeds = seeds if seeds is not None else index["seeds"][:1]
    return [Example(pid, index["prompts"][pid]["text"], int(s)) for pid in prompts for s in seeds]


def request_of(models: list[Model], examples: list[Example], sprite_format: str) -> dict:
    """What decides the section's content: compared with an existing section's."""
    return {"sprites": sprite_format, "straightness": STRAIGHTNESS_DEFINITION, "time": TIME_DEFINITION,
            "models": [[m.id, m.sha256, m.guidance_scale] for m in models],
            "examples": [[e.id, e.prompt, e.seed, [f"{m.id}-{n}" for m in models
                                                   for n in m.steps]] for e in examples]}


def existing_request(bundle: Path) -> dict | None:
    try:
        doc = json.loads((bundle / INDEX).read_text(encoding="utf-8"))
        files = [p["images"]["file"] for e in doc["examples"] for p in e["paths"]]
        return {"sprites": "png" if all(f.endswith(".png") for f in files) else "webp",
                "straightness": doc.get("straightness_definition"),  # absent: the old mean
                "time": doc.get("time_definition"),  # absent: the teacher's sqrt(1 - alpha_bar)
                "models": [[m["id"], m.get("model_sha256"), m["guidance_scale"]]
                           for m in doc["models"]],
                "examples": [[e["id"], e["prompt"], e["seed"], [p["id"] for p in e["paths"]]]
                             for e in doc["examples"]]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main_run(index: dict, bundle: Path, teacher: Model, example: Example) -> str | None:
    """The bundle's own run of the example that equals the teacher's longest path (same
    model folder, scheduler, spacing, steps and guidance), or None."""
    from precompute.writer import prompt_id, run_id

    config = index["config"]
    scheduler = (config.get("model_info") or {}).get("scheduler") or {}
    same = (Path(str(config.get("model"))).resolve() == Path(teacher.folder).resolve()
            and config.get("scheduler") == teacher.facts["scheduler"]
            and (scheduler.get("config") or {}).get("timestep_spacing") == SPACING
            and config.get("num_inference_steps") == teacher.steps[0])
    rid = run_id(prompt_id(example.prompt), example.seed, teacher.guidance_scale)
    return rid if same and rid in index["runs"] else None


# ----------------------------------------------------------------- the paths' runs

def load_model(model: Model, device: str, dtype: str):
    """precompute Components of a model; the teacher's scheduler with trailing spacing."""
    from precompute.model import SIGMA_LATENTS, load_components, make_scheduler, scheduler_name

    components = load_components(model.folder, device=device, dtype=dtype)
    name = scheduler_name(components.scheduler)
    if model.kind == "teacher":
        if name in SIGMA_LATENTS:
            fail(f"--teacher {model.folder}: its scheduler {name!r} scales x_T by sigma_max, so "
                 "its noise would differ from the students'; the teacher must run DDIM-like "
                 "(alpha_bar) sampling: save it with a DDIMScheduler")
        config = {k: v for k, v in dict(components.scheduler.config).items()
                  if not k.startswith("_")}
        components.scheduler = make_scheduler(name, {**config, "timestep_spacing": SPACING})
    elif name not in ("flow_euler", "instaflow"):
        fail(f"--student {model.id}: {model.folder} has scheduler {name!r}; a student is a "
             "flow-matching folder (FlowMatchEulerDiscreteScheduler: precompute/demo/reflow.py)")
    model.facts = {"scheduler": name,
                   "prediction_type": components.describe()["prediction_type"],
                   "timestep_spacing": components.scheduler.config.get("timestep_spacing")
                   if model.kind == "teacher" else None}
    return components


def run_path(components, model: Model, steps: int, examples: list[Example], config: dict,
             tmp: Path, progress: bool, log) -> dict[str, float]:
    """The path's runs of every example, by `noisepath precompute`'s own function, into
    the temporary bundle tmp/<model>-<steps>: {run_id: compute seconds per run}."""
    from precompute.prompts import parse_prompt_set
    from precompute.run import Options, precompute

    out = temporary_bundle(tmp, model, steps)
    texts = list(dict.fromkeys(e.prompt for e in examples))
    prompt_set = parse_prompt_set({"groups": [{"prompt": t} for t in texts]}, "fewstep")
    settings = {"model": model.folder, "scheduler": model.facts["scheduler"],
                "num_inference_steps": steps, "seeds": sorted({e.seed for e in examples}),
                "guidance_scales": [model.guidance_scale], "height": config["height"],
                "width": config["width"], "image_size": config["image_size"], "storage": "full"}
    opts = Options(device=str(components.device), projection="pca", workers=0,
                   components=components, progress=progress, log=log)
    timing = out / "fewstep-seconds.json"  # kept beside the runs: a resumed build has them
    seconds = json.loads(timing.read_text()) if timing.is_file() else {}
    todo = [r for r in run_ids(model, examples) if not (out / "runs" / r / "run.json").exists()]
    summary = precompute(prompt_set, out, settings, opts)
    if summary["computed"]:  # the jobs are timed together: the mean per run
        seconds.update({r: summary["compute_seconds"] / summary["computed"] for r in todo})
        timing.write_text(json.dumps(seconds))
    return seconds


def temporary_bundle(tmp: Path, model: Model, steps: int) -> Path:
    """A path's temporary bundle: named by the model's files too, so that a build resumed
    after a model changed (a student trained further) never reuses the old model's runs."""
    return tmp / f"{model.id}-{steps}-{model.sha256[:12]}"


def run_ids(model: Model, examples: list[Example]) -> list[str]:
    from precompute.writer import prompt_id, run_id
    return [run_id(prompt_id(e.prompt), e.seed, model.guidance_scale) for e in examples]


def end_level(scheduler, steps: int, flow: bool) -> float:
    """Where a path of `steps` steps lands, in read_path's `level` terms: sigma for a flow
    model (0: the image), alpha_bar for the teacher (a DDIM or PNDM run stops at
    alpha_bar_0, below 1 when set_alpha_to_one is false; DPM-Solver and UniPC at their last
    sigma, alpha_bar = 1 / (1 + sigma^2) as the loop reads them; DDPM and LCM at the image)."""
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(steps)
    if flow:
        return float(fresh.sigmas[-1])
    if hasattr(fresh, "final_alpha_cumprod"):
        return ddim_final_alpha_bar(fresh, int(fresh.timesteps[-1]))
    if getattr(fresh, "sigmas", None) is not None:
        return 1.0 / (1.0 + float(fresh.sigmas[-1]) ** 2)
    return 1.0


def read_path(folder: Path, end: float) -> dict:
    """A finished run as the section needs it: latents (T+1, ...) and pred_original_sample
    (T, ...) in float32 from their stored float16, the stored x_T's exact bytes, the noise
    level of each call and where the last step lands (`end`, end_level's), and the frames
    (predicted images after each call, then the result)."""
    from backend.bundle import load_array
    from backend.previews import crop_frames

    m = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    stored = load_array(folder, m["arrays"], "latents", m["guidance_scale"])
    latents = np.asarray(stored, np.float32)                                 # (T+1, C, h, w)
    pred = np.asarray(load_array(folder, m["arrays"], "pred_original_sample",
                                 m["guidance_scale"]), np.float32)           # (T, C, h, w)
    sched = m["scheduler"]
    if sched.get("flow_time") is not None:   # x = (1 - sigma) x0 + sigma noise
        flow, level = True, 1 - np.asarray(sched["flow_time"], np.float64)   # sigma
    elif sched.get("sigmas") is None:         # x = sqrt(a) x0 + sqrt(1 - a) noise
        flow, level = False, np.asarray(sched["alphas_cumprod"], np.float64)  # a
    else:
        fail(f"{folder}: a sigma-scaled scheduler's run ({sched['name']}); not comparable")
    frames = [crop_frames((folder / m["images"][n]["file"]).read_bytes(), m["images"][n])
              for n in ("pred_original_sample", "decoded")]
    return {"latents": latents, "pred": pred, "x_T": np.asarray(stored[0]).copy(),
            "flow": flow, "level": level, "end": float(end),
            "frames": np.concatenate([frames[0], frames[1][-1:]])}


# ------------------------------------------------------------------ the section's numbers

def flow_path_of(run: dict) -> FlowPath:
    """A run's path in flow time (precompute/straightness.py), one sample: each call's
    velocity eps_hat - x0_hat from its stored x_t and pred_original_sample."""
    x = run["latents"][:-1, None].astype(np.float64)  # (T, 1, C, h, w): the calls' x_t
    x0 = run["pred"][:, None].astype(np.float64)      # (T, 1, C, h, w): their x0_hat
    result = run["latents"][-1:].astype(np.float64)    # (1, C, h, w)
    if run["flow"]:
        sigma = run["level"].reshape((-1,) + (1,) * (x.ndim - 1))
        return flow_path(run["level"], run["end"], flow_velocity(x, x0, sigma), x[0], result)
    return vp_path(run["level"], run["end"], x, x0, result, "sample")


def straightness(run: dict) -> float:
    """The path's straightness: precompute/straightness.py's `relative` (module docstring)."""
    return float(path_straightness(flow_path_of(run))["relative"][0])


def time_axis(run: dict) -> list[float]:
    """T+1 noise levels in flow time, one axis for every model: each call's sigma (a flow
    model's own; the teacher's latent read as a flow latent, sigma = s / (a + s), as the
    straightness is measured), then 0 for the result. Equal times are equal signal-to-noise
    ratios, so the scrubber meets the teacher and a student at the same noise; the
    teacher's sqrt(1 - alpha_bar) would put its 50 steps half done at 0.9, where the
    students have barely started, and crowd its first ten steps above 0.99."""
    level = run["level"] if run["flow"] else [vp_to_flow(float(a))[1] for a in run["level"]]
    return [round(float(v), DECIMALS) for v in level] + [0.0]


def projection(runs: list[dict]) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """One PCA of every path's latents (every point, flattened): (mean, axes (2, D),
    explained variance ratios); each axis' sign makes its largest |score| positive."""
    x = np.concatenate([r["latents"].reshape(len(r["latents"]), -1)
                        for r in runs]).astype(np.float64)                      # (N, D)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    axes = vt[:2]                                                                  # (2, D)
    scores = (x - mean) @ axes.T
    axes *= np.where(np.sign(scores[np.abs(scores).argmax(axis=0), [0, 1]]) < 0, -1, 1)[:, None]
    variance = s ** 2
    explained = [round(float(v / variance.sum()), DECIMALS) if variance.sum() else 0.0
                 for v in variance[:2]]
    return mean, axes, explained


def sprite(frames: np.ndarray, fmt: str) -> tuple[bytes, str]:
    """Frames (N, H, W, 3) left to right in one image: (bytes, extension). WebP (quality
    82, as the run frames they come from: a tenth of a PNG's bytes) unless `fmt` is png or
    the strip is wider than WebP allows."""
    from PIL import Image

    strip = Image.fromarray(np.concatenate(list(frames), axis=1))
    out = io.BytesIO()
    if fmt == "webp" and strip.width <= WEBP_MAX_SIDE:
        strip.save(out, format="WEBP", quality=SPRITE_QUALITY, method=6)
        return out.getvalue(), "webp"
    strip.save(out, format="PNG", optimize=True)
    return out.getvalue(), "png"


def build_example(example: Example, paths: list[tuple[Model, int, dict, float]],
                  sprite_format: str = "webp") -> tuple[dict, dict[str, bytes]]:
    """An example's index entry and sprites from its paths' runs (same noise checked)."""
    first_model, first_steps, first, _ = paths[0]
    for model, steps, run, _ in paths[1:]:
        if run["x_T"].dtype != first["x_T"].dtype or run["x_T"].tobytes() != first["x_T"].tobytes():
            diff = float(np.abs(run["latents"][0] - first["latents"][0]).max())
            fail(f"example {example.id}: path {model.id}-{steps} starts from other noise than "
                 f"{first_model.id}-{first_steps} (largest difference {diff:.3g}); every path "
                 "must draw x_T alike: the same latent shape, device and init_noise_sigma 1")
    mean, axes, explained = projection([r for _, _, r, _ in paths])
    points = np.concatenate([(r["latents"].reshape(len(r["latents"]), -1) - mean) @ axes.T
                             for _, _, r, _ in paths])
    low, high = points.min(axis=0), points.max(axis=0)
    centre, half = (low + high) / 2, max(float((high - low).max()) / 2, 1e-12)

    def xy(a):
        flat = (a.reshape(len(a), -1).astype(np.float64) - mean) @ axes.T
        return [[round(float(v), DECIMALS) for v in p] for p in (flat - centre) / half]
    entries, files = [], {}
    for model, steps, run, seconds in paths:
        pid = f"{model.id}-{steps}"
        data, ext = sprite(run["frames"], sprite_format)
        name = f"{example.id}--{pid}.{ext}"
        files[name] = data
        h, w = run["frames"].shape[1:3]
        points = xy(run["latents"])
        entries.append({
            "id": pid, "model": model.id, "num_inference_steps": steps,
            "time": time_axis(run), "xy": points, "pred_xy": xy(run["pred"]),
            "chord": [points[0], points[-1]], "straightness": round(straightness(run), 6),
            "images": {"file": name, "frames": len(run["frames"]), "width": int(w),
                       "height": int(h), "sha256": hashlib.sha256(data).hexdigest()},
            "seconds": round(float(seconds), 3)})
    noise = first["x_T"].astype("<f4").tobytes()
    return {"id": example.id, "prompt": example.prompt, "prompt_id": example.prompt_id,
            "seed": example.seed, "run_id": example.run_id,
            "noise_sha256": hashlib.sha256(noise).hexdigest(), "paths": entries,
            "projection": {"method": "pca", "explained": explained}}, files


def model_entry(m: Model) -> dict:
    entry = {"id": m.id, "label": m.label, "kind": m.kind, "model": m.folder,
             "scheduler": m.facts["scheduler"], "guidance_scale": m.guidance_scale,
             "prediction_type": m.facts["prediction_type"], "model_sha256": m.sha256}
    if m.facts.get("timestep_spacing"):
        entry["timestep_spacing"] = m.facts["timestep_spacing"]
    return entry


# ----------------------------------------------------------------------- writing

def section_problems(bundle: Path, index: dict) -> list:
    """The validator's problems with the bundle's fewstep/ section alone (checksums on)."""
    from backend.validate_fewstep import check_section
    from backend.validator import Checker

    c = Checker(bundle.resolve(), checksums=True, decode=False)
    with c.scope(section=SECTION):
        check_section(c, index)
    return c.problems


def write_section(bundle: Path, doc: dict, files: dict[str, bytes]) -> bool:
    """Put the section at BUNDLE/fewstep/ (index.json, files/), staged in BUNDLE/.tmp/
    and renamed into place; False when the same bytes are there already."""
    body = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
    target = bundle / SECTION
    if (target / "index.json").is_file() and (target / "index.json").read_bytes() == body \
            and sorted(p.name for p in (target / "files").glob("*")) == sorted(files) \
            and all((target / "files" / n).read_bytes() == b for n, b in files.items()):
        return False
    replace_section(bundle, SECTION, {**{f"files/{n}": b for n, b in files.items()},
                                      "index.json": body}, folders=("files",))
    return True


def build(bundle: Path, index: dict, models: list[Model], examples: list[Example], device: str,
          dtype: str, progress: bool, log, sprite_format: str = "webp"
          ) -> tuple[dict, dict[str, bytes]]:
    """Every path's runs (resumed from BUNDLE/fewstep/.tmp), then the section."""
    import torch

    from precompute.writer import prompt_id, run_id

    tmp = bundle / SECTION / ".tmp"
    runs: dict[tuple[str, int], dict] = {}
    ends: dict[tuple[str, int], float] = {}  # where each path's last step lands
    loaded = (None, None, None)  # (folder, components, facts): two students of one folder share it
    for model in models:
        print(f"{model.label} ({model.folder}): {', '.join(map(str, model.steps))} steps, "
              f"guidance {model.guidance_scale:g}, {len(examples)} examples", file=log, flush=True)
        key = (model.kind == "teacher", Path(model.folder).resolve())
        if loaded[0] != key:
            loaded = (None, None, None)  # the last model's memory goes first
            loaded = (key, load_model(model, device, dtype), model.facts)
        components, model.facts = loaded[1], dict(loaded[2])
        for steps in model.steps:
            t0 = time.perf_counter()
            runs[model.id, steps] = run_path(components, model, steps, examples, index["config"],
                                             tmp, progress, log)
            ends[model.id, steps] = end_level(components.scheduler, steps, model.kind != "teacher")
            print(f"  {model.id}-{steps}: {time.perf_counter() - t0:.1f} s", file=log, flush=True)
        del components
    loaded = None
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    teacher = models[0]
    entries, files = [], {}
    for example in examples:
        example.run_id = main_run(index, bundle, teacher, example)
        paths = []
        for model in models:
            rid = run_id(prompt_id(example.prompt), example.seed, model.guidance_scale)
            for steps in model.steps:
                run = read_path(temporary_bundle(tmp, model, steps) / "runs" / rid,
                                ends[model.id, steps])
                paths.append((model, steps, run, runs[model.id, steps].get(rid, 0.0)))
        entry, example_files = build_example(example, paths, sprite_format)
        entries.append(entry)
        files.update(example_files)
    doc = {"format": FORMAT, "format_version": VERSION,
           "straightness_definition": STRAIGHTNESS_DEFINITION, "time_definition": TIME_DEFINITION,
           "models": [model_entry(m) for m in models], "examples": entries}
    return doc, files


EPILOG = """
example (the demo's students, made by `noisepath train-demo students`):
  python -m precompute.fewstep_bundle static/demo-bundle --teacher static/demo-model \\
      --student rectified-flow=static/demo-students/rectified-flow \\
      --student one-step=static/demo-students/one-step

Default steps: teacher 50,4,1; rectified-flow 1,2,4; one-step 1; another student 1.
Run it again to resume an interrupted build; when the section is up to date (the same
model files, examples and steps, and it validates) it does nothing.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m precompute.fewstep_bundle", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path, metavar="BUNDLE_DIR", help="the bundle to add fewstep/ to")
    p.add_argument("--teacher", metavar="FOLDER",
                   help="the teacher's diffusers folder (default: the bundle's model)")
    p.add_argument("--student", action="append", default=[], metavar="ID=FOLDER",
                   help="a student's flow-matching pipeline folder (repeatable); ids "
                   "rectified-flow and one-step get their labels and default steps")
    p.add_argument("--steps", nargs="+", default=[], metavar="ID=N,N",
                   help="step counts of a model, e.g. teacher=50,4,1 rectified-flow=1,2,4")
    p.add_argument("--prompts", nargs="+", metavar="PROMPT_ID",
                   help="prompt ids of the bundle (default: each group's first prompt)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="seeds (default: the bundle's first)")
    p.add_argument("--guidance", type=float, metavar="G",
                   help="the teacher's guidance scale (default: the bundle's default); "
                   "students run at 1 (their teacher's guidance is baked in)")
    p.add_argument("--sprite-format", choices=("webp", "png"), default="webp",
                   help="the sprites' format (default webp, quality 82: the run frames they "
                   "are made from are WebP 82 already; png keeps those pixels at ~10x the bytes)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        index = json.loads((args.bundle / "bundle.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        fail(f"{args.bundle / 'bundle.json'}: cannot be read ({e})")
    models = plan_models(args, index["config"])
    examples = plan_examples(index, args.prompts, args.seeds)
    for model in models:
        model.sha256 = folder_sha256(Path(model.folder))
    if existing_request(args.bundle) == request_of(models, examples, args.sprite_format) \
            and not section_problems(args.bundle, index):
        print(f"up to date: {args.bundle / SECTION} ({len(examples)} examples)")
        return 0
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from precompute.writer import BundleConfigMismatch, DamagedBundleFile

    try:
        doc, files = build(args.bundle, index, models, examples, args.device, args.dtype,
                           not args.no_progress, sys.stderr, args.sprite_format)
    except (BundleConfigMismatch, DamagedBundleFile, ValueError, OSError) as e:
        fail(f"{e} (remove {args.bundle / SECTION / '.tmp'} to start the build afresh)")
    changed = write_section(args.bundle, doc, files)
    shutil.rmtree(args.bundle / SECTION / ".tmp", ignore_errors=True)
    problems = section_problems(args.bundle, index)
    for problem in problems:
        print(problem, file=sys.stderr)
    size = sum(len(b) for b in files.values()) + (args.bundle / INDEX).stat().st_size
    print(f"{'wrote' if changed else 'up to date:'} {args.bundle / SECTION}: "
          f"{len(examples)} examples x {sum(len(m.steps) for m in models)} paths, "
          f"{size / 1024:.0f} KiB")
    for entry in doc["examples"][:3]:
        print("  " + entry["id"] + ": " + ", ".join(
            f"{q['id']} {q['straightness']:.3f}" for q in entry["paths"]))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

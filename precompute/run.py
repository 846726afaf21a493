"""Runs a prompt set through a model and adds every run to a bundle.

The unit of work is a *job*: one (prompt, seed) with all its guidance scales, run
as one batched sweep (precompute/loop.py). A seed's guidance-0 run ignores the
prompt, so it is one run shared by every prompt: the first guided job of the seed
computes it in its own sweep (one more row of the batched UNet call, instead of a
second pass of the loop), and a job of its own does it only when no guided job could
(a prompt set with guidance 0 alone, or the run claimed by another process meanwhile).

Resumable and cooperative by construction:
- a job whose runs are all in the bundle is skipped, so re-running the same command
  after Ctrl-C, a kill or a crash only does what is missing;
- a job is claimed with an OS lock before it starts, so two processes on one bundle
  (two terminals, or one per GPU under `accelerate launch`) split the work;
- runs land atomically (precompute/writer.py), so a killed job leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.bundle import load_array
from backend.format import ArrayReadError
from precompute import pipeline_io
from precompute.prompts import PromptSet
from precompute.writer import (EMPTY_PROMPT_ID, SHOWN_KEYS, BundleConfigMismatch, BundleWriter,
                               DamagedBundleFile, prompt_id, read_bundle_json, read_config,
                               recompute_remedy, run_id)

# no scheduler: the checkpoint's own (precompute/model.py's checkpoint_scheduler)
DEFAULTS = {"model": "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "num_inference_steps": 50, "height": 512, "width": 512,
            "seeds": [1, 2, 3], "guidance_scales": [0, 1, 7, 20], "storage": "full"}


@dataclass
class Options:
    """How to run (does not change what a run contains, except dtype)."""
    device: str = "auto"
    dtype: str = "auto"
    projection: str = "umap"          # umap | pca
    decode_batch_size: int = 0        # latents the VAE decodes at once; 0: by device memory
    workers: int | None = None        # writer processes (pipeline_io); 0: write in this one
    preview_decoder: object = None    # AutoencoderTiny path / hub id (or a PreviewDecoder)
    channels_last: bool = False       # UNet and VAE in channels_last memory format
    threads: int = 0                  # CPU threads for torch; 0: torch's default
    progress: bool = True
    log: object = field(default=sys.stderr, repr=False)
    # the live server (precompute/live.py): its model, loaded once, and a per-step hook
    components: object = field(default=None, repr=False)
    on_step: object = field(default=None, repr=False)


@dataclass
class Job:
    key: str                         # claim name
    prompt: str | None               # None: the seed's shared guidance-0 run
    seed: int
    guidance_scales: list[float]
    run_ids: list[str]
    negative_prompt: str = ""        # the unconditional row's prompt ("": none)
    # ControlNet (precompute/controlnet.py): each run's controlnet_conditioning_scale, one
    # per guidance scale (None: no control), and the control image
    control_scales: list[float] | None = None
    control_image: str | None = None


def plan_jobs(prompt_set: PromptSet, settings: dict) -> list[Job]:
    """The guided jobs, then the seeds' shared guidance-0 jobs (see `shared_job`)."""
    seeds, scales = settings["seeds"], [float(g) for g in settings["guidance_scales"]]
    negatives = {t: prompt_set.negative_prompt(t, settings.get("negative_prompt") or "")
                 for t in prompt_set.texts}
    jobs = []
    guided = [g for g in scales if g != 0.0]
    if guided:
        for text, negative in negatives.items():
            pid, nid = prompt_id(text), prompt_id(negative)
            key = pid if not negative else f"{pid}--neg-{nid}"
            jobs += [Job(f"{key}--s{s}", text, s, guided, [run_id(pid, s, g, nid) for g in guided],
                         negative) for s in seeds]
    if 0.0 in scales:  # one shared run per seed and negative prompt
        for negative in dict.fromkeys(negatives.values()) or [""]:
            nid = prompt_id(negative)
            key = "" if not negative else f"{nid}--"
            jobs += [Job(f"{key}s{s}-g0", None, s, [0.0], [run_id(EMPTY_PROMPT_ID, s, 0, nid)],
                         negative) for s in seeds]
    return control_jobs(prompt_set, settings, negatives) + jobs


def control_jobs(prompt_set: PromptSet, settings: dict, negatives: dict) -> list[Job]:
    """A prompt's runs with a control image: one job per (image, seed) for every guided
    scale x conditioning scale above 0 (scale 0 is the prompt's own uncontrolled run, which
    the job takes into its sweep when it is not in the bundle yet: `partner_job`). First in
    the plan, so that they can."""
    if not settings.get("controlnet"):
        return []
    from precompute.controlnet import control_id, window
    from precompute.writer import format_guidance

    guided = [float(g) for g in settings.get("controlnet_guidance_scales")
              or settings["guidance_scales"] if float(g) != 0.0]
    scales = [float(c) for c in settings.get("controlnet_conditioning_scales") or [1.0] if c]
    start, end = window(settings)
    jobs = []
    for text, images in prompt_set.control_images.items():
        negative = negatives[text]
        pid, nid = prompt_id(text), prompt_id(negative)
        for image in images:
            cid = control_id(image, settings["controlnet"], start, end)
            pairs = [(g, c) for g in guided for c in scales]
            for s in settings["seeds"]:
                rids = [run_id(f"{pid}--ctl-{cid}-c{format_guidance(c)}", s, g, nid)
                        for g, c in pairs]
                jobs.append(Job(f"{pid}--ctl-{cid}--s{s}" + (f"--neg-{nid}" if negative else ""),
                                text, s, [g for g, _ in pairs], rids, negative,
                                [c for _, c in pairs], image))
    return jobs


def partner_job(job: Job, jobs: list[Job]) -> Job | None:
    """The uncontrolled job of a controlled job's prompt and seed (its runs without control,
    from the same noise), which the controlled job can take into its own sweep."""
    if job.control_image is None:
        return None
    return next((j for j in jobs if j.control_image is None and j.prompt == job.prompt
                 and j.seed == job.seed and j.negative_prompt == job.negative_prompt), None)


def shared_job(job: Job, jobs: list[Job]) -> Job | None:
    """The seed's shared guidance-0 job that guided `job` can take into its own sweep."""
    if job.prompt is None:
        return None
    return next((j for j in jobs if j.prompt is None and j.seed == job.seed
                 and j.negative_prompt == job.negative_prompt), None)


def _say(opts: Options, message: str) -> None:
    print(message, file=opts.log, flush=True)


def precompute(prompt_set: PromptSet, out: Path, settings: dict, opts: Options) -> dict:
    """Add every missing run of prompt_set to the bundle at `out`. Returns a summary."""
    from tqdm.auto import tqdm

    import torch

    from precompute import fewstep, loop
    from precompute.attention import check_levels, level_heights
    from precompute.latent_preview import fit_latent_preview
    from precompute.sdxl import conditioning
    from precompute.model import check_device, load_components

    device = check_device(_device_for_rank(opts.device))  # before any model loads
    if opts.threads:
        torch.set_num_threads(opts.threads)

    settings = {**DEFAULTS, **_model_size(prompt_set.settings, settings), **prompt_set.settings, **settings}
    resolve_scheduler(settings, opts)
    settings.setdefault("image_size", min(256, settings["height"], settings["width"]))
    if settings.get("attention_levels") is not None:
        settings["attention_levels"] = sorted({int(h) for h in settings["attention_levels"]}, reverse=True)
    jobs = plan_jobs(prompt_set, settings)
    out = Path(out)
    done_before = sum((out / "runs" / r / "run.json").exists() for j in jobs for r in j.run_ids)
    total = sum(len(j.run_ids) for j in jobs)
    controlled = sum(len(j.run_ids) for j in jobs if j.control_image)  # ControlNet's
    _say(opts, f"{len(prompt_set.texts)} prompts x {len(settings['seeds'])} seeds x "
         f"{len(settings['guidance_scales'])} guidance scales"
         + (f" + {controlled} ControlNet runs" if controlled else "")
         + f" = {total} runs ({done_before} already in {out})")

    t0 = time.perf_counter()
    check_existing_config(out, settings)
    if done_before == total and (out / "bundle.json").exists():
        writer = BundleWriter(out, {**read_config(out), **shown_settings(prompt_set)})
        fit_trajectories(writer, settings["seeds"], opts)
        writer.rebuild_index()
        _say(opts, "nothing to compute: every run is already in the bundle")
        return {"computed": 0, "already_done": done_before, "busy_elsewhere": 0,
                "total": total, "seconds": round(time.perf_counter() - t0, 1)}
    check_existing_noise(out, device)
    components = opts.components or load_components(settings["model"], device=device,
                                                    dtype=opts.dtype, scheduler=settings["scheduler"])
    info = components.describe()
    if settings.get("controlnet"):  # loaded and checked against the UNet before any run
        from precompute.controlnet import load_controlnet
        load_controlnet(settings["controlnet"], components)
    settings["guidance_mode"] = _guidance_mode(out, components, settings, opts)  # fewstep.py
    if getattr(components.scheduler.config, "clip_sample", False):
        _say(opts, "note: this DDIM scheduler clips the predicted x_0 to [-1, 1] at every step "
             "(clip_sample=True: the checkpoint's scheduler config says so, or does not say and "
             "diffusers' default applies); Stable Diffusion checkpoints set clip_sample=False")
    h, w = settings["height"] // components.vae_scale_factor, \
        settings["width"] // components.vae_scale_factor
    if settings.get("attention_levels") is not None:  # before config.json names them
        check_levels(settings["attention_levels"], level_heights(components.unet.config, (h, w)))
    config = {
        **shown_settings(prompt_set),
        "model": settings["model"], "scheduler": settings["scheduler"],
        "num_inference_steps": settings["num_inference_steps"],
        # UNet calls, the steps a run records (more than num_inference_steps for heun, kdpm2
        # and pndm); eta and guidance_rescale: None (left out) when 0
        "num_timesteps": num_timesteps(components.scheduler, settings["num_inference_steps"]),
        "eta": settings["eta"], "guidance_rescale": settings["guidance_rescale"],
        "height": settings["height"], "width": settings["width"],
        "image_size": settings["image_size"], "dtype": str(components.dtype).replace("torch.", ""),
        "storage": settings["storage"],
        "attention_levels": settings.get("attention_levels"),  # None (all but mid): dropped
        "latent_shape": [components.unet.config.in_channels, h, w],
        "prediction_type": info["prediction_type"],  # flow models: "flow" (fewstep.py)
        **fewstep.config_fields(settings["guidance_mode"]),
        "noise": loop.NOISE,
        # SDXL's size and crop conditioning (precompute/sdxl.py); None (dropped) for SD
        "conditioning": conditioning(components, settings["height"], settings["width"]),
        "model_info": _public(info),
        # the latent -> RGB preview map of the model, shared by every run (kept from the
        # bundle's config.json when it has one: precompute/latent_preview.py)
        "latent_preview": fit_latent_preview(components, settings["height"], settings["width"]),
    }
    writer = BundleWriter(out, config)
    writer.clean_stale_staging()
    writers, decode_batch, preview = _output_stages(writer, components, settings, opts, jobs)

    # 1. the prompts: real tokens and text-encoder vectors (cheap, idempotent)
    negatives = [j.negative_prompt for j in jobs]  # the unconditional rows' prompts
    for text in dict.fromkeys(["", *negatives, *prompt_set.texts]):
        if not writer.has_prompt(prompt_id(text)):
            tokens = loop.encode_prompt_tokens(components, text)
            writer.write_prompt(text, tokens, tokens["embeddings"])
    for order, group in enumerate(prompt_set.groups):
        writer.write_group({**group.as_bundle_group(), "order": order})

    # 2. the runs, one claimed job at a time
    published, skipped_busy, compute_seconds = [], 0, 0.0
    bar = tqdm(total=total, initial=done_before, unit="run", desc="runs",
               disable=not opts.progress, file=opts.log)
    writing = []  # the claims of jobs whose runs the writers hold (each closed once written)
    try:
        skipped_busy, compute_seconds = _compute_jobs(
            jobs, writer, writers, components, settings, decode_batch, preview, opts,
            writing, published, bar)
        writers.drain()
    finally:
        # a job that failed before its runs were written must not keep its claims: a live
        # server, which outlives the failure, could never compute that job again
        for claims in writing:
            claims.close()
        writers.close()
    bar.close()
    computed = len(published)

    # 3. trajectories: one 2-D map per seed over every run of that seed
    fit_trajectories(writer, settings["seeds"], opts)
    index = writer.rebuild_index()
    elapsed = time.perf_counter() - t0
    summary = {"computed": computed, "already_done": done_before, "busy_elsewhere": skipped_busy,
               "total": total, "in_bundle": len(index["runs"]), "seconds": round(elapsed, 1),
               # the model's work, and how long it waited on writers (pipeline_io)
               "compute_seconds": round(compute_seconds, 2),
               "write_wait_seconds": round(writers.waited, 2),
               "write_drain_seconds": round(writers.drain_waited, 2),  # of it: the last job's writes
               "write_seconds": round(writers.write_seconds, 2), "workers": writers.workers}
    _say(opts, f"computed {computed} runs in {elapsed:.1f} s; the bundle has "
         f"{len(index['runs'])} runs" + (f"; {skipped_busy} jobs were being computed by "
                                          "another process" if skipped_busy else ""))
    return summary


def _model_size(*given: dict) -> dict:
    """height and width when neither is given and the model has its own default size (SDXL:
    1024 x 1024, precompute/sdxl.py), read from its config files; else {} (DEFAULTS' 512)."""
    from precompute.sdxl import default_size

    given = {k: v for d in given for k, v in d.items()}
    if "height" in given or "width" in given:
        return {}
    side = default_size(given.get("model", DEFAULTS["model"]))
    return {"height": side, "width": side} if side else {}


def resolve_scheduler(settings: dict, opts: Options) -> None:
    """Name the scheduler when the settings do not: the checkpoint's own (read from its
    config files, before the model loads, so a bundle's settings are checked first), or the
    live server's loaded one. eta and guidance_rescale of 0 are None (not recorded)."""
    from precompute.model import checkpoint_scheduler, scheduler_name

    if not settings.get("scheduler"):
        settings["scheduler"] = (scheduler_name(opts.components.scheduler) if opts.components
                                 else checkpoint_scheduler(settings["model"]))
    for key in ("eta", "guidance_rescale"):
        settings[key] = float(settings[key]) if settings.get(key) else None


def num_timesteps(scheduler, num_inference_steps: int) -> int:
    """len(scheduler.timesteps): the UNet calls of a run, as the pipeline's loop makes them."""
    import copy

    from precompute.model import quiet_diffusers

    scheduler = copy.deepcopy(scheduler)
    with quiet_diffusers():
        scheduler.set_timesteps(num_inference_steps)
    return len(scheduler.timesteps)


def _output_stages(writer, components, settings, opts, jobs):
    """The writer pool, the decode batch size and the preview decoder (or None) of a
    precompute (precompute/pipeline_io.py, precompute/preview_decoder.py)."""
    from precompute.preview_decoder import PreviewDecoder

    if opts.channels_last:
        pipeline_io.use_channels_last(components)
    preview = opts.preview_decoder
    if isinstance(preview, (str, os.PathLike)):
        preview = PreviewDecoder.load(preview, components.device, components.dtype)
    if preview is not None:
        preview.check(components)
    batch = opts.decode_batch_size or pipeline_io.auto_decode_batch_size(
        components, settings["height"], settings["width"])
    # a single job has no next job to overlap its writing with: it writes in this process
    todo = [j for j in jobs if not all(writer.has_run(r) for r in j.run_ids)]
    sweeps = len([j for j in todo if j.prompt is not None]) or len(todo)  # guidance 0 rides along
    workers = opts.workers if opts.workers is not None else \
        min(pipeline_io.default_workers(), max(0, sweeps - 1))
    return pipeline_io.RunWriters(writer.root, writer.config, workers), batch, preview


def _compute_jobs(jobs, writer, writers, components, settings, decode_batch, preview, opts,
                  writing, published, bar) -> tuple[int, float]:
    """Compute every job not yet in the bundle, one claimed job at a time, handing its runs
    to the writers; each job's claims go to `writing` until they are written. Returns
    (jobs skipped as claimed elsewhere, seconds of the model's work)."""
    from tqdm.auto import tqdm

    from precompute import loop, pipeline_io

    skipped_busy, compute_seconds = 0, 0.0
    for job in jobs:
        if all(writer.has_run(r) or writers.writing(r) for r in job.run_ids):
            continue
        with contextlib.ExitStack() as claims:
            if not claims.enter_context(writer.claim(job.key)):
                skipped_busy += 1
                continue
            if all(writer.has_run(r) for r in job.run_ids):  # finished while we waited
                continue
            job_start = time.perf_counter()
            scales, rids = job.guidance_scales, job.run_ids
            controls = job.control_scales or [0.0] * len(scales)  # ControlNet's, per run
            partner = partner_job(job, jobs)
            if partner is not None and not any(writer.has_run(r) or writers.writing(r)
                                               for r in partner.run_ids) \
                    and claims.enter_context(writer.claim(partner.key)) \
                    and not any(writer.has_run(r) for r in partner.run_ids):
                scales, rids = [*partner.guidance_scales, *scales], [*partner.run_ids, *rids]
                controls = [0.0] * len(partner.run_ids) + controls
            shared = shared_job(job, jobs)
            if shared is not None and not writer.has_run(shared.run_ids[0]) \
                    and claims.enter_context(writer.claim(shared.key)) \
                    and not writer.has_run(shared.run_ids[0]):
                scales, rids = [0.0, *scales], [*shared.run_ids, *rids]
                controls = [0.0, *controls]
            steps = tqdm(total=settings["num_inference_steps"], unit="step", leave=False,
                         desc=f"seed {job.seed}: {(job.prompt or '(empty prompt)')[:40]}",
                         disable=not opts.progress, file=opts.log)
            results = loop.run_guidance_sweep(
                components, job.prompt, job.seed, scales,
                settings["num_inference_steps"], settings["height"], settings["width"],
                capture_attention=True, attention_levels=settings.get("attention_levels"),
                progress=steps, on_step=opts.on_step, negative_prompt=job.negative_prompt,
                eta=settings["eta"], guidance_rescale=settings["guidance_rescale"],
                control=control_sweep(job, controls, components, settings))
            steps.close()
            # the guidance-0 run uses the unconditional branch only: it is the seed's
            # shared run whichever prompt's sweep computed it
            results = [dataclasses.replace(r, prompt=None) if r.guidance_scale == 0.0 else r
                       for r in results]
            # one batched decode of the job's frames; the writer pool (pipeline_io) encodes
            # and writes its runs while the next job computes, each run landing whole
            todo = [(r, rid) for r, rid in zip(results, rids) if not writer.has_run(rid)]
            frames = pipeline_io.decode_job(components, [r for r, _ in todo], decode_batch,
                                            preview)
            tasks = [_run_task(writer, r, rid, f, settings) for (r, rid), f in zip(todo, frames)]
            compute_seconds += time.perf_counter() - job_start
            # the job's claims stay held until its runs are written: another process
            # would otherwise compute them again meanwhile
            held = claims.pop_all()
            writing.append(held)
            writers.submit(tasks, _on_written(held, published, bar, opts))
        writer.rebuild_index()
    return skipped_busy, compute_seconds


def _on_written(claims, published: list, bar, opts):
    """What the writer pool calls once a job's runs are written: release the job's claims,
    count and report the runs that are new."""
    def done(finished):
        claims.close()
        for rid, new in finished:
            if new:
                published.append(rid)
                bar.update(1)
                _say_run(opts, rid, bar)
    return done


def _public(value):
    """Drop diffusers' private config keys (e.g. `_use_default_values`, an unordered set)."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not str(k).startswith("_")}
    return value


def check_existing_config(out: Path, settings: dict) -> None:
    """Refuse early (before loading a model) when the bundle was made with other settings
    or another format version, or its config.json is damaged; dtype is checked later, once
    the device (and so the "auto" dtype) is known."""
    from precompute.writer import (CONFIG_IDENTITY_KEYS, FORMAT_VERSION, check_config,
                                   config_remedy, read_bundle_json, read_config)

    path = out / "config.json"
    if path.exists():
        version = read_bundle_json(path, config_remedy(path)).get("format_version")
        if version != FORMAT_VERSION:
            raise BundleConfigMismatch(f"{path}: format_version {version} is not "
                                       f"{FORMAT_VERSION}; write to a new --out folder")
        check_config(out, read_config(out), settings,
                     [k for k in CONFIG_IDENTITY_KEYS if k != "dtype"])


def check_existing_noise(out: Path, device) -> None:
    """Runs of one bundle must draw x_T alike (loop.NOISE). A config.json without "noise"
    was written when x_T came from a generator on the run's device: the same noise as now
    on a CPU only."""
    from precompute.loop import NOISE
    from precompute.writer import read_config

    if not (out / "config.json").exists():
        return
    noise = read_config(out).get("noise")
    if noise is None and device.type != "cpu":
        raise BundleConfigMismatch(
            f"{out} does not record how its noise was drawn: it was made when each run drew "
            f"x_T on its own device, and on {device.type} that gives other noise for a seed "
            "than the CPU generator used now; add runs to it with --device cpu, or write to a "
            "new --out folder")
    if noise is not None and noise != NOISE:
        raise BundleConfigMismatch(f"{out} drew its noise as {noise}, this precompute draws it "
                                   f"as {NOISE}; write to a new --out folder")


def _say_run(opts, rid, bar):
    if not opts.progress:
        _say(opts, f"computed run {rid}")
    else:
        bar.set_postfix_str(rid[-40:])


def _device_for_rank(device: str) -> str:
    """Under `accelerate launch` / torchrun each process takes its own GPU."""
    rank = os.environ.get("LOCAL_RANK")
    if device == "auto" and rank is not None:
        import torch
        if torch.cuda.is_available():
            return f"cuda:{int(rank) % torch.cuda.device_count()}"
    return device


# ------------------------------------------------------------------- one run's files

def _guidance_mode(out: Path, components, settings: dict, opts: Options) -> str:
    """The bundle's guidance mode (precompute/fewstep.py: none, embedding), said once."""
    from precompute import fewstep
    from precompute.writer import read_config

    existing = read_config(out) if (out / "config.json").exists() else None
    mode = fewstep.bundle_guidance_mode(components.unet, settings["guidance_scales"], existing)
    for note in fewstep.notes(components.scheduler, settings["guidance_scales"]):
        _say(opts, note)
    if mode == "none":
        _say(opts, f"guidance: {fewstep.NO_CFG_WORDS} (guidance_scales = [1])")
    return mode


def _run_task(writer, r, rid, frames, settings):
    """What a writer process needs to write one run (precompute/pipeline_io.py): its
    manifest, arrays, and the VAE's frames (`frames`: a pipeline_io.DecodedRun)."""
    from precompute import fewstep
    from precompute.latent_preview import bundle_latent_preview
    from precompute.pipeline_io import RunTask

    preview = bundle_latent_preview(writer.root)  # the model's one map, the same for every run
    few = fewstep.run_record(r, settings.get("guidance_mode", "classifier_free"))  # fewstep.py
    # the writer makes the previews of latents and noise predictions from these arrays
    arrays = {"latents": r.latents, "noise_pred": r.noise_pred,
              "pred_original_sample": r.pred_original_sample}
    for name in ("noise_pred_uncond", "noise_pred_text", "variance_noise"):
        value = getattr(r, name)
        if value is not None:
            arrays[name] = value
    attention = None
    if r.attention is not None:
        attention, names = bundle_attention(r.attention_meta)
        for key, maps in r.attention.items():
            arrays[names[key]] = maps
    control, control_image = control_record(r, arrays)  # ControlNet: run.json, maps, image
    return RunTask({
        "run_id": rid, "seed": r.seed, **run_prompts(r), **control,
        "guidance_scale": float(r.guidance_scale),
        "num_inference_steps": settings["num_inference_steps"],
        "scheduler": {"name": settings["scheduler"], "timesteps": [float(t) for t in r.timesteps],
                      "sigmas": None if r.sigmas is None else [float(s) for s in r.sigmas],
                      "alphas_cumprod": [float(a) for a in r.alphas_cumprod],
                      "weaken": [float(x) for x in r.weaken], **scheduler_record(r),
                      **few.pop("scheduler", {})},
        **few,
        "latent_preview": preview,
        "attention": attention,
    }, arrays, {"decoded": (frames.decoded, "webp"),
                "pred_original_sample": (frames.pred_original_sample, "webp"), **control_image},
        settings["image_size"], frames.approximate or {})


def control_sweep(job: Job, controls: list[float], components, settings: dict):
    """The ControlNet of a job's sweep (precompute/controlnet.py), or None without one."""
    if job.control_image is None:
        return None
    from precompute import controlnet
    return controlnet.sweep_for(settings, job.control_image, controls, components)


def control_record(r, arrays: dict) -> tuple[dict, dict]:
    """A controlled run's run.json field `controlnet` and its control image; its maps join
    `arrays` (docs/bundle-format.md, "ControlNet"). ({}, {}) for a run without control."""
    if r.control is None:
        return {}, {}
    from precompute.controlnet import bundle_record
    uncontrolled = run_id(prompt_id(r.prompt), r.seed, r.guidance_scale,
                          prompt_id(r.negative_prompt))
    manifest, maps, image = bundle_record(r.control, uncontrolled)
    arrays.update(maps)
    return {"controlnet": manifest}, image


def run_prompts(r) -> dict:
    """run.json's prompt fields: prompt_id (a guidance-0 run's is its negative prompt's:
    the unconditional branch is all it ran), negative_prompt_id when the unconditional row
    was a negative prompt, and guidance_rescale with each step's std ratio where applied."""
    fields = {"prompt_id": prompt_id(r.prompt if r.prompt is not None else r.negative_prompt)}
    if r.negative_prompt:
        fields["negative_prompt_id"] = prompt_id(r.negative_prompt)
    if r.guidance_rescale:
        fields["guidance_rescale"] = float(r.guidance_rescale)
        fields["guidance_rescale_std_ratio"] = [float(x) for x in r.guidance_rescale_std_ratio]
    return fields


def scheduler_record(r) -> dict:
    """run.json's scheduler fields beyond the per-call numbers: step_index (each UNet call's
    scheduler step), where pred_original_sample comes from, a stochastic run's
    noise_scale (its variance_noise array holds the draws) and a multistep solver's
    shares of each step (this call's and earlier calls' outputs)."""
    fields = {"step_index": [int(k) for k in r.step_index],
              "pred_original_sample": r.pred_original_sample_from}
    if r.noise_scale is not None:
        fields["noise_scale"] = [float(x) for x in r.noise_scale]
    if getattr(r, "multistep", None) is not None:  # multistep solvers: precompute/multistep.py
        fields["multistep"] = r.multistep
    return fields


def bundle_attention(meta: dict) -> tuple[dict, dict[str, str]]:
    """The loop's attention description in the bundle's terms (docs/bundle-format.md).

    Down and up levels are named by their map height r (arrays `attention_res<r>`, the
    API's `res=<r>`); the mid block, whose map is coarse and may share a height with a
    level, is always `attention_mid`. Returns the manifest entry and loop key -> array.
    """
    levels = {k: int(v["size"][0]) for k, v in meta["resolutions"].items() if k != "mid"}
    if len(set(levels.values())) != len(levels):
        raise ValueError(f"two attention levels share a height: {levels}")
    names = {"combined": "attention", "mid": "attention_mid",
             **{k: f"attention_res{h}" for k, h in levels.items()}}
    mid = meta["resolutions"].get("mid")
    return {
        "tokens": int(meta["tokens"]),
        "resolutions": sorted(levels.values(), reverse=True),
        "combined": {"resolution": list(meta["combined"]["size"]),
                     "from": sorted((levels[k] for k in meta["combined"]["from"]),
                                    reverse=True)},
        "layers": int(meta["n_layers"]),
        "layers_by_level": {("mid" if k == "mid" else str(levels[k])): v["layers"]
                            for k, v in meta["resolutions"].items()},
        "mid_block_resolution": list(mid["size"]) if mid else None,
    }, names


def fit_trajectories(writer: BundleWriter, seeds, opts: Options) -> None:
    """Refit the map of every seed we touched, from the runs on disk (serialized by a lock)."""
    from precompute.projection import project_trajectories
    from precompute.writer import file_lock

    with file_lock(writer.root / ".work" / "trajectories.lock"):
        index = writer.rebuild_index()
        for seed in seeds:
            rids = sorted(r for r, e in index["runs"].items() if e["seed"] == seed)
            if not rids:
                continue
            latents = {r: np.asarray(_run_array(writer.root / "runs" / r, "latents"), np.float32)
                       for r in rids}  # the latents as stored (float16) and served
            method = opts.projection if len(rids) * len(next(iter(latents.values()))) > 15 \
                else "pca"
            coords = project_trajectories(latents, method=method, seed=0)
            writer.write_trajectories(seed, method, coords)


def _run_array(folder: Path, name: str) -> np.ndarray:
    """One array of a finished run, or DamagedBundleFile naming the run and how to redo it."""
    remedy = recompute_remedy(folder, "run")
    m = read_bundle_json(folder / "run.json", remedy, ("arrays", "guidance_scale"))
    try:
        return load_array(folder, m["arrays"], name, m["guidance_scale"])
    except ArrayReadError as e:
        raise DamagedBundleFile(f"run {folder.name} is damaged: {e.problem.file}: "
                                f"{e.problem.message}; {remedy}") from None
    except (KeyError, TypeError, ValueError) as e:  # a manifest the writer did not write
        raise DamagedBundleFile(f"{folder / 'run.json'}: arrays.{name} cannot be read "
                                f"({type(e).__name__}: {e}); {remedy}") from None


def shown_settings(prompt_set) -> dict:
    """What the app shows from the prompt file (follows it on every precompute): title,
    description and, when the file names one, the guidance scale the app opens on."""
    return {k: getattr(prompt_set, k) for k in SHOWN_KEYS}

"""Live runs: one typed prompt through the precompute, into a live bundle of its own.

`noisepath serve --live` (backend/live.py) owns the queue and the HTTP side; this module
owns the work. A live job is exactly a precompute of one prompt and one seed
(precompute/run.py's `precompute`, so the same instrumented loop, precompute/loop.py,
and the same bundle writer, precompute/writer.py), with two differences that change
nothing in what is written:
- the model is loaded once, when the server starts, and kept (`Options.components`);
- every step of the loop calls back (`Options.on_step`), and the step of the guidance
  scale the user asked for becomes two small PNG frames (the latent preview and the
  decoded predicted final image) that the page shows while the run is computed.

The live bundle is an ordinary bundle (docs/bundle-format.md) in a writable folder; runs
land atomically, so a job that fails leaves only its staging folder, which is removed.
The same (model, prompt, seed, guidance scales, steps, scheduler) is computed once: the
bundle's run ids say what it holds. Its size is bounded: past `max_prompts` typed
prompts, the least recently used prompt's runs are removed; their texts are kept (a
few bytes each), so a live/ URL of an evicted prompt is recomputed when it is opened.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.live import JobCancelled  # noqa: F401  (raised here, caught by the queue)
from precompute.writer import (EMPTY_PROMPT_ID, BundleWriter, file_lock, prompt_id, read_config,
                               run_id, write_json_atomic)

# what must agree for runs to share one live bundle (precompute/writer.py's identity keys)
SETTING_KEYS = ("model", "scheduler", "num_inference_steps", "height", "width", "image_size",
                "storage", "attention_levels")
DEFAULT_MAX_PROMPTS = 50
LRU_FILE = "live-lru.json"  # in the bundle's .work/: prompt id -> last time it was asked for
SHIPPED_FILE = "live-shipped.json"  # in .work/: the prompts copied from the shipped bundle
EVICTED_FILE = "live-evicted.json"  # in .work/: prompt id -> text of evicted prompts
KEPT_EVICTED = 1000  # evicted prompts whose text is kept, so their live/ URL recomputes them
LIVE_TITLE = "Typed prompts (noisepath serve --live)"
LIVE_DESCRIPTION = ("Prompts typed into the page, each computed by the served model with the "
                    "same instrumented loop as the shipped runs.")


def default_live_dir(settings: dict) -> Path:
    """Under the user's cache folder, one live bundle per set of settings (so serving
    another model or step count never mixes runs)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.environ.get("LOCALAPPDATA") \
        or Path.home() / ".cache"
    key = json.dumps({k: settings.get(k) for k in SETTING_KEYS}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    name = f"{Path(str(settings['model'])).name or 'model'}-{digest}"
    return Path(base) / "noisepath" / "live" / name


def live_settings(model: str, shipped_config: dict | None, steps: int | None = None) -> dict:
    """The settings of live runs: the shipped bundle's when it was made by the same model
    (so live runs look like its runs, and its runs can join the live bundle:
    `seed_from`), else the precompute's defaults."""
    from precompute.run import DEFAULTS

    same = shipped_config is not None and str(shipped_config.get("model")) == str(model)
    base = shipped_config if same else DEFAULTS
    settings = {k: base.get(k) for k in SETTING_KEYS if k != "model"}
    settings.update(model=str(model), storage=base.get("storage") or "full")
    if not settings.get("scheduler"):  # the defaults name none: the checkpoint's own
        from precompute.model import checkpoint_scheduler
        settings["scheduler"] = checkpoint_scheduler(model)
    settings.setdefault("image_size", None)
    if settings["image_size"] is None:
        settings["image_size"] = min(256, settings["height"], settings["width"])
    if steps is not None:
        settings["num_inference_steps"] = int(steps)
    return settings


@dataclass
class Frame:
    """One streamed step of the asked-for guidance scale: PNG bytes."""
    latent: bytes
    predicted: bytes


class LiveRunner:
    """The loaded model and the live bundle it writes; one job at a time (`lock`)."""

    def __init__(self, settings: dict, live_dir: Path, base_scales, device: str = "cpu",
                 dtype: str = "auto", threads: int = 0, max_prompts: int = DEFAULT_MAX_PROMPTS,
                 model_path: str | None = None):
        self.settings = dict(settings)
        self.live_dir = Path(live_dir)
        self.base_scales = sorted({float(g) for g in base_scales})
        self.device, self.dtype, self.threads = device, dtype, threads
        self.max_prompts = max_prompts
        self.model_path = model_path or self.settings["model"]  # where to load it from
        self.components = None
        self.lock = threading.Lock()

    # -- the model
    def load(self) -> None:
        """Load the model once (seconds to minutes); raises what load_components raises."""
        import torch

        from precompute.model import check_device, load_components

        if self.threads:
            torch.set_num_threads(self.threads)
        device = check_device(self.device)
        self.components = load_components(self.model_path, device=device,
                                          dtype=self.dtype, scheduler=self.settings["scheduler"])

    def unet_calls(self) -> int:
        """UNet calls a run makes: the steps streamed. num_inference_steps for one-call
        schedulers; Heun and KDPM2 call twice a step, PNDM more in its warm-up."""
        from precompute.run import num_timesteps

        return num_timesteps(self.components.scheduler, self.settings["num_inference_steps"])

    # -- what a job computes
    def scales(self, guidance_scale: float) -> list[float]:
        """The guidance scales a job runs: the asked-for one and the base ones, so the
        guidance sweep of a typed prompt has the same scales as a shipped one."""
        return sorted({*self.base_scales, float(guidance_scale)})

    def run_ids(self, prompt: str, seed: int, guidance_scale: float) -> list[str]:
        pid = prompt_id(prompt)
        return [run_id(pid, seed, g) for g in self.scales(guidance_scale)]

    def target(self, prompt: str, seed: int, guidance_scale: float) -> str:
        return run_id(prompt_id(prompt), seed, guidance_scale)

    def has(self, prompt: str, seed: int, guidance_scale: float) -> bool:
        """Every run of the job is in the live bundle (a cache hit)."""
        runs = self.live_dir / "runs"
        return (self.live_dir / "bundle.json").exists() and all(
            (runs / r / "run.json").exists() for r in self.run_ids(prompt, seed, guidance_scale))

    def words(self, prompt: str) -> list[dict]:
        """The prompt as the tokenizer splits it into words: {word, pieces, known}. A word
        the tokenizer has whole (one piece) is known; one it splits into pieces (bytes,
        for the demo model) was not among the words it learned."""
        tokenizer = self.components.tokenizer
        ids = tokenizer(prompt, add_special_tokens=False, truncation=False).input_ids
        words, current = [], []
        for piece in tokenizer.convert_ids_to_tokens(ids):
            current.append(piece)
            if piece.endswith("</w>"):  # CLIP's BPE marks the last piece of each word
                words.append(current)
                current = []
        if current:
            words.append(current)
        return [{"word": "".join(w).replace("</w>", ""), "pieces": w, "known": len(w) == 1}
                for w in words]

    # -- a job
    def run(self, prompt: str, seed: int, guidance_scale: float, on_frame=None,
            should_stop=None) -> str:
        """Compute the job into the live bundle (a precompute of one prompt and seed) and
        return the asked-for run's id. on_frame(i, total, Frame) after each UNet call of the
        asked-for scale; should_stop() is asked before the work starts and after every
        step, and when it is true the job stops there with JobCancelled. On any failure or
        cancellation the job's staging folders are removed, so the bundle holds only
        finished runs."""
        from precompute.prompts import single_prompt_set
        from precompute.run import Options, precompute

        if self.components is None:
            raise RuntimeError("the live model is not loaded")
        g = float(guidance_scale)
        scales = self.scales(g)
        with self.lock:
            if should_stop is not None and should_stop():
                raise JobCancelled()
            step_hook = self._step_hook(g, on_frame, should_stop)
            opts = Options(device=self.device, dtype=self.dtype, projection="pca",
                           progress=False, log=io.StringIO(), components=self.components,
                           on_step=step_hook)
            prompt_set = single_prompt_set(prompt, [])
            prompt_set.title, prompt_set.description = LIVE_TITLE, LIVE_DESCRIPTION
            try:
                # one sweep: the seed's shared guidance-0 run, when missing, rides along
                # in the prompt's batched loop (precompute/run.py's shared_job)
                precompute(prompt_set, self.live_dir, {**self.settings, "seeds": [int(seed)],
                                                       "guidance_scales": scales}, opts)
            except BaseException:
                self._remove_staging()
                raise
            self.touch(prompt_id(prompt))
            self.evict()
        return self.target(prompt, seed, g)

    def _step_hook(self, guidance_scale: float, on_frame=None, should_stop=None):
        """The loop's on_step: raises JobCancelled when should_stop() is true, and streams
        the guidance scale asked for (the seed's shared guidance-0 job calls it too; it
        streams only when that is the asked-for scale)."""
        from precompute import loop

        total = self.unet_calls()  # one streamed step per UNet call
        preview = {}

        def on_step(i, scales, latents, pred_original_sample):
            if should_stop is not None and should_stop():
                raise JobCancelled()
            if on_frame is None or guidance_scale not in scales:
                return
            if not preview:  # config.json is written before the first step
                preview.update(read_config(self.live_dir)["latent_preview"])
            g = scales.index(guidance_scale)
            latent = latents[g].float().cpu().numpy()                  # (C, h, w)
            x0 = pred_original_sample[g:g + 1].float().cpu().numpy()  # (1, C, h, w)
            image = loop.decode_latents(self.components, x0)[0]          # (H, W, 3)
            on_frame(i, total, Frame(png(latent_rgb(latent, preview, self.settings["scheduler"])),
                                     png(image)))
        return on_step

    def _remove_staging(self) -> None:
        """This process's staging folders (one job runs at a time, so all are the failed
        job's)."""
        tmp = self.live_dir / ".tmp"
        if tmp.is_dir():
            for folder in tmp.glob(f"{os.getpid()}-*"):
                shutil.rmtree(folder, ignore_errors=True)

    # -- the shipped runs, so a typed prompt compares with a shipped one
    def seed_from(self, shipped: Path) -> bool:
        """A new live bundle starts as a copy of the shipped bundle when their settings
        agree (hard links where the file system allows: bundle files are never written
        in place, so the shipped files stay as they are). Its prompts are never evicted.
        Returns whether it copied."""
        from precompute.writer import CONFIG_IDENTITY_KEYS

        shipped, root = Path(shipped), self.live_dir
        if (root.exists() and any(root.iterdir())) or not (shipped / "config.json").exists():
            return False
        config = read_config(shipped)
        if any(config.get(k) != self.settings.get(k) for k in CONFIG_IDENTITY_KEYS
               if k != "dtype"):
            return False
        root.parent.mkdir(parents=True, exist_ok=True)
        if root.exists():
            root.rmdir()  # empty
        staging = root.parent / f".{root.name}.seeding-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(shipped, staging, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns(".work", ".tmp", "bundle.json"))
        (staging / ".work").mkdir(exist_ok=True)
        write_json_atomic(staging / ".work" / SHIPPED_FILE,
                          sorted(p.name for p in (staging / "prompts").iterdir()))
        os.rename(staging, root)
        BundleWriter(root, read_config(root)).rebuild_index()
        return True

    def _shipped(self) -> set:
        try:
            return set(json.loads((self.live_dir / ".work" / SHIPPED_FILE).read_text()))
        except (OSError, ValueError):
            return set()

    # -- the size bound: least recently used typed prompts are removed
    def used(self, prompt: str) -> None:
        """A cache hit on prompt: it becomes the most recently used."""
        self.touch(prompt_id(prompt))

    def touch(self, pid: str) -> None:
        with file_lock(self.live_dir / ".work" / "lru.lock"):
            used = self._used()
            used[pid] = time.time()
            write_json_atomic(self.live_dir / ".work" / LRU_FILE, used)

    def _work_dict(self, name: str) -> dict:
        """A JSON object kept in the live bundle's .work/ ({} when missing or damaged)."""
        try:
            data = json.loads((self.live_dir / ".work" / name).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _used(self) -> dict:
        return self._work_dict(LRU_FILE)

    def evicted_text(self, pid: str) -> str | None:
        """The text of an evicted typed prompt (None: not evicted, or too long ago)."""
        text = self._evicted().get(pid)
        return text if isinstance(text, str) else None

    def _evicted(self) -> dict:
        return self._work_dict(EVICTED_FILE)

    def _remember_evicted(self, pids: list[str]) -> None:
        evicted = self._evicted()
        for pid in pids:
            try:
                text = json.loads((self.live_dir / "prompts" / pid / "prompt.json")
                                  .read_text())["text"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            evicted.pop(pid, None)
            evicted[pid] = text  # the newest last
        kept = dict(list(evicted.items())[-KEPT_EVICTED:])
        write_json_atomic(self.live_dir / ".work" / EVICTED_FILE, kept)

    def evict(self) -> list[str]:
        """Remove the least recently used typed prompts (their runs, prompt folder and
        group) past max_prompts; refit the trajectories and rebuild the index. Returns
        the removed prompt ids. Runs move out of runs/ with one rename each, so a
        reader never sees half a run."""
        from precompute.run import Options, fit_trajectories

        root = self.live_dir
        shipped = self._shipped()
        typed = [p.name for p in (root / "prompts").iterdir()
                 if p.name != EMPTY_PROMPT_ID and p.name not in shipped
                 and (p / "prompt.json").exists()]
        if len(typed) <= self.max_prompts:
            return []
        used = self._used()
        typed.sort(key=lambda p: used.get(p, 0.0))
        gone = typed[: len(typed) - self.max_prompts]
        self._remember_evicted(gone)
        trash = root / ".tmp" / f"{os.getpid()}-evicted-{time.time_ns()}"
        trash.mkdir(parents=True)
        seeds = set()
        for pid in gone:
            for run in (root / "runs").glob(f"{pid}--s*"):
                seeds.add(int(run.name.rsplit("--s", 1)[1].split("-g", 1)[0]))
                os.rename(run, trash / run.name)
            os.rename(root / "prompts" / pid, trash / f"prompt-{pid}")
            for group in (root / "groups").glob("*.json"):
                if pid in json.loads(group.read_text()).get("prompts", []):
                    os.rename(group, trash / f"group-{group.name}")
            used.pop(pid, None)
        shutil.rmtree(trash, ignore_errors=True)
        write_json_atomic(root / ".work" / LRU_FILE, used)
        writer = BundleWriter(root, read_config(root))
        fit_trajectories(writer, sorted(seeds), Options(projection="pca", progress=False,
                                                        log=io.StringIO()))
        writer.rebuild_index()
        return gone


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def latent_rgb(latent: np.ndarray, preview: dict, scheduler: str) -> np.ndarray:
    """(C, h, w) -> (h, w, 3) uint8 with the bundle's latent -> RGB map. A sigma
    scheduler's latent is x0 + sigma noise; without the step's sigma at hand it is shown
    divided by its RMS when that is above 1 (the RMS of x0 + sigma noise is about
    sqrt(1 + sigma^2) for unit-scale latents), as backend/previews.py shows it with sigma."""
    from backend.previews import latent_preview
    from precompute.model import SIGMA_LATENTS

    latent = np.asarray(latent, np.float32)
    if scheduler in SIGMA_LATENTS:  # the others' latents are sqrt(a) x0 + sqrt(1 - a) noise
        latent = latent / max(1.0, float(np.sqrt((latent ** 2).mean())))
    matrix = np.asarray(preview["matrix"], np.float32)
    bias = np.asarray(preview["bias"], np.float32)
    return latent_preview(latent[None], matrix, bias)[0]


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, "png")
    return buf.getvalue()

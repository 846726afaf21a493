"""Writes a Noisepath bundle: the only interface between precompute and serving.

This is the one module that writes the format; `backend/bundle.py` is the one that
reads it (`backend/validator.py` checks it first), and `tests/test_bundle.py` keeps the
two honest. The format is documented in docs/bundle-format.md. Two storages: "full"
writes every array as a float16 .npy and every preview as a PNG (JPEG from 64x64 latents
on: backend/previews.py); "compact" writes arrays
as 8-bit q8-delta .npz files (backend/codec.py), and leaves out what the reader derives
exactly (the guided noise prediction, the combined attention map, the previews).

Needs numpy and Pillow only (no torch), so tests and tools can build bundles from
plain arrays. Every file lands atomically:
- a run is staged in `.tmp/` and renamed into `runs/<run_id>/` only when complete,
  so a killed process never leaves a half-written run where readers look;
- JSON files are written to a temporary name and `os.replace`d;
- `bundle.json` (the index) is rebuilt from what is on disk, under a lock, so any
  number of cooperating processes can add runs to one bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend import codec, previews
# the format's name, version and checksum are defined once, in backend/format.py
from backend.format import FORMAT, FORMAT_VERSION, STORAGES, sha256_file  # noqa: F401

EMPTY_PROMPT_ID = "empty"  # the unconditional prompt ""; guidance-0 runs belong to it

# Config keys that must agree for runs to share one bundle (and one trajectory map).
CONFIG_IDENTITY_KEYS = ("model", "scheduler", "num_inference_steps", "height", "width",
                        "dtype", "image_size", "storage", "attention_levels", "eta",
                        "guidance_rescale")
# What the app shows: it follows the prompt file on every precompute (None: absent).
SHOWN_KEYS = ("title", "description", "default_guidance_scale")


# ----------------------------------------------------------------------------- ids

def slugify(text: str, max_len: int = 40) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    slug = "-".join(words)[:max_len].strip("-")
    return slug or "prompt"


def prompt_id(text: str) -> str:
    """Stable id of a prompt: readable slug + 8 hex chars of its hash."""
    if text == "":
        return EMPTY_PROMPT_ID
    return f"{slugify(text)}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def format_guidance(guidance_scale: float) -> str:
    g = float(guidance_scale)
    return str(int(g)) if g.is_integer() else repr(g).replace(".", "p")


def run_id(prompt_id_: str, seed: int, guidance_scale: float,
           negative_prompt_id: str = EMPTY_PROMPT_ID) -> str:
    """Guidance-0 runs ignore the prompt: all prompts of a seed with one negative prompt
    share `<negative prompt id>--s{seed}-g0` (`empty--s{seed}-g0` without one). A guided run
    with a negative prompt names it: `<prompt id>--neg-<negative prompt id>--s{seed}-g{g}`."""
    if float(guidance_scale) == 0.0:
        prompt_id_ = negative_prompt_id
    elif negative_prompt_id != EMPTY_PROMPT_ID:
        prompt_id_ = f"{prompt_id_}--neg-{negative_prompt_id}"
    return f"{prompt_id_}--s{int(seed)}-g{format_guidance(guidance_scale)}"


# ---------------------------------------------------------------------- file helpers

def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def dumps(obj) -> bytes:
    """Canonical JSON: sorted keys, so identical content gives identical bytes."""
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


# A JSON file is written whole beside its target and renamed over it; the temporary name
# carries the writer's pid, so that one left by a killed process is known (clean_stale_staging).
JSON_TMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{32}\.tmp")


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    _fsync_write(tmp, dumps(obj))
    os.replace(tmp, path)


def replace_section(bundle: Path, name: str, files: dict[str, bytes],
                    folders: tuple[str, ...] = ()) -> None:
    """Put an optional section of a bundle (speech/, fewstep/) at BUNDLE/<name>/ at once:
    `files` (paths relative to the section -> bytes) and empty `folders` are written into
    a staging folder under BUNDLE/.tmp/ and renamed into place, an older section renamed
    aside first and removed after; a reader sees the old section or the new one, never a
    mix, and a failure leaves the old one and no staging folder."""
    target = bundle / name
    staging = bundle / ".tmp" / f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        for folder in folders:
            (staging / folder).mkdir(parents=True, exist_ok=True)
        for rel, data in files.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_bytes(data)
        old = None
        if target.exists():
            old = bundle / ".tmp" / f"{name}-old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_array(folder: Path, name: str, array: np.ndarray, dtype: str) -> dict:
    """Save one array as .npy (memory-mappable) and return its manifest entry."""
    array = np.ascontiguousarray(array, dtype=dtype)
    if not np.isfinite(array).all():
        raise ValueError(f"array {name!r} has non-finite values")
    path = folder / f"{name}.npy"
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    _fsync_write(path, buf.getvalue())
    return {"file": path.name, "dtype": str(array.dtype), "shape": list(array.shape),
            "sha256": sha256_file(path)}


def save_encoded(folder: Path, name: str, array: np.ndarray) -> tuple[dict, np.ndarray]:
    """Save one run array as q8-delta `<name>.q8.npz`: (manifest entry, the float32 values
    a reader decodes). max_abs_error: the largest |decoded float16 - original| here.

    An attention level larger than the app draws it (codec.ATTENTION_STORED_SIDE) is
    stored averaged over f x f blocks, with `stored_shape`; the reader upsamples it back,
    and max_abs_error measures what comes back against the original at its full size."""
    x = np.asarray(array, np.float32)
    if x.ndim != 4:
        raise ValueError(f"array {name!r}: compact storage takes (T, C, h, w) or (K, T, H, W) "
                         f"arrays, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"array {name!r} has non-finite values")
    factor = codec.stored_factor(x.shape) if name.startswith("attention") else 1
    data, values, stored = codec.encode_resized(x, codec.step_axis(name), factor)
    served = values.astype(np.float16)
    if not np.isfinite(served).all():
        raise ValueError(f"array {name!r} does not fit in float16")
    path = folder / f"{name}.q8.npz"
    _fsync_write(path, data)
    entry = {"file": path.name, "dtype": "float16", "shape": list(x.shape),
             "sha256": sha256_file(path), "encoding": codec.ENCODING,
             "max_abs_error": _max_abs(served, x)}
    if factor > 1:
        entry["stored_shape"] = stored
    return entry, values


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float32) - b).max()) if b.size else 0.0


def derivations(manifest: dict, arrays: dict) -> dict[str, tuple[str, list[str]]]:
    """What a compact run leaves out: name -> (kind, source arrays), as docs/bundle-format.md
    defines them. The guided noise prediction when its branches are there (at guidance 0
    or 1 it is the one branch); the combined attention map when its levels are there."""
    plan = {}
    g = float(manifest["guidance_scale"])
    branches = [n for n in ("noise_pred_uncond", "noise_pred_text") if n in arrays]
    one_branch = {0.0: ["noise_pred_uncond"], 1.0: ["noise_pred_text"]}.get(g)
    rescaled = bool(manifest.get("guidance_rescale"))  # not the guidance formula: stored
    if "noise_pred" in arrays and not rescaled and (len(branches) == 2 or branches == one_branch):
        plan["noise_pred"] = ("guidance", branches)
    combined = (manifest.get("attention") or {}).get("combined") or {}
    levels = [f"attention_res{r}" for r in combined.get("from", [])]
    if "attention" in arrays and levels and all(n in arrays for n in levels):
        plan["attention"] = ("attention_mean", levels)
    return plan


def derive_entry(name: str, kind: str, sources: list[str], original: np.ndarray,
                 values: dict, entries: dict, guidance_scale: float) -> tuple[dict, np.ndarray]:
    """The manifest entry of a derived array, and its values; refuses an array that its
    sources do not reproduce (within what their quantization explains)."""
    x = np.asarray(original, np.float32)
    derived = codec.derive(kind, [values[s] for s in sources], x.shape, guidance_scale)
    if derived.shape != x.shape:
        raise ValueError(f"array {name!r} is {list(x.shape)}; {kind} of {sources} gives "
                         f"{list(derived.shape)}")
    error = _max_abs(derived.astype(np.float16), x)
    g = float(guidance_scale)
    weights = ([1.0] if len(sources) == 1 else [abs(1 - g), abs(g)]) if kind == "guidance" \
        else [1 / len(sources)] * len(sources)
    propagated = sum(w * entries[s]["max_abs_error"] for w, s in zip(weights, sources))
    largest = max([float(np.abs(x).max(initial=0))]
                  + [float(np.abs(values[s]).max(initial=0)) for s in sources])
    bound = propagated + 2.0 ** -10 * (1 + sum(weights)) * largest + 1e-6  # + float16 roundings
    if not error <= bound:
        raise ValueError(f"array {name!r} is not the {kind} of {', '.join(sources)} (max "
                         f"difference {error:.3g}, quantization explains {bound:.3g}); "
                         "write this bundle with storage = \"full\"")
    return {"derived": kind, "dtype": "float16", "shape": list(x.shape), "from": list(sources),
            "max_abs_error": error}, derived


@dataclass(frozen=True)
class EncodedSprite:
    """A sprite already encoded (as another bundle stores it): written as it is."""
    data: bytes
    ext: str
    entry: dict  # mime, count, frame_width, frame_height, columns


# Compact storage's WebP quality per VAE sprite, chosen by measurement on an SD-sized
# stand-in (docs/performance.md, "Bundle size at Stable Diffusion's size"): x_t frames are
# mostly noise for most of the steps, which no quality keeps exactly and which costs the
# bytes; predicted x0 frames are smooth and cheap at the full bundle's quality.
COMPACT_FRAME_QUALITY = {"decoded": 50, "pred_original_sample": 82}


def save_sprite(folder: Path, name: str, frames: np.ndarray, fmt: str,
                quality: int | None = None) -> dict:
    """Pack frames (N, H, W, 3) uint8 into one grid image (backend/previews.py) and return
    its entry. A lossy sprite's entry records `quality` and its measured error against
    `frames` (frame_errors)."""
    try:
        data, entry = previews.sprite(frames, fmt, quality)
    except ValueError as e:
        raise ValueError(f"sprite {name!r}: {e}") from None
    options = previews.FORMATS[fmt][2]
    if "quality" in options:
        entry = {**entry, "quality": int(quality or options["quality"]),
                 **frame_errors(frames, previews.crop_frames(data, entry))}
    return _write_sprite(folder, name, EncodedSprite(data, previews.FORMATS[fmt][0], entry))


frame_errors = previews.frame_errors  # a lossy sprite's measured error (benchmarks use it too)


def _write_sprite(folder: Path, name: str, sprite: EncodedSprite) -> dict:
    path = folder / f"{name}.{sprite.ext}"
    _fsync_write(path, sprite.data)
    return {"file": path.name, **sprite.entry, "sha256": sha256_file(path)}


# ------------------------------------------------------------------------- locking

@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True):
    """An OS advisory lock that the kernel releases if the process dies.

    Yields True when held; with blocking=False yields False when another process holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+b")
    try:
        try:
            import fcntl
            flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(f.fileno(), flags)
            except BlockingIOError:
                yield False
                return
        except ImportError:  # Windows
            import msvcrt
            try:
                msvcrt.locking(f.fileno(), msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
            except OSError:
                yield False
                return
        yield True
    finally:
        f.close()  # closing the descriptor releases the lock


class BundleConfigMismatch(ValueError):
    pass


class DamagedBundleFile(ValueError):
    """A file of an existing bundle that cannot be read; the message names it and says how
    to recover (usually: delete the run or prompt folder and run the same command again)."""


def read_bundle_json(path: Path, remedy: str, keys=()) -> dict:
    """A bundle JSON document that must be an object with `keys`, or DamagedBundleFile
    naming the file, what is wrong and `remedy`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedBundleFile(f"{path}: missing; {remedy}") from None
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
        reason = e.strerror if isinstance(e, OSError) else f"not valid JSON: {e}"
        raise DamagedBundleFile(f"{path}: cannot be read ({reason}); {remedy}") from None
    if not isinstance(data, dict):
        raise DamagedBundleFile(f"{path}: holds a JSON {type(data).__name__}, not an object; "
                                f"{remedy}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise DamagedBundleFile(f"{path}: has no {', '.join(missing)}; {remedy}")
    return data


def config_remedy(path: Path) -> str:
    return (f"it records the settings every run in {path.parent} shares: restore it from a "
            "copy, or write to a new --out folder")


def read_config(root: Path) -> dict:
    """A bundle's config.json without its format fields (no `storage`: "full")."""
    path = Path(root) / "config.json"
    config = read_bundle_json(path, config_remedy(path))
    return {"storage": "full",
            **{k: v for k, v in config.items() if k not in ("format", "format_version")}}


def check_config(root: Path, old: dict, new: dict, keys=CONFIG_IDENTITY_KEYS) -> None:
    """Raise BundleConfigMismatch naming every identity setting where new differs from old."""
    diffs = [f"{k}: bundle has {old.get(k)!r}, you asked for {new.get(k)!r}"
             for k in keys if old.get(k) != new.get(k)]
    if diffs:
        raise BundleConfigMismatch(
            f"{root} was made with different settings, and runs of one bundle must share "
            "them:\n  " + "\n  ".join(diffs) + "\nUse a new --out folder for these settings.")


# -------------------------------------------------------------------------- writer

class BundleWriter:
    """Adds prompts, runs and trajectories to a bundle folder (created if missing)."""

    def __init__(self, root: str | os.PathLike, config: dict):
        self.root = Path(root)
        self.config = {"storage": "full", **config}
        self.storage = self.config["storage"]
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, not {self.storage!r}")
        for sub in ("runs", "prompts", "groups", "trajectories", ".tmp", ".work"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / ".work" / "index.lock"):
            self._check_or_write_config()

    def _check_or_write_config(self) -> None:
        path = self.root / "config.json"
        if not path.exists():
            write_json_atomic(path, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                     **{k: v for k, v in self.config.items() if v is not None}})
            return
        old = read_bundle_json(path, config_remedy(path))
        if old.get("format_version") != FORMAT_VERSION:
            raise BundleConfigMismatch(
                f"{path}: format_version {old.get('format_version')} is not "
                f"{FORMAT_VERSION}; write to a new --out folder")
        check_config(self.root, read_config(self.root), self.config)
        shown = {k: self.config[k] for k in SHOWN_KEYS if k in self.config}
        if any(old.get(k) != v for k, v in shown.items()):  # what the app shows follows
            new = {**old, **shown}                          # the prompt file; settings do not
            write_json_atomic(path, {k: v for k, v in new.items() if v is not None})

    # -- claims: cooperating processes split the work without configuration
    def claim(self, key: str):
        """Non-blocking lock on one unit of work; yields False if another process has it."""
        return file_lock(self.root / ".work" / f"{key}.claim", blocking=False)

    def has_run(self, run_id_: str) -> bool:
        return (self.root / "runs" / run_id_ / "run.json").exists()

    def has_prompt(self, prompt_id_: str) -> bool:
        return (self.root / "prompts" / prompt_id_ / "prompt.json").exists()

    # -- prompts and groups
    def write_prompt(self, text: str, tokens: dict, embeddings: np.ndarray) -> str:
        """tokens: input_ids (77), pieces (77), n_real, truncated, dropped_pieces; SDXL's
        also tokens_2 (its second tokenizer's, the same keys) and zeroed (precompute/sdxl.py)."""
        pid = prompt_id(text)
        folder = self._stage()
        entry = save_array(folder, "text_embeddings", embeddings, "float16")
        keys = ("input_ids", "pieces", "n_real", "truncated", "dropped_pieces")
        sdxl = {"tokens_2": {k: tokens["tokens_2"][k] for k in keys},
                "zeroed": bool(tokens["zeroed"])} if "tokens_2" in tokens else {}
        write_json_atomic(folder / "prompt.json", {
            "format_version": FORMAT_VERSION, "prompt_id": pid, "text": text,
            "tokens": {k: tokens[k] for k in keys}, **sdxl,
            "arrays": {"text_embeddings": entry},
        })
        self._publish(folder, self.root / "prompts" / pid)
        return pid

    def write_group(self, group: dict) -> None:
        """group: id, title, prompts (ids, main first), highlights {pid: [[s, e]]}, and
        order (its place in the prompt file; the index lists groups in that order)."""
        write_json_atomic(self.root / "groups" / f"{group['id']}.json",
                          {"format_version": FORMAT_VERSION, **group})

    # -- runs
    def write_run(self, manifest: dict, arrays: dict[str, np.ndarray],
                  images: dict[str, tuple[np.ndarray, str]]) -> bool:
        """Write one run atomically; False if it was already there (nothing replaced)."""
        return self.publish([self.stage_run(manifest, arrays, images)]) == 1

    def stage_run(self, manifest: dict, arrays: dict[str, np.ndarray],
                  images: dict[str, tuple[np.ndarray, str] | EncodedSprite]) -> tuple[Path, Path]:
        """Write one run into a staging folder; publish() moves it into runs/.

        manifest: run_id, prompt_id, seed, guidance_scale, num_inference_steps,
          scheduler {...}, latent_preview {...}, attention {...} or None.
        arrays: name -> array, every one the run has (full: stored as float16 .npy;
          compact: stored as q8-delta .npz, or derived and not stored).
        images: the VAE's sprites, name -> (frames (N, H, W, 3) uint8, "webp" | "png" |
          "jpeg"[, more entry fields, e.g. {"approximate": ...}]) or an EncodedSprite.
          Frames are encoded at the storage's quality, with their measured error. The
          previews of latents and noise predictions are made here from the arrays as
          stored (backend/previews.py).
        """
        rid = manifest["run_id"]
        clash = sorted(set(images) & set(previews.PREVIEWS))
        if clash:
            raise ValueError(f"run {rid}: images {clash} are previews, which the writer makes "
                             "from the arrays; pass the VAE's sprites only")
        if "latent_preview" not in manifest:
            raise ValueError(f"run {rid}: the manifest needs latent_preview for the previews")
        folder = self._stage()
        if self.storage == "compact":
            entries, values = self._save_compact(folder, manifest, arrays)
        else:
            entries = {n: save_array(folder, n, a, "float16") for n, a in arrays.items()}
            values = arrays
        quality = COMPACT_FRAME_QUALITY if self.storage == "compact" else {}
        image_entries = {n: _write_sprite(folder, n, v) if isinstance(v, EncodedSprite)
                         else {**save_sprite(folder, n, *v[:2], quality=quality.get(n)),
                               **(v[2] if len(v) > 2 else {})}
                         for n, v in images.items()}
        for name in previews.PREVIEWS:
            if name in values:
                data, entry = previews.preview_sprite(name, values[name],
                                                      manifest["latent_preview"],
                                                      manifest["scheduler"].get("sigmas"))
                ext = previews.FORMATS[previews.MIME_FORMAT[entry["mime"]]][0]
                image_entries[name] = (
                    {**entry, "derived": True, "from": [name]} if self.storage == "compact"
                    else _write_sprite(folder, name, EncodedSprite(data, ext, entry)))
        manifest = {"format_version": FORMAT_VERSION, **manifest,
                    "arrays": entries, "images": image_entries}
        write_json_atomic(folder / "run.json", manifest)
        return folder, self.root / "runs" / rid

    @staticmethod
    def _save_compact(folder: Path, manifest: dict, arrays: dict) -> tuple[dict, dict]:
        """Encode what must be stored, derive the rest: (entries, float32 values as read)."""
        plan = derivations(manifest, arrays)
        entries, values = {}, {}
        for name, array in arrays.items():
            if name not in plan:
                entries[name], values[name] = save_encoded(folder, name, array)
        for name, (kind, sources) in plan.items():
            entries[name], values[name] = derive_entry(
                name, kind, sources, arrays[name], values, entries, manifest["guidance_scale"])
        return {n: entries[n] for n in arrays}, values

    def publish(self, staged: list[tuple[Path, Path]]) -> int:
        """Rename staged runs into place, back to back; returns how many were new."""
        return sum(self._publish(folder, target) for folder, target in staged)

    def write_trajectories(self, seed: int, method: str, coords: dict[str, np.ndarray]) -> None:
        """coords: run_id -> (T+1, 2), all runs of one seed on one map."""
        write_json_atomic(self.root / "trajectories" / f"seed-{int(seed)}.json", {
            "format_version": FORMAT_VERSION, "seed": int(seed), "method": method,
            "runs": {rid: np.round(np.asarray(c, np.float64), 5).tolist()
                     for rid, c in sorted(coords.items())},
        })

    # -- staging and publishing
    def _stage(self) -> Path:
        folder = self.root / ".tmp" / f"{os.getpid()}-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        return folder

    @staticmethod
    def _publish(folder: Path, target: Path) -> bool:
        """Rename a complete staging folder into place; the first writer wins."""
        try:
            os.rename(folder, target)
            return True
        except OSError:
            if not target.exists():
                raise
            shutil.rmtree(folder)  # identical work finished elsewhere: keep theirs
            return False

    def clean_stale_staging(self) -> int:
        """Remove staging folders, and the half-written JSON files of write_json_atomic,
        left by processes that died (same host): a precompute killed while it rewrote
        bundle.json left its `.bundle.json.<pid>-<hex>.tmp` beside it."""
        def dead(pid: int) -> bool:
            return pid > 0 and pid != os.getpid() and not _pid_alive(pid)

        removed = 0
        for folder in (self.root / ".tmp").iterdir():
            pid = int(folder.name.split("-", 1)[0]) if folder.name[0].isdigit() else -1
            if dead(pid):
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        # the published tree's JSON files: the root (bundle.json, config.json), groups/,
        # trajectories/, and every prompt's and run's folder (`noisepath refresh` rewrites
        # run.json in place; a new run's files are written in staging, removed above)
        places = [self.root] + [self.root / d for d in ("groups", "trajectories")] + \
            [f for d in ("prompts", "runs") if (self.root / d).is_dir()
             for f in (self.root / d).iterdir() if f.is_dir()]
        for place in places:
            for tmp in place.glob(".*.tmp") if place.is_dir() else ():
                m = JSON_TMP.fullmatch(tmp.name)
                if m and dead(int(m["pid"])):
                    tmp.unlink(missing_ok=True)
                    removed += 1
        return removed

    # -- the index
    def rebuild_index(self) -> dict:
        """Rebuild bundle.json from the files on disk, under the index lock."""
        with file_lock(self.root / ".work" / "index.lock"):
            index = build_index(self.root)
            write_json_atomic(self.root / "bundle.json", index)
            return index


def recompute_remedy(folder: Path, what: str) -> str:
    """How to replace a damaged run or prompt folder: the precompute redoes what is missing."""
    return (f"delete the folder {folder} and run the same command again to compute that "
            f"{what} again")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_index(root: Path) -> dict:
    """The index is a pure function of config, prompts, groups, runs and trajectories."""
    config = read_config(root)
    prompts, runs, groups, trajectories = {}, {}, [], {}
    for path in sorted((root / "prompts").glob("*/prompt.json")):
        p = read_bundle_json(path, recompute_remedy(path.parent, "prompt"),
                             ("prompt_id", "text"))
        prompts[p["prompt_id"]] = {"text": p["text"], "sha256": sha256_file(path)}
    for path in sorted((root / "runs").glob("*/run.json")):
        r = read_bundle_json(path, recompute_remedy(path.parent, "run"),
                             ("run_id", "prompt_id", "seed", "guidance_scale"))
        runs[r["run_id"]] = {"prompt_id": r["prompt_id"], "seed": r["seed"],
                             "guidance_scale": r["guidance_scale"], "sha256": sha256_file(path)}
    for path in sorted((root / "groups").glob("*.json")):
        g = read_bundle_json(path, "delete it and run the precompute of the prompt file that "
                             "holds this group again (it rewrites it)",
                             ("id", "title", "prompts", "highlights"))
        groups.append({k: g[k] for k in ("id", "title", "prompts", "highlights")})
        groups[-1]["order"] = g.get("order", 0)
    groups.sort(key=lambda g: (g.pop("order"), g["id"]))  # the prompt file's order
    for path in sorted((root / "trajectories").glob("seed-*.json")):
        t = read_bundle_json(path, "delete it and run the same command again (the map is "
                             "fitted again from the runs)", ("seed", "method"))
        trajectories[str(t["seed"])] = {"file": f"trajectories/{path.name}",
                                        "method": t["method"], "sha256": sha256_file(path)}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": config,
        "seeds": sorted({r["seed"] for r in runs.values()}),
        "guidance_scales": sorted({r["guidance_scale"] for r in runs.values()}),
        "groups": groups, "prompts": prompts, "runs": runs, "trajectories": trajectories,
    }

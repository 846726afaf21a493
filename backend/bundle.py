"""Reads and validates a Noisepath bundle (docs/bundle-format.md).

The one module that reads the format (precompute/writer.py is the one that writes
it). `validate_bundle` names the file and field of every problem; `Bundle` is the
read-only store the server shares between requests: JSON loaded once, arrays
memory-mapped on first use.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FORMAT = "noisepath-bundle"
FORMAT_VERSION = 1
MAX_TOKENS = 77

# images a run must have, and how many frames each holds (T = num_inference_steps)
REQUIRED_IMAGES = {"decoded": 1, "pred_original_sample": 0, "latents": 1}
OPTIONAL_IMAGES = {"noise_pred_uncond": 0, "noise_pred_text": 0, "noise_pred": 0}
# arrays: name -> extra frames beyond T (latents hold x_T too)
STEP_ARRAYS = {"latents": 1, "noise_pred": 0, "pred_original_sample": 0,
               "noise_pred_uncond": 0, "noise_pred_text": 0}


@dataclass(frozen=True)
class Problem:
    file: str          # path relative to the bundle root
    field: str         # dotted field inside the file, or "" for the file itself
    message: str
    severity: str = "error"   # "error" | "warning"
    run_id: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{self.severity}: {where}: {self.message}"


class BundleError(Exception):
    def __init__(self, root, problems: list[Problem]):
        self.problems = problems
        lines = "\n  ".join(str(p) for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"bundle {root} has {len(problems)} problem(s):\n  {lines}{more}")


# ---------------------------------------------------------------------- validation

class _Checker:
    def __init__(self, root: Path, checksums: bool):
        self.root, self.checksums, self.problems = root, checksums, []

    def add(self, file, field, message, severity="error", run_id=None):
        self.problems.append(Problem(str(file), field, message, severity, run_id))

    def load_json(self, rel: str, run_id=None):
        path = self.root / rel
        if not path.is_file():
            self.add(rel, "", "file is missing", run_id=run_id)
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            self.add(rel, "", f"not valid JSON ({e})", run_id=run_id)
            return None

    def need(self, obj: dict, rel: str, field: str, types, run_id=None):
        """Check obj[field] exists with one of `types`; return it or None."""
        types = types if isinstance(types, tuple) else (types,)
        value = obj.get(field) if isinstance(obj, dict) else None
        is_bool = isinstance(value, bool) and bool not in types  # bool is an int subclass
        if value is None or not isinstance(value, types) or is_bool:
            names = "/".join(t.__name__ for t in types)
            got = "missing" if value is None else f"a {type(value).__name__}"
            self.add(rel, field, f"must be {names}, is {got}", run_id=run_id)
            return None
        return value

    def checksum(self, rel: str, expected, field: str, run_id=None) -> bool:
        path = self.root / rel
        if not path.is_file():
            self.add(rel, "", "file is missing", run_id=run_id)
            return False
        if self.checksums and expected != sha256_file(path):
            self.add(rel, field, "sha256 does not match the file (corrupt or changed)",
                     run_id=run_id)
            return False
        return True

    def checked_json(self, rel: str, sha, field: str, run_id=None):
        """A manifest whose checksum the index holds: None (and a problem) if bad."""
        if not self.checksum(rel, sha, field, run_id):
            return None
        return self.load_json(rel, run_id)

    def array(self, folder: str, name: str, entry, shape, run_id=None):
        """Check one array entry of a manifest against its .npy file and the expected shape."""
        field = f"arrays.{name}"
        rel_manifest = f"{folder}/run.json" if folder.startswith("runs/") else f"{folder}/prompt.json"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            self.add(rel_manifest, field, "entry is missing or has no file", run_id=run_id)
            return
        rel = f"{folder}/{entry['file']}"
        if "/" in entry["file"] or "\\" in entry["file"] or entry["file"].startswith("."):
            self.add(rel_manifest, f"{field}.file", "must be a plain file name", run_id=run_id)
            return
        if not self.checksum(rel, entry.get("sha256"), f"{field}.sha256", run_id):
            return
        try:
            arr = np.load(self.root / rel, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # any unreadable header is a problem to report, not a crash
            self.add(rel, "", f"not a readable .npy file ({e})", run_id=run_id)
            return
        if str(arr.dtype) != entry.get("dtype"):
            self.add(rel, "dtype", f"file has {arr.dtype}, manifest says {entry.get('dtype')}",
                     run_id=run_id)
        if list(arr.shape) != entry.get("shape"):
            self.add(rel, "shape", f"file has {list(arr.shape)}, manifest says "
                     f"{entry.get('shape')}", run_id=run_id)
        elif shape is not None and list(arr.shape) != list(shape):
            self.add(rel, "shape", f"is {list(arr.shape)}, expected {list(shape)}", run_id=run_id)

    def image(self, folder: str, name: str, entry, count: int, run_id=None):
        field = f"images.{name}"
        rel_manifest = f"{folder}/run.json"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            self.add(rel_manifest, field, "entry is missing or has no file", run_id=run_id)
            return
        rel = f"{folder}/{entry['file']}"
        if not self.checksum(rel, entry.get("sha256"), f"{field}.sha256", run_id):
            return
        ints = [entry.get(k) for k in ("count", "frame_width", "frame_height", "columns")]
        if not all(isinstance(v, int) and v > 0 for v in ints):
            self.add(rel_manifest, field, "count, frame_width, frame_height and columns must "
                     "be positive integers", run_id=run_id)
            return
        n, fw, fh, cols = ints
        if n != count:
            self.add(rel_manifest, f"{field}.count", f"is {n}, expected {count}", run_id=run_id)
        try:
            with Image.open(self.root / rel) as im:
                size = im.size
        except Exception as e:  # a truncated or foreign file must be reported, not raised
            self.add(rel, "", f"not a readable image ({e})", run_id=run_id)
            return
        expected = (cols * fw, math.ceil(n / cols) * fh)
        if size != expected:
            self.add(rel, "", f"image is {size[0]}x{size[1]}, manifest implies "
                     f"{expected[0]}x{expected[1]}", run_id=run_id)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def validate_bundle(root, checksums: bool = True) -> list[Problem]:
    """Check schema, shapes, dtypes, files and (optionally) checksums. Never raises."""
    root = Path(root)
    c = _Checker(root, checksums)
    if not root.is_dir():
        return [Problem(str(root), "", "bundle folder does not exist")]
    index = c.load_json("bundle.json")
    if index is None:
        return c.problems
    if index.get("format") != FORMAT:
        c.add("bundle.json", "format", f"must be {FORMAT!r}")
    if index.get("format_version") != FORMAT_VERSION:
        c.add("bundle.json", "format_version",
              f"is {index.get('format_version')!r}; this noisepath reads version {FORMAT_VERSION}")
        return c.problems
    config = c.need(index, "bundle.json", "config", dict) or {}
    steps = c.need(config, "bundle.json", "num_inference_steps", int)
    latent_shape = c.need(config, "bundle.json", "latent_shape", list)
    for key in ("model", "scheduler"):
        c.need(config, "bundle.json", key, str)
    for key in ("prompts", "runs", "trajectories"):
        c.need(index, "bundle.json", key, dict)
    c.need(index, "bundle.json", "groups", list)
    if steps is None or latent_shape is None:
        return c.problems

    n_real = _validate_prompts(c, index.get("prompts") or {})
    for i, group in enumerate(index.get("groups") or []):
        for pid in group.get("prompts", []) if isinstance(group, dict) else []:
            if pid not in n_real:
                c.add("bundle.json", f"groups[{i}].prompts", f"unknown prompt {pid!r}")
    for rid, entry in (index.get("runs") or {}).items():
        _validate_run(c, rid, entry, steps, latent_shape, n_real)
    _validate_trajectories(c, index, steps)
    listed = set(index.get("runs") or {})
    runs_dir = root / "runs"
    for path in sorted(runs_dir.glob("*/run.json")) if runs_dir.is_dir() else []:
        if path.parent.name not in listed:
            c.add(f"runs/{path.parent.name}", "", "run folder is not listed in bundle.json "
                  "(run `noisepath precompute` again to rebuild the index)", "warning")
    return c.problems


def _validate_prompts(c: _Checker, prompts: dict) -> dict[str, int]:
    """Returns prompt_id -> number of real tokens, for the prompts that validate."""
    n_real = {}
    for pid, entry in prompts.items():
        rel = f"prompts/{pid}/prompt.json"
        if not isinstance(entry, dict):
            c.add("bundle.json", f"prompts.{pid}", "must be an object")
            continue
        p = c.checked_json(rel, entry.get("sha256"), f"prompts.{pid}.sha256")
        if p is None:
            continue
        c.need(p, rel, "text", str)
        tokens = c.need(p, rel, "tokens", dict) or {}
        ids, pieces = tokens.get("input_ids"), tokens.get("pieces")
        k = tokens.get("n_real")
        if not (isinstance(ids, list) and len(ids) == MAX_TOKENS):
            c.add(rel, "tokens.input_ids", f"must be a list of {MAX_TOKENS} token ids")
        if not (isinstance(pieces, list) and len(pieces) == MAX_TOKENS):
            c.add(rel, "tokens.pieces", f"must be a list of {MAX_TOKENS} strings")
        if not (isinstance(k, int) and 2 <= k <= MAX_TOKENS):
            c.add(rel, "tokens.n_real", f"must be an integer in 2..{MAX_TOKENS}")
            continue
        emb = (p.get("arrays") or {}).get("text_embeddings")
        dim = (emb or {}).get("shape", [None, None])[-1] if isinstance(emb, dict) else None
        c.array(f"prompts/{pid}", "text_embeddings", emb, [MAX_TOKENS, dim])
        n_real[pid] = k
    return n_real


def _validate_run(c: _Checker, rid: str, entry, steps: int, latent_shape, n_real) -> None:
    folder, rel = f"runs/{rid}", f"runs/{rid}/run.json"
    if not isinstance(entry, dict):
        c.add("bundle.json", f"runs.{rid}", "must be an object", run_id=rid)
        return
    m = c.checked_json(rel, entry.get("sha256"), f"runs.{rid}.sha256", rid)
    if m is None:
        return
    if m.get("run_id") != rid:
        c.add(rel, "run_id", f"is {m.get('run_id')!r}, folder is {rid!r}", run_id=rid)
    pid = c.need(m, rel, "prompt_id", str, rid)
    if pid is not None and pid not in n_real:
        c.add(rel, "prompt_id", f"prompt {pid!r} is missing or invalid", run_id=rid)
    c.need(m, rel, "seed", int, rid)
    g = c.need(m, rel, "guidance_scale", (int, float), rid)
    if m.get("num_inference_steps") != steps:
        c.add(rel, "num_inference_steps", f"is {m.get('num_inference_steps')!r}, the bundle "
              f"has {steps}", run_id=rid)
    sched = c.need(m, rel, "scheduler", dict, rid) or {}
    for key in ("timesteps", "alphas_cumprod", "weaken"):
        v = sched.get(key)
        if not (isinstance(v, list) and len(v) == steps):
            c.add(rel, f"scheduler.{key}", f"must be a list of {steps} numbers", run_id=rid)
    if sched.get("sigmas") is not None and len(sched["sigmas"]) != steps:
        c.add(rel, "scheduler.sigmas", f"must be null or a list of {steps} numbers", run_id=rid)

    arrays = c.need(m, rel, "arrays", dict, rid) or {}
    required = {"latents", "noise_pred", "pred_original_sample"}
    if g is not None and g != 1:
        required.add("noise_pred_uncond")
    if g is not None and g != 0:
        required.add("noise_pred_text")
    for name in sorted(required - set(arrays)):
        c.add(rel, f"arrays.{name}", "is missing", run_id=rid)
    for name, extra in STEP_ARRAYS.items():
        if name in arrays:
            c.array(folder, name, arrays[name], [steps + extra, *latent_shape], rid)

    att = m.get("attention")
    if att is not None and pid in n_real:
        k = n_real[pid]
        if "attention" not in arrays:
            c.add(rel, "arrays.attention", "is missing though attention is described",
                  run_id=rid)
        for name in [n for n in arrays if n.startswith("attention")]:
            shape = arrays[name].get("shape") if isinstance(arrays[name], dict) else None
            hw = shape[-2:] if isinstance(shape, list) and len(shape) == 4 else [None, None]
            c.array(folder, name, arrays[name], [k, steps, *hw], rid)

    images = c.need(m, rel, "images", dict, rid) or {}
    for name, extra in REQUIRED_IMAGES.items():
        c.image(folder, name, images.get(name), steps + extra, rid)
    for name, extra in OPTIONAL_IMAGES.items():
        if name in images:
            c.image(folder, name, images[name], steps + extra, rid)


def _validate_trajectories(c: _Checker, index: dict, steps: int) -> None:
    runs = index.get("runs") or {}
    for seed, entry in (index.get("trajectories") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            c.add("bundle.json", f"trajectories.{seed}", "must be an object with a file")
            continue
        rel = entry["file"]
        if not rel.startswith("trajectories/") or ".." in rel:
            c.add("bundle.json", f"trajectories.{seed}.file", "must be a file in trajectories/")
            continue
        t = c.checked_json(rel, entry.get("sha256"), f"trajectories.{seed}.sha256")
        if t is None:
            continue
        coords = c.need(t, rel, "runs", dict) or {}
        for rid, xy in coords.items():
            if rid not in runs:
                c.add(rel, f"runs.{rid}", "run is not in the bundle", "warning")
            elif not (isinstance(xy, list) and len(xy) == steps + 1
                      and all(isinstance(p, list) and len(p) == 2 for p in xy)):
                c.add(rel, f"runs.{rid}", f"must be {steps + 1} [x, y] pairs", run_id=rid)
        for rid, r in runs.items():
            if isinstance(r, dict) and str(r.get("seed")) == str(seed) and rid not in coords:
                c.add(rel, "runs", f"run {rid} has no trajectory (re-run precompute to refit)",
                      "warning")


# -------------------------------------------------------------------------- reader

class Bundle:
    """A read-only bundle store: the index and manifests in memory, arrays memory-mapped.

    Raises BundleError when the bundle has errors, unless skip_invalid=True, which
    drops the invalid runs and keeps the list in `problems`.
    """

    def __init__(self, root, *, checksums: bool = False, skip_invalid: bool = False):
        self.root = Path(root).resolve()
        self.problems = validate_bundle(self.root, checksums=checksums)
        errors = [p for p in self.problems if p.severity == "error"]
        fatal = [p for p in errors if p.run_id is None]
        if fatal or (errors and not skip_invalid):
            raise BundleError(self.root, errors)
        bad_runs = {p.run_id for p in errors}
        self.index = json.loads((self.root / "bundle.json").read_text(encoding="utf-8"))
        self.index["runs"] = {rid: r for rid, r in self.index["runs"].items()
                              if rid not in bad_runs}
        self.skipped_runs = sorted(bad_runs)
        self.config = self.index["config"]
        self.runs = {rid: self._json(f"runs/{rid}/run.json") for rid in self.index["runs"]}
        self.prompts = {pid: self._json(f"prompts/{pid}/prompt.json")
                        for pid in self.index["prompts"]}
        self.trajectories = {seed: self._json(t["file"])
                             for seed, t in self.index["trajectories"].items()}
        self._arrays: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()

    def _json(self, rel: str):
        return json.loads((self.root / rel).read_text(encoding="utf-8"))

    def array(self, run_id: str, name: str) -> np.ndarray:
        """A run's array, memory-mapped once and shared (read-only)."""
        key = (run_id, name)
        with self._lock:
            if key not in self._arrays:
                entry = self.runs[run_id]["arrays"][name]
                self._arrays[key] = np.load(self.root / "runs" / run_id / entry["file"],
                                            mmap_mode="r", allow_pickle=False)
            return self._arrays[key]

    def text_embeddings(self, prompt_id: str) -> np.ndarray:
        key = (f"prompt:{prompt_id}", "text_embeddings")
        with self._lock:
            if key not in self._arrays:
                entry = self.prompts[prompt_id]["arrays"]["text_embeddings"]
                self._arrays[key] = np.load(self.root / "prompts" / prompt_id / entry["file"],
                                            mmap_mode="r", allow_pickle=False)
            return self._arrays[key]

    def file_path(self, rel: str) -> Path | None:
        """Resolve a path inside the bundle, or None if it would leave the bundle."""
        try:
            path = (self.root / rel).resolve()
        except (OSError, ValueError):  # e.g. a NUL byte in the path
            return None
        if path != self.root and self.root not in path.parents:
            return None
        if any(part.startswith(".") for part in path.relative_to(self.root).parts):
            return None
        return path if path.is_file() else None

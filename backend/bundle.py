"""Reads a Noisepath bundle (docs/bundle-format.md).

The one module that reads the format (precompute/writer.py is the one that writes it;
backend/validator.py checks it first). `Bundle` is the read-only store the server shares
between requests: JSON loaded once, stored arrays memory-mapped on first use, encoded
and derived arrays (compact storage, backend/codec.py) decoded on first use into a
bounded cache.
"""

from __future__ import annotations

import contextlib
import lzma
import threading
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

from backend import codec
from backend.format import ArrayReadError, BundleError, Problem
from backend.fewstep_examples import kept_section
from backend.speech_examples import kept_examples
from backend.validator import check_bundle


# -------------------------------------------------------------------------- reader

def is_file_array(entry: dict) -> bool:
    """A plain .npy on disk (memory-mappable), as opposed to an encoded or derived array."""
    return "file" in entry and "encoding" not in entry and "derived" not in entry


def array_values(folder: Path, arrays: dict, name: str, guidance_scale: float) -> np.ndarray:
    """A run array's values in float32, read from its file, decoded, or derived from its
    sources' float32 values (docs/bundle-format.md, "Compact storage")."""
    entry = arrays[name]
    if "derived" in entry:
        sources = [array_values(folder, arrays, s, guidance_scale) for s in entry["from"]]
        return codec.derive(entry["derived"], sources, entry["shape"], guidance_scale)
    with reading(folder, entry, name):
        if entry.get("encoding") == codec.ENCODING:
            return codec.load(inside(folder, entry["file"]), codec.step_axis(name),
                              entry["shape"], entry.get("stored_shape"))
        return np.load(inside(folder, entry["file"]), allow_pickle=False).astype(np.float32)


def inside(folder: Path, file: str) -> Path:
    """folder/file with symlinks resolved, checked when it is read (validation checked it
    at start-up; a link may change since): a PermissionError if it leaves the bundle
    (folder is the bundle's runs/<run_id>)."""
    path = (folder / file).resolve()
    if folder.resolve().parent.parent not in path.parents:
        raise PermissionError(f"{file} leads outside the bundle: not read")
    return path


UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, lzma.LZMAError,
              zlib.error)


@contextlib.contextmanager
def reading(folder: Path, entry: dict, name: str):
    """Turn a failure to read a run's array file into ArrayReadError naming file and field."""
    try:
        yield
    except UNREADABLE as e:
        raise ArrayReadError(f"{folder.parent.name}/{folder.name}/{entry['file']}", name, e) from e


def load_array(folder: Path, arrays: dict, name: str, guidance_scale: float) -> np.ndarray:
    """A run array as the API serves it (read-only, float16): a stored .npy memory-mapped;
    an encoded or derived one computed in float32 and cast, as the writer measured it."""
    if is_file_array(arrays[name]):
        with reading(folder, arrays[name], name):
            return np.load(inside(folder, arrays[name]["file"]), mmap_mode="r",
                           allow_pickle=False)
    values = array_values(folder, arrays, name, guidance_scale).astype(np.float16)
    values.flags.writeable = False
    return values


def _kept(index: dict, runs: dict, prompts: dict, trajectories: dict) -> dict:
    """The index without what was skipped: groups keep their valid prompts (a group left
    with none is dropped)."""
    groups = []
    for g in index["groups"]:
        members = [pid for pid in g["prompts"] if pid in prompts]
        if members:
            highlights = {pid: v for pid, v in g.get("highlights", {}).items() if pid in prompts}
            groups.append({**g, "prompts": members, **({"highlights": highlights}
                                                      if "highlights" in g else {})})
    return {**index, "groups": groups,
            "runs": {rid: e for rid, e in index["runs"].items() if rid in runs},
            "prompts": {pid: e for pid, e in index["prompts"].items() if pid in prompts},
            "trajectories": {s: e for s, e in index["trajectories"].items() if s in trajectories}}


class LRU:
    """A thread-safe cache bounded by the total size of its values (sizeof(value) bytes)."""

    def __init__(self, max_bytes: int, sizeof: Callable[[object], int]):
        self.max_bytes, self.bytes, self.sizeof = max_bytes, 0, sizeof
        self._items: OrderedDict[object, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, build: Callable[[], object]):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                return value
        value = build()  # outside the lock: two threads may build the same thing once each
        size = self.sizeof(value)
        with self._lock:
            if key not in self._items and size <= self.max_bytes:
                self._items[key] = value
                self.bytes += size
                while self.bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self.bytes -= self.sizeof(old)
        return value


class Bundle:
    """A read-only bundle store: the index and manifests in memory, stored arrays
    memory-mapped, encoded and derived arrays decoded into a cache of `cache_bytes`.

    The documents are the ones the validator checked (backend/validator.py), so every
    field the server reads has the documented type and range. Raises BundleError when
    the bundle has errors, unless skip_invalid=True: then every run array is read in
    full first (damage past a file's start is found now, not on a request), and the
    runs, prompts (with their runs) and trajectory maps with errors are left out,
    listed in `skipped_runs`, `skipped_prompts`, `skipped_trajectories` and `problems`;
    so is an optional section with errors (`skipped_sections`: the spoken examples, the
    few-step comparison).
    """

    def __init__(self, root, *, checksums: bool = False, skip_invalid: bool = False,
                 cache_bytes: int = 128 << 20):
        checked = check_bundle(root, checksums=checksums, decode=skip_invalid)
        self.root = checked.root
        self.problems = checked.problems
        errors = [p for p in self.problems if p.severity == "error"]
        if errors and (not skip_invalid or not all(p.skippable for p in errors)):
            raise BundleError(self.root, errors)
        self.skipped_runs = sorted({p.run_id for p in errors if p.run_id is not None})
        self.skipped_prompts = sorted({p.prompt_id for p in errors if p.prompt_id is not None})
        self.skipped_trajectories = sorted({p.seed for p in errors if p.seed is not None})
        self.skipped_sections = sorted({p.section for p in errors if p.section is not None})
        self.runs = {rid: m for rid, m in checked.runs.items() if rid not in self.skipped_runs}
        if errors and checked.index["runs"] and not self.runs:
            raise BundleError(self.root, errors + [Problem("bundle.json", "runs", "no valid "
                                                           "run is left to serve")])
        self.prompts = {pid: p for pid, p in checked.prompts.items()
                        if pid not in self.skipped_prompts}
        self.trajectories = {seed: t for seed, t in checked.trajectories.items()
                             if seed not in self.skipped_trajectories}
        self.index = _kept(checked.index, self.runs, self.prompts, self.trajectories)
        self.speech = kept_examples(checked.speech, self.runs)  # spoken examples (speech/)
        self.fewstep = kept_section(checked.fewstep, self.runs)  # few-step comparison (fewstep/)
        self.config = self.index["config"]
        self.storage = self.config.get("storage", "full")
        self._arrays: dict[tuple[str, str], np.ndarray] = {}
        self._decoded = LRU(cache_bytes, lambda a: a.nbytes)
        self._lock = threading.Lock()

    def array(self, run_id: str, name: str) -> np.ndarray:
        """A run's array (read-only float16): memory-mapped once and shared, or decoded
        (compact storage) and kept while the cache has room."""
        m = self.runs[run_id]
        if not is_file_array(m["arrays"][name]):
            return self._decoded.get((run_id, name), lambda: load_array(
                self.root / "runs" / run_id, m["arrays"], name, m["guidance_scale"]))
        key = (run_id, name)
        with self._lock:
            if key not in self._arrays:
                self._arrays[key] = load_array(self.root / "runs" / run_id, m["arrays"], name,
                                               m["guidance_scale"])
            return self._arrays[key]

    def text_embeddings(self, prompt_id: str) -> np.ndarray:
        key = (f"prompt:{prompt_id}", "text_embeddings")
        with self._lock:
            if key not in self._arrays:
                entry = self.prompts[prompt_id]["arrays"]["text_embeddings"]
                path = inside(self.root / "prompts" / prompt_id, entry["file"])
                self._arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
            return self._arrays[key]

    def file_path(self, rel: str) -> Path | None:
        """Resolve a path inside the bundle (symlinks resolved), or None if it would leave
        the bundle, or is not a file this process may see."""
        try:
            path = (self.root / rel).resolve()
            if path != self.root and self.root not in path.parents:
                return None
            if any(part.startswith(".") for part in path.relative_to(self.root).parts):
                return None
            return path if path.is_file() else None
        except (OSError, ValueError):  # a NUL byte in the path, a folder it may not read
            return None

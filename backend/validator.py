"""Validates a Noisepath bundle (docs/bundle-format.md): `validate_bundle` names the file
and field of every problem, and never raises. The reader (backend/bundle.py) runs it
before serving; `noisepath validate` prints what it finds.

What passes can be trusted by the server (docs/bundle-format.md, "What validation
guarantees"): every document is checked against the schema (types, ranges, finite
numbers, ids that are names) before anything reads a field of it or a file it names;
every file read is inside the bundle (symlinks resolved); an unreadable file is a
problem, not an exception. This module checks the index, prompts and trajectories;
backend/validate_run.py checks the runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.format import (FILE_NAME, FORMAT, FORMAT_VERSION, ID, MAX_LATENT_CHANNELS,
                            MAX_LATENT_SIDE, MAX_STEPS, MAX_TOKENS, READABLE_VERSIONS,
                            SEED_KEY, SHA256, STORAGES, Problem, recorded_steps,
                            sha256_file, GUIDANCE_MODES)

_TRAJECTORY_FILE = re.compile(r"trajectories/[A-Za-z0-9][A-Za-z0-9_.-]{0,199}\.json")


# ---------------------------------------------------------------- schema predicates

def is_int(v, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def is_number(v, lo: float = -math.inf, hi: float = math.inf) -> bool:
    """A finite JSON number in [lo, hi] that converts to a float (no 400-digit ints)."""
    if type(v) is int:
        return lo <= v <= hi and abs(v) <= 1e300
    return type(v) is float and math.isfinite(v) and lo <= v <= hi


def is_numbers(v, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(is_number(x) for x in v)


def is_name(v, pattern=ID) -> bool:
    return isinstance(v, str) and pattern.fullmatch(v) is not None


def is_sha256(v) -> bool:
    return isinstance(v, str) and SHA256.fullmatch(v) is not None


def is_side_pair(v, limit: list[int]) -> bool:
    """[h, w] of a map, each from 1 to the latent's side."""
    return (isinstance(v, list) and len(v) == 2
            and all(is_int(x, 1, lim) for x, lim in zip(v, limit)))


_JSON_NAMES = {dict: "an object", list: "an array", str: "the string", bool: "",
               int: "the number", float: "the number", type(None): "null"}


def describe(value) -> str:
    """A JSON value for a message: 'the string "one"', 'an array', 'null', 'true'."""
    kind = _JSON_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)) or value is None:
        return kind
    text = json.dumps(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{kind} {text}".strip()


def brief(value) -> str:
    """A value as Python writes it, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def shown(key: str) -> str:
    """An id as a field name: at most 60 characters, control characters escaped."""
    text = key if len(key) <= 60 else key[:57] + "..."
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text


def _non_finite(doc) -> str | None:
    """The dotted field of a NaN or infinite number in a parsed JSON document, or None."""
    stack = [("", doc)]
    while stack:
        where, value = stack.pop()
        if type(value) is float and not math.isfinite(value):
            return where or "(the document)"
        if isinstance(value, dict):
            stack.extend((f"{where}.{shown(k)}" if where else shown(k), v)
                         for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
    return None


# ---------------------------------------------------------------------- the checker

@dataclass
class Checked:
    """What validation found, and the documents it parsed (the reader's source)."""
    root: Path
    problems: list[Problem] = field(default_factory=list)
    index: dict | None = None
    prompts: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    trajectories: dict[str, dict] = field(default_factory=dict)
    speech: dict | None = None     # speech/index.json, the spoken examples (optional)
    fewstep: dict | None = None    # fewstep/index.json, the few-step comparison (optional)


class Checker:
    """Collects problems, and reads every file through `path`: inside the bundle only
    (symlinks resolved), an unreadable file named, never an exception."""

    def __init__(self, root: Path, checksums: bool, decode: bool):
        self.root, self.checksums, self.decode = root, checksums, decode
        self.problems: list[Problem] = []
        self.version = FORMAT_VERSION
        self._scope: dict = {}
        self._folders: dict[str, Path | None] = {}

    @contextlib.contextmanager
    def scope(self, **owner):
        """Problems added inside belong to this run, prompt, trajectory or section (run_id=...)."""
        saved, self._scope = self._scope, {**self._scope, **owner}
        try:
            yield
        finally:
            self._scope = saved

    def add(self, file, field_, message, severity="error"):
        self.problems.append(Problem(str(file), field_, message, severity, **self._scope))

    def errors(self) -> int:
        return sum(p.severity == "error" for p in self.problems)

    def need(self, obj: dict, rel: str, key: str, ok, what: str, prefix: str = ""):
        """obj[key] if ok(obj[key]), else None and a problem 'must be <what>, is ...'."""
        value = obj.get(key) if isinstance(obj, dict) else None
        if ok(value):
            return value
        got = describe(value) if isinstance(obj, dict) and key in obj else "missing"
        self.add(rel, prefix + key, f"must be {what}, is {got}")
        return None

    # -- files
    def path(self, rel: str) -> Path | None:
        """The file `rel` names, or None and a problem: missing, unreadable, or outside
        the bundle (a symlink, or a name leading out)."""
        folder, _, name = rel.rpartition("/")
        try:
            base = self._folder(folder)
            path = base / name if base is not None else None
            st = os.lstat(path) if path is not None else None
            if st is not None and stat.S_ISLNK(st.st_mode):  # resolved like the folders
                path = path.resolve()
                st = os.stat(path) if self.root in path.parents else None
        except FileNotFoundError:
            st = False
        except (OSError, ValueError) as e:
            self.add(rel, "", f"cannot be read ({getattr(e, 'strerror', None) or e})")
            return None
        if st is None:
            self.add(rel, "", "leads outside the bundle (a symlink?): not read")
            return None
        if st is False or not stat.S_ISREG(st.st_mode):
            self.add(rel, "", "file is missing")
            return None
        return path

    def _folder(self, rel: str) -> Path | None:
        """A folder of the bundle, symlinks resolved, or None if that leaves the bundle."""
        if rel not in self._folders:
            path = (self.root / rel).resolve()
            inside = path == self.root or self.root in path.parents
            self._folders[rel] = path if inside else None
        return self._folders[rel]

    def file(self, rel: str, sha256: str, field_: str) -> Path | None:
        """A binary file, checked against its manifest's sha256 when checksums are on."""
        path = self.path(rel)
        if path is None or not self.checksums:
            return path
        try:
            digest = sha256_file(path)
        except OSError as e:
            self.add(rel, "", f"cannot be read ({e.strerror or e})")
            return None
        if digest != sha256:
            self.add(rel, field_, "sha256 does not match the file (corrupt or changed)")
            return None
        return path

    def json(self, rel: str, sha256: str | None = None, field_: str = ""):
        """A JSON object (NaN, Infinity and out-of-range numbers refused), checked against
        the sha256 its parent holds; None and a problem when it is not one."""
        path = self.path(rel)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError as e:
            self.add(rel, "", f"cannot be read ({e.strerror or e})")
            return None
        if sha256 is not None and self.checksums and hashlib.sha256(data).hexdigest() != sha256:
            self.add(rel, field_, "sha256 does not match the file (corrupt or changed)")
            return None
        non_finite = []  # Python's json reads NaN, Infinity and 1e400 as floats

        def number(text: str) -> float:
            value = float(text)
            if not math.isfinite(value):
                non_finite.append(text)
            return value
        try:
            doc = json.loads(data.decode("utf-8"), parse_float=number, parse_constant=number)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            self.add(rel, "", f"not valid JSON ({str(e)[:200]})")
            return None
        where = _non_finite(doc) if non_finite else None
        if where is not None:
            self.add(rel, where, "is NaN or infinite (or too large): not a JSON number")
            return None
        if not isinstance(doc, dict):
            self.add(rel, "", f"must be a JSON object, is {describe(doc)}")
            return None
        return doc

    def npy(self, rel: str, path: Path, dtype: str, shape: list) -> None:
        """A stored .npy: its header's dtype and shape, its size (memory-mapped), and in
        decode mode every byte read."""
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if self.decode:
                np.load(path, allow_pickle=False)
        except Exception as e:  # any unreadable file is a problem to report, not a crash
            self.add(rel, "", f"not a readable .npy file ({type(e).__name__}: {str(e)[:200]})")
            return
        if str(arr.dtype) != dtype:
            self.add(rel, "dtype", f"file has {arr.dtype}, manifest says {dtype}")
        if list(arr.shape) != shape:
            self.add(rel, "shape", f"file has {list(arr.shape)}, manifest says {shape}")

    def new_in_2(self, rel: str, field_: str) -> bool:
        """Encoded and derived entries are format 2; a format-1 bundle has none."""
        if self.version < 2:
            self.add(rel, field_, f"format_version {self.version} bundles store every array and "
                     "image as a file")
        return self.version >= 2


# ------------------------------------------------------------------------ the bundle

def validate_bundle(root, checksums: bool = True, decode: bool = False) -> list[Problem]:
    """Check schema, shapes, dtypes, files and (optionally) checksums. Never raises.
    decode: also read every byte of every run array (CRC of compressed members)."""
    return check_bundle(root, checksums, decode).problems


def check_bundle(root, checksums: bool = True, decode: bool = False) -> Checked:
    """validate_bundle, keeping the documents it parsed (backend/bundle.py serves them)."""
    from backend.speech_examples import check_section
    from backend.validate_fewstep import check_section as check_fewstep
    from backend.validate_run import check_run, check_unlisted_runs

    root = Path(root)
    try:
        if not root.is_dir():
            return Checked(root, [Problem(str(root), "", "bundle folder does not exist")])
        root = root.resolve()
    except (OSError, ValueError) as e:
        return Checked(root, [Problem(str(root), "", f"cannot be read "
                                      f"({getattr(e, 'strerror', None) or e})")])
    c = Checker(root, checksums, decode)
    out = Checked(root, c.problems)
    index = c.json("bundle.json")
    if index is None:
        return out
    config = _check_index(c, index)
    if config is None:
        return out
    out.index = index
    out.prompts = _check_prompts(c, index["prompts"])
    _check_groups(c, index["groups"], index["prompts"])
    for rid, entry in index["runs"].items():
        manifest = check_run(c, rid, entry, config, index["prompts"], out.prompts)
        if manifest is not None:
            out.runs[rid] = manifest
    out.trajectories = _check_trajectories(c, index, recorded_steps(config))
    check_unlisted_runs(c, set(index["runs"]))
    with c.scope(section="speech"):
        out.speech = check_section(c, index)  # the optional speech/ section
    with c.scope(section="fewstep"):
        out.fewstep = check_fewstep(c, index)  # the optional fewstep/ section
    return out


def _check_index(c: Checker, index: dict) -> dict | None:
    """The index's own fields; its config if everything else can be checked."""
    rel = "bundle.json"
    if index.get("format") != FORMAT:
        c.add(rel, "format", f"must be {FORMAT!r}")
    version = index.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        c.add(rel, "format_version", f"is {describe(version)}; this noisepath reads versions "
              f"{', '.join(map(str, READABLE_VERSIONS))}")
        return None
    c.version = version
    ok = all([c.need(index, rel, key, lambda v: isinstance(v, dict), "an object") is not None
              for key in ("prompts", "runs", "trajectories")])
    ok &= c.need(index, rel, "groups", lambda v: isinstance(v, list), "an array") is not None
    config = c.need(index, rel, "config", lambda v: isinstance(v, dict), "an object")
    return config if _check_config(c, config) and ok else None


def _check_config(c: Checker, cfg: dict | None) -> bool:
    if cfg is None:
        return False
    rel, p = "bundle.json", "config."
    errors = c.errors()
    if cfg.get("storage", "full") not in STORAGES:
        c.add(rel, "config.storage", f"is {describe(cfg.get('storage'))}; expected one of "
              f"{', '.join(STORAGES)}")
    c.need(cfg, rel, "num_inference_steps", lambda v: is_int(v, 1, MAX_STEPS),
           f"an integer from 1 to {MAX_STEPS}", p)
    if "num_timesteps" in cfg:  # UNet calls: at least one per step, at most four (PNDM's PRK)
        steps = cfg.get("num_inference_steps")
        c.need(cfg, rel, "num_timesteps", lambda v: is_int(steps, 1, MAX_STEPS) and is_int(
            v, steps, 4 * steps), "an integer from num_inference_steps to 4 x that", p)
    for key in ("eta", "guidance_rescale"):
        if key in cfg:
            c.need(cfg, rel, key, lambda v: is_number(v, 0, 1), "a number from 0 to 1", p)
    c.need(cfg, rel, "latent_shape", lambda v: isinstance(v, list) and len(v) == 3 and is_int(
        v[0], 1, MAX_LATENT_CHANNELS) and all(is_int(x, 1, MAX_LATENT_SIDE) for x in v[1:]),
        f"[C, h, w] (C from 1 to {MAX_LATENT_CHANNELS}, h and w from 1 to {MAX_LATENT_SIDE})", p)
    for key in ("model", "scheduler"):
        c.need(cfg, rel, key, lambda v: isinstance(v, str), "a string", p)
    for key in ("title", "description", "dtype", "prediction_type"):
        if key in cfg:
            c.need(cfg, rel, key, lambda v: v is None or isinstance(v, str), "a string", p)
    for key in ("model_info", "scheduler_config"):
        if key in cfg:
            c.need(cfg, rel, key, lambda v: v is None or isinstance(v, dict), "an object", p)
    if "guidance_mode" in cfg:  # few-step models (precompute/fewstep.py)
        c.need(cfg, rel, "guidance_mode", lambda v: v in GUIDANCE_MODES,
               f"one of {', '.join(GUIDANCE_MODES)}", p)
    if "conditioning" in cfg:  # SDXL's size and crop conditioning (precompute/sdxl.py)
        _check_conditioning(c, cfg["conditioning"], rel, p + "conditioning")
    if "default_guidance_scale" in cfg:
        c.need(cfg, rel, "default_guidance_scale", lambda v: v is None or is_number(v, 0, 100),
               "null or a number from 0 to 100", p)
    return c.errors() == errors


def _check_conditioning(c: Checker, cond, rel: str, p: str) -> None:
    """original_size and target_size [h, w] (1 to 2^16 px), crops_coords_top_left [y, x]
    (0 to 2^16), force_zeros_for_empty_prompt true or false."""
    if not isinstance(cond, dict):
        c.add(rel, p, f"must be an object, is {describe(cond)}")
        return
    def pair(lo):
        return lambda v: isinstance(v, list) and len(v) == 2 and all(is_int(x, lo, 1 << 16) for x in v)

    for key in ("original_size", "target_size"):
        c.need(cond, rel, key, pair(1), "[height, width] in pixels", p + ".")
    c.need(cond, rel, "crops_coords_top_left", pair(0), "[top, left] in pixels", p + ".")
    c.need(cond, rel, "force_zeros_for_empty_prompt", lambda v: isinstance(v, bool),
           "true or false", p + ".")


def _check_groups(c: Checker, groups: list, prompts: dict) -> None:
    """Groups name listed prompts (a prompt skipped as invalid leaves its groups)."""
    seen = set()
    for i, group in enumerate(groups):
        rel, p = "bundle.json", f"groups[{i}]."
        if not isinstance(group, dict):
            c.add(rel, f"groups[{i}]", f"must be an object, is {describe(group)}")
            continue
        gid = c.need(group, rel, "id", is_name, "a name (letters, digits, - and _)", p)
        if gid in seen:
            c.add(rel, p + "id", f"{gid!r} is used by another group")
        seen.add(gid)
        if "title" in group:
            c.need(group, rel, "title", lambda v: isinstance(v, str), "a string", p)
        members = c.need(group, rel, "prompts", lambda v: isinstance(v, list) and v and all(
            isinstance(x, str) for x in v), "a non-empty array of prompt ids", p) or []
        for pid in members:
            if pid not in prompts:
                c.add(rel, p + "prompts", f"unknown prompt {shown(pid)!r}")
        if "highlights" in group:
            c.need(group, rel, "highlights", lambda v: isinstance(v, dict) and all(
                k in members and isinstance(spans, list) and all(
                    isinstance(s, list) and len(s) == 2 and all(is_int(x, 0, 10**6) for x in s)
                    for s in spans) for k, spans in v.items()),
                "an object: prompt id (of the group) -> [[start, end], ...]", p)


# ---------------------------------------------------------------------------- prompts

def _check_prompts(c: Checker, prompts: dict) -> dict[str, dict]:
    """prompt_id -> prompt.json, for the prompts that validate."""
    valid = {}
    for pid, entry in prompts.items():
        with c.scope(prompt_id=pid):
            errors = c.errors()
            doc = _check_prompt(c, pid, entry)
            if doc is not None and c.errors() == errors:
                valid[pid] = doc
    return valid


def listed_document(c: Checker, kind: str, id_: str, entry, rel: str,
                    text: bool = False) -> dict | None:
    """The document bundle.json lists under `<kind>s.<id_>` (an object with sha256, and
    text when asked), read from rel if the id is a name and the entry well formed."""
    field_ = f"{kind}s.{shown(id_)}"
    if not is_name(id_):
        c.add("bundle.json", field_, f"a {kind} id must be a name (letters, digits, - and _), "
              "never a path")
        return None
    if not (isinstance(entry, dict) and (not text or isinstance(entry.get("text"), str))
            and is_sha256(entry.get("sha256"))):
        c.add("bundle.json", field_, "must be an object with text and sha256 (64 hex digits)"
              if text else "must be an object with sha256 (64 hex digits)")
        return None
    return c.json(rel, entry["sha256"], f"{field_}.sha256")


def _check_prompt(c: Checker, pid: str, entry) -> dict | None:
    rel = f"prompts/{pid}/prompt.json"
    p = listed_document(c, "prompt", pid, entry, rel, text=True)
    if p is None:
        return None
    if p.get("prompt_id") != pid:
        c.add(rel, "prompt_id", f"is {describe(p.get('prompt_id'))}, folder is {pid!r}")
    c.need(p, rel, "text", lambda v: isinstance(v, str), "a string")
    _check_tokens(c, p, rel, "tokens")
    if "tokens_2" in p:  # SDXL's second tokenizer (precompute/sdxl.py)
        _check_tokens(c, p, rel, "tokens_2")
    if "zeroed" in p:
        c.need(p, rel, "zeroed", lambda v: isinstance(v, bool), "true or false")
    arrays = c.need(p, rel, "arrays", lambda v: isinstance(v, dict), "an object") or {}
    emb = c.need(arrays, rel, "text_embeddings", lambda v: isinstance(v, dict) and is_name(
        v.get("file"), FILE_NAME) and v["file"].endswith(".npy") and is_sha256(v.get("sha256"))
        and v.get("dtype") == "float16" and isinstance(v.get("shape"), list)
        and len(v["shape"]) == 2 and v["shape"][0] == MAX_TOKENS
        and is_int(v["shape"][1], 1, 1 << 16),
        f"an object: file (a .npy name), sha256, dtype float16, shape [{MAX_TOKENS}, D]",
        "arrays.")
    if emb is not None:
        file_rel = f"prompts/{pid}/{emb['file']}"
        path = c.file(file_rel, emb["sha256"], "arrays.text_embeddings.sha256")
        if path is not None:
            c.npy(file_rel, path, emb["dtype"], emb["shape"])
    return p


def _check_tokens(c: Checker, p: dict, rel: str, key: str) -> None:
    """A tokenizer's record: input_ids and pieces (77 each), n_real."""
    tokens = c.need(p, rel, key, lambda v: isinstance(v, dict), "an object") or {}
    c.need(tokens, rel, "input_ids", lambda v: isinstance(v, list) and len(v) == MAX_TOKENS and
           all(is_int(x, 0, 2**31) for x in v), f"an array of {MAX_TOKENS} token ids", f"{key}.")
    c.need(tokens, rel, "pieces", lambda v: isinstance(v, list) and len(v) == MAX_TOKENS and all(
        isinstance(x, str) for x in v), f"an array of {MAX_TOKENS} strings", f"{key}.")
    c.need(tokens, rel, "n_real", lambda v: is_int(v, 2, MAX_TOKENS),
           f"an integer from 2 to {MAX_TOKENS}", f"{key}.")


# ----------------------------------------------------------------------- trajectories

def _check_trajectories(c: Checker, index: dict, steps: int) -> dict[str, dict]:
    """seed -> trajectory document, for the maps that validate."""
    valid = {}
    for seed, entry in index["trajectories"].items():
        with c.scope(seed=seed):
            errors = c.errors()
            doc = _check_trajectory(c, seed, entry, index["runs"], steps)
            if doc is not None and c.errors() == errors:
                valid[seed] = doc
    return valid


def _check_trajectory(c: Checker, seed: str, entry, runs: dict, steps: int) -> dict | None:
    field_ = f"trajectories.{shown(seed)}"
    if not (is_name(seed, SEED_KEY) and int(seed) < 2**63):
        c.add("bundle.json", field_, "a trajectory's key must be a seed (a non-negative "
              "integer, written without sign or leading zeros)")
        return None
    if not (isinstance(entry, dict) and is_name(entry.get("file"), _TRAJECTORY_FILE)
            and is_sha256(entry.get("sha256"))):
        c.add("bundle.json", field_, "must be an object with file (trajectories/<name>.json) "
              "and sha256 (64 hex digits)")
        return None
    rel = entry["file"]
    t = c.json(rel, entry["sha256"], f"{field_}.sha256")
    if t is None:
        return None
    c.need(t, rel, "method", lambda v: isinstance(v, str), "a string")
    coords = c.need(t, rel, "runs", lambda v: isinstance(v, dict), "an object") or {}
    for rid, xy in coords.items():
        if rid not in runs:
            c.add(rel, f"runs.{shown(rid)}", "run is not in the bundle", "warning")
        elif not (isinstance(xy, list) and len(xy) == steps + 1
                  and all(is_numbers(p, 2) for p in xy)):
            with c.scope(run_id=rid, seed=None):
                c.add(rel, f"runs.{shown(rid)}", f"must be {steps + 1} [x, y] pairs of numbers")
    for rid, r in runs.items():
        if isinstance(r, dict) and str(r.get("seed")) == seed and rid not in coords:
            c.add(rel, "runs", f"run {shown(rid)} has no trajectory (re-run precompute to "
                  "refit)", "warning")
    return t

"""Validates a Noisepath bundle (docs/bundle-format.md): `validate_bundle` names the file
and field of every problem, and never raises. The reader (backend/bundle.py) runs it
before serving; `noisepath validate` prints what it finds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from backend import codec, previews
from backend.format import (FORMAT, FORMAT_VERSION, MAX_TOKENS, OPTIONAL_IMAGES, READABLE_VERSIONS,
                            REQUIRED_IMAGES, STEP_ARRAYS, STORAGES, Problem, sha256_file)


class _Checker:
    def __init__(self, root: Path, checksums: bool):
        self.root, self.checksums, self.problems = root, checksums, []
        self.version = FORMAT_VERSION

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

    def array(self, folder: str, name: str, entry, shape, run_id=None, arrays=None,
              guidance_scale=None):
        """Check one array entry of a manifest against its file (a .npy, or an encoded
        .npz) or, for a derived array, its sources; and against the expected shape."""
        field = f"arrays.{name}"
        rel_manifest = f"{folder}/run.json" if folder.startswith("runs/") else f"{folder}/prompt.json"
        if isinstance(entry, dict) and "derived" in entry:
            self.derived_array(rel_manifest, name, entry, shape, arrays or {}, guidance_scale,
                               run_id)
            return
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            self.add(rel_manifest, field, "entry is missing or has no file", run_id=run_id)
            return
        rel = f"{folder}/{entry['file']}"
        if "/" in entry["file"] or "\\" in entry["file"] or entry["file"].startswith("."):
            self.add(rel_manifest, f"{field}.file", "must be a plain file name", run_id=run_id)
            return
        if "encoding" in entry and not self.new_in_2(rel_manifest, f"{field}.encoding", run_id):
            return
        if not self.checksum(rel, entry.get("sha256"), f"{field}.sha256", run_id):
            return
        if "encoding" in entry:
            self.encoded_array(rel, rel_manifest, name, entry, shape, run_id)
            return
        try:
            arr = np.load(self.root / rel, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # any unreadable header is a problem to report, not a crash
            self.add(rel, "", f"not a readable .npy file ({e})", run_id=run_id)
            return
        if str(arr.dtype) != entry.get("dtype"):
            self.add(rel, "dtype", f"file has {arr.dtype}, manifest says {entry.get('dtype')}",
                     run_id=run_id)
        self.shape(rel, list(arr.shape), entry, shape, run_id)

    def shape(self, rel: str, actual: list, entry: dict, expected, run_id, field="shape"):
        if actual != entry.get("shape"):
            self.add(rel, field, f"file has {actual}, manifest says {entry.get('shape')}",
                     run_id=run_id)
        elif expected is not None and actual != list(expected):
            self.add(rel, field, f"is {actual}, expected {list(expected)}", run_id=run_id)

    def new_in_2(self, rel: str, field: str, run_id) -> bool:
        """Encoded and derived entries are format 2; a format-1 bundle has none."""
        if self.version < 2:
            self.add(rel, field, f"format_version {self.version} bundles store every array and "
                     "image as a file", run_id=run_id)
        return self.version >= 2

    def error_bound(self, rel: str, field: str, entry: dict, run_id) -> None:
        err = entry.get("max_abs_error")
        if not (type(err) in (int, float) and math.isfinite(err) and err >= 0):
            self.add(rel, f"{field}.max_abs_error", "must be a number >= 0", run_id=run_id)

    def encoded_array(self, rel: str, rel_manifest: str, name: str, entry: dict, shape, run_id):
        """A q8-delta .npz: exactly the members q (uint8), lo and scale (float32, the map
        axes reduced to 1), q's shape the manifest's (the decoded shape)."""
        field = f"arrays.{name}"
        if entry["encoding"] != codec.ENCODING:
            self.add(rel_manifest, f"{field}.encoding", f"is {entry['encoding']!r}; this "
                     f"noisepath reads {codec.ENCODING!r}", run_id=run_id)
            return
        if entry.get("dtype") != "float16":
            self.add(rel_manifest, f"{field}.dtype", "must be float16 (the decoded dtype)",
                     run_id=run_id)
        self.error_bound(rel_manifest, field, entry, run_id)
        try:
            members = codec.read_npz(self.root / rel, header_only=("q",))
        except Exception as e:  # a truncated or foreign file must be reported, not raised
            self.add(rel, "", f"not a readable .npz file ({e})", run_id=run_id)
            return
        if sorted(members) != sorted(codec.MEMBERS):
            self.add(rel, "members", f"are {sorted(members)}, expected exactly "
                     f"{', '.join(codec.MEMBERS)}", run_id=run_id)
            return
        q_dtype, q_shape = members["q"]
        if q_dtype != np.uint8:
            self.add(rel, "q", f"dtype is {q_dtype}, expected uint8", run_id=run_id)
        self.shape(rel, list(q_shape), entry, shape, run_id, field="q")
        reduced = codec.spatially_reduced(entry.get("shape") if isinstance(entry.get("shape"), list)
                                          and len(entry["shape"]) >= 2 else q_shape)
        for key in ("lo", "scale"):
            a = members[key]
            if a.dtype != np.float32:
                self.add(rel, key, f"dtype is {a.dtype}, expected float32", run_id=run_id)
            elif list(a.shape) != reduced:
                self.add(rel, key, f"shape is {list(a.shape)}, expected {reduced}", run_id=run_id)
            elif not np.isfinite(a).all() or (key == "scale" and (a < 0).any()):
                self.add(rel, key, "must be finite" + (" and >= 0" if key == "scale" else ""),
                         run_id=run_id)

    def derived_array(self, rel: str, name: str, entry: dict, shape, arrays: dict,
                      guidance_scale, run_id):
        """A derived array has no file: its kind, its sources (stored arrays of the run)."""
        field = f"arrays.{name}"
        if not self.new_in_2(rel, f"{field}.derived", run_id):
            return
        kind, sources = entry.get("derived"), entry.get("from")
        if kind not in codec.DERIVED_KINDS:
            self.add(rel, f"{field}.derived", f"is {kind!r}; expected one of "
                     f"{', '.join(codec.DERIVED_KINDS)}", run_id=run_id)
            return
        if entry.get("dtype") != "float16":
            self.add(rel, f"{field}.dtype", "must be float16", run_id=run_id)
        if "max_abs_error" in entry:
            self.error_bound(rel, field, entry, run_id)
        if not (isinstance(sources, list) and sources and all(isinstance(x, str) for x in sources)):
            self.add(rel, f"{field}.from", "must be a non-empty list of array names", run_id=run_id)
            return
        for source in sources:
            src = arrays.get(source)
            if not isinstance(src, dict) or "derived" in src or not isinstance(src.get("file"), str):
                self.add(rel, f"{field}.from", f"names {source!r}, which is not a stored array "
                         "of this run", run_id=run_id)
                return
        entry_shape = entry.get("shape")
        if kind == "guidance":
            branches = {0: ["noise_pred_uncond"], 1: ["noise_pred_text"]}.get(
                guidance_scale, ["noise_pred_uncond", "noise_pred_text"])
            if sources != branches:
                self.add(rel, f"{field}.from", f"is {sources}; at guidance {guidance_scale} "
                         f"it must be {branches}", run_id=run_id)
        elif not all(x.startswith("attention_res") for x in sources):
            self.add(rel, f"{field}.from", f"is {sources}; the combined map averages "
                     "attention_res<r> levels", run_id=run_id)
        lead = 2 if kind == "attention_mean" else 4  # the axes the sources share with it
        for source in sources:
            src_shape = arrays[source].get("shape")
            if not isinstance(src_shape, list) or not isinstance(entry_shape, list) \
                    or src_shape[:lead] != entry_shape[:lead]:
                self.add(rel, f"{field}.shape", f"is {entry_shape}, but {source} is {src_shape}",
                         run_id=run_id)
                return
        if shape is not None and entry_shape != list(shape):
            self.add(rel, f"{field}.shape", f"is {entry_shape}, expected {list(shape)}",
                     run_id=run_id)

    def image(self, folder: str, name: str, entry, count: int, run_id=None, arrays=None):
        field = f"images.{name}"
        rel_manifest = f"{folder}/run.json"
        derived = isinstance(entry, dict) and entry.get("derived") is True
        if not isinstance(entry, dict) or not (derived or isinstance(entry.get("file"), str)):
            self.add(rel_manifest, field, "entry is missing or has no file", run_id=run_id)
            return
        if derived and not self.new_in_2(rel_manifest, f"{field}.derived", run_id):
            return
        rel = rel_manifest if derived else f"{folder}/{entry['file']}"
        if not derived and not self.checksum(rel, entry.get("sha256"), f"{field}.sha256", run_id):
            return
        ints = [entry.get(k) for k in ("count", "frame_width", "frame_height", "columns")]
        if not all(isinstance(v, int) and v > 0 for v in ints):
            self.add(rel_manifest, field, "count, frame_width, frame_height and columns must "
                     "be positive integers", run_id=run_id)
            return
        n, fw, fh, cols = ints
        if n != count:
            self.add(rel_manifest, f"{field}.count", f"is {n}, expected {count}", run_id=run_id)
        if derived:
            self.derived_image(rel_manifest, name, entry, arrays or {}, run_id)
            return
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

    def derived_image(self, rel: str, name: str, entry: dict, arrays: dict, run_id):
        """A preview the server renders (backend/previews.py): the sprite it will get."""
        field = f"images.{name}"
        source = arrays.get(name)
        if name not in previews.PREVIEWS or entry.get("from") != [name] \
                or not isinstance(source, dict):
            self.add(rel, f"{field}.from", f"must be [{name!r}], an array of this run with a "
                     f"preview ({', '.join(previews.PREVIEWS)})", run_id=run_id)
            return
        if entry.get("mime") != "image/png":
            self.add(rel, f"{field}.mime", "must be image/png", run_id=run_id)
        shape = source.get("shape")
        n = entry["count"]
        expected = {"frame_height": shape[-2], "frame_width": shape[-1],
                    "columns": math.ceil(math.sqrt(n))} if isinstance(shape, list) and \
            len(shape) == 4 else {}
        for key, value in expected.items():
            if entry[key] != value:
                self.add(rel, f"{field}.{key}", f"is {entry[key]}, the rendered preview has "
                         f"{value}", run_id=run_id)


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
    if index.get("format_version") not in READABLE_VERSIONS:
        c.add("bundle.json", "format_version", f"is {index.get('format_version')!r}; this "
              f"noisepath reads versions {', '.join(map(str, READABLE_VERSIONS))}")
        return c.problems
    c.version = index["format_version"]
    config = c.need(index, "bundle.json", "config", dict) or {}
    if config.get("storage", "full") not in STORAGES:
        c.add("bundle.json", "config.storage", f"is {config.get('storage')!r}; expected one of "
              f"{', '.join(STORAGES)}")
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
            c.array(folder, name, arrays[name], [steps + extra, *latent_shape], rid, arrays, g)

    att = m.get("attention")
    if att is not None and pid in n_real:
        k = n_real[pid]
        if "attention" not in arrays:
            c.add(rel, "arrays.attention", "is missing though attention is described",
                  run_id=rid)
        for name in [n for n in arrays if n.startswith("attention")]:
            shape = arrays[name].get("shape") if isinstance(arrays[name], dict) else None
            hw = shape[-2:] if isinstance(shape, list) and len(shape) == 4 else [None, None]
            combined = att.get("combined") if isinstance(att, dict) else None
            if name == "attention" and isinstance(combined, dict) \
                    and isinstance(combined.get("resolution"), list):
                hw = combined["resolution"]  # what the combined map is upsampled to
            c.array(folder, name, arrays[name], [k, steps, *hw], rid, arrays, g)

    images = c.need(m, rel, "images", dict, rid) or {}
    for name, extra in REQUIRED_IMAGES.items():
        c.image(folder, name, images.get(name), steps + extra, rid, arrays)
    for name, extra in OPTIONAL_IMAGES.items():
        if name in images:
            c.image(folder, name, images[name], steps + extra, rid, arrays)
    if any(isinstance(e, dict) and e.get("derived") is True for e in images.values()):
        lp, channels = m.get("latent_preview"), latent_shape[0]
        if not (isinstance(lp, dict) and _matrix(lp.get("matrix"), channels, 3)
                and _matrix([lp.get("bias")], 1, 3)):
            c.add(rel, "latent_preview", f"must have matrix ({channels} x 3) and bias (3 "
                  "numbers): the previews are rendered with it", run_id=rid)


def _matrix(value, rows: int, cols: int) -> bool:
    return (isinstance(value, list) and len(value) == rows
            and all(isinstance(r, list) and len(r) == cols
                    and all(type(x) in (int, float) and math.isfinite(x) for x in r)
                    for r in value))


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

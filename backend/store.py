"""The read-only bundle store shared by every request: `init_app(app)`, `get_store()`.

Loads and validates the bundle once (backend/bundle.py) and builds the index at
start-up; everything else is built on first request and kept. The per-prompt, per-run,
per-sweep and per-trajectory documents (a run's stats decode its arrays) are `LazyMap`s:
their keys are known at start-up, so lookups and iteration never build, and each value
is built once, by the first request that needs it. Per-step JSON, attention slices,
bundle files and, for a compact bundle, decoded arrays and rendered previews go into a
byte-bounded LRU cache. Every body is a `Resource`: hashed and gzipped once.

A run file that cannot be read when first decoded raises ArrayReadError naming file and
field (backend/errors.py answers 500 `bundle_file_unreadable`); nothing is kept for it.

Only files the bundle's manifests reference are served from it; lookups take ids
and indices that the views have already checked, never raw paths.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Iterable, Iterator

from flask import Flask, current_app

from backend import fewstep_examples, payloads, speech_examples
from backend.bundle import LRU, Bundle
from backend.format import recorded_steps
from backend.resource import MIME, NPY, Resource, json_resource, make_resource

EXTENSION_KEY = "noisepath.store"
BUNDLE_MIME = {".npy": NPY, ".png": "image/png", ".webp": "image/webp", ".jpg": "image/jpeg",
               ".jpeg": "image/jpeg"}


def _size(res: Resource) -> int:
    return res.size


class LazyMap(Mapping):
    """A read-only mapping whose keys are fixed up front and whose values are built on
    first access by `build(key)`, once: concurrent first requests for a key wait for the
    one build (a lock per key). `in`, `len`, iteration and `get` of an unknown key build
    nothing. A build that raises keeps nothing, so the next access tries again."""

    def __init__(self, keys: Iterable, build: Callable[[object], object]):
        self._locks = {key: threading.Lock() for key in keys}
        self._build = build
        self._values: dict = {}

    def __getitem__(self, key):
        try:
            return self._values[key]
        except KeyError:
            pass
        with self._locks[key]:  # KeyError for an unknown key, before anything is built
            if key not in self._values:
                self._values[key] = self._build(key)
            return self._values[key]

    def __contains__(self, key) -> bool:
        try:
            return key in self._locks
        except TypeError:  # an unhashable key is no key
            return False

    def get(self, key, default=None):
        """The value for a known key (built if need be), else default. A KeyError raised
        while building is not mistaken for an unknown key."""
        return self[key] if key in self else default

    def __iter__(self) -> Iterator:
        return iter(self._locks)

    def __len__(self) -> int:
        return len(self._locks)

    def built(self) -> list:
        """The keys whose values have been built so far."""
        return list(self._values)


class Store:
    def __init__(self, bundle: Bundle, frontend: Path, cache_bytes: int = 256 << 20):
        self.bundle = b = bundle
        self.frontend = frontend.resolve()
        self.steps = recorded_steps(b.config)  # one per UNet call
        self._cache = LRU(cache_bytes, _size)
        self._frontend_cache = LRU(64 << 20, _size)

        self.index = json_resource(payloads.index(b))
        self.files = self._referenced_files()
        # built on first request (LazyMap): keys from the bundle's index and manifests
        self.numbers = LazyMap(b.runs, lambda rid: payloads.run_numbers(b, rid))  # (stats, centre)
        self.prompts = LazyMap(b.prompts, lambda pid: json_resource(payloads.prompt(b, pid)))
        self.runs = LazyMap(b.runs, lambda rid: json_resource(
            payloads.run(b, rid, self.numbers[rid][0])))
        self.sweeps = LazyMap(payloads.sweep_keys(b),
                              lambda key: json_resource(payloads.sweep(b, *key)))
        self.trajectories = LazyMap(b.trajectories,
                                    lambda seed: json_resource(payloads.trajectory(b, seed)))
        # what the API serves in place of bundle files (compact storage)
        self.api_arrays = LazyMap(b.runs, lambda rid: payloads.api_arrays(b, rid))
        self.api_images = LazyMap(b.runs, lambda rid: payloads.api_images(b, rid))
        self.versions = LazyMap(b.runs, lambda rid: payloads.run_version(b, rid))

    # -- what a run has
    def n_tokens(self, rid: str) -> int:
        return self.bundle.runs[rid]["arrays"]["attention"]["shape"][0]

    def attention_name(self, rid: str, res: str) -> str | None:
        return payloads.attention_array_name(self.bundle, rid, res)

    def attention_shape(self, rid: str, name: str) -> tuple[int, ...]:
        return tuple(self.bundle.runs[rid]["arrays"][name]["shape"])  # (K, T, r, r)

    def resolutions(self, rid: str) -> list[str]:
        att = self.bundle.runs[rid].get("attention")
        if not att:
            return []
        return ["combined"] + [str(r) for r in att["resolutions"]
                               if self.attention_name(rid, str(r))]

    # -- lazily built bodies (arguments already checked by the views)
    def step(self, rid: str, i: int) -> Resource:
        return self._cache.get(("step", rid, i), lambda: json_resource(
            payloads.step(self.bundle, rid, i, self.numbers[rid][1])))

    def attention_token(self, rid: str, name: str, k: int) -> Resource:
        return self._cache.get(("att-k", rid, name, k), lambda: make_resource(
            payloads.attention_token(self.bundle, rid, name, k), NPY))

    def attention_step(self, rid: str, name: str, i: int) -> Resource:
        return self._cache.get(("att-i", rid, name, i), lambda: make_resource(
            payloads.attention_step(self.bundle, rid, name, i), NPY))

    def run_array(self, rid: str, name: str) -> Resource:
        return self._cache.get(("array", rid, name), lambda: make_resource(
            payloads.run_array(self.bundle, rid, name), NPY))

    def run_image(self, rid: str, name: str) -> Resource:
        return self._cache.get(("image", rid, name), lambda: make_resource(
            payloads.run_image(self.bundle, rid, name),
            self.bundle.runs[rid]["images"][name]["mime"]))

    def bundle_file(self, rel: str) -> Resource | None:
        """A referenced bundle file (rel as in its URL), or None."""
        if rel not in self.files:
            return None
        path = self.bundle.file_path(rel)
        if path is None:
            return None
        return self._cache.get(("file", rel), lambda: make_resource(
            path.read_bytes(), BUNDLE_MIME[Path(rel).suffix.lower()]))

    def frontend_file(self, rel: str) -> Resource | None:
        """A file of the front end folder, re-read when it changes on disk, or None."""
        parts = rel.split("/")
        if (not rel or "\\" in rel or "\x00" in rel
                or any(p in ("", ".", "..") or p.startswith(".") for p in parts)):
            return None
        mime = MIME.get(Path(rel).suffix.lower())
        path = self.frontend.joinpath(*parts)
        try:
            real = path.resolve()
            if self.frontend not in real.parents or not real.is_file():
                return None
            st = real.stat()
        except (OSError, ValueError):
            return None
        key = ("frontend", rel, st.st_mtime_ns, st.st_size)
        return self._frontend_cache.get(key, lambda: make_resource(
            real.read_bytes(), mime or "application/octet-stream"))

    # -- everything, for export and tests
    def _referenced_files(self) -> dict[str, str | None]:
        """bundle-relative path -> sha256 from its manifest, for every served file."""
        files = {}
        for pid, p in self.bundle.prompts.items():
            for e in p["arrays"].values():
                files[f"prompts/{pid}/{e['file']}"] = e.get("sha256")
        for rid, m in self.bundle.runs.items():
            for e in list(m["arrays"].values()) + list(m["images"].values()):
                if "file" in e and "encoding" not in e:  # encoded arrays: see api_arrays
                    files[f"runs/{rid}/{e['file']}"] = e.get("sha256")
        return {rel: sha for rel, sha in files.items()
                if Path(rel).suffix.lower() in BUNDLE_MIME}

    def api_paths(self) -> Iterator[str]:
        """Every API URL path (without the leading slash) this store answers."""
        yield "api/index.json"
        yield from (f"api/prompts/{pid}.json" for pid in self.prompts)
        for rid in self.runs:
            yield f"api/runs/{rid}.json"
            yield from (f"api/runs/{rid}/steps/{i}.json" for i in range(self.steps))
            yield from (f"api/runs/{rid}/arrays/{name}.npy" for name in self.api_arrays[rid])
            yield from (payloads.api_image_path(self.bundle, rid, name)
                        for name in self.api_images[rid])
            for res in self.resolutions(rid):
                base = f"api/runs/{rid}/attention/{res}"
                yield from (f"{base}/tokens/{k}.npy" for k in range(self.n_tokens(rid)))
                yield from (f"{base}/steps/{i}.npy" for i in range(self.steps))
        yield from (f"api/sweeps/{pid}/{seed}.json" for pid, seed in self.sweeps)
        yield from (f"api/trajectories/{seed}.json" for seed in self.trajectories)
        yield from speech_examples.api_paths(self.bundle)  # the spoken examples and their files
        yield from fewstep_examples.api_paths(self.bundle)  # the few-step comparison's


def init_app(app: Flask) -> Store:
    """Load and validate the bundle named by the app's config (raises BundleError)."""
    cfg = app.config
    bundle = Bundle(cfg["BUNDLE_DIR"], checksums=cfg["CHECKSUMS"],
                    skip_invalid=cfg["SKIP_INVALID"])
    store = Store(bundle, Path(cfg["FRONTEND_DIR"]), cfg["CACHE_BYTES"])
    app.extensions[EXTENSION_KEY] = store
    return store


def get_store_of(app: Flask) -> Store:
    return app.extensions[EXTENSION_KEY]


def get_store() -> Store:
    return get_store_of(current_app)

"""`noisepath export OUT_DIR`: the app and a bundle as a fully static site.

Writes the front end, every bundle file the API refers to (`bundle/...`, hard-linked
where the file system allows, else copied), and the API's answers as files at their own
paths (`api/index.json`, `api/runs/<id>.json`, ...), so the front end's relative URLs
work unchanged from GitHub Pages, nginx or `python -m http.server`, at a domain's root
or under a sub-path. What the server answers one step or one token at a time is packed
into one file per run and kind (backend/export_pack.py, docs/api.md "Static export"),
which the front end slices. The bodies are the live app's own (taken through its test
client), so the two cannot drift apart.

The site is built in a temporary folder next to OUT_DIR and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

from backend import DEFAULT_BUNDLE, REPO, create_app, export_pack
from backend.format import BundleError
from backend.store import EXTENSION_KEY


class ExportError(Exception):
    pass


def add_arguments(p) -> None:
    p.add_argument("out", type=Path, metavar="OUT_DIR", help="folder to write the site into")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, metavar="DIR",
                   help="the bundle folder to export")
    p.add_argument("--force", action="store_true",
                   help="replace OUT_DIR if it exists and is not empty")
    p.add_argument("--checksums", action="store_true",
                   help="verify every bundle file's SHA-256 first")
    p.add_argument("--skip-invalid", action="store_true",
                   help="export only the valid runs of a bundle with bad ones")


def _check_target(out: Path, sources: list[Path], force: bool) -> None:
    """Refuse a target that is, holds or sits inside a source, or holds the repository."""
    out = out.resolve()
    for p in [p.resolve() for p in sources]:
        if out == p or out in p.parents or p in out.parents:
            raise ExportError(f"{out} overlaps {p}; export to a separate folder")
    if out == REPO or out in REPO.parents:
        raise ExportError(f"{out} holds the noisepath repository; export to a separate folder")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    existing = next(p for p in out.parents if p.exists())
    if not existing.is_dir():
        raise ExportError(f"{existing} is a file, so {out} cannot be made inside it")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} is not empty; pass --force to replace it")


def _copy_frontend(src: Path, dst: Path) -> int:
    n = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dst / rel)
            n += 1
    return n


def _inside(root: Path, rel: str) -> Path:
    parts = rel.split("/")
    if any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise ExportError(f"refusing to write {rel!r}: not a plain relative path")
    return root.joinpath(*parts)


def write_site(app, out: Path, force: bool = False) -> dict:
    """Export `app` (its bundle and front end) into `out`, atomically. Returns counts:
    files written per part, `files` and `bytes` in all."""
    store = app.extensions[EXTENSION_KEY]
    frontend = Path(app.config["FRONTEND_DIR"])
    # a symlinked OUT_DIR: the site replaces the folder it points to, and the link stays
    out = Path(out).resolve() if Path(out).is_symlink() else Path(out)
    _check_target(out, [store.bundle.root, frontend], force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    counts = {"frontend": 0, "bundle": 0, "api": 0}
    try:
        if (frontend / "index.html").is_file():
            counts["frontend"] = _copy_frontend(frontend, staging)
        else:
            print(f"warning: no front end at {frontend} (index.html); exporting the data only",
                file=sys.stderr)
        counts["bundle"] = _write_bundle_files(store, staging)
        counts["api"] = _write_api(app, store, staging)
        (staging / ".nojekyll").write_bytes(b"")  # GitHub Pages: serve files as they are
        files = [p for p in staging.rglob("*") if p.is_file()]
        counts["files"] = len(files)
        counts["bytes"] = sum(p.stat().st_size for p in files)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


def _write_bundle_files(store, staging: Path) -> int:
    """The bundle files the API refers to, hard-linked (else copied) under bundle/."""
    for rel in store.files:
        target = _inside(staging, f"bundle/{rel}")
        target.parent.mkdir(parents=True, exist_ok=True)
        source = store.bundle.file_path(rel)
        if source is None:  # a symlink that leads out of the bundle, or a missing file
            raise ExportError(f"bundle file {rel}: not a file inside the bundle "
                              f"{store.bundle.root} (a symlink out of it, or missing); "
                              "nothing is exported from outside the bundle")
        try:
            os.link(source, target)
        except OSError:  # another file system, or links not allowed: a copy
            shutil.copyfile(source, target)
    return len(store.files)


def _write_api(app, store, staging: Path) -> int:
    """The API's documents, the runs' packed steps and arrays (backend/export_pack.py)."""
    client = app.test_client()

    def body(rel: str) -> bytes:
        r = client.get("/" + rel)
        if r.status_code != 200:
            raise ExportError(f"{rel}: the app answered {r.status_code}")
        return r.data

    def write(rel: str, data: bytes) -> None:
        target = _inside(staging, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    n = 0
    for rel in export_pack.documents(store):
        data = body(rel)
        if rel == "api/index.json":
            data = export_pack.index_document(data)
        elif rel.startswith("api/runs/") and rel.count("/") == 2:  # api/runs/<id>.json
            data = export_pack.run_document(store, rel[len("api/runs/"):-len(".json")], data)
        write(rel, data)
        n += 1
    for rid in store.runs:
        steps = [body(f"api/runs/{rid}/steps/{i}.json") for i in range(store.steps)]
        write(f"api/runs/{rid}/steps.json", export_pack.steps_document(steps))
        n += 1
        for name in export_pack.packed_arrays(store, rid):
            try:
                data = export_pack.packed_array(store, rid, name)
            except export_pack.PackError as e:
                raise ExportError(str(e)) from e
            write(f"api/runs/{rid}/arrays/{name}.q8.npz", data)
            n += 1
    return n


def _replace(staging: Path, out: Path) -> None:
    """Put `staging` at `out`; an old `out` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run(args) -> int:
    try:
        app = create_app({"BUNDLE_DIR": args.bundle, "CHECKSUMS": args.checksums,
                          "SKIP_INVALID": args.skip_invalid})
    except BundleError as e:
        print(f"noisepath export: {e}", file=sys.stderr)
        return 1
    try:
        counts = write_site(app, args.out, force=args.force)
    except ExportError as e:
        print(f"noisepath export: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {counts['api']} API files, {counts['bundle']} bundle files, "
          f"{counts['frontend']} front-end files; {counts['files']} files, "
          f"{counts['bytes'] / 1e6:.1f} MB")
    print(f"try it: python -m http.server --directory {args.out} 8000")
    return 0

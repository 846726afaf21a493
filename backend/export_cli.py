"""`noisepath export OUT_DIR`: the app and a bundle as a fully static site.

Writes the front end, every bundle file the API refers to (`bundle/...`), and every
API response as a file at its own path (`api/index.json`, `api/runs/<id>/steps/3.json`,
...), so the front end's relative URLs work unchanged from GitHub Pages, nginx or
`python -m http.server`, at a domain's root or under a sub-path. The bodies are the
live app's own (taken through its test client), so the two cannot drift apart.

The site is built in a temporary folder next to OUT_DIR and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

from backend import DEFAULT_BUNDLE, REPO, create_app
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
    """Export `app` (its bundle and front end) into `out`, atomically. Returns counts."""
    store = app.extensions[EXTENSION_KEY]
    frontend = Path(app.config["FRONTEND_DIR"])
    # a symlinked OUT_DIR: the site replaces the folder it points to, and the link stays
    out = Path(out).resolve() if Path(out).is_symlink() else Path(out)
    _check_target(out, [store.bundle.root, frontend], force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    counts = {"frontend": 0, "bundle": 0, "api": 0, "bytes": 0}
    try:
        if (frontend / "index.html").is_file():
            counts["frontend"] = _copy_frontend(frontend, staging)
        else:
            print(f"warning: no front end at {frontend} (index.html); exporting the data only",
                file=sys.stderr)
        for rel in store.files:
            target = _inside(staging, f"bundle/{rel}")
            target.parent.mkdir(parents=True, exist_ok=True)
            source = store.bundle.file_path(rel)
            if source is None:  # a symlink that leads out of the bundle, or a missing file
                raise ExportError(f"bundle file {rel}: not a file inside the bundle "
                                  f"{store.bundle.root} (a symlink out of it, or missing); "
                                  "nothing is exported from outside the bundle")
            shutil.copyfile(source, target)
            counts["bundle"] += 1
        client = app.test_client()
        for rel in store.api_paths():
            r = client.get("/" + rel)
            if r.status_code != 200:
                raise ExportError(f"{rel}: the app answered {r.status_code}")
            target = _inside(staging, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(r.data)
            counts["api"] += 1
        (staging / ".nojekyll").write_bytes(b"")  # GitHub Pages: serve files as they are
        counts["bytes"] = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


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
          f"{counts['frontend']} front-end files, {counts['bytes'] / 1e6:.1f} MB")
    print(f"try it: python -m http.server --directory {args.out} 8000")
    return 0

"""How big `noisepath export` of a bundle is, against the bundle, and where the bytes go.

Exports the bundle (default: the shipped demo) into a temporary folder with the real
`write_site` and reports, side by side in one run:

  bundle     the bundle folder itself: bytes, files, 4 KiB blocks
  export     the exported site (packed layout, docs/api.md "Static export")
  per-URL    what the export was before the packed layout: every API answer as its own
             file (the server's bodies for every URL it answers, one step or one token at
             a time), plus the same bundle and front-end files; summed, not written

Bytes are file sizes (what a static host stores and counts against its 1 GB); blocks
round each file up to 4 KiB (what a file system with 4 KiB blocks allocates). The
export is broken down by kind (api/runs/<id>/steps.json, .../arrays/<name>.q8.npz, the
bundle's images, ...), so the next change knows where to look.

    nice .venv/bin/python benchmarks/bench_export.py
    nice .venv/bin/python benchmarks/bench_export.py --bundle some-bundle --no-per-url
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backend import DEFAULT_BUNDLE, create_app  # noqa: E402
from backend.export_cli import write_site  # noqa: E402
from backend.store import EXTENSION_KEY  # noqa: E402

BLOCK = 4096


def blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def kind_of(rel: str) -> str:
    """A file's kind: its path with run, prompt and seed ids and step/token numbers folded."""
    if not rel.startswith(("api/", "bundle/")):
        return "front end"
    if rel.startswith("bundle/"):
        return "bundle/*" + Path(rel).suffix
    rel = re.sub(r"^api/runs/[^/]+\.json$", "api/runs/<id>.json", rel)
    rel = re.sub(r"^api/runs/[^/]+/", "api/runs/<id>/", rel)
    rel = re.sub(r"^api/(prompts|sweeps)/[^/]+", r"api/\1/<id>", rel)
    rel = re.sub(r"/attention/\d+/", "/attention/<res>/", rel)
    return re.sub(r"/\d+\.(json|npy)$", r"/<n>.\1", rel)


def tally(files: dict[str, int]) -> dict:
    by_kind = collections.defaultdict(lambda: [0, 0, 0])
    for rel, size in files.items():
        k = by_kind[kind_of(rel)]
        k[0] += 1
        k[1] += size
        k[2] += blocks(size)
    return {"files": len(files), "bytes": sum(files.values()),
            "blocks": sum(map(blocks, files.values())), "by_kind": dict(by_kind)}


def folder_files(root: Path, skip=(".work", ".tmp")) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and not any(part in skip for part in p.relative_to(root).parts)}


def per_url_files(app, site: dict[str, int]) -> dict[str, int]:
    """The layout before packing: the site's bundle and front-end files, and one file per
    URL the server answers (store.api_paths), at its body's size."""
    store = app.extensions[EXTENSION_KEY]
    client = app.test_client()
    files = {rel: size for rel, size in site.items() if not rel.startswith("api/")}
    for rel in store.api_paths():
        files[rel] = len(client.get("/" + rel).data)
    return files


def row(name: str, t: dict, bundle: dict) -> str:
    return (f"| {name} | {t['bytes'] / 1e6:,.1f} MB | {t['bytes'] / bundle['bytes']:.2f}x | "
            f"{t['blocks'] / 1e6:,.1f} MB | {t['files']:,} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    p.add_argument("--no-per-url", action="store_true",
                   help="skip summing the per-URL layout (a few minutes on the demo bundle)")
    args = p.parse_args(argv)

    load = os.getloadavg()[0]
    bundle = tally(folder_files(args.bundle))
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        t0 = time.perf_counter()
        app = create_app({"BUNDLE_DIR": args.bundle})
        write_site(app, tmp / "site")
        seconds = time.perf_counter() - t0
        site_files = folder_files(tmp / "site", skip=())
        site = tally(site_files)
        per_url = None if args.no_per_url else tally(per_url_files(app, site_files))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"bundle {args.bundle}; export written in {seconds:.0f} s; "
          f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after "
          f"({os.cpu_count()} CPUs)\n")
    print("| | bytes | of the bundle | 4 KiB blocks | files |")
    print("|---|---|---|---|---|")
    print(row("bundle", bundle, bundle))
    print(row("export (packed)", site, bundle))
    if per_url:
        print(row("export per URL (before)", per_url, bundle))
    print("\n| export: kind | files | bytes | 4 KiB blocks |")
    print("|---|---|---|---|")
    for kind, (n, size, blk) in sorted(site["by_kind"].items(), key=lambda kv: -kv[1][1]):
        print(f"| {kind} | {n:,} | {size / 1e6:,.2f} MB | {blk / 1e6:,.2f} MB |")
    if per_url:
        print("\n| per URL (before): kind | files | bytes | 4 KiB blocks |")
        print("|---|---|---|---|")
        for kind, (n, size, blk) in sorted(per_url["by_kind"].items(), key=lambda kv: -kv[1][1]):
            if size > 1e6:
                print(f"| {kind} | {n:,} | {size / 1e6:,.1f} MB | {blk / 1e6:,.1f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

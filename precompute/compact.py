"""`noisepath compact SRC DST`: re-encode a full bundle as a compact one (no torch).

Every run goes through the writer a precompute uses (precompute/writer.py) with
storage = "compact": its arrays (the full bundle's float16 values) are quantized to
q8-delta files, its guided noise prediction and combined attention map are derived
(and checked against the stored ones), its previews are left to the server; its VAE
sprites are encoded again at compact storage's quality (precompute/writer.py,
COMPACT_FRAME_QUALITY), their errors measured against the full bundle's frames. The
prompts, groups and trajectories are copied unchanged. The new bundle is
validated with checksums before the command reports success.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from backend import previews
from backend.bundle import Bundle
from backend.format import BundleError
from backend.validator import validate_bundle
from precompute.writer import BundleWriter


def add_arguments(p) -> None:
    p.add_argument("src", type=Path, metavar="SRC", help="a bundle with storage \"full\"")
    p.add_argument("dst", type=Path, metavar="DST",
                   help="folder for the compact bundle (new or empty)")


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*")
               if p.is_file() and p.relative_to(root).parts[0] not in (".work", ".tmp"))


FORMAT_OF_MIME = {"image/webp": "webp", "image/jpeg": "jpeg", "image/png": "png"}


def sprite_frames(path: Path, entry: dict) -> tuple[np.ndarray, str]:
    """A full bundle's VAE sprite as its frames, for the writer to encode as compact storage
    does (WebP at COMPACT_FRAME_QUALITY, its error measured against these frames)."""
    return previews.crop_frames(path.read_bytes(), entry), FORMAT_OF_MIME[entry["mime"]]


def compact_bundle(src: Path, dst: Path) -> dict:
    """Write `src` (full) into `dst` with storage = "compact"; returns counts and sizes.
    Raises ValueError for a source that is compact already or a target that is not empty."""
    b = Bundle(src, checksums=True)
    if b.storage != "full":
        raise ValueError(f"{src} is stored {b.storage!r} already")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ValueError(f"{dst} exists and is not an empty folder")
    writer = BundleWriter(dst, {**b.config, "storage": "compact"})

    for pid, p in b.prompts.items():
        writer.write_prompt(p["text"], p["tokens"], np.asarray(b.text_embeddings(pid)))
    for order, group in enumerate(b.index["groups"]):
        writer.write_group({**{k: group[k] for k in ("id", "title", "prompts", "highlights")},
                            "order": order})
    for rid, m in b.runs.items():
        folder = b.root / "runs" / rid
        arrays = {name: np.asarray(b.array(rid, name), np.float32) for name in m["arrays"]}
        images = {name: sprite_frames(folder / e["file"], e)
                  for name, e in m["images"].items() if name not in previews.PREVIEWS}
        manifest = {k: v for k, v in m.items() if k not in ("format_version", "arrays", "images")}
        writer.write_run(manifest, arrays, images)
    for seed, t in b.trajectories.items():
        writer.write_trajectories(int(seed), t["method"],
                                  {rid: np.asarray(xy) for rid, xy in t["runs"].items()})
    writer.rebuild_index()
    problems = [p for p in validate_bundle(dst, checksums=True) if p.severity == "error"]
    if problems:
        raise BundleError(dst, problems)
    return {"runs": len(b.runs), "src_bytes": _size(b.root), "dst_bytes": _size(dst)}


def run(args) -> int:
    try:
        counts = compact_bundle(args.src, args.dst)
    except (BundleError, ValueError, OSError) as e:
        print(f"noisepath compact: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst}: {counts['runs']} runs, {counts['dst_bytes'] / 1e6:.1f} MB "
          f"(was {counts['src_bytes'] / 1e6:.1f} MB); it validates with checksums")
    return 0

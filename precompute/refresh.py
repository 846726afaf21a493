"""`noisepath refresh BUNDLE`: re-derive what a bundle records about its model, from the model.

Recomputes nothing of the runs themselves. From the model named in config.json it
- fits the model's latent -> RGB preview map (precompute/latent_preview.py) and writes
  it into config.json and into every run.json, so every run shows the same latent in
  the same colours (a full bundle's preview PNGs are rendered again from its arrays;
  a compact bundle's are rendered by the server);
- adds to config.json's `model_info` the facts the app's words depend on that an older
  precompute did not record (the tokenizer's vocabulary size and padding token, whether
  the model is the demo); facts already recorded are kept as they are.
Then it rebuilds bundle.json and validates the bundle with checksums. It is how the
shipped demo bundle got its per-model preview map:

    noisepath refresh static/demo-bundle

Re-running it is harmless (an interrupted refresh is finished by running it again, and
the half-written files a killed one left are removed first).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

from backend import previews
from backend.bundle import load_array
from backend.format import BundleError, sha256_file


def add_arguments(p) -> None:
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="the bundle folder")
    p.add_argument("--device", default="cpu", help="where to run the VAE (default: cpu)")
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"],
                   help="default: the dtype the bundle was made in (config.json)")


def refresh_bundle(root: Path, device: str = "cpu", dtype: str | None = None, log=sys.stderr) -> dict:
    """Fit the model's preview map, write it into config.json and every run; add missing
    model facts. Returns {"runs": n, "added": [model_info keys added]}."""
    from precompute.latent_preview import fit_latent_preview
    from precompute.model import load_components
    from precompute.run import _public
    from precompute.writer import BundleWriter, file_lock, read_config, write_json_atomic

    root = Path(root)
    config = read_config(root)
    BundleWriter(root, config).clean_stale_staging()  # what a killed refresh left
    components = load_components(config["model"], device=device,
                                 dtype=dtype or config.get("dtype", "auto"),
                                 scheduler=config["scheduler"])
    preview = fit_latent_preview(components, config["height"], config["width"])
    info = _public(components.describe())
    with file_lock(root / ".work" / "index.lock"):
        raw = json.loads((root / "config.json").read_text())
        old_info = raw.get("model_info") or {}
        added = sorted(k for k in info if k not in old_info)
        raw["model_info"] = {**info, **old_info}
        raw["latent_preview"] = preview
        write_json_atomic(root / "config.json", raw)
    runs = sorted((root / "runs").glob("*/run.json"))
    for path in runs:
        _refresh_run(path, preview, write_json_atomic)
    BundleWriter(root, read_config(root)).rebuild_index()
    print(f"{root}: one preview map for {len(runs)} runs"
          + (f"; model_info gained {', '.join(added)}" if added else ""), file=log)
    return {"runs": len(runs), "added": added}


def _refresh_run(path: Path, preview: dict, write_json_atomic) -> None:
    """Give one run the bundle's map; a full bundle's stored previews are rendered again."""
    m = json.loads(path.read_text())
    m["latent_preview"] = preview
    sigmas = m["scheduler"].get("sigmas")
    for name in previews.PREVIEWS:
        entry = m["images"].get(name)
        if entry is None or (entry.get("derived") is True and entry.get("mime") == "image/png"):
            continue  # a compact bundle's previews are rendered by the server
        array = load_array(path.parent, m["arrays"], name, m["guidance_scale"])
        data, rendered = previews.preview_sprite(name, array, preview, sigmas,
                                                 *previews.entry_format(entry))
        entry.update({k: rendered[k] for k in previews.ERROR_KEYS if k in rendered})
        if entry.get("derived") is True:
            continue  # rendered by the server; a JPEG's recorded error follows the new map
        target = path.parent / entry["file"]
        # named as write_json_atomic names its files (JSON_TMP): the pid marks a killed one's
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        entry["sha256"] = sha256_file(target)
    write_json_atomic(path, m)


def run(args) -> int:
    from backend.validator import validate_bundle

    if not (args.bundle / "config.json").is_file():
        print(f"noisepath refresh: {args.bundle} is not a bundle (no config.json)", file=sys.stderr)
        return 2
    try:
        refresh_bundle(args.bundle, args.device, args.dtype)
        problems = [p for p in validate_bundle(args.bundle, checksums=True) if p.severity == "error"]
        if problems:
            raise BundleError(args.bundle, problems)
    except (BundleError, ValueError, OSError) as e:
        print(f"noisepath refresh: {e}", file=sys.stderr)
        return 1
    return 0

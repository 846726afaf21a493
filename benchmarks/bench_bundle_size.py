"""How big a bundle is, by kind of array and image, and how exact its compact arrays are.

For every file of the bundle (not .work/ or .tmp/): its size on disk and its size
deflated with zlib at git's default level (what a git repository stores, before
delta compression between similar files), summed by kind: each run array
(`latents`, `noise_pred_text`, `attention_res16`, ...), each image, the run
manifests, the prompts, and the rest (index, config, groups, trajectories). Derived
arrays and previews of a compact bundle take no space and are listed as derived.
For encoded (q8-delta) and derived arrays it also reports the largest decode error
recorded in the manifests (`max_abs_error`), absolute and relative to the range of
the array's values (max - min over the whole array, from the decoded values).
Last, the time to open the bundle (validation and manifests, as `noisepath serve`
starts) and to read every array of every run once, cold (a compact bundle decodes
and derives them; a full one memory-maps and reads them), best of `--repeat`.

    .venv/bin/python benchmarks/bench_bundle_size.py static/demo-bundle
    .venv/bin/python -m backend.cli compact static/demo-bundle /tmp/demo-compact
    .venv/bin/python benchmarks/bench_bundle_size.py /tmp/demo-compact
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backend.bundle import Bundle  # noqa: E402

GIT_ZLIB_LEVEL = 6  # core.compression's default (zlib's default)


def measure(root: Path) -> dict:
    b = Bundle(root)
    kinds = defaultdict(lambda: {"files": 0, "disk": 0, "zlib": 0, "derived": 0,
                                 "error": None, "relative": None})
    counted = set()

    def add(kind: str, path: Path) -> None:
        data = path.read_bytes()
        k = kinds[kind]
        k["files"] += 1
        k["disk"] += len(data)
        k["zlib"] += len(zlib.compress(data, GIT_ZLIB_LEVEL))
        counted.add(path)

    for rid, m in b.runs.items():
        folder = b.root / "runs" / rid
        add("run.json", folder / "run.json")
        for name, e in m["arrays"].items():
            k = kinds[f"array {name}"]
            if "file" in e:
                add(f"array {name}", folder / e["file"])
            else:
                k["derived"] += 1
            if "max_abs_error" in e:
                values = np.asarray(b.array(rid, name), np.float32)
                spread = float(values.max() - values.min()) or 1.0
                k["error"] = max(k["error"] or 0.0, e["max_abs_error"])
                k["relative"] = max(k["relative"] or 0.0, e["max_abs_error"] / spread)
        for name, e in m["images"].items():
            if "file" in e:
                add(f"image {name}", folder / e["file"])
            else:
                kinds[f"image {name}"]["derived"] += 1
    for path in sorted(b.root.rglob("*")):
        rel = path.relative_to(b.root)
        if path.is_file() and path not in counted and rel.parts[0] not in (".work", ".tmp"):
            add("prompts" if rel.parts[0] == "prompts" else "index, config, groups, trajectories",
                path)
    return {"storage": b.storage, "runs": len(b.runs), "kinds": dict(kinds)}


def timing(root: Path, repeat: int) -> dict:
    best = {"open_s": float("inf"), "read_ms_per_run": float("inf")}
    for _ in range(repeat):
        t0 = time.perf_counter()
        b = Bundle(root)
        t1 = time.perf_counter()
        for rid, m in b.runs.items():
            for name in m["arrays"]:
                np.asarray(b.array(rid, name), np.float32).sum()
        t2 = time.perf_counter()
        best["open_s"] = min(best["open_s"], t1 - t0)
        best["read_ms_per_run"] = min(best["read_ms_per_run"], (t2 - t1) / len(b.runs) * 1e3)
    return best


def kib(n: float) -> str:
    return f"{n / 1024:,.1f}"


def report(root: Path, result: dict) -> str:
    runs = result["runs"]
    lines = [f"{root}: storage {result['storage']!r}, {runs} runs", "",
             "| kind | files | on disk KiB | zlib KiB | KiB per file (disk / zlib) "
             "| max abs error | error / range |",
             "|---|---|---|---|---|---|---|"]
    total = {"disk": 0, "zlib": 0}
    for kind, k in sorted(result["kinds"].items(), key=lambda kv: -kv[1]["disk"]):
        total["disk"] += k["disk"]
        total["zlib"] += k["zlib"]
        stored = f"{k['files']}" + (f" (+{k['derived']} derived)" if k["derived"] else "")
        if not k["files"]:
            stored = f"derived in {k['derived']} runs"
        error = "" if k["error"] is None else f"{k['error']:.3g}"
        relative = "" if k["relative"] is None else f"{k['relative']:.2%}"
        n = max(k["files"], 1)
        lines.append(f"| {kind} | {stored} | {kib(k['disk'])} | {kib(k['zlib'])} | "
                     f"{kib(k['disk'] / n)} / {kib(k['zlib'] / n)} | {error} | {relative} |")
    lines.append(f"| **total** | | **{kib(total['disk'])}** | **{kib(total['zlib'])}** | "
                 f"per run: **{kib(total['disk'] / runs)} / {kib(total['zlib'] / runs)}** | | |")
    lines += ["", f"total: {total['disk'] / 1e6:.2f} MB on disk, {total['zlib'] / 1e6:.2f} MB "
              f"deflated (zlib level {GIT_ZLIB_LEVEL}); per run {total['disk'] / runs / 1e3:.0f}"
              f" kB / {total['zlib'] / runs / 1e3:.0f} kB"]
    if "timing" in result:
        t = result["timing"]
        lines.append(f"open the bundle: {t['open_s']:.2f} s; read every array of a run, cold: "
                     f"{t['read_ms_per_run']:.1f} ms (best of {t['repeat']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.add_argument("--repeat", type=int, default=3, help="timing repeats (0: no timing)")
    args = p.parse_args(argv)
    result = measure(args.bundle)
    if args.repeat > 0:
        result["timing"] = {**timing(args.bundle, args.repeat), "repeat": args.repeat}
    print(json.dumps(result, indent=1) if args.json else report(args.bundle, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

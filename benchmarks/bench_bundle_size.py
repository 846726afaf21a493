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
    .venv/bin/python benchmarks/bench_bundle_size.py --stand-in /tmp/sd-stand-in

--stand-in measures Stable Diffusion-sized runs on a realistic stand-in (real photographs
noised along SD's schedule, smooth attention maps: benchmarks/sd_stand_in.py): bytes per
run by kind, compact storage before and after its frame and attention encodings, the
Diffusion Explainer set's projected size, and the measurements behind the choices (WebP
quality and frame size; attention's stored size against localization on the maps' blobs).
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
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

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


# ------------------------------------------------ Stable Diffusion's size, on a stand-in

def stand_in(out: Path) -> str:
    """Bytes per SD-sized run by kind on the realistic stand-in (benchmarks/sd_stand_in.py),
    compact storage before (every array q8 at full size, sprites at quality 82) and after
    (attention at most ATTENTION_STORED_SIDE, COMPACT_FRAME_QUALITY), with the full set's
    projection, then the choices measured: frame quality and attention size."""
    import sd_stand_in as sd
    from backend import codec
    from precompute import writer

    lines = [f"stand-in: {round(sd.mean_tokens())} tokens a prompt (a lower bound), "
             f"{sd.STEPS} DDIM steps, latents 4x{sd.LATENT}x{sd.LATENT}, frames {sd.FRAME} px", ""]
    results = {}
    for label, side, quality in (("before", 10 ** 6, {}), ("after", codec.ATTENTION_STORED_SIDE,
                                                            writer.COMPACT_FRAME_QUALITY)):
        saved = codec.ATTENTION_STORED_SIDE, writer.COMPACT_FRAME_QUALITY
        codec.ATTENTION_STORED_SIDE, writer.COMPACT_FRAME_QUALITY = side, quality
        try:
            root = out / f"stand-in-{label}"
            masks = sd.write_bundle(root, "compact")
        finally:
            codec.ATTENTION_STORED_SIDE, writer.COMPACT_FRAME_QUALITY = saved
        results[label] = (measure(root), projection(root), masks, root)
        lines += [f"### {label}", "", report(root, results[label][0]), "",
                  projection_text(results[label][1]), ""]
    lines += frame_study(sd) + attention_study(sd, results["after"][3], results["after"][2])
    return "\n".join(lines)


def projection(root: Path) -> dict:
    """Bytes of the Diffusion Explainer set (sd_stand_in.RUNS_BY_GUIDANCE: 237 runs) from the
    stand-in's one run per guidance scale, by kind."""
    import sd_stand_in as sd

    b = Bundle(root)
    by_kind: dict[str, float] = defaultdict(float)
    for rid, m in b.runs.items():
        n = sd.RUNS_BY_GUIDANCE[int(m["guidance_scale"])]
        folder = b.root / "runs" / rid
        for path in folder.iterdir():
            kind = path.name.split(".")[0] if path.name != "run.json" else "run.json"
            kind = {"decoded": "frames", "pred_original_sample": "frames"}.get(kind, kind) \
                if path.suffix == ".webp" else kind
            kind = "attention" if kind.startswith("attention") else kind
            by_kind[kind] += n * path.stat().st_size
    prompt_bytes = sum(p.stat().st_size for p in (b.root / "prompts").rglob("*") if p.is_file())
    by_kind["prompts (27)"] = 27 * prompt_bytes / len(b.prompts)
    return dict(by_kind)


def projection_text(p: dict) -> str:
    total = sum(p.values())
    parts = ", ".join(f"{k} {v / 1e9:.3f}" for k, v in sorted(p.items(), key=lambda kv: -kv[1]))
    return (f"the full set (237 runs) projected: **{total / 1e9:.3f} GB** "
            f"({total / 237 / 1e6:.2f} MB a run); GB by kind: {parts}")


def frame_study(sd) -> list[str]:
    """WebP bytes and error of a guidance-7 run's sprites at several qualities and sizes."""
    from backend import previews
    from precompute.writer import frame_errors

    _, frames = sd.run_arrays(0, 1, 7.0)
    lines = ["### frames: WebP quality and size (one guidance-7 run)", "",
             "| sprite | frame px | quality | KiB | mean abs error (0-255) | worst frame | "
             "final frame |", "|---|---|---|---|---|---|---|"]
    for name, f in frames.items():
        for px in (256, 192):
            small = f if px == f.shape[1] else np.stack(
                [np.asarray(Image.fromarray(x).resize((px, px), Image.LANCZOS)) for x in f])
            for q in (82, 70, 60, 50, 40):
                data, entry = previews.sprite(small, "webp", q)
                back = previews.crop_frames(data, entry)
                if px != f.shape[1]:  # as the app shows it: scaled back to the frame size
                    back = np.stack([np.asarray(Image.fromarray(x).resize(f.shape[1:3],
                                                Image.BILINEAR)) for x in back])
                e = frame_errors(f, back)
                lines.append(f"| {name} | {px} | {q} | {len(data) / 1024:,.1f} | "
                             f"{e['mean_abs_error']:.2f} | {e['max_frame_mean_abs_error']:.2f} | "
                             f"{e['final_mean_abs_error']:.2f} |")
    return lines + [""] + split_study(sd, frames["decoded"])


def split_study(sd, f: np.ndarray) -> list[str]:
    """The x_t sprite split in two files: the frames whose noise share sqrt(1 - alpha-bar)
    exceeds a threshold at a low quality, the rest at a higher one (not implemented: it
    needs the front end to read two files per sprite)."""
    from backend import previews
    from precompute.writer import frame_errors

    _, a = sd.schedule()
    noise = np.sqrt(1 - np.r_[a, 1.0])                                  # per frame (T+1,)
    lines = ["| x_t frames split (256 px) | KiB | mean error | worst frame | final frame |",
             "|---|---|---|---|---|"]
    for threshold, low, high in ((0.3, 30, 82), (0.5, 30, 82), (0.5, 40, 70)):
        n = int((noise > threshold).sum())
        parts = [previews.sprite(x, "webp", q) for x, q in ((f[:n], low), (f[n:], high))]
        back = np.concatenate([previews.crop_frames(d, e) for d, e in parts])
        e = frame_errors(f, back)
        lines.append(f"| {n} frames of noise share > {threshold} at {low}, {len(f) - n} at "
                     f"{high} | {sum(len(d) for d, _ in parts) / 1024:,.1f} | "
                     f"{e['mean_abs_error']:.2f} | {e['max_frame_mean_abs_error']:.2f} | "
                     f"{e['final_mean_abs_error']:.2f} |")
    return lines + [""]


def attention_study(sd, root: Path, masks: dict) -> list[str]:
    """Each attention storage (as is, at most 32 or 16 a side): bytes, error, localization."""
    from backend import codec
    from precompute.demo.judge import auroc

    rid = next(r for r in masks if "-g7" in r)
    k = len(masks[rid])
    levels, _ = sd.attention_maps(k, 1)
    lines = ["### attention: stored size against localization (one guidance-7 run)", "",
             "| stored at most | KiB (levels + mid) | max abs error / range | AUROC | "
             "peak inside |", "|---|---|---|---|---|"]
    for side in (64, 32, 16):
        nbytes, errors, back = 0, [], {}
        for name, x in levels.items():
            f = codec.stored_factor(x.shape, side)
            data, values, _ = codec.encode_resized(x, 1, f)
            nbytes += len(data)
            errors.append(float(np.abs(values - x).max() / (x.max() - x.min())))
            back[name] = values
        combined = codec.attention_mean([back[f"attention_res{r}"] for r in sd.LEVELS],
                                        (sd.LATENT, sd.LATENT)).mean(axis=1)  # (K, 64, 64)
        words = range(1, k - 1)  # the word tokens: each marks its own blob
        aurocs = [auroc(combined[j].ravel(), masks[rid][j].ravel()) for j in words]
        peaks = [bool(masks[rid][j].ravel()[combined[j].argmax()]) for j in words]
        lines.append(f"| {side} | {nbytes / 1024:,.1f} | {max(errors):.2%} | "
                     f"{np.mean(aurocs):.4f} | {np.mean(peaks):.2f} |")
    return lines + [""]


def demo_localization(bundle: Path, factors=(1, 2)) -> str:
    """The demo's localization numbers (precompute/demo/bundle_metrics.py: AUROC and peak
    inside the object, from the bundle's own maps) with every attention level stored as it
    is and averaged f x f (then upsampled back, as compact storage reads a resized level)."""
    from backend import codec
    from precompute.demo import bundle_metrics

    real_array = Bundle.array
    lines = ["| levels stored | word | AUROC | peak inside | n |", "|---|---|---|---|---|"]
    for f in factors:
        def resized(self, rid, name, f=f):
            m = self.runs[rid]
            if f == 1 or not name.startswith("attention"):
                return real_array(self, rid, name)
            if name == "attention":  # the combined map, derived from the resized levels
                levels = [resized(self, rid, f"attention_res{r}")
                          for r in m["attention"]["combined"]["from"]]
                return codec.attention_mean(levels, m["arrays"][name]["shape"][-2:])
            x = np.asarray(real_array(self, rid, name), np.float32)
            return codec.encode_resized(x, 1, f)[1] if x.shape[-1] % f == 0 else x
        Bundle.array = resized
        try:
            scores = bundle_metrics.measure(bundle)["attention"]
        finally:
            Bundle.array = real_array
        for word in ("shape", "colour"):
            s = scores[f"one-object {word} word"]
            lines.append(f"| {'as stored' if f == 1 else f'averaged {f}x{f}'} | {word} | "
                         f"{s['auroc']:.3f} | {s['peak_inside']:.2f} | {s['n']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path, metavar="BUNDLE_DIR", nargs="?")
    p.add_argument("--stand-in", type=Path, metavar="OUT_DIR",
                   help="write SD-sized stand-in bundles into OUT_DIR (new) and measure them "
                        "(benchmarks/sd_stand_in.py; needs scikit-image)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.add_argument("--repeat", type=int, default=3, help="timing repeats (0: no timing)")
    p.add_argument("--localization", action="store_true",
                   help="the demo's localization numbers from BUNDLE_DIR's maps as stored and "
                        "with every level stored at half its size")
    args = p.parse_args(argv)
    if args.localization:
        print(demo_localization(args.bundle))
        return 0
    if args.stand_in:
        print(stand_in(args.stand_in))
        return 0
    if args.bundle is None:
        p.error("give BUNDLE_DIR or --stand-in OUT_DIR")
    result = measure(args.bundle)
    if args.repeat > 0:
        result["timing"] = {**timing(args.bundle, args.repeat), "repeat": args.repeat}
    print(json.dumps(result, indent=1) if args.json else report(args.bundle, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Preview sprite formats (backend/previews.py, issue 15): latents of 64 x 64 and more get
JPEG 4:4:4 previews that record their quality and measured error, smaller ones stay PNG;
the writer's full bundles and the server's compact rendering give the same bytes, and the
validator, the API and the export carry them."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from backend import create_app, previews
from backend.bundle import Bundle
from backend.export_cli import write_site
from backend.validator import validate_bundle
from tests.synthetic_bundle import make_bundle

# frame_errors rounds to 3 decimals: a recomputed error may differ by half of that
ROUNDING = 5e-4


def sd_latents(steps: int = 50) -> tuple[np.ndarray, dict]:
    """An SD-sized run's latents (steps + 1, 4, 64, 64) and its preview map, as
    benchmarks/sd_stand_in.py makes them (a smooth picture noised along SD 1.5's DDIM
    schedule; the x0 estimate blurred while the noise is strong), without its photographs:
    a smooth synthetic scene stands in for the photo."""
    from scipy.ndimage import gaussian_filter
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    a = np.cumprod(1 - betas)[np.linspace(999, 0, steps).round().astype(int)]
    a_prev = np.r_[a[1:], 1.0]
    yy, xx = np.mgrid[0:64, 0:64] / 64
    scene = np.stack([np.sin(6 * xx + 2 * yy), np.cos(5 * yy) * xx, (xx - 0.5) ** 2 + yy,
                      np.sin(9 * xx * yy)], -1)                                   # (64, 64, 4)
    x0 = (scene - scene.mean()) / scene.std()
    x = np.random.default_rng(1).standard_normal(x0.shape)
    latents = [x]
    for i in range(steps):
        x0_hat = gaussian_filter(x0, (6 * np.sqrt(1 - a[i]),) * 2 + (0,))
        eps = (x - np.sqrt(a[i]) * x0_hat) / np.sqrt(1 - a[i])
        x = np.sqrt(a_prev[i]) * x0_hat + np.sqrt(1 - a_prev[i]) * eps
        latents.append(x)
    m = np.random.default_rng(2).standard_normal((4, 3)) * 0.25
    return np.stack(latents).transpose(0, 3, 1, 2), {"matrix": m.tolist(), "bias": [0.5] * 3}


def test_large_previews_are_jpeg_444_and_decode_within_their_recorded_error():
    latents, preview = sd_latents()
    data, entry = previews.preview_sprite("latents", latents, preview, None)
    assert entry["mime"] == "image/jpeg" and entry["quality"] == previews.JPEG_PREVIEW_QUALITY
    with Image.open(io.BytesIO(data)) as im:
        assert JpegImagePlugin.get_sampling(im) == 0  # 4:4:4: every pixel keeps its colour
    frames = previews.preview_frames("latents", latents, preview, None)
    per_frame = np.abs(previews.crop_frames(data, entry).astype(int) - frames).mean(axis=(1, 2, 3))
    assert per_frame.max() <= entry["max_frame_mean_abs_error"] + ROUNDING
    assert abs(per_frame.mean() - entry["mean_abs_error"]) <= ROUNDING
    assert abs(per_frame[-1] - entry["final_mean_abs_error"]) <= ROUNDING
    # what it buys: the lossless sprite of the same frames is 3.0x the bytes on the SD-sized
    # stand-in (docs/performance.md), 2.4x on these frames; at most half is the point
    assert len(data) <= len(previews.sprite(frames, "png")[0]) / 2


def test_small_previews_stay_png(synthetic_bundle_ro):
    for size in ((8, 8), (16, 16), (32, 32), (63, 64)):
        assert previews.preview_format(*size) == ("png", None)
    assert previews.preview_format(64, 64)[0] == previews.preview_format(128, 96)[0] == "jpeg"
    b = Bundle(synthetic_bundle_ro)  # 8x8 latents, written by the writer
    for m in b.runs.values():
        for name in previews.PREVIEWS:
            if name in m["images"]:
                e = m["images"][name]
                assert e["mime"] == "image/png" and "quality" not in e and e["file"] == f"{name}.png"


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """A full and a compact bundle of one run with 64x64 latents (random values: JPEG's
    hardest case), and the app over the compact one."""
    root = tmp_path_factory.mktemp("large")
    kw = dict(steps=2, seeds=(1,), guidance_scales=(7,), latent=64, image_size=16, exact=True,
              prompts=[("a cat", "a dog")])
    full, compact = (make_bundle(root / s, storage=s, **kw) for s in ("full", "compact"))
    front = root / "frontend"
    front.mkdir()
    (front / "index.html").write_text("<!doctype html><title>app</title>")
    app = create_app({"BUNDLE_DIR": compact, "FRONTEND_DIR": front})
    app.logger.disabled = True
    return full, compact, app


def test_large_previews_are_the_same_jpeg_in_full_and_compact_bundles(large):
    full, compact, _ = large
    assert [p for p in validate_bundle(full, checksums=True) if p.severity == "error"] == []
    assert [p for p in validate_bundle(compact, checksums=True) if p.severity == "error"] == []
    f, c = Bundle(full), Bundle(compact)
    for rid, m in f.runs.items():
        for name in previews.PREVIEWS:
            if name not in m["images"]:
                continue
            e, ce = m["images"][name], c.runs[rid]["images"][name]
            assert e["file"] == f"{name}.jpg" and e["mime"] == "image/jpeg"
            assert {k: v for k, v in e.items() if k not in ("file", "sha256")} \
                == {k: v for k, v in ce.items() if k not in ("derived", "from")}
            stored = (f.root / "runs" / rid / e["file"]).read_bytes()
            cm = c.runs[rid]
            assert previews.preview_sprite(name, c.array(rid, name), cm["latent_preview"],
                                           cm["scheduler"].get("sigmas"),
                                           *previews.entry_format(ce))[0] == stored


def test_the_validator_wants_a_jpeg_previews_quality_and_error(large, tmp_path):
    import shutil

    from tests.test_bundle import rewrite
    _, compact, _ = large
    copy = shutil.copytree(compact, tmp_path / "b")
    rel = next((copy / "runs").glob("*/run.json")).relative_to(copy).as_posix()

    def edit(m):
        del m["images"]["latents"]["mean_abs_error"]
        m["images"]["noise_pred"]["mime"] = "image/webp"
    rewrite(copy, rel, edit)
    found = {(p.field, p.message) for p in validate_bundle(copy) if p.severity == "error"}
    assert any(f == "images.latents" and "measured error" in msg for f, msg in found), found
    assert any(f == "images.noise_pred.mime" for f, _ in found), found


def test_the_server_and_the_export_carry_a_jpeg_preview(large, tmp_path):
    full, compact, app = large
    client = app.test_client()
    rid = next(iter(Bundle(compact).runs))
    doc = client.get(f"/api/runs/{rid}.json").get_json()
    entry = doc["images"]["latents"]
    assert entry["url"].startswith(f"api/runs/{rid}/images/latents.jpg?v=")
    assert entry["mime"] == "image/jpeg" and entry["quality"] == previews.JPEG_PREVIEW_QUALITY
    assert entry["mean_abs_error"] > 0 and "max_frame_mean_abs_error" in entry
    r = client.get("/" + entry["url"])
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    assert r.data == (full / "runs" / rid / "latents.jpg").read_bytes()
    wrong = client.get(f"/api/runs/{rid}/images/latents.png")
    assert wrong.status_code == 404 and wrong.get_json()["status"] == 404
    site = tmp_path / "site"
    write_site(app, site)
    assert (site / "api" / "runs" / rid / "images" / "latents.jpg").read_bytes() == r.data
    exported = json.loads((site / "api" / "runs" / f"{rid}.json").read_text())
    assert exported["images"]["latents"]["url"] == entry["url"]

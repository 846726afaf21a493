"""One latent -> RGB preview map per model: the same latent gives the same pixels in every
run (a seed's step-0 noise looks the same for every prompt and guidance scale), on a
bundle a precompute makes and on the shipped demo bundle."""

import json
from pathlib import Path

import numpy as np
import pytest

from backend.bundle import Bundle
from backend.previews import latents_frames, noise_frames, preview_frames

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "static" / "demo-bundle"


def step0_pixels(b: Bundle, rid: str) -> np.ndarray:
    """The step-0 frame of a run's latent preview, as the server renders it."""
    m = b.runs[rid]
    frames = preview_frames("latents", b.array(rid, "latents"), m["latent_preview"],
                            m["scheduler"].get("sigmas"))
    return frames[0]                                                        # (h, w, 3) uint8


def assert_same_noise_everywhere(b: Bundle) -> None:
    for seed in b.index["seeds"]:
        rids = sorted(r for r, e in b.index["runs"].items() if e["seed"] == seed)
        assert len({json.dumps(b.runs[r]["latent_preview"]) for r in rids}) == 1
        first = step0_pixels(b, rids[0])
        for rid in rids[1:]:
            assert np.array_equal(step0_pixels(b, rid), first), (rids[0], rid)


def test_a_latent_looks_the_same_whatever_the_rest_of_its_run():
    """The old previews scaled each run by its own final latent, so the same x_T differed."""
    rng = np.random.default_rng(0)
    matrix, bias = rng.uniform(-0.3, 0.3, (4, 3)).astype(np.float32), np.float32([0.5] * 3)
    start = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    run_a = np.concatenate([start, 0.5 * rng.standard_normal((3, 4, 8, 8))]).astype(np.float32)
    run_b = np.concatenate([start, 3.0 * rng.standard_normal((3, 4, 8, 8))]).astype(np.float32)
    assert np.array_equal(latents_frames(run_a, matrix, bias)[0], latents_frames(run_b, matrix, bias)[0])
    noise_a, noise_b = run_a[1:].copy(), run_b[1:].copy()
    noise_b[0] = noise_a[0]  # one shared prediction, the other steps very different
    assert np.array_equal(noise_frames(noise_a, matrix)[0], noise_frames(noise_b, matrix)[0])


def test_sigma_scaled_latents_are_shown_as_the_unet_sees_them():
    """A sigma scheduler's x_t = x0 + sigma noise is divided by sqrt(sigma^2 + 1)."""
    matrix, bias = np.eye(4, 3, dtype=np.float32) * 0.1, np.float32([0.5] * 3)
    x = np.full((3, 4, 2, 2), 3.0, np.float32)
    frames = latents_frames(x, matrix, bias, sigmas=[np.sqrt(99.0), np.sqrt(3.0)])
    shown = np.array([3 / 10, 3 / 2, 3])  # sigma_0, sigma_1, then the final latent (sigma 0)
    assert frames[:, 0, 0, 0].tolist() == np.round((0.5 + 0.1 * shown) * 255).tolist()


def test_shipped_demo_bundle_draws_each_seeds_noise_the_same_in_every_run():
    b = Bundle(DEMO)
    assert b.runs and all(m["latent_preview"] == b.config["latent_preview"] for m in b.runs.values())
    assert_same_noise_everywhere(b)


@pytest.mark.slow
def test_precompute_gives_every_run_the_models_one_preview_map(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import io

    from precompute.prompts import single_prompt_set
    from precompute.run import Options, precompute
    from tests.tiny_sd import tiny_pipeline_path

    out = tmp_path / "b"
    settings = {"model": str(tiny_pipeline_path("sd15")), "scheduler": "lms",
                "num_inference_steps": 3, "height": 16, "width": 16, "seeds": [1],
                "guidance_scales": [0, 1, 5]}
    precompute(single_prompt_set("a red circle", ["a blue square"]), out, settings,
               Options(device="cpu", projection="pca", progress=False, log=io.StringIO()))
    b = Bundle(out, checksums=True)
    assert len(b.runs) == 5 and b.config["latent_preview"]["matrix"]
    assert b.runs[next(iter(b.runs))]["scheduler"]["sigmas"]  # LMS: sigma-scaled latents
    assert_same_noise_everywhere(b)


@pytest.mark.slow
def test_refresh_gives_an_old_bundle_one_map_and_keeps_it_valid(tmp_path):
    """`noisepath refresh` on a bundle whose runs had their own maps (as before); it first
    removes the half-written files a killed refresh left (named with the dead pid)."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import io
    import shutil
    import subprocess
    import sys
    import uuid

    from backend.validator import validate_bundle
    from precompute.refresh import refresh_bundle

    out = tmp_path / "b"
    shutil.copytree(DEMO, out, ignore=shutil.ignore_patterns(".work", ".tmp"))
    config = json.loads((out / "config.json").read_text())
    config["model"] = str(ROOT / "static" / "demo-model")
    config.pop("latent_preview")
    config["model_info"].pop("tokenizer")
    (out / "config.json").write_text(json.dumps(config))
    runs = sorted((out / "runs").glob("*/run.json"))[:3]
    for k, path in enumerate(runs):  # per-run maps, as an older precompute wrote them
        m = json.loads(path.read_text())
        m["latent_preview"]["bias"] = [0.1 * k] * 3
        path.write_text(json.dumps(m))
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()  # its pid now names a dead process: a killed refresh's leftovers
    stale = [runs[0].parent / f".decoded.webp.{exited.pid}-{uuid.uuid4().hex}.tmp",
             out / f".config.json.{exited.pid}-{uuid.uuid4().hex}.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    refresh_bundle(out, log=io.StringIO())
    assert not any(p.exists() for p in stale)
    assert not [p for p in out.rglob(".*.tmp") if p.is_file()]  # nor any of its own
    assert validate_bundle(out, checksums=True) == []
    b = Bundle(out)
    assert b.config["model_info"]["tokenizer"]["vocab_size"] == 598
    # the shipped map, fitted again: a least-squares fit stored to 6 decimals, whose last
    # digit follows the CPU's summation order (threads, SIMD width); so within 1e-5 of the
    # map's scale (the values are of order 0.5), not bit for bit
    shipped = json.loads((DEMO / "config.json").read_text())["latent_preview"]
    got = b.config["latent_preview"]
    assert got.keys() == shipped.keys()
    for key in shipped:
        want = np.asarray(shipped[key])
        assert np.abs(np.asarray(got[key]) - want).max() <= 1e-5 * np.abs(want).max(), key
    assert_same_noise_everywhere(b)

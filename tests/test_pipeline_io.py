"""The precompute's decode and write stages (precompute/pipeline_io.py,
precompute/preview_decoder.py): batched decodes agree with one-at-a-time decodes, the
writer pool writes the same bytes as serial writing, a killed writer or process loses no
finished run and the same command resumes, a preview decoder's frames are labelled, and
bf16 / channels_last stay within their stated tolerances of float32.

Tiny random models (tests/tiny_sd.py), CPU, offline.
"""

import copy
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from backend.validator import validate_bundle  # noqa: E402
from precompute.loop import decode_latents, run_guidance_sweep  # noqa: E402
from precompute.pipeline_io import RunWriters, decode_job  # noqa: E402
from precompute.preview_decoder import PreviewDecoder, image_difference  # noqa: E402
from precompute.prompts import single_prompt_set  # noqa: E402
from precompute.run import Options, precompute  # noqa: E402
from tests.tiny_sd import tiny_components, tiny_pipeline_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SETTINGS = {"scheduler": "lms", "num_inference_steps": 3, "height": 16, "width": 16,
            "seeds": [1], "guidance_scales": [0, 1, 7]}


def sweep(c, scales=(1.0, 7.0), steps=6):
    torch.set_num_threads(1)
    return run_guidance_sweep(c, "a red cat", 3, list(scales), steps, 16, 16,
                              capture_attention=False)


def digest(root: Path) -> dict[str, str]:
    """Every file of a bundle but its locks and staging -> sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in (".work", ".tmp")}


def tiny_taesd(seed=0):
    """A randomly initialised AutoencoderTiny that reads the tiny model's latents (4
    channels) and upsamples 2x like its VAE."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                           num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)).eval()


def run_in_process(out, workers, **opts):
    settings = {**SETTINGS, "model": str(tiny_pipeline_path("sd15")), **opts.pop("settings", {})}
    return precompute(single_prompt_set("a red circle", ["a blue circle"]), out, settings,
                      Options(device="cpu", projection="pca", progress=False, workers=workers,
                              log=io.StringIO(), components=tiny_components(), **opts))


# ------------------------------------------------------------------------- decoding

def test_one_batched_decode_of_a_job_matches_decoding_each_latent_alone():
    """Tolerance: at most 1 of 255 levels, on at most 1% of the values. Another batch size
    makes the convolutions sum in another order (float32 ulps of the activations); a value
    that lands on a rounding boundary of the uint8 conversion flips by one level. Observed
    on this CPU: 1 level on 0.02% of the values. A wrong latent or order would differ by
    tens of levels almost everywhere."""
    c = tiny_components()
    results = sweep(c)
    alone, batched = decode_job(c, results, 1), decode_job(c, results, 64)
    for a, b in zip(alone, batched):
        for name in ("decoded", "pred_original_sample"):
            x, y = getattr(a, name).astype(int), getattr(b, name).astype(int)
            assert x.shape == y.shape and x.dtype == y.dtype
            assert np.abs(x - y).max() <= 1
            assert (x != y).mean() <= 0.01
    assert [len(d.decoded) for d in batched] == [len(r.latents) for r in results]


def test_a_run_s_images_do_not_depend_on_the_job_it_was_decoded_with():
    """Batches of one size (the last one padded) make an image the same bytes whichever
    other runs shared its job: a resumed or split precompute writes the same bundle."""
    c = tiny_components()
    first, second = sweep(c, (1.0, 7.0)), sweep(c, (7.0,))
    together, alone = decode_job(c, first, 8)[1], decode_job(c, second, 8)[0]
    np.testing.assert_array_equal(together.decoded, alone.decoded)
    np.testing.assert_array_equal(together.pred_original_sample, alone.pred_original_sample)


def test_the_preview_decoder_decodes_the_in_between_frames_and_the_vae_the_final_image():
    c = tiny_components()
    results = sweep(c, steps=4)
    full = decode_job(c, results, 8)
    preview = PreviewDecoder(tiny_taesd(), "tiny-taesd")
    preview.check(c)
    quick = decode_job(c, results, 8, preview=preview)
    for f, q, r in zip(full, quick, results):
        np.testing.assert_array_equal(q.decoded[-1], f.decoded[-1])   # the full VAE's
        assert (q.decoded[:-1] != f.decoded[:-1]).mean() > 0.5        # the tiny decoder's
        approx = q.approximate["decoded"]
        assert approx["frames"] == [0, 4 - 1] and approx["decoder"] == "tiny-taesd"
        # the difference recorded is the tiny decoder's final image against the VAE's
        tiny_image = decode_latents(c, r.latents[-1:], 1, vae=preview.vae)[0]
        assert approx["final_image_difference"] == image_difference(tiny_image, f.decoded[-1])
        assert approx["final_image_difference"]["mean_abs"] > 0
        assert q.approximate["pred_original_sample"]["frames"] == [0, 4 - 1]


def test_image_difference_is_in_levels_of_255():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 48
    d = image_difference(a, b)
    assert d == {"mean_abs": round(48 / 48, 3), "max_abs": 48,
                 "psnr_db": round(10 * np.log10(255 ** 2 / (48 ** 2 / 48)), 2)}
    assert image_difference(a, a)["psnr_db"] == 99.0


def test_a_preview_decoder_for_other_latents_is_refused():
    from diffusers import AutoencoderTiny

    other = AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                            num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1),
                            latent_channels=16)
    with pytest.raises(ValueError, match="decodes 16-channel latents, the model's have 4"):
        PreviewDecoder(other, "sd3-taesd").check(tiny_components())


def test_a_preview_decoder_that_cannot_be_loaded_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"--preview-decoder .*nothing-here: not a diffusers "
                                         r"AutoencoderTiny"):
        PreviewDecoder.load(tmp_path / "nothing-here", "cpu", torch.float32)


# ------------------------------------------------------------------- low precision

def test_bf16_stays_within_its_tolerance_of_float32():
    """bf16 keeps 8 significant bits (unit roundoff 2^-9 = 0.2%); the tolerances are
    relative L2 errors, i.e. fractions of each array's own scale, over 4 LMS steps:
    - latents and predicted x0: 5% (observed up to 2.2% at guidance 7: each step's
      rounding is carried by the scheduler into the next step's input);
    - the guided noise prediction: 15% (observed 5.7%): guidance multiplies the difference
      of two nearly equal predictions by s = 7, and each carries bf16's rounding;
    - the final image: 3 of 255 levels on average (observed 0.9).
    A wrong dtype path (e.g. the text embeddings of another row) is off by order 100%."""
    from precompute.model import load_components

    c32 = tiny_components()
    c16 = load_components(tiny_pipeline_path("sd15"), device="cpu", dtype="bf16", scheduler="lms")
    assert c16.unet.dtype == torch.bfloat16
    r32, r16 = sweep(c32, (0.0, 7.0), steps=4), sweep(c16, (0.0, 7.0), steps=4)
    for a, b in zip(r32, r16):
        for name, tol in (("latents", 0.05), ("pred_original_sample", 0.05), ("noise_pred", 0.15)):
            x, y = getattr(a, name), getattr(b, name)
            assert np.linalg.norm(x - y) / np.linalg.norm(x) <= tol, (a.guidance_scale, name)
    for a, b in zip(decode_job(c32, r32, 8), decode_job(c16, r16, 8)):
        assert np.abs(a.decoded[-1].astype(int) - b.decoded[-1]).mean() <= 3


def test_channels_last_changes_results_by_summation_order_only():
    """Tolerance 1e-5 of the scale (float32, about 80 ulps): NHWC convolutions sum in
    another order; a layout bug would scramble the output entirely."""
    from precompute.pipeline_io import use_channels_last

    c = copy.copy(tiny_components())
    c.unet, c.vae = copy.deepcopy(c.unet), copy.deepcopy(c.vae)
    before = sweep(c, (7.0,), steps=3)[0]
    use_channels_last(c)
    after = sweep(c, (7.0,), steps=3)[0]
    scale = np.abs(before.latents).max()
    np.testing.assert_allclose(after.latents, before.latents, rtol=0, atol=1e-5 * scale)


# -------------------------------------------------------------------------- writing

def test_the_writer_pool_writes_the_same_bytes_as_serial_writing(tmp_path):
    serial = run_in_process(tmp_path / "serial", workers=0)
    pooled = run_in_process(tmp_path / "pooled", workers=2)
    assert serial["computed"] == pooled["computed"] == 5
    a, b = digest(tmp_path / "serial"), digest(tmp_path / "pooled")
    assert a.keys() == b.keys() and len([k for k in a if k.endswith("run.json")]) == 5
    assert a == b
    assert validate_bundle(tmp_path / "pooled", checksums=True) == []
    assert pooled["write_wait_seconds"] <= pooled["seconds"]


def test_a_bundle_with_a_preview_decoder_records_its_approximate_frames(tmp_path):
    folder = tmp_path / "taesd"
    tiny_taesd().save_pretrained(folder)
    run_in_process(tmp_path / "b", workers=0, preview_decoder=str(folder),
                   settings={"guidance_scales": [7]})
    assert validate_bundle(tmp_path / "b", checksums=True) == []
    run = json.loads(next((tmp_path / "b" / "runs").glob("*/run.json")).read_text())
    approx = run["images"]["decoded"]["approximate"]
    assert approx["decoder"] == "taesd" and approx["frames"] == [0, 2]
    assert set(approx["final_image_difference"]) == {"mean_abs", "max_abs", "psnr_db"}
    assert run["images"]["pred_original_sample"]["approximate"]["frames"] == [0, 2]


def test_a_failing_write_is_raised_to_the_caller(tmp_path):
    from precompute.pipeline_io import RunTask

    bad = RunTask({"run_id": "x--s1-g7"}, {}, {}, 16)  # no latent_preview: stage_run refuses
    with RunWriters(tmp_path, {"format": "x"}, workers=1) as writers:
        writers.submit([bad])
        with pytest.raises(Exception):
            writers.drain()


# ------------------------------------------------------------------ killed writers

PROMPTS = """\
title = "tiny"
[settings]
scheduler = "euler"
num_inference_steps = 4
height = 16
width = 16
seeds = [1, 2]
guidance_scales = [0, 1, 5]

[[groups]]
prompt = "a red circle on the left"
variants = ["a blue circle on the left"]
"""


def precompute_cmd(prompts, out, *extra):
    return [sys.executable, "-m", "backend.cli", "precompute", "--prompts", str(prompts),
            "--out", str(out), "--model", str(tiny_pipeline_path("sd15")), "--device", "cpu",
            "--projection", "pca", "--no-progress", *extra]


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def wait_for(condition, timeout=300.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.002)
    raise AssertionError("timed out")


def staging_of(out: Path, pids) -> bool:
    tmp = out / ".tmp"
    return tmp.exists() and any(p.name.split("-")[0] in {str(x) for x in pids}
                                for p in tmp.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["writer", "process"])
def test_a_killed_writer_loses_no_finished_run_and_the_precompute_resumes(tmp_path, victim):
    """Kill a writer process (or the precompute itself) while a run is being written:
    every run already published stays, the same command computes the rest, and the
    bundle validates and equals one made without interruption."""
    if not Path("/proc/self/task").exists():
        pytest.skip("needs /proc to find the writer processes")
    prompts = tmp_path / "p.toml"
    prompts.write_text(PROMPTS)
    out = tmp_path / "b"
    proc = subprocess.Popen(precompute_cmd(prompts, out, "--workers", "1"), env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # wait until one run is published and a writer is staging the next
        wait_for(lambda: any((out / "runs").glob("*/run.json")) if (out / "runs").exists()
                 else False)
        writers = wait_for(lambda: children(proc.pid))
        wait_for(lambda: staging_of(out, writers))
        os.kill(writers[-1] if victim == "writer" else proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    published = {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in (out / "runs").glob("*/run.json")}
    assert published and proc.returncode != 0
    if victim == "writer":
        assert "a writer process died" in err and "Traceback" not in err, err
    for child in writers:  # no writer outlives its precompute
        wait_for(lambda: not Path(f"/proc/{child}").exists() or
                 "zombie" in Path(f"/proc/{child}/status").read_text(), timeout=30)
    again = subprocess.run(precompute_cmd(prompts, out, "--workers", "1"), env=ENV, cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    for rid, sha in published.items():  # nothing finished was lost or rewritten
        assert hashlib.sha256((out / "runs" / rid / "run.json").read_bytes()).hexdigest() == sha
    assert len(list((out / "runs").glob("*/run.json"))) == 2 * 2 * 2 + 2
    check = subprocess.run([sys.executable, "-m", "backend.cli", "validate", str(out)], env=ENV,
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert not any((out / ".tmp").iterdir())

"""End to end: `noisepath precompute` on a tiny model saved with save_pretrained and loaded
by path, offline. The bundle validates; a killed run resumes to the same bundle; two
processes fill one bundle together; other settings are refused; corruption is caught."""

import hashlib
import shutil
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from backend.bundle import Bundle  # noqa: E402
from backend.validator import validate_bundle  # noqa: E402
from tests.tiny_sd import tiny_pipeline_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

PROMPTS = """\
title = "tiny"
[settings]
scheduler = "euler"
num_inference_steps = 6
height = 16
width = 16
seeds = [1, 2]
guidance_scales = [0, 1, 5]

[[groups]]
prompt = "a red circle on the left"
variants = ["a blue circle on the left"]

[[groups]]
prompt = "a large green star"
"""


def precompute_cmd(model, prompts, out, *extra):
    return [sys.executable, "-m", "backend.cli", "precompute", "--prompts", str(prompts),
            "--out", str(out), "--model", str(model), "--device", "cpu", "--projection", "pca",
            "--no-progress", *extra]


def run_precompute(model, prompts, out, *extra, timeout=600) -> subprocess.CompletedProcess:
    """`noisepath precompute` in a child process (offline env), its output captured. The
    timeout only bounds a hang: a busy CPU makes even a refusal (torch's import) slow."""
    return subprocess.run(precompute_cmd(model, prompts, out, *extra), env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def differing(a: Path, b: Path) -> list[str]:
    da, db = digest(a), digest(b)
    return sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))


def digest(root: Path) -> dict[str, str]:
    """Every file of a bundle (not its locks and staging) -> sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in (".work", ".tmp")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("pre")
    model = tiny_pipeline_path("sd15")
    prompts = base / "prompts.toml"
    prompts.write_text(PROMPTS)
    reference = base / "reference"
    proc = run_precompute(model, prompts, reference)
    assert proc.returncode == 0, proc.stderr
    return model, prompts, reference, proc.stderr


def test_cli_writes_a_bundle_that_validates(setup):
    model, prompts, reference, log = setup
    assert [p for p in validate_bundle(reference, checksums=True)] == []
    index = json.loads((reference / "bundle.json").read_text())
    # 3 prompts x 2 seeds x guidance {1, 5} + one shared guidance-0 run per seed
    assert len(index["runs"]) == 3 * 2 * 2 + 2
    assert index["guidance_scales"] == [0.0, 1.0, 5.0]
    assert set(index["trajectories"]) == {"1", "2"}
    assert "computed 14 runs" in log
    assert [g["title"] for g in index["groups"]] == ["a red circle on the left",
                                                     "a large green star"]  # file order


def test_rerun_of_a_finished_bundle_computes_nothing(setup, tmp_path):
    model, prompts, reference, _ = setup
    before = digest(reference)
    proc = run_precompute(model, prompts, reference)
    assert proc.returncode == 0 and "nothing to compute" in proc.stderr
    assert digest(reference) == before


def test_default_guidance_scale_follows_the_prompt_file_without_recomputing(setup, tmp_path):
    from backend import create_app

    model, prompts, reference, _ = setup
    shutil.copytree(reference, tmp_path / "b")
    (tmp_path / "p.toml").write_text(PROMPTS.replace('title = "tiny"',
                                                     'title = "tiny"\ndefault_guidance_scale = 5'))
    proc = run_precompute(model, tmp_path / "p.toml", tmp_path / "b")
    assert proc.returncode == 0 and "nothing to compute" in proc.stderr
    assert differing(reference, tmp_path / "b") == ["bundle.json", "config.json"]  # the index holds it
    index = create_app({"BUNDLE_DIR": tmp_path / "b"}).test_client().get("/api/index.json").get_json()
    assert index["default_guidance_scale"] == 5.0
    proc = run_precompute(model, prompts, tmp_path / "b")  # removed from the file: gone again
    assert proc.returncode == 0 and digest(tmp_path / "b") == digest(reference)


def test_killed_precompute_resumes_to_the_same_bundle(setup, tmp_path):
    model, prompts, reference, _ = setup
    out = tmp_path / "b"
    proc = subprocess.Popen(precompute_cmd(model, prompts, out), env=ENV, cwd=ROOT,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # bounds a hang only: a busy CPU computes slowly
    while (time.monotonic() < deadline and proc.poll() is None
           and len(list((out / "runs").glob("*/run.json"))) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(list((out / "runs").glob("*/run.json")))
    assert 0 < partial < 14, "the kill should land mid-way"
    resumed = run_precompute(model, prompts, out, "--threads", "1")  # as ENV's OMP_NUM_THREADS
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("computed run ") == 14 - partial
    assert same_up_to_float_noise(out, reference, differing(out, reference)) == []


def same_up_to_float_noise(a: Path, b: Path, files: list[str]) -> list[str]:
    """Of `files` (which differ byte for byte), those that differ by more than float noise.
    A run computed in another process can differ in the last float16 bit (a CI run saw 1
    ulp in one run of 14: torch may pick other CPU kernels in a fresh process), and the
    index and trajectories carry that run's checksums and projected latents. So: arrays
    within 1e-3 of their largest magnitude (about one float16 ulp there), JSON equal but
    for sha256 fields and numbers within the same relative 1e-3."""
    def close_json(x, y) -> bool:
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(k == "sha256" or close_json(x[k], y[k]) for k in x)
        if isinstance(x, list) and isinstance(y, list):
            return len(x) == len(y) and all(close_json(u, v) for u, v in zip(x, y))
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            return abs(x - y) <= 1e-3 * max(abs(x), abs(y), 1.0)
        return x == y

    worse = []
    for name in files:
        pa, pb = a / name, b / name
        if not (pa.is_file() and pb.is_file()):
            worse.append(name)
        elif name.endswith(".npy"):
            x, y = np.load(pa), np.load(pb)
            scale = float(np.abs(y.astype(np.float64)).max()) if y.size else 0.0
            if x.shape != y.shape or x.dtype != y.dtype or \
                    float(np.abs(x.astype(np.float64) - y).max(initial=0.0)) > 1e-3 * max(scale, 1e-6):
                worse.append(name)
        elif name.endswith(".json"):
            if not close_json(json.loads(pa.read_text()), json.loads(pb.read_text())):
                worse.append(name)
        else:
            worse.append(name)
    return worse


def test_a_resumed_precompute_removes_the_half_written_json_of_a_killed_one(tmp_path, monkeypatch):
    """A precompute killed while it rewrote bundle.json (or any JSON file of the bundle)
    left `.bundle.json.<pid>-<hex>.tmp` beside it (seen once in a CI run of the test
    above); the next precompute's start removes those of dead processes and leaves a
    live writer's alone."""
    import uuid

    from precompute.writer import BundleWriter, write_json_atomic

    root = tmp_path / "b"
    writer = BundleWriter(root, {"storage": "full"})
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()  # its pid now names a dead process
    (root / "runs" / "r1").mkdir()
    stale = [root / f".bundle.json.{exited.pid}-{uuid.uuid4().hex}.tmp",
             root / "groups" / f".g.json.{exited.pid}-{uuid.uuid4().hex}.tmp",
             root / "runs" / "r1" / f".run.json.{exited.pid}-{uuid.uuid4().hex}.tmp"]
    live = root / f".bundle.json.{os.getpid()}-{uuid.uuid4().hex}.tmp"
    for path in stale + [live]:
        path.write_text("{")
    assert writer.clean_stale_staging() == 3
    assert not any(p.exists() for p in stale) and live.exists()
    # a write names its temporary file by its own pid, which the cleanup reads
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(Path(a).name), real_replace(a, b)))
    write_json_atomic(root / "x.json", {})
    assert renamed[0].startswith(f".x.json.{os.getpid()}-") and renamed[0].endswith(".tmp")


def test_two_processes_split_one_bundle_and_match_one_process(setup, tmp_path):
    model, prompts, reference, _ = setup
    out = tmp_path / "b"
    procs = [subprocess.Popen(precompute_cmd(model, prompts, out), env=ENV, cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    computed = [line.split()[-1] for log in logs for line in log.splitlines()
                if line.startswith("computed run ")]
    assert len(computed) == len(set(computed)) == 14, "each run computed exactly once"
    assert differing(out, reference) == []


def test_other_settings_on_an_existing_bundle_are_refused(setup):
    model, prompts, reference, _ = setup
    proc = run_precompute(model, prompts, reference, "--steps", "7")
    assert proc.returncode == 1
    assert "num_inference_steps: bundle has 6, you asked for 7" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_cli_names_the_corrupted_file(setup, tmp_path):
    import shutil
    _, _, reference, _ = setup
    out = tmp_path / "b"
    shutil.copytree(reference, out)
    victim = sorted((out / "runs").glob("*-g5/noise_pred_text.npy"))[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "backend.cli", "validate", str(out)],
                          env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    rel = victim.relative_to(out)
    assert f"error: {rel}: arrays.noise_pred_text.sha256: sha256 does not match" in proc.stdout

def test_bad_prompt_file_is_refused_before_any_model_loads(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text(PROMPTS.replace("num_inference_steps = 6", "num_inference_steps = 0"))
    proc = run_precompute("no/such-model", bad, tmp_path / "b")
    assert proc.returncode == 2
    assert f"{bad}:4: settings.num_inference_steps: must be an integer" in proc.stderr
    (tmp_path / "good.toml").write_text(PROMPTS)
    proc = run_precompute("no/such-model", tmp_path / "good.toml", tmp_path / "b", "--threads",
                          "-1")
    assert proc.returncode == 2 and "--threads must be 0" in proc.stderr


def test_attention_is_described_in_the_bundle_format(setup):
    _, _, reference, _ = setup
    run = json.loads(next((reference / "runs").glob("*-g5/run.json")).read_text())
    att = run["attention"]
    assert att["resolutions"] == sorted(att["resolutions"], reverse=True)
    assert all(isinstance(r, int) for r in att["resolutions"])
    assert {f"attention_res{r}" for r in att["resolutions"]} | {"attention", "attention_mid"} \
        == {name for name in run["arrays"] if name.startswith("attention")}
    assert set(att["combined"]["from"]) <= set(att["resolutions"])
    assert att["mid_block_resolution"] == run["arrays"]["attention_mid"]["shape"][-2:]
    assert att["layers"] == sum(len(v) for v in att["layers_by_level"].values())


# ------------------------------------------------------------------- compact storage

COMPACT = PROMPTS.split("[[groups]]")[0].replace("seeds = [1, 2]", "seeds = [1]") \
    + 'storage = "compact"\n\n[[groups]]\nprompt = "a large green star"\n'


def test_compact_storage_end_to_end_matches_the_full_bundle(setup, tmp_path):
    """The same runs written compact: they validate, every array (decoded or derived) is
    the full bundle's within its recorded error, the VAE's sprites the same frames within
    their recorded errors."""
    from backend import previews
    from precompute.writer import COMPACT_FRAME_QUALITY
    model, _, reference, _ = setup
    prompts = tmp_path / "compact.toml"
    prompts.write_text(COMPACT)
    out = tmp_path / "b"
    proc = run_precompute(model, prompts, out)
    assert proc.returncode == 0, proc.stderr
    assert validate_bundle(out, checksums=True) == []
    full, compact = Bundle(reference), Bundle(out)
    assert compact.config["storage"] == "compact" and len(compact.runs) == 3
    for rid, m in compact.runs.items():
        kinds = {n: e.get("derived", e.get("encoding")) for n, e in m["arrays"].items()}
        assert kinds["noise_pred"] == "guidance" and set(kinds.values()) <= {
            "q8-delta", "guidance", "attention_mean"}
        for name, e in m["arrays"].items():
            a = np.asarray(full.array(rid, name), np.float32)
            c = np.asarray(compact.array(rid, name), np.float32)
            bound = e["max_abs_error"] + np.abs(a) * 2.0 ** -11 + 1e-6
            assert (np.abs(c - a) <= bound).all(), (rid, name)
        for name in ("decoded", "pred_original_sample"):  # the same frames, each at its quality
            e, f = m["images"][name], full.runs[rid]["images"][name]
            assert (e["quality"], f["quality"]) == (COMPACT_FRAME_QUALITY[name], 82)
            c, a = (previews.crop_frames(path.read_bytes(), x).astype(int) for path, x in (
                (out / "runs" / rid / e["file"], e), (reference / "runs" / rid / f["file"], f)))
            # both were measured against the VAE's frames: they differ by at most the sum
            assert np.abs(c - a).mean() <= e["mean_abs_error"] + f["mean_abs_error"] + 1e-3
    att = compact.runs[next(r for r in compact.runs if r.endswith("-g5"))]["arrays"]["attention"]
    assert att["derived"] == "attention_mean" and att["from"] == ["attention_res4"]


def test_derivations_give_the_full_bundle_s_stored_arrays(setup):
    """What a compact bundle derives, applied to the arrays a full bundle stores, is what it
    stores: the guided prediction within float16 rounding of its inputs, the combined
    attention map within 1e-3 relative."""
    from backend import codec
    _, _, reference, _ = setup
    full = Bundle(reference)
    for rid, m in full.runs.items():
        g = m["guidance_scale"]
        arrays = {n: np.asarray(full.array(rid, n), np.float32) for n in m["arrays"]}
        stored = arrays["noise_pred"]
        branches = [arrays[n] for n in ("noise_pred_uncond", "noise_pred_text") if n in arrays]
        guided = codec.guidance(branches, g).astype(np.float16).astype(np.float32)
        sources = sum(w * np.abs(b) for w, b in zip([abs(1 - g), abs(g)], branches)) \
            if len(branches) == 2 else np.abs(branches[0])
        assert (np.abs(guided - stored) <= (sources + 2 * np.abs(stored)) * 2.0 ** -11).all()
        if m["attention"]:
            levels = [arrays[f"attention_res{r}"] for r in m["attention"]["combined"]["from"]]
            combined = codec.attention_mean(levels, m["attention"]["combined"]["resolution"])
            np.testing.assert_allclose(combined, arrays["attention"], rtol=1e-3, atol=1e-7)


def test_another_storage_on_an_existing_bundle_is_refused_before_loading(setup):
    model, prompts, reference, _ = setup
    proc = run_precompute("no/such-model", prompts, reference, "--storage", "compact")
    assert proc.returncode == 1
    assert "storage: bundle has 'full', you asked for 'compact'" in proc.stderr


def test_storage_flag_explains_the_trade_off():
    proc = subprocess.run([sys.executable, "-m", "backend.cli", "precompute", "--help"],
                          env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    text = " ".join(proc.stdout.split())
    assert "--storage {full,compact} full (default)" in text and "5x smaller" in text
    assert "--threads N CPU threads for torch" in text and "1 can be many times faster" in text


def test_attention_levels_choose_the_combined_map_and_join_the_bundle_identity(setup, tmp_path):
    model, prompts, reference, _ = setup
    # a height the UNet lacks: refused after loading the model, before the bundle exists
    proc = run_precompute(model, prompts, tmp_path / "b", "--attention-levels", "8")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "attention_levels [8]: this UNet has no cross-attention level of that height at " \
        "this image size; its levels are 4" in proc.stderr
    assert not (tmp_path / "b" / "config.json").exists()  # a corrected rerun is free to start
    # chosen in the prompt file: recorded in config.json, a resume with others is refused
    (tmp_path / "p.toml").write_text(COMPACT.replace('storage = "compact"',
                                                     'storage = "compact"\nattention_levels = [4]'))
    proc = run_precompute(model, tmp_path / "p.toml", tmp_path / "b")
    assert proc.returncode == 0, proc.stderr
    assert validate_bundle(tmp_path / "b", checksums=True) == []
    assert json.loads((tmp_path / "b" / "config.json").read_text())["attention_levels"] == [4]
    run = json.loads(next((tmp_path / "b" / "runs").glob("*-g5/run.json")).read_text())
    assert run["attention"]["combined"]["from"] == [4]
    proc = run_precompute("no/such-model", prompts, reference, "--attention-levels", "4")
    assert proc.returncode == 1
    assert "attention_levels: bundle has None, you asked for [4]" in proc.stderr


# ------------------------------------------- bad arguments and damaged bundles, in-process

def precompute_in_process(monkeypatch, *argv) -> int:
    """`noisepath precompute ARGV` in this process, with loading a model made a failure, so
    a refusal is proven to come before any model loads."""
    import argparse

    from precompute import cli, model

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")
    monkeypatch.setattr(model, "load_components", no_model)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(["--projection", "pca", "--no-progress", *map(str, argv)]))


def said(capsys) -> list[str]:
    """The lines `noisepath precompute` wrote to stderr (not the libraries' import notes)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if not line.startswith("[transformers]")]


@pytest.mark.parametrize("argv, message", [
    (["--decode-batch-size", "-3"], "--decode-batch-size must be 0 (by the device's memory) "
                                    "or more (latents the VAE decodes at once)"),
    (["--workers", "-1"], "--workers must be 0 (write in this process) or more"),
    (["--steps", "0"], "command line: --steps: must be an integer from 1 to 1000"),
    (["--out", "{file}"], "--out {file}: exists and is not a folder"),
    (["--out", "{file}/b"], "--out {file}/b: {file} is a file, so no folder can be made inside it"),
])
def test_bad_arguments_are_refused_before_any_model_loads(tmp_path, monkeypatch, capsys,
                                                          argv, message):
    (tmp_path / "p.toml").write_text(PROMPTS)
    (tmp_path / "file").write_text("")
    argv = [a.format(file=tmp_path / "file") for a in argv]
    out = [] if "--out" in argv else ["--out", tmp_path / "b"]
    code = precompute_in_process(monkeypatch, "--prompts", tmp_path / "p.toml", "--model",
                                 "no/such-model", *out, *argv)
    assert code == 2
    assert said(capsys) == [f"noisepath precompute: {message.format(file=tmp_path / 'file')}"]


def test_a_device_this_machine_lacks_is_refused_before_any_model_loads(tmp_path, monkeypatch,
                                                                        capsys):
    (tmp_path / "p.toml").write_text(PROMPTS)
    code = precompute_in_process(monkeypatch, "--prompts", tmp_path / "p.toml", "--out",
                                 tmp_path / "b", "--device", "mps")  # never on Linux
    assert code == 1
    assert said(capsys)[-1].startswith("noisepath precompute: --device mps: Apple's MPS is not "
                                       "available here")
    assert not (tmp_path / "b").exists()


def _damage(reference, tmp_path, how):
    out = tmp_path / "b"
    shutil.copytree(reference, out)
    run = next((out / "runs").glob("*-g5"))
    if how == "config.json holds []":
        (out / "config.json").write_text("[]\n")
    elif how == "config.json is not JSON":
        (out / "config.json").write_text('{"model": ')
    elif how == "run.json is not JSON":
        (run / "run.json").write_text("{")
    elif how == "run.json has no arrays":
        (run / "run.json").write_text('{"run_id": "%s", "prompt_id": "p", "seed": 1, '
                                      '"guidance_scale": 5.0}' % run.name)
    elif how == "latents.npy is truncated":
        data = (run / "latents.npy").read_bytes()
        (run / "latents.npy").write_bytes(data[: len(data) // 2])
    return out, run


@pytest.mark.parametrize("how, message", [
    ("config.json holds []", "{out}/config.json: holds a JSON list, not an object; it records "
                             "the settings every run in {out} shares"),
    ("config.json is not JSON", "{out}/config.json: cannot be read (not valid JSON: "),
    ("run.json is not JSON", "{run}/run.json: cannot be read (not valid JSON: "),
    ("run.json has no arrays", "{run}/run.json: has no arrays; "),
    ("latents.npy is truncated", "run {name} is damaged: runs/{name}/latents.npy: cannot be "
                                 "read ("),
])
def test_a_damaged_bundle_is_named_with_how_to_recompute(setup, tmp_path, monkeypatch, capsys,
                                                          how, message):
    """Re-running on a bundle with a damaged file: one line that names the file, and for a
    run, how to compute it again (delete its folder and re-run), never a traceback."""
    model, prompts, reference, _ = setup
    out, run = _damage(reference, tmp_path, how)
    assert precompute_in_process(monkeypatch, "--prompts", prompts, "--out", out, "--model",
                                 model, "--device", "cpu") == 1
    *_, err = said(capsys)  # after the plan's line
    assert err.startswith("noisepath precompute: ")
    assert message.format(out=out, run=run, name=run.name) in err
    if "config" not in how:
        assert err.endswith(f"delete the folder {run} and run the same command again "
                                     "to compute that run again")


# ------------------------------------------------------------------------ the noise x_T

def test_config_records_that_the_noise_comes_from_a_cpu_generator(setup):
    """So that a seed draws the same x_T on a CPU, a CUDA GPU or MPS (precompute/loop.py)."""
    _, _, reference, _ = setup
    noise = json.loads((reference / "config.json").read_text())["noise"]
    assert noise == {"generator": "cpu", "function": "diffusers.utils.torch_utils.randn_tensor"}


def test_a_bundle_that_does_not_record_its_noise_takes_new_runs_from_a_cpu_only(setup,
                                                                               tmp_path):
    """Such a bundle drew x_T on the device it ran on: a CPU run now draws the same noise, a
    GPU run would not."""
    import torch

    from precompute.run import check_existing_noise
    from precompute.writer import BundleConfigMismatch

    _, _, reference, _ = setup
    out = tmp_path / "b"
    shutil.copytree(reference, out)
    config = json.loads((out / "config.json").read_text())
    del config["noise"]
    (out / "config.json").write_text(json.dumps(config))
    check_existing_noise(out, torch.device("cpu"))
    with pytest.raises(BundleConfigMismatch, match="does not record how its noise was drawn.*"
                                                   "on cuda that gives other noise for a seed"):
        check_existing_noise(out, torch.device("cuda"))
    (out / "config.json").write_text(json.dumps({**config, "noise": {"generator": "cuda"}}))
    with pytest.raises(BundleConfigMismatch, match="drew its noise as"):
        check_existing_noise(out, torch.device("cpu"))


def test_rerunning_the_demo_precompute_on_the_shipped_bundle_refuses_and_computes_nothing(
        tmp_path, monkeypatch):
    """The shipped bundle's config.json has no "noise" (it was made on a CPU, with the noise
    the CPU generator draws now): its own command still finds every run done."""
    import torch

    from precompute import model, run
    from precompute.prompts import load_prompt_file

    out = tmp_path / "demo-bundle"
    shutil.copytree(ROOT / "static" / "demo-bundle", out)
    monkeypatch.setattr(model, "load_components", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(run, "fit_trajectories", lambda *a, **k: None)  # UMAP: tested elsewhere
    monkeypatch.chdir(ROOT)  # the prompt file names the model by a relative path
    summary = run.precompute(load_prompt_file(ROOT / "precompute" / "prompts" / "demo.toml"),
                             out, {}, run.Options(device="cpu", progress=False, log=sys.stderr))
    shipped = json.loads((ROOT / "static" / "demo-bundle" / "bundle.json").read_text())["runs"]
    assert summary["computed"] == 0 and summary["already_done"] == summary["total"] == len(shipped)
    assert differing(out, ROOT / "static" / "demo-bundle") in ([], ["bundle.json"])  # the
    # index is rebuilt from the files; every run, prompt and config.json is left as it was
    run.check_existing_noise(out, torch.device("cpu"))  # a new run would be accepted on a CPU


def _precompute_in_process(out, seeds, scales, hold=None):
    """precompute one prompt on the tiny model in this process, counting the loop's
    passes; `hold` names a job whose claim another process (here: this test) holds."""
    import contextlib
    import io

    from precompute import loop
    from precompute.prompts import single_prompt_set
    from precompute.run import Options, precompute
    from precompute.writer import file_lock

    passes = []
    sweep = loop.run_guidance_sweep

    def counting(components, prompt, seed, guidance_scales, *args, **kwargs):
        passes.append((prompt, seed, list(guidance_scales)))
        return sweep(components, prompt, seed, guidance_scales, *args, **kwargs)

    settings = {"model": str(tiny_pipeline_path("sd15")), "scheduler": "euler",
                "num_inference_steps": 3, "height": 16, "width": 16, "seeds": seeds,
                "guidance_scales": scales}
    held = file_lock(out / ".work" / f"{hold}.claim", blocking=False) if hold \
        else contextlib.nullcontext(True)
    (out / ".work").mkdir(parents=True, exist_ok=True)
    loop.run_guidance_sweep = counting
    try:
        with held as mine:
            assert mine
            precompute(single_prompt_set("a red circle", []), out, settings,
                       Options(device="cpu", projection="pca", progress=False, log=io.StringIO()))
    finally:
        loop.run_guidance_sweep = sweep
    return passes


def test_the_seeds_guidance_zero_run_rides_in_the_first_guided_sweep(tmp_path):
    """One pass of the loop per (prompt, seed): the shared guidance-0 run is one more row
    of the first guided job's batch, written as the seed's shared run (the empty prompt's)."""
    out = tmp_path / "b"
    passes = _precompute_in_process(out, [1, 2], [0, 1, 5])
    assert passes == [("a red circle", 1, [0.0, 1.0, 5.0]), ("a red circle", 2, [0.0, 1.0, 5.0])]
    assert validate_bundle(out, checksums=True) == []
    index = json.loads((out / "bundle.json").read_text())
    shared = [r for r, e in index["runs"].items() if e["guidance_scale"] == 0]
    assert len(shared) == 2 and all(index["runs"][r]["prompt_id"] == "empty" for r in shared)


def test_a_shared_run_claimed_elsewhere_is_left_to_its_own_job(tmp_path):
    """While another process holds seed 1's guidance-0 claim, the guided job runs without
    it and the shared job is skipped as busy; a rerun then computes it alone."""
    out = tmp_path / "b"
    assert _precompute_in_process(out, [1], [0, 1, 5], hold="s1-g0") == [
        ("a red circle", 1, [1.0, 5.0])]
    assert _precompute_in_process(out, [1], [0, 1, 5]) == [(None, 1, [0.0])]
    assert len(json.loads((out / "bundle.json").read_text())["runs"]) == 3

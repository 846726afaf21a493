"""benchmarks/gpu_check.sh, the prepared GPU check, works: its --quick mode (narrow
SD-1.5-shaped random model, 64 px, 2 steps, CPU) runs every part and writes its results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_check_runs_in_quick_mode_and_writes_its_results(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHON": sys.executable}  # the interpreter running the tests, wherever its venv is
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--quick", "--prompts", "1",
                           "--guidance-scales", "0", "7"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["quick"] and result["size"] == 64 and result["steps"] == 2
    variants = result["variants"]
    assert set(variants) == {"(a) precompute", "(a0) precompute, --workers 0",
                             "(a2) precompute, preview decoder",
                             "(b) loop, no captures or decodes",
                             "(c) plain StableDiffusionPipeline"}
    assert all(v["seconds"] > 0 for v in variants.values())
    # the precompute computed every run of the check: 1 prompt x 1 seed x (7) + guidance 0
    assert variants["(a) precompute"]["summary"]["computed"] == result["workload"]["runs"] == 2
    assert variants["(a0) precompute, --workers 0"]["summary"]["workers"] == 0
    # FLOPs were counted (convolutions, matrix products and attention of each model)
    assert result["flops"]["unet_row"] > 0 and result["flops"]["vae_decode"] > 0
    p = result["projection"]
    assert p["runs"] == 237 and p["precompute_seconds"] > 0
    assert {"batch", "images_per_s"} <= set(result["decode_batches"][0])
    assert "speedup" in result["channels_last"]
    assert "(a) precompute" in proc.stdout and "full set (237 runs)" in proc.stdout

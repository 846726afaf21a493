"""The shipped demo: static/demo-bundle is valid, complete for its prompt file, and was
made by static/demo-model (regenerating one job reproduces it)."""

import json
from pathlib import Path

import numpy as np
import pytest

from backend.bundle import Bundle, validate_bundle
from precompute.prompts import load_prompt_file
from precompute.writer import prompt_id, run_id

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "static" / "demo-bundle"
MODEL = ROOT / "static" / "demo-model"
PROMPTS = ROOT / "precompute" / "prompts" / "demo.toml"


def test_demo_bundle_validates_with_checksums():
    assert validate_bundle(BUNDLE, checksums=True) == []


def test_demo_bundle_has_every_run_of_its_prompt_file():
    ps = load_prompt_file(PROMPTS)
    config = json.loads((BUNDLE / "config.json").read_text())
    for key in ("scheduler", "num_inference_steps", "height", "width", "image_size"):
        assert config[key] == ps.settings[key]
    index = json.loads((BUNDLE / "bundle.json").read_text())
    seeds, scales = index["seeds"], index["guidance_scales"]
    texts = [t for g in index["groups"] for t in g["prompts"]]
    expected = {run_id(pid, s, g) for pid in texts for s in seeds for g in scales}
    assert set(index["runs"]) == expected
    assert set(ps.settings["seeds"]) >= set(seeds) and set(texts) <= {prompt_id(t)
                                                                      for t in ps.texts}


def test_regenerating_a_job_with_the_shipped_weights_matches_the_bundle():
    """Tolerance: latents are stored as float16, so compare with rtol 2e-3 + atol 2e-3
    (float16 keeps ~3 decimal digits); recomputation itself is exact in fp32 on a CPU."""
    pytest.importorskip("torch")
    from precompute import loop
    from precompute.model import load_components

    bundle = Bundle(BUNDLE)
    config = bundle.config
    group = bundle.index["groups"][0]
    pid = group["prompts"][0]
    text = bundle.prompts[pid]["text"]
    seed = bundle.index["seeds"][0]
    scales = [g for g in bundle.index["guidance_scales"] if g != 0]
    components = load_components(str(MODEL), device="cpu", dtype="float32",
                                 scheduler=config["scheduler"])
    results = loop.run_guidance_sweep(components, text, seed, scales,
                                      config["num_inference_steps"], config["height"],
                                      config["width"], capture_attention=True)
    for result, g in zip(results, scales):
        rid = run_id(pid, seed, g)
        stored = np.asarray(bundle.array(rid, "latents"), np.float32)
        np.testing.assert_allclose(result.latents, stored, rtol=2e-3, atol=2e-3, err_msg=rid)
        stored_att = np.asarray(bundle.array(rid, "attention"), np.float32)
        np.testing.assert_allclose(result.attention["combined"], stored_att, rtol=2e-3,
                                   atol=1e-4, err_msg=rid)

"""The shipped demo: static/demo-bundle is valid, complete for its prompt file, and was
made by static/demo-model (regenerating one job reproduces it)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from backend.bundle import Bundle
from backend.validator import validate_bundle
from precompute.prompts import load_prompt_file
from precompute.run import plan_jobs
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
    # the app opens on the scale the quality targets are measured at
    assert config["default_guidance_scale"] == ps.default_guidance_scale == DEFAULT_GUIDANCE
    assert config["description"] == ps.description and config["title"] == ps.title
    index = json.loads((BUNDLE / "bundle.json").read_text())
    # every run the precompute plans for the file (runs with a control image included)
    assert set(index["runs"]) == {rid for job in plan_jobs(ps, ps.settings) for rid in job.run_ids}
    texts = [t for g in index["groups"] for t in g["prompts"]]
    assert set(texts) == {prompt_id(t) for t in ps.texts}
    assert index["seeds"] == ps.settings["seeds"]


def test_regenerating_a_job_with_the_shipped_weights_matches_the_bundle():
    """Tolerance: the recomputation itself is exact in fp32 on a CPU; the bundle stores
    float16 (rtol 2e-3 + atol 2e-3 for latents, atol 1e-4 for attention), and a compact
    bundle stores 8-bit maps, so each array may also be off by the max_abs_error its
    manifest records (half a quantization step: ~0.2% of each map's range)."""
    pytest.importorskip("torch")
    from precompute import loop
    from precompute.model import load_components
    from precompute.run import bundle_attention

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
                                      config["width"], capture_attention=True,
                                      attention_levels=config.get("attention_levels"))
    for result, g in zip(results, scales):
        rid = run_id(pid, seed, g)
        arrays = bundle.runs[rid]["arrays"]
        stored = np.asarray(bundle.array(rid, "latents"), np.float32)
        quantized = arrays["latents"].get("max_abs_error", 0.0)
        np.testing.assert_allclose(result.latents, stored, rtol=2e-3, atol=2e-3 + quantized,
                                   err_msg=rid)
        _, names = bundle_attention(result.attention_meta)  # loop key -> array name
        errors = [e.get("max_abs_error", 0.0) for n, e in arrays.items() if n.startswith("attention")]
        for key, name in names.items():  # every level, the mid block and the combined map
            quantized = arrays[name].get("max_abs_error", max(errors))  # derived: from levels
            np.testing.assert_allclose(result.attention[key],
                                       np.asarray(bundle.array(rid, name), np.float32),
                                       rtol=2e-3, atol=1e-4 + quantized, err_msg=f"{rid} {name}")



def test_regenerating_a_run_with_the_shipped_controlnet_matches_the_bundle():
    """static/demo-controlnet made the bundle's runs with a sketch: one of them (scale 1,
    the first seed), recomputed through the same planned job, gives its stored latents.
    Tolerance: as above (fp32 recomputation, float16 or 8-bit storage)."""
    pytest.importorskip("torch")
    from precompute import loop
    from precompute.model import load_components
    from precompute.run import control_sweep

    ps = load_prompt_file(PROMPTS)
    job = next(j for j in plan_jobs(ps, ps.settings) if j.control_image is not None)
    k = job.control_scales.index(1.0)
    bundle = Bundle(BUNDLE)
    config = bundle.config
    components = load_components(str(MODEL), device="cpu", dtype="float32",
                                 scheduler=config["scheduler"])
    one = dataclasses.replace(job, guidance_scales=[job.guidance_scales[k]],
                              run_ids=[job.run_ids[k]], control_scales=[1.0])
    [result] = loop.run_guidance_sweep(
        components, one.prompt, one.seed, one.guidance_scales, config["num_inference_steps"],
        config["height"], config["width"],
        control=control_sweep(one, one.control_scales, components, ps.settings))
    rid = one.run_ids[0]
    stored = np.asarray(bundle.array(rid, "latents"), np.float32)
    quantized = bundle.runs[rid]["arrays"]["latents"].get("max_abs_error", 0.0)
    np.testing.assert_allclose(result.latents, stored, rtol=2e-3, atol=2e-3 + quantized,
                               err_msg=rid)
    # and the sketch moved it: the run without control from the same noise ends elsewhere
    plain = np.asarray(bundle.array(bundle.runs[rid]["controlnet"]["uncontrolled_run_id"],
                                    "latents"), np.float32)
    assert np.abs(plain[-1] - stored[-1]).mean() > 10 * (2e-3 + quantized)


# --- what the shipped bundle shows, judged against the world (bundle_metrics) --------------

def test_auroc_ranks_the_object_pixels():
    from precompute.demo.judge import auroc

    labels = np.array([False, False, True, True])
    assert auroc(np.array([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert auroc(np.array([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    assert auroc(np.array([0.1, 0.3, 0.2, 0.4]), labels) == 0.75


def test_token_of_finds_each_occurrence_of_a_word():
    from precompute.demo.bundle_metrics import token_of

    prompt = {"tokens": {"n_real": 7, "pieces": ["<|startoftext|>", "a</w>", "red</w>", "and</w>",
                                                 "a</w>", "red</w>", "<|endoftext|>"] + ["x"] * 70}}
    assert token_of(prompt, "red") == 2 and token_of(prompt, "red", 1) == 5
    with pytest.raises(IndexError):
        token_of(prompt, "blue")


@pytest.fixture(scope="module")
def shipped_metrics():
    from precompute.demo import bundle_metrics

    return bundle_metrics.measure(BUNDLE, guidance_scale=DEFAULT_GUIDANCE)


DEFAULT_GUIDANCE = 3.0  # the demo's default: what the app opens on


def test_bundle_metrics_leave_the_sketched_runs_out(shipped_metrics):
    """A run with a sketch is the ControlNet's (benchmarks/bench_controlnet.py measures it);
    one prompt's sketch disagrees with its caption on purpose, so counting those runs as the
    demo model's adherence would score the sketch winning as a miss. The one-object rows
    count exactly the runs without a sketch."""
    from backend.bundle import Bundle
    from precompute.demo import world

    b = Bundle(BUNDLE)
    def one_object(run):
        try:
            return len(world.parse_caption(b.prompts[run["prompt_id"]]["text"]).objects) == 1
        except ValueError:
            return False
    at_default = [r for r in b.runs.values() if r["guidance_scale"] == DEFAULT_GUIDANCE and one_object(r)]
    sketched = [r for r in at_default if r.get("controlnet")]
    assert sketched  # the shipped bundle has one-object prompts with a sketch
    row = shipped_metrics["adherence"][f"one object, guidance {DEFAULT_GUIDANCE:g}"]
    assert row["n"] == len(at_default) - len(sketched)
    assert shipped_metrics["attention"]["one-object colour word"]["n"] == row["n"]


@pytest.mark.parametrize("word", ["shape", "colour"])
def test_shipped_attention_maps_localize_object_words(shipped_metrics, word):
    """The issue's target, from the bundle's own maps: pixel-ranking AUROC >= 0.9 against
    the object's region in the run's image, and the map's peak inside it >= 80%."""
    m = shipped_metrics["attention"][f"one-object {word} word"]
    assert m["n"] >= 60  # every one-object prompt x seed at the default guidance
    assert m["auroc"] >= 0.9 and m["peak_inside"] >= 0.8, m


def test_shipped_combined_map_is_the_16x16_level_because_8x8_spreads_colour_words(shipped_metrics):
    """The prompt file's attention_levels = [16], and why (docs/demo-model.md): the 8x8
    level's own maps rank a colour word's object near chance, its shape word's well."""
    assert load_prompt_file(PROMPTS).settings["attention_levels"] == [16]
    assert shipped_metrics["attention"]["combined from"] == [16]
    by_level = shipped_metrics["attention by level"]
    assert by_level["16"]["one-object colour word"] == shipped_metrics["attention"]["one-object colour word"]
    assert by_level["8"]["one-object colour word"]["auroc"] < 0.7
    assert by_level["8"]["one-object shape word"]["auroc"] >= 0.9


@pytest.mark.parametrize("word", ["shape", "colour"])
def test_shipped_attention_binds_words_to_their_own_object(shipped_metrics, word):
    m = shipped_metrics["attention"][f"two-object {word} word on own object"]
    assert m["n"] >= 20  # of the 30 objects named in the 15 two-object runs
    assert m["rate"] >= 0.8, m

"""The page's model-dependent words (frontend/js/wording.js), run in node: an epsilon-LMS
bundle (SD 1.5's facts) and the shipped demo's v-prediction DDIM bundle get different
texts, each true for its model. Skips when node is not installed."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORDING = ROOT / "frontend" / "js" / "wording.js"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs node (to run the ES module)")

DRIVER = """
import * as w from "./wording.mjs";
import { readFileSync } from "node:fs";
const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = cases.map(({ index, weaken, scheduler, pad, end }) => {
  const words = w.wording(index);
  const facts = words.facts;
  return {
    ...words,
    factors: weaken ? w.factorsSentence(weaken) : null,
    rescale: scheduler ? scheduler.weaken.map((_, i) => w.rescaleFactor(facts, scheduler, i)) : null,
    padding: pad !== undefined ? w.paddingWords(pad, end) : null,
  };
});
process.stdout.write(JSON.stringify(out));
"""


def run_wording(tmp_path, cases: list[dict]) -> list[dict]:
    """wording.js on each case's api/index.json (node reads a copy as an .mjs module)."""
    shutil.copy(WORDING, tmp_path / "wording.mjs")
    (tmp_path / "driver.mjs").write_text(DRIVER)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([NODE, str(tmp_path / "driver.mjs"), str(tmp_path / "cases.json")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def demo_documents() -> tuple[dict, dict]:
    """The shipped demo's api/index.json and one guidance-3 run's document."""
    from backend import create_app
    client = create_app({"BUNDLE_DIR": ROOT / "static" / "demo-bundle"}).test_client()
    index = client.get("/api/index.json").get_json()
    rid = sorted(r for r, e in index["runs"].items() if e["guidance_scale"] == 3)[0]
    return index, client.get(f"/api/runs/{rid}.json").get_json()


def sd15_lms_index(pad="<|endoftext|>") -> dict:
    """What api/index.json says for an SD 1.5 bundle made with `--scheduler lms`."""
    return {
        "config": {"model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "scheduler": "lms",
                   "num_inference_steps": 50, "height": 512, "width": 512, "image_size": 256,
                   "latent_shape": [4, 64, 64], "prediction_type": "epsilon", "storage": "full"},
        "about": {"model_info": {
            "prediction_type": "epsilon", "cross_attention_dim": 768,
            "scheduler": {"name": "lms", "class": "LMSDiscreteScheduler",
                          "config": {"prediction_type": "epsilon"}},
            "tokenizer": {"class": "CLIPTokenizer", "vocab_size": 49408, "bos_token": "<|startoftext|>",
                          "eos_token": "<|endoftext|>", "pad_token": pad},
            "noisepath_demo": False}},
    }


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    index, run = demo_documents()
    cases = [{"index": sd15_lms_index()},
             {"index": index, "weaken": run["scheduler"]["weaken"], "scheduler": run["scheduler"]},
             {"index": sd15_lms_index(pad="!"), "pad": "!</w>", "end": "<|endoftext|>"}]
    sd15, demo, sd2 = run_wording(tmp_path_factory.mktemp("wording"), cases)
    return sd15, demo, sd2, run


def test_epsilon_lms_bundle_gets_sd15_words(texts):
    sd15 = texts[0]
    t, show = sd15["texts"], sd15["show"]
    assert t["output-cap"] == "Noise" and t["guided-cap"] == "Guided noise"
    assert t["vocab"] == "49,408 byte-pair pieces" and t["padding"] == "end tokens"
    assert t["x0-formula"] == "\\hat x_0 = x - \\sigma\\,\\hat\\epsilon"  # sigma-scaled latents
    assert t["training-loss"].startswith("\\text{loss} = \\lVert \\epsilon - \\epsilon_\\theta")
    assert "\\sum" in t["scheduler-step"] and "earlier" in t["remainder-label"]
    assert "256 px, downscaled from 512 px" in t["stored-as"] and "16-bit" in t["stored-as"]
    assert show["sigma-latents"] and show["clip-contrastive"]
    assert not show["demo"] and not show["clip-joint"] and not show["zero-snr"]


def test_demo_v_ddim_bundle_gets_its_own_words(texts):
    demo = texts[1]
    t, show = demo["texts"], demo["show"]
    assert demo["facts"]["prediction"] == "v_prediction" and demo["facts"]["scheduler"] == "ddim"
    assert t["output-cap"] == "v" and t["guided-cap"] == "Guided v"
    assert t["vocab"] == "598 byte-pair pieces" and t["padding"] == "end tokens"
    assert t["x0-formula"] == "\\hat x_0 = \\sqrt{\\bar\\alpha_t}\\,x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\hat v"
    assert t["training-loss"].startswith("\\text{loss} = \\lVert v - v_\\theta")
    assert "rescaling" in t["remainder-label"] and "sigma" not in t["weaken-formula"]
    assert "8 bits" in t["stored-as"] and "downscaled" not in t["stored-as"]  # 64 px images, compact
    assert show["demo"] and show["clip-joint"] and show["zero-snr"]
    assert not show["sigma-latents"] and not show["clip-contrastive"]
    differing = {k for k in t if t[k] != texts[0]["texts"][k]}
    assert {"output-cap", "vocab", "x0-formula", "training-loss", "scheduler-step"} <= differing


def test_demo_factors_sentence_says_they_rise_from_the_data(texts):
    demo, run = texts[1], texts[3]
    w = run["scheduler"]["weaken"]
    assert w[0] < 0.01 and w[-1] > 0.1  # 0.009 rising to 0.109: not "early steps remove a lot"
    assert demo["factors"].startswith(f"For the run shown, the factor is {w[0]:.2g} at the first step, "
                                      f"rising to {w[-1]:.2f} at the last")


def test_ddim_v_rescaling_factor_is_what_the_scheduler_does(texts):
    """c = sqrt(1 - w^2) equals DDIM's sqrt(a_prev a) + sqrt((1 - a_prev)(1 - a)) at every
    step but the last (whose a_prev is not in the run); both ~1: tolerance 1e-6 relative,
    the weaken factors being stored as float32-rounded values."""
    demo, run = texts[1], texts[3]
    a = run["scheduler"]["alphas_cumprod"]
    for i in range(len(a) - 1):
        expected = math.sqrt(a[i + 1] * a[i]) + math.sqrt((1 - a[i + 1]) * (1 - a[i]))
        assert demo["rescale"][i] == pytest.approx(expected, rel=1e-6), i


def test_sd2_style_padding_names_its_pad_token(texts):
    sd2 = texts[2]
    assert sd2["padding"] == {"label": "“!”", "what": "“!”, this tokenizer's padding token"}
    assert sd2["texts"]["padding"] == "“!” tokens (its padding token)"

"""The page's model-dependent words (frontend/js/wording.js), run in node: an epsilon-LMS
bundle (SD 1.5's facts) and the shipped demo's v-prediction DDIM bundle get different
texts, each true for its model. Skips when node is not installed."""

import json
import re
import math
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "frontend" / "js"
MODULES = ("wording.js", "scheduler-words.js", "fewstep-words.js")  # wording.js and its imports
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs node (to run the ES module)")

DRIVER = """
import * as w from "./wording.js";
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


def run_wording(tmp_path, cases: list[dict], driver: str = DRIVER) -> list[dict]:
    """wording.js on each case's api/index.json (node reads copies as ES modules)."""
    for name in MODULES:
        shutil.copy(JS / name, tmp_path / name)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "driver.mjs").write_text(driver)
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


def test_a_factor_the_same_at_every_step_is_said_once(tmp_path):
    """A flow model's factor is 1/N at every step: not "0.25 ... falling to 0.25"."""
    same, rising = run_wording(tmp_path, [{"index": sd15_lms_index(), "weaken": [0.25] * 4},
                                          {"index": sd15_lms_index(), "weaken": [0.25, 0.5]}])
    assert same["factors"] == "For the run shown, the factor is 0.25 at every step."
    assert rising["factors"].startswith("For the run shown, the factor is 0.25 at the first step, rising to 0.50")


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


# -- scheduler families (issue 19): one formula per family, per-step numbers, calls --------

FAMILY_DRIVER = """
import * as w from "./wording.js";
import { readFileSync } from "node:fs";
const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = cases.map(({ index, scheduler, run, positions }) => {
  const words = w.wording(index);
  const facts = words.facts;
  const n = scheduler ? scheduler.weaken.length : 0;
  return {
    ...words,
    rescale: scheduler ? scheduler.weaken.map((_, i) => w.rescaleFactor(facts, scheduler, i)) : null,
    numbers: scheduler ? scheduler.weaken.map((_, i) => w.stepNumbersText(facts, scheduler, i, 2.5)) : null,
    calls: positions ? positions.map((s) => w.callWords(facts, scheduler, s)) : null,
    uncond: run ? w.uncondWords(index, run) : null,
    rescaled: run ? w.guidanceRescaleAt(run, 1) : null,
  };
});
process.stdout.write(JSON.stringify(out));
"""


def sd_index(scheduler: str, prediction="epsilon", **config) -> dict:
    """api/index.json of an SD-like bundle made with `scheduler` (and config keys such as
    eta, guidance_rescale, num_timesteps)."""
    index = sd15_lms_index()
    index["config"].update(scheduler=scheduler, prediction_type=prediction, **config)
    index["about"]["model_info"]["scheduler"] = {"name": scheduler, "config": {}}
    index["about"]["scheduler_config"] = {"skip_prk_steps": True}
    return index


def diffusers_probe(name: str, prediction: str, steps: int = 8, eta: float = 0.0) -> dict:
    """A run.json scheduler record of a real diffusers scheduler, as precompute/loop.py
    records it (timesteps, sigmas, alphas_cumprod per call, noise_scale), and per call the
    factor c of x_s that the step applies, measured as loop.py measures weaken: a zero
    model output, the same noise draw, latents x and 2x; c = <step(2x) - step(x), x> / <x, x>."""
    import copy

    pytest.importorskip("diffusers", reason="needs the [precompute] extra (diffusers)")
    import torch

    from precompute.model import SIGMA_LATENTS, make_scheduler

    config = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
              "beta_schedule": "scaled_linear", "prediction_type": prediction,
              "timestep_spacing": "trailing", "clip_sample": False, "set_alpha_to_one": False,
              "steps_offset": 1}
    scheduler = make_scheduler(name, config)
    scheduler.set_timesteps(steps)
    kwargs = {"eta": eta} if name == "ddim" else {}
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zero = torch.zeros_like(x)
    record = {k: [] for k in ("timesteps", "sigmas", "alphas_cumprod", "noise_scale", "weaken", "c")}

    def step(s, t, sample, seed):
        return copy.deepcopy(s).step(zero, t, sample, generator=torch.Generator().manual_seed(seed),
                                     **kwargs).prev_sample

    def project(a, b):
        return float((a * b).sum() / (b * b).sum())

    for i, t in enumerate(scheduler.timesteps):
        if name in SIGMA_LATENTS:
            sigma = float(scheduler.sigmas[scheduler.step_index if scheduler.step_index is not None else 0])
            record["sigmas"].append(sigma)
            record["alphas_cumprod"].append(1 / (1 + sigma**2))
        else:
            record["alphas_cumprod"].append(float(scheduler.alphas_cumprod[int(t)]))
        record["timesteps"].append(float(t))
        record["c"].append(project(step(scheduler, t, 2 * x, 1) - step(scheduler, t, x, 1), x))
        z1 = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
        z2 = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
        record["noise_scale"].append(project(step(scheduler, t, x, 1) - step(scheduler, t, x, 2), z1 - z2))
        record["weaken"].append(0.0)
        scheduler.step(zero, t, x, generator=torch.Generator().manual_seed(1), **kwargs)  # advance
    if not record["sigmas"]:
        record["sigmas"] = None
    return record


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """wording.js on an SD bundle of every scheduler the precompute records."""
    names = ["ddim", "pndm", "euler_a", "ddpm", "heun", "kdpm2", "dpmpp_2m", "dpmpp_2m_karras", "unipc"]
    cases = [{"index": sd_index(n, **({"eta": 0.5} if n == "ddim" else {}))} for n in names]
    cases += [{"index": sd_index(n, "v_prediction", **({"eta": 0.5} if n == "ddim" else {}))} for n in names]
    out = run_wording(tmp_path_factory.mktemp("families"), cases, FAMILY_DRIVER)
    return {("eps" if i < len(names) else "v", names[i % len(names)]): r for i, r in enumerate(out)}


def test_each_scheduler_family_gets_its_own_formula(families):
    step = {k: r["texts"]["scheduler-step"] + " " + r["texts"]["weaken-formula"] for k, r in families.items()}
    text = {k: r["texts"]["scheduler-text"] for k, r in families.items()}
    for p in ("eps", "v"):
        assert "\\sigma_s\\,z_s" in step[p, "ddim"] and "\\eta" in step[p, "ddim"]  # eta > 0: noise term
        assert "55\\," in step[p, "pndm"] and "linear multistep method on the predicted noise" in text[p, "pndm"]
        assert "\\sigma_{\\uparrow}\\,z_s" in step[p, "euler_a"] and "\\sigma_{\\downarrow}" in step[p, "euler_a"]
        assert "\\hat x_0" in step[p, "ddpm"] and "\\beta_s" in step[p, "ddpm"] and "posterior" in text[p, "ddpm"]
        assert "\\text{call 2: }" in step[p, "heun"] and "two UNet calls" in text[p, "heun"]
        assert "\\sigma_{\\text{mid}}" in step[p, "kdpm2"] and "two UNet calls" in text[p, "kdpm2"]
        assert "e^{-h_s}" in step[p, "dpmpp_2m"] and "\\hat x_0^{(s-1)}" in step[p, "dpmpp_2m"]
        assert "Karras" in text[p, "dpmpp_2m_karras"] and "Karras" not in text[p, "dpmpp_2m"]
        assert "x^{c}_s" in step[p, "unipc"] and "predictor-corrector" in text[p, "unipc"]
        assert len({step[p, n] for n in ("ddim", "pndm", "euler_a", "ddpm", "heun", "kdpm2", "dpmpp_2m", "unipc")}) == 8
    assert "\\sqrt{\\sigma_s^2+1}" in step["v", "euler_a"] and "\\sqrt{\\sigma_s^2+1}" not in step["eps", "euler_a"]


def test_stochastic_and_multi_call_schedulers_say_so_in_the_article(families):
    for p in ("eps", "v"):
        for n in ("euler_a", "ddpm", "ddim"):
            r = families[p, n]
            assert r["show"]["stochastic"] and "adds fresh Gaussian noise" in r["texts"]["noise-text"], n
        for n in ("heun", "kdpm2", "pndm"):
            r = families[p, n]
            assert r["show"]["multi-call"] and "more UNet calls than scheduler steps" in r["texts"]["calls-text"], n
        for n in ("dpmpp_2m", "unipc", "heun"):
            assert not families[p, n]["show"]["stochastic"], n
    assert families["eps", "dpmpp_2m"]["show"]["x0-source"] and "converts the UNet's output to $\\hat x_0$" in \
        families["eps", "dpmpp_2m"]["texts"]["x0-source"]
    assert "does not return $\\hat x_0$" in families["eps", "pndm"]["texts"]["x0-source"]
    # sigma-form latents: Euler ancestral, Heun, KDPM2 get the sigma x0 formula
    for n in ("euler_a", "heun", "kdpm2"):
        assert families["eps", n]["texts"]["x0-formula"] == "\\hat x_0 = x - \\sigma\\,\\hat\\epsilon"
    assert families["eps", "dpmpp_2m"]["texts"]["x0-formula"].startswith("\\hat x_0 = \\frac{x_t")


def test_existing_bundles_show_none_of_the_new_paragraphs(texts):
    for words in texts[:3]:
        show, t = words["show"], words["texts"]
        assert not (show["stochastic"] or show["multi-call"] or show["x0-source"] or show["guidance-rescale"])
        assert t["noise-text"] == t["calls-text"] == t["x0-source"] == t["rescale-text"] == ""


@pytest.mark.parametrize("name,prediction,eta", [
    ("euler_a", "epsilon", 0.0), ("euler_a", "v_prediction", 0.0), ("ddpm", "epsilon", 0.0),
    ("ddpm", "v_prediction", 0.0), ("ddim", "epsilon", 0.7), ("ddim", "v_prediction", 0.7)])
def test_stochastic_rescale_factor_and_noise_are_what_diffusers_does(tmp_path, name, prediction, eta):
    """The refiner's c (x_{s+1} = c x_s - w out + noise) from the run's numbers equals the
    factor diffusers' step applies to x_s, and Euler ancestral's sigma_up the factor its
    noise is added with, at every step where the run records what c needs (not the last
    step of DDIM and DDPM: the next alpha-bar is not in the run). Tolerance 1e-6 relative:
    both are float64 computations of values near 1 (float32 storage is not involved)."""
    probe = diffusers_probe(name, prediction, eta=eta)
    index = sd_index(name, prediction, **({"eta": eta} if eta else {}))
    [out] = run_wording(tmp_path, [{"index": index, "scheduler": probe}], FAMILY_DRIVER)
    known = [i for i, c in enumerate(out["rescale"]) if c is not None]
    assert len(known) >= len(probe["c"]) - 1 and known, out["rescale"]
    for i in known:
        assert out["rescale"][i] == pytest.approx(probe["c"][i], rel=1e-6), i
    assert all(s > 0 for s in probe["noise_scale"][:-1])  # stochastic (the last step may add none)
    if name == "euler_a":
        for i, text in enumerate(out["numbers"]):
            up = re.search(r"\$\\sigma_\{\\uparrow\}\$ = ([0-9.]+)", text).group(1)
            assert float(up) == pytest.approx(probe["noise_scale"][i], rel=5e-3, abs=1e-3), text  # 3 digits shown
            assert "noise added: $\\sigma_{\\uparrow} \\times z$" in text
            assert "size $\\lvert \\sigma_{\\uparrow}\\, z \\rvert$ = 2.50" in text


def test_multi_call_schedulers_say_which_call_of_which_step(tmp_path):
    """Heun: 9 UNet calls for 5 steps (two per step, the last one call): the readout says
    the call and its scheduler step; one-call schedulers keep "step s of T"."""
    heun = {"timesteps": [0] * 9, "sigmas": [1.0] * 9, "alphas_cumprod": [0.5] * 9, "weaken": [0.1] * 9,
            "step_index": [0, 0, 1, 1, 2, 2, 3, 3, 4]}
    cases = [{"index": sd_index("heun", num_inference_steps=5, num_timesteps=9), "scheduler": heun,
              "positions": [0, 1, 2, 7, 9]},
             {"index": sd_index("euler", num_inference_steps=5), "scheduler": {**heun, "step_index": list(range(9))},
              "positions": [3]}]
    heun_words, euler_words = run_wording(tmp_path, cases, FAMILY_DRIVER)
    assert heun_words["calls"] == [
        None,
        "UNet call 1 of 9 (scheduler step 1 of 5, its 1st call of 2)",
        "UNet call 2 of 9 (scheduler step 1 of 5, its 2nd call of 2)",
        "UNet call 7 of 9 (scheduler step 4 of 5, its 1st call of 2)",
        "UNet call 9 of 9 (scheduler step 5 of 5)"]
    assert "9 calls for 5 steps" in heun_words["texts"]["calls-text"]
    assert euler_words["calls"] == [None]


def test_negative_prompt_and_guidance_rescale_are_named(tmp_path):
    index = sd_index("dpmpp_2m", guidance_rescale=0.7)
    index["prompts"] = {"empty": {"text": ""}, "neg": {"text": "blurry, low quality"}}
    run = {"negative_prompt_id": "neg", "guidance_rescale": 0.7, "guidance_rescale_std_ratio": [0.9, 0.8, 0.7]}
    plain = {"guidance_scale": 7}
    with_negative, without = run_wording(tmp_path, [{"index": index, "run": run}, {"index": sd15_lms_index(), "run": plain}],
                                         FAMILY_DRIVER)
    assert with_negative["uncond"] == {"name": "negative prompt: “blurry, low quality”", "short": "negative prompt",
                                       "tex": "\\text{negative}"}
    assert without["uncond"]["name"] == "empty prompt" and without["rescaled"] is None
    assert with_negative["rescaled"] == pytest.approx({"phi": 0.7, "ratio": 0.8, "factor": 0.7 * 0.8 + 0.3})
    t = with_negative["texts"]
    assert with_negative["show"]["guidance-rescale"] and "guidance_rescale φ = 0.7 (Lin et al. 2023" in t["rescale-text"]
    assert "\\varphi" in t["rescale-formula"] and "\\operatorname{std}" in t["rescale-formula"]


def test_pndm_names_its_warm_up_from_the_scheduler_config(tmp_path):
    """SD 1.x's config sets skip_prk_steps (PLMS from the start: two calls in its first
    step); diffusers' default, without it, is three pseudo Runge-Kutta steps of four calls."""
    plms, prk = sd_index("pndm"), sd_index("pndm")
    prk["about"]["scheduler_config"] = {}
    plms_words, prk_words = run_wording(tmp_path, [{"index": plms}, {"index": prk}], FAMILY_DRIVER)
    assert "first step takes two UNet calls" in plms_words["texts"]["scheduler-text"]
    assert "pseudo Runge-Kutta warm-up (PRK) of four UNet calls" in prk_words["texts"]["scheduler-text"]


def test_numbers_in_prose_write_every_minus_sign_alike(tmp_path):
    """data.js's fmt writes a real minus sign for the sign and for an exponent's alike
    (the refiner's number table mixed "e−4" and "e-4")."""
    shutil.copy(JS / "data.js", tmp_path / "data.js")
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "driver.mjs").write_text(
        'import { fmt } from "./data.js";\n'
        'process.stdout.write(JSON.stringify([-0.000123, 0.000123, -2.5, 123456].map((v) => fmt(v))));\n')
    proc = subprocess.run([NODE, str(tmp_path / "driver.mjs")], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["\u22121.23e\u22124", "1.23e\u22124", "\u22122.5", "1.23e+5"]


# -- prose and math: no TeX reaches the page as plain text ---------------------------------

# What reads as TeX or as a subscript written out: a TeX command, "_{" or "^{", a letter with
# "_" and an index (x_0, σ_s; not an identifier such as guidance_rescale), or x0 / x̂0.
TEX_LEAK = re.compile(r"\\[A-Za-z]+|\\\\|[_^]\{|(?<!\w)[^\W\d_][\u0300-\u036f]*_[^\W_]"
                      r"|(?<!\w)[xz][\u0300-\u036f]*\d(?!\w)")
# the data-wording keys on the page that are prose, not typeset whole (a `.tex` element)
PAGE = (ROOT / "frontend" / "index.html").read_text()
PROSE_KEYS = set(re.findall(r' data-wording="([^"]+)"', PAGE)) - set(
    re.findall(r'class="tex[^"]*" data-wording="([^"]+)"', PAGE))


def prose_leaks(text: str) -> list[str]:
    """The TeX-like notation in `text` outside its `$...$` inline math (and an unpaired $)."""
    outside = text.split("$")[::2]
    return [m.group(0) for part in outside for m in TEX_LEAK.finditer(part)] + (
        ["unpaired $"] if text.count("$") % 2 else [])


def test_prose_writes_its_math_between_dollar_signs(tmp_path):
    """Every model-dependent prose text and every step's numbers, for every scheduler and
    prediction type the page explains, write their symbols (σ_s, x̂0, z_s) as inline math
    that the page typesets, never as TeX-like plain text."""
    names = ["ddim", "pndm", "lms", "euler", "euler_a", "ddpm", "heun", "kdpm2", "dpmpp_2m",
             "dpmpp_2m_karras", "unipc", "lcm"]
    record = {"timesteps": [999, 500, 1], "sigmas": [14.6, 2.0, 0.1], "alphas_cumprod": [0.005, 0.2, 0.99],
              "weaken": [0.5, 0.4, 0.3], "noise_scale": [1.0, 0.5, 0.0]}
    cases = [{"index": sd_index(n, p, **({"eta": 0.5} if n == "ddim" else {})), "scheduler": record}
             for n in names for p in ("epsilon", "v_prediction")]
    cases += [{"index": sd_index("ddim"), "scheduler": record},  # DDIM without noise
              {"index": sd_index("flow_euler", "flow"), "scheduler": {**record, "flow_time": [0, 0.3, 0.6]}},
              {"index": sd_index("instaflow", "flow_instaflow"), "scheduler": {**record, "flow_time": [0, 0.3, 0.6]}}]
    out = run_wording(tmp_path, cases, FAMILY_DRIVER)
    assert {"scheduler-text", "x0-source", "noise-text", "unet-predicts"} <= PROSE_KEYS
    assert not {"scheduler-step", "x0-formula"} & PROSE_KEYS
    leaks = {}
    for case, words in zip(cases, out):
        prose = {k: t for k, t in words["texts"].items() if k in PROSE_KEYS}
        prose.update({f"numbers {i}": t for i, t in enumerate(words["numbers"])})
        for key, text in prose.items():
            if prose_leaks(text):
                leaks[case["index"]["config"]["scheduler"], key] = prose_leaks(text)
    assert leaks == {}
    lcm = out[names.index("lcm") * 2]
    assert "times the factor $\\sqrt{1-\\bar\\alpha_{s+1}}$ in the formula" in lcm["texts"]["noise-text"]
    assert "noise added: $\\sqrt{1-\\bar\\alpha_{s+1}} \\times z$" in lcm["numbers"][0]  # LCM's noise, not σ_s

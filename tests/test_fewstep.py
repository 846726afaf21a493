"""Few-step models (precompute/fewstep.py) reproduce their reference samplers and record
what the app shows: SD-Turbo-style runs without classifier-free guidance, LCM's denoised
estimate and jump back to noise, rectified-flow Euler steps with the velocity.

Tiny random pipelines (tests/tiny_sd.py), fp32 on CPU, offline. Tolerances are fractions
of the compared tensor's scale (its largest |value|), as tests/test_loop.py explains:
- against diffusers' own pipelines (StableDiffusionPipeline, LatentConsistencyModelPipeline)
  and the InstaFlow loop with the same batch layout: 1e-6 of the scale (PIPELINE_RTOL, about
  8 float32 ulps): the same float32 operations on the same shapes. The flow tests use 4
  steps, whose grid (1, 3/4, 1/2, 1/4) and timesteps are exact in float32, so InstaFlow's
  float64 `(1 - i/N) * 1000` and our float32 sigmas give the UNet the same timesteps;
- a row of a batched sweep (two LCM scales at once) against the pipeline's one-scale run:
  5e-5 of the scale (BATCH_RTOL): another batch size sums in another order.
A wrong sign, guidance embedding, noise draw or grid is off by a good fraction of the scale.
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import (EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,  # noqa: E402
                       FlowMatchEulerDiscreteScheduler, LatentConsistencyModelPipeline,
                       LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel)
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

from precompute.loop import run_guidance_sweep  # noqa: E402
from precompute.model import checkpoint_scheduler, load_components  # noqa: E402
from tests.test_loop import BATCH_RTOL, PIPELINE_RTOL, assert_close_to_scale  # noqa: E402
from tests.tiny_sd import build_components, tiny_pipeline_path, unet_config  # noqa: E402

torch.set_num_threads(1)

PROMPT, SIZE, SEED = "a red circle on a blue background", 16, 7


def _save(path, **replace):
    """A tiny SD pipeline folder with some components replaced."""
    components = build_components("sd15")
    components.update(replace)
    StableDiffusionPipeline(**components).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Pipeline folders: flow (FlowMatchEulerDiscreteScheduler, as a reflow student is
    saved), lcm (a UNet with a guidance embedding, LCMScheduler)."""
    root = tmp_path_factory.mktemp("fewstep")
    torch.manual_seed(3)
    lcm_unet = UNet2DConditionModel(**unet_config("sd15"), time_cond_proj_dim=32)
    base = build_components("sd15")["scheduler"].config
    return {
        "flow": _save(root / "flow", scheduler=FlowMatchEulerDiscreteScheduler()),
        "lcm": _save(root / "lcm", unet=lcm_unet, scheduler=LCMScheduler.from_config(base)),
    }


def _generator():
    return torch.Generator("cpu").manual_seed(SEED)


# -- Turbo: no classifier-free guidance ------------------------------------------------

@pytest.mark.parametrize("scheduler_class, steps", [
    (EulerDiscreteScheduler, 1),           # SD-Turbo: one Euler step, trailing spacing
    (EulerAncestralDiscreteScheduler, 2),  # SDXL-Turbo's sampler: stochastic
])
def test_turbo_run_without_guidance_matches_the_pipeline_at_guidance_0(scheduler_class, steps):
    """diffusers runs SD-Turbo with guidance_scale=0.0 (no classifier-free guidance: the
    prompt's prediction alone); here that is guidance 1, one UNet row."""
    c = load_components(tiny_pipeline_path("sd15"), device="cpu", dtype="fp32",
                        scheduler="euler" if scheduler_class is EulerDiscreteScheduler else "euler_a")
    c.scheduler = scheduler_class.from_config(c.scheduler.config, timestep_spacing="trailing")
    (run,) = run_guidance_sweep(c, PROMPT, SEED, [1.0], steps, SIZE, SIZE)
    expected = c.pipeline()(PROMPT, guidance_scale=0.0, num_inference_steps=steps, height=SIZE,
                            width=SIZE, generator=_generator(), output_type="latent").images[0]
    assert_close_to_scale(run.latents[-1], expected.numpy(), PIPELINE_RTOL)
    assert run.noise_pred_uncond is None and run.timesteps[0] == 999  # trailing: from the top
    if steps == 1:  # one step to sigma 0 lands on the step's own x0 estimate
        assert_close_to_scale(run.latents[-1], run.pred_original_sample[0], PIPELINE_RTOL)


# -- LCM --------------------------------------------------------------------------------

def test_lcm_matches_the_latent_consistency_pipeline_and_records_denoised_and_noise(folders):
    c = load_components(folders["lcm"], device="cpu", dtype="fp32")
    assert checkpoint_scheduler(folders["lcm"]) == "lcm"
    pipe = LatentConsistencyModelPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
        scheduler=c.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    steps = 4
    runs = run_guidance_sweep(c, PROMPT, SEED, [8.5, 3.0], steps, SIZE, SIZE)
    (alone,) = run_guidance_sweep(c, PROMPT, SEED, [8.5], steps, SIZE, SIZE, capture_attention=False)
    for run, rtol in ((alone, PIPELINE_RTOL), (runs[1], BATCH_RTOL)):
        expected = pipe(PROMPT, guidance_scale=run.guidance_scale, num_inference_steps=steps,
                        height=SIZE, width=SIZE, generator=_generator(),
                        output_type="latent").images[0].numpy()
        assert_close_to_scale(run.latents[-1], expected, rtol, f"guidance {run.guidance_scale}")
    # one UNet row per scale, the prompt's (w in the embedding): no unconditional branch
    assert all(r.noise_pred_uncond is None for r in runs)
    assert not np.allclose(runs[0].noise_pred[0], runs[1].noise_pred[0])  # w changes the call
    run = runs[0]
    # the denoised estimate of each step; the last step returns it as the result
    assert run.pred_original_sample_from == "denoised"
    assert_close_to_scale(run.latents[-1], run.pred_original_sample[-1], PIPELINE_RTOL)
    # between steps, the jump back to noise: sqrt(a_next) denoised + sqrt(1 - a_next) z
    scheduler = LCMScheduler.from_config(c.scheduler.config)
    scheduler.set_timesteps(steps)
    a = scheduler.alphas_cumprod[scheduler.timesteps.long()].numpy()
    np.testing.assert_allclose(run.noise_scale[:-1], np.sqrt(1 - a[1:]), rtol=1e-4)
    assert run.noise_scale[-1] == 0
    for i in range(steps - 1):
        jump = np.sqrt(a[i + 1]) * run.pred_original_sample[i] + run.noise_scale[i] * run.variance_noise[i]
        assert_close_to_scale(run.latents[i + 1], jump, 1e-5, f"step {i}")


def test_lcm_refuses_guidance_0_and_guidance_rescale(folders):
    c = load_components(folders["lcm"], device="cpu", dtype="fp32")
    with pytest.raises(ValueError, match="guidance 0 has no meaning here"):
        run_guidance_sweep(c, PROMPT, SEED, [0.0, 8.5], 2, SIZE, SIZE)
    with pytest.raises(ValueError, match="guidance_rescale rescales classifier-free guidance"):
        run_guidance_sweep(c, PROMPT, SEED, [8.5], 2, SIZE, SIZE, guidance_rescale=0.7)


# -- rectified flow -----------------------------------------------------------------------

def instaflow_loop(c, guidance_scale, steps, sign):
    """InstaFlow's sampler as its paper and code/pipeline_rf.py write it: flow time t from 0
    (noise) to 1 (image), UNet timestep (1 - t) 1000, x_{t+dt} = x_t + dt v(x_t, t) with
    dt = 1/N, classifier-free guidance on v. `sign` turns the UNet's output into InstaFlow's
    v = x0 - noise: +1 for an InstaFlow checkpoint, -1 for diffusers' flow convention
    (FlowMatchEulerDiscreteScheduler's output is noise - x0). Returns every latent."""
    prompt_embeds, negative_embeds = c.pipeline().encode_prompt(PROMPT, "cpu", 1, True, "")
    embeds = torch.cat([negative_embeds, prompt_embeds])
    latents = randn_tensor((1, 4, SIZE // 2, SIZE // 2), generator=_generator())
    dt = 1.0 / steps
    path = [latents]
    with torch.no_grad():
        for i in range(steps):
            t = (1.0 - i / steps) * 1000.0
            vec_t = torch.ones((2,)) * t
            v_pred = sign * c.unet(torch.cat([latents] * 2), vec_t, encoder_hidden_states=embeds).sample
            v_pred_neg, v_pred_text = v_pred.chunk(2)
            v_pred = v_pred_neg + guidance_scale * (v_pred_text - v_pred_neg)
            latents = latents + dt * v_pred
            path.append(latents)
    return torch.cat(path).numpy()


@pytest.mark.parametrize("kind", ["flow_euler", "instaflow"])
def test_flow_euler_steps_match_instaflows_update(folders, kind):
    """flow_euler: a pipeline folder saved with FlowMatchEulerDiscreteScheduler (its own
    scheduler); instaflow: an SD folder run as InstaFlow's checkpoints are."""
    if kind == "flow_euler":
        c = load_components(folders["flow"], device="cpu", dtype="fp32")
    else:
        c = load_components(tiny_pipeline_path("sd15"), device="cpu", dtype="fp32", scheduler="instaflow")
    sign = -1.0 if kind == "flow_euler" else 1.0
    steps, g = 4, 1.5  # InstaFlow's 2-rectified flow: guidance 1 to 2
    (run,) = run_guidance_sweep(c, PROMPT, SEED, [g], steps, SIZE, SIZE)
    expected = instaflow_loop(c, g, steps, sign)
    for i in range(steps + 1):
        assert_close_to_scale(run.latents[i], expected[i], PIPELINE_RTOL, f"latent {i}")
    sigma = 1 - np.arange(steps) / steps
    np.testing.assert_array_equal(run.flow_time, 1 - sigma)  # t: 0 (noise) .. 1 - 1/N
    np.testing.assert_array_equal(run.timesteps, 1000 * sigma)
    # the recorded output is the velocity; x0 = x_t + sigma v in InstaFlow's sign
    v = sign * run.noise_pred
    assert_close_to_scale(run.latents[1:], run.latents[:-1] + v / steps, 1e-6)
    x0 = run.latents[:-1] + sigma[:, None, None, None] * v
    assert_close_to_scale(run.pred_original_sample, x0, 1e-6)
    assert run.pred_original_sample_from == "flow"
    np.testing.assert_allclose(run.weaken, -sign / steps, rtol=1e-5)  # removes u dt (adds v dt)
    assert c.describe()["prediction_type"] == {"flow_euler": "flow", "instaflow": "flow_instaflow"}[kind]


def test_a_scheduler_of_the_other_family_is_refused(folders):
    with pytest.raises(ValueError, match="'euler' is a diffusion sampler, and this checkpoint is "
                       "a flow-matching model .FlowMatchEulerDiscreteScheduler"):
        load_components(folders["flow"], device="cpu", dtype="fp32", scheduler="euler")
    with pytest.raises(ValueError, match="'flow_euler' runs flow-matching models.*LMSDiscreteScheduler"):
        load_components(tiny_pipeline_path("sd15"), device="cpu", dtype="fp32", scheduler="flow_euler")


def test_a_checkpoint_whose_scheduler_is_not_supported_is_refused_with_its_name(tmp_path):
    """Only the config files are read (before any model loads): TCD, another few-step
    sampler, is not one the precompute records."""
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "TCDScheduler"]}))
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "TCDScheduler", "beta_schedule": "scaled_linear"}))
    with pytest.raises(ValueError, match=r"the checkpoint's own scheduler \(TCDScheduler\) is not "
                       "one the precompute can record.*lcm, flow_euler, instaflow"):
        checkpoint_scheduler(tmp_path)


# -- bundles ------------------------------------------------------------------------------

def _bundle(out, model, scales, steps=2):
    """`noisepath precompute` in process, from a prompt file naming the model folder."""
    import io
    import tomllib

    from precompute.prompts import parse_prompt_set
    from precompute.run import Options, precompute

    prompt_set = parse_prompt_set(tomllib.loads(f"""
[settings]
model = "{model}"
num_inference_steps = {steps}
height = {SIZE}
width = {SIZE}
seeds = [1]
guidance_scales = {json.dumps(scales)}

[[groups]]
prompt = "{PROMPT}"
"""))
    log = io.StringIO()
    precompute(prompt_set, out, {}, Options(device="cpu", projection="pca", progress=False,
                                            log=log, workers=0))
    return out, log.getvalue()


def _one_run(out):
    from backend.validator import validate_bundle

    assert validate_bundle(out, checksums=True) == []
    config = json.loads((out / "config.json").read_text())
    (folder,) = (out / "runs").iterdir()
    return config, json.loads((folder / "run.json").read_text())


@pytest.mark.slow
def test_bundles_of_a_flow_model_an_lcm_and_a_run_without_guidance_validate(folders, tmp_path):
    out, _ = _bundle(tmp_path / "flow", folders["flow"], [1.5], steps=2)
    config, run = _one_run(out)
    assert (config["scheduler"], config["prediction_type"]) == ("flow_euler", "flow")
    assert run["scheduler"]["flow_time"] == [0.0, 0.5]
    assert run["scheduler"]["pred_original_sample"] == "flow"

    out, _ = _bundle(tmp_path / "lcm", folders["lcm"], [8.5])
    config, run = _one_run(out)
    assert config["guidance_mode"] == run["guidance_mode"] == "embedding"
    assert "noise_pred_uncond" not in run["arrays"] and "variance_noise" in run["arrays"]

    out, log = _bundle(tmp_path / "turbo", tiny_pipeline_path("sd15"), [1])
    config, run = _one_run(out)
    assert config["guidance_mode"] == run["guidance_mode"] == "none"
    assert "no classifier-free guidance: the prompt's prediction alone" in log
    from backend import create_app  # what the app reads: api/index.json's config, the run

    client = create_app({"BUNDLE_DIR": out}).test_client()
    assert client.get("/api/index.json").get_json()["config"]["guidance_mode"] == "none"
    assert client.get(f"/api/runs/{run['run_id']}.json").get_json()["guidance_mode"] == "none"
    with pytest.raises(ValueError, match="made with no classifier-free guidance"):
        _bundle(out, tiny_pipeline_path("sd15"), [1, 7])
    # the validator holds a bundle to its mode: a "none" run is at guidance 1, the mode named
    from backend.validator import validate_bundle

    index = json.loads((out / "bundle.json").read_text())
    (rid,) = index["runs"]
    run_path = out / "runs" / rid / "run.json"
    run_path.write_text(json.dumps({**run, "guidance_mode": "embedding"}))
    index["config"]["guidance_mode"] = "sometimes"
    (out / "bundle.json").write_text(json.dumps(index))
    problems = {(p.field, p.message) for p in validate_bundle(out, checksums=False)}
    assert any(f == "config.guidance_mode" and "classifier_free, none, embedding" in m
               for f, m in problems), problems
    index["config"]["guidance_mode"] = "none"
    (out / "bundle.json").write_text(json.dumps(index))
    problems = {(p.field, p.message) for p in validate_bundle(out, checksums=False)}
    assert ("guidance_mode", 'is the string "embedding", the bundle\'s is \'none\'') in problems


# -- what the page says -----------------------------------------------------------------

def test_the_page_names_the_velocity_and_says_how_the_runs_are_guided(tmp_path):
    """wording.js (with fewstep-words.js) in node on api/index.json's facts: a flow bundle's
    output is a velocity with its own step and x0 formula; a bundle without classifier-free
    guidance says so; an LCM's guidance is an embedding; an SD bundle says neither."""
    from tests.test_wording import NODE, run_wording, sd15_lms_index

    if NODE is None:
        pytest.skip("needs node (to run the ES module)")

    def index(scheduler, prediction="epsilon", mode=None):
        doc = sd15_lms_index()
        doc["config"].update(scheduler=scheduler, prediction_type=prediction)
        if mode:
            doc["config"]["guidance_mode"] = mode
        return {"index": doc}

    flow, insta, turbo, lcm, sd = run_wording(tmp_path, [
        index("flow_euler", "flow"), index("instaflow", "flow_instaflow"),
        index("euler", mode="none"), index("lcm", mode="embedding"), index("lms")])
    assert flow["texts"]["output-name"] == insta["texts"]["output-name"] == "velocity"
    assert flow["texts"]["x0-formula"] == "\\hat x_0 = x - \\sigma\\,\\hat u"
    assert insta["texts"]["x0-formula"] == "\\hat x_0 = x + \\sigma\\,\\hat v"
    assert "(\\sigma_s - \\sigma_{s+1})" in flow["texts"]["scheduler-step"]
    assert flow["texts"]["noising-formula"].startswith("x_t = (1-\\sigma)\\,x_0")
    assert "no classifier-free guidance: the prompt's prediction alone" in turbo["texts"]["guidance-mode-text"]
    assert turbo["show"]["guidance-mode"] and lcm["show"]["guidance-mode"]
    assert "embedding of w = g − 1" in lcm["texts"]["guidance-mode-text"]
    assert lcm["facts"]["stochastic"] and "jumps back" not in lcm["texts"]["scheduler-text"]
    assert "noises that estimate again" in lcm["texts"]["scheduler-text"]
    assert not sd["show"]["guidance-mode"] and sd["texts"]["output-name"] == "noise"
    assert sd["show"]["cfg-guidance"] and not turbo["show"]["cfg-guidance"] and not lcm["show"]["cfg-guidance"]
    # "w is the fall in the noise level" is Euler's with noise prediction, not a flow step's 1/N
    assert sd["show"]["not-flow"] and not flow["show"]["not-flow"] and not insta["show"]["not-flow"]
    # a flow call's numbers are its flow time and dt (run.json's scheduler.flow_time)
    numbers = run_wording(tmp_path, [index("flow_euler", "flow")], driver="""
import * as w from "./wording.js";
import { readFileSync } from "node:fs";
const [{ index }] = JSON.parse(readFileSync(process.argv[2], "utf8"));
const scheduler = { timesteps: [1000, 500], alphas_cumprod: [0, 0.5], weaken: [0.5, 0.5], flow_time: [0, 0.5] };
process.stdout.write(JSON.stringify(w.stepNumbersText(w.modelFacts(index), scheduler, 1)));
""")
    assert numbers == ("This call's numbers: flow time $t$ = 0.500 ($\\sigma$ = 0.500), next $t$ = 1.000, "
                       "$\\Delta t$ = 0.500, $w$ = 0.500 (measured).")

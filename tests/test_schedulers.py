"""Every scheduler the precompute names reproduces StableDiffusionPipeline, and records
what the app shows: one entry per UNet call, the step each call belongs to, the x0
estimate, and for stochastic steps the noise they added.

Tiny random pipelines (tests/tiny_sd.py), fp32 on CPU, offline. Tolerance: 1e-6 of the
compared tensor's scale (its largest |value|), about 8 float32 ulps, for the reason
tests/test_loop.py gives: the loop and the pipeline do the same float32 operations on the
same shapes (observed: exactly equal for every scheduler here); a wrong coefficient,
noise draw or negative prompt would be off by a good fraction of the scale.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from precompute.fewstep import FEW_STEP  # noqa: E402
from precompute.loop import _x0, run_guidance_sweep  # noqa: E402
from precompute.model import (SCHEDULERS, checkpoint_scheduler, load_components,  # noqa: E402
                              make_scheduler, scheduler_name)
from tests.test_loop import PIPELINE_RTOL, assert_close_to_scale  # noqa: E402
from tests.tiny_sd import tiny_components, tiny_pipeline_path  # noqa: E402

torch.set_num_threads(1)
# diffusers' KDPM2 set_timesteps (also run by the pipeline here) passes torch tensors to
# np.interp, which NumPy 2 deprecates; precompute/model.py's quiet_diffusers says so
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")

PROMPT, NEGATIVE = "a photo of an astronaut riding a horse", "red circle"
STEPS, SIZE, SEED = 4, 16, 7
STOCHASTIC = {"euler_a", "ddpm"}  # and ddim with eta > 0


def sweep(c, scales, prompt=PROMPT, **kw):
    return run_guidance_sweep(c, prompt, SEED, scales, STEPS, SIZE, SIZE, **kw)


def pipeline_latent(c, guidance_scale, negative_prompt=None, guidance_rescale=0.0, eta=0.0,
                    scheduler=None):
    """diffusers' own final latent; the CPU generator gives x_T and every step's noise."""
    out = c.pipeline(scheduler)(
        PROMPT, negative_prompt=negative_prompt, guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale, eta=eta, num_inference_steps=STEPS, height=SIZE,
        width=SIZE, generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent")
    return out.images[0].numpy()  # (C, h, w)


@pytest.mark.parametrize("name", [n for n in SCHEDULERS if n not in FEW_STEP])  # test_fewstep.py
def test_final_latent_matches_pipeline_with_negative_prompt_and_guidance_rescale(name):
    c = tiny_components("sd15", name)
    eta = 0.5 if name == "ddim" else 0.0
    (run,) = sweep(c, [7.5], negative_prompt=NEGATIVE, guidance_rescale=0.7, eta=eta)
    expected = pipeline_latent(c, 7.5, NEGATIVE, 0.7, eta)
    assert_close_to_scale(run.latents[-1], expected, PIPELINE_RTOL)
    assert run.negative_prompt == NEGATIVE and run.guidance_rescale == 0.7


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SCHEDULERS if n not in ("lms", "ddim", "euler", *FEW_STEP)])
def test_final_latent_matches_pipeline_for_v_prediction(name):
    c = tiny_components("sd2v", name)
    (run,) = sweep(c, [7.5])
    assert_close_to_scale(run.latents[-1], pipeline_latent(c, 7.5), PIPELINE_RTOL)


@pytest.mark.parametrize("name, steps", [
    ("heun", [0, 0, 1, 1, 2, 2, 3]),           # two calls per step (the last an Euler step)
    ("kdpm2", [0, 0, 1, 1, 2, 2, 3]),
    ("pndm", [0] * 4 + [1] * 4 + [2] * 4 + [3]),  # PRK warm-up: four calls per step
    ("dpmpp_2m", [0, 1, 2, 3]),
])
def test_a_recorded_step_is_a_unet_call_and_step_index_names_its_scheduler_step(name, steps):
    c = tiny_components("sd15", name)
    (run,) = sweep(c, [7.5], capture_attention=False)
    scheduler = make_scheduler(name, c.scheduler.config)
    scheduler.set_timesteps(STEPS)
    calls = len(scheduler.timesteps)
    assert run.step_index.tolist() == steps and calls == len(steps)
    np.testing.assert_array_equal(run.timesteps, scheduler.timesteps.float().numpy())
    assert run.latents.shape[0] == calls + 1 and run.pred_original_sample.shape[0] == calls
    for name_ in ("noise_pred", "noise_pred_uncond", "noise_pred_text"):
        assert getattr(run, name_).shape[0] == calls
    assert run.weaken.shape == run.alphas_cumprod.shape == (calls,)


def test_pndm_without_prk_makes_one_more_call_in_its_first_step_and_matches_the_pipeline():
    """SD 1.5's own scheduler config: PNDM with skip_prk_steps (PLMS only)."""
    from dataclasses import replace

    base = tiny_components("sd15", "lms")
    c = replace(base, scheduler=make_scheduler("pndm", {**base.scheduler.config,
                                                        "skip_prk_steps": True}))
    (run,) = sweep(c, [7.5], capture_attention=False)
    assert run.step_index.tolist() == [0, 0, 1, 2, 3]
    assert_close_to_scale(run.latents[-1], pipeline_latent(c, 7.5), PIPELINE_RTOL)


def test_euler_ancestral_records_the_generators_draws_and_sigma_up():
    c = tiny_components("sd15", "euler_a")
    (run,) = sweep(c, [7.5], capture_attention=False)
    generator = torch.Generator("cpu").manual_seed(SEED)
    shape = (1, *run.latents.shape[1:])
    torch.randn(shape, generator=generator)  # x_T
    for i in range(STEPS):  # then one draw per step, as the pipeline's generator gives them
        np.testing.assert_array_equal(run.variance_noise[i], torch.randn(shape, generator=generator)[0].numpy())
    scheduler = make_scheduler("euler_a", c.scheduler.config)
    scheduler.set_timesteps(STEPS)
    s, s_next = scheduler.sigmas[:-1].double().numpy(), scheduler.sigmas[1:].double().numpy()
    sigma_up = np.sqrt(s_next**2 * (s**2 - s_next**2) / s**2)  # k-diffusion's get_ancestral_step
    # measured by a projection of float32 differences: a few float32 ulps of x_t's scale (~15)
    np.testing.assert_allclose(run.noise_scale, sigma_up, rtol=0, atol=1e-5 * np.abs(run.latents).max())


def test_ddpm_adds_no_noise_at_its_last_step_and_deterministic_schedulers_record_none():
    (ddpm,) = sweep(tiny_components("sd15", "ddpm"), [7.5], capture_attention=False)
    assert ddpm.noise_scale[-1] == 0 and np.all(ddpm.noise_scale[:-1] > 0)
    for name in ("euler", "dpmpp_2m", "ddim"):  # euler draws (s_churn) but adds nothing
        (run,) = sweep(tiny_components("sd15", name), [7.5], capture_attention=False)
        assert run.variance_noise is None and run.noise_scale is None


def test_rows_of_a_stochastic_batched_sweep_match_single_scale_runs():
    """Every row draws the noise its own pipeline run would (one generator copy per row)."""
    c = tiny_components("sd15", "euler_a")
    batched = sweep(c, [0.0, 1.0, 7.5], capture_attention=False)
    for run in batched:
        (alone,) = sweep(c, [run.guidance_scale], capture_attention=False)
        np.testing.assert_array_equal(run.variance_noise, alone.variance_noise)
        # float32 summation order of a different batch size: test_loop.py's BATCH_RTOL
        assert_close_to_scale(run.latents, alone.latents, 5e-5)


@pytest.mark.parametrize("kind", ["sd15", "sd2v"])
def test_x0_formula_agrees_with_ddims_own_pred_original_sample(kind):
    """The formula the loop uses where a scheduler returns no x0 (PNDM), checked where one
    does: DDIM's x0 from the same model output, latent and alpha_bar."""
    from dataclasses import replace

    base = tiny_components(kind, "lms")  # DDIM as SD checkpoints configure it: no clipping
    c = replace(base, scheduler=make_scheduler("ddim", {**base.scheduler.config, "clip_sample": False}))
    (run,) = sweep(c, [7.5], capture_attention=False)
    scheduler = make_scheduler("pndm", c.scheduler.config)  # no algorithm_type, no predict_x0
    for i in range(STEPS):
        x0, how = _x0(scheduler, torch.from_numpy(run.noise_pred[i:i + 1]),
                      torch.from_numpy(run.latents[i:i + 1]), float(run.alphas_cumprod[i]))
        assert how == "formula"
        # float64 formula vs DDIM's float32 one, divided by sqrt(alpha_bar) ~ 0.07 at t=999
        assert_close_to_scale(x0[0].numpy(), run.pred_original_sample[i], 1e-5)


def test_pndm_x0_is_the_formula_and_dpm_solver_x0_is_its_own_converted_output():
    (pndm,) = sweep(tiny_components("sd15", "pndm"), [7.5], capture_attention=False)
    assert pndm.pred_original_sample_from == "formula"
    (dpm,) = sweep(tiny_components("sd15", "dpmpp_2m"), [7.5], capture_attention=False)
    assert dpm.pred_original_sample_from == "model_outputs"
    # DPM-Solver++'s x0 is epsilon's formula with alpha_t, sigma_t of its own sigmas
    a = dpm.alphas_cumprod[:, None, None, None]
    expected = (dpm.latents[:-1] - np.sqrt(1 - a) * dpm.noise_pred) / np.sqrt(a)
    assert_close_to_scale(dpm.pred_original_sample, expected, 1e-5)


def test_guidance_rescale_mixes_the_rescaled_output_and_records_the_std_ratio():
    c = tiny_components("sd15", "ddim")
    runs = sweep(c, [0.0, 1.0, 7.5], capture_attention=False, guidance_rescale=0.7)
    assert [r.guidance_rescale for r in runs] == [0.0, 0.0, 0.7]  # guided runs only (s > 1)
    assert runs[0].guidance_rescale_std_ratio is None and runs[1].guidance_rescale_std_ratio is None
    run = runs[2]
    cfg = run.noise_pred_uncond + 7.5 * (run.noise_pred_text - run.noise_pred_uncond)
    ratio = run.noise_pred_text.std(axis=(1, 2, 3), ddof=1) / cfg.std(axis=(1, 2, 3), ddof=1)
    np.testing.assert_allclose(run.guidance_rescale_std_ratio, ratio, rtol=1e-4)
    expected = 0.7 * cfg * ratio[:, None, None, None] + 0.3 * cfg
    assert_close_to_scale(run.noise_pred, expected, 1e-5)  # float32 vs float64 stds


def test_negative_prompt_replaces_the_empty_prompt_in_the_unconditional_row():
    """At step 0 every run sees the same x_T, so eps(x_T, t, negative) is the text branch of a
    guidance-1 run of the negative prompt."""
    c = tiny_components("sd15", "ddim")
    (guided,) = sweep(c, [7.5], negative_prompt=NEGATIVE, capture_attention=False)
    (negative,) = sweep(c, [1.0], prompt=NEGATIVE, capture_attention=False)
    assert_close_to_scale(guided.noise_pred_uncond[0], negative.noise_pred_text[0], 5e-5)
    (shared,) = sweep(c, [0.0], prompt=None, negative_prompt=NEGATIVE, capture_attention=False)
    assert_close_to_scale(shared.latents[-1], negative.latents[-1], PIPELINE_RTOL)


def test_repeated_timesteps_are_refused_with_the_reason():
    """DPM-Solver++ with Karras sigmas on a zero-terminal-SNR model (the demo's schedule)
    rounds several sigmas to timestep 999 at 25 steps; diffusers' step() then indexes past
    its sigmas (IndexError in the pipeline too). The loop says why instead."""
    from dataclasses import replace

    base = tiny_components("sd15", "lms")
    config = {**base.scheduler.config, "rescale_betas_zero_snr": True,
              "timestep_spacing": "trailing", "prediction_type": "v_prediction"}
    c = replace(base, scheduler=make_scheduler("dpmpp_2m_karras", config))
    with pytest.raises(ValueError, match=r"scheduler 'dpmpp_2m_karras' repeats timesteps at 25 "
                       r"steps.*use fewer steps or another scheduler"):
        run_guidance_sweep(c, PROMPT, SEED, [7.5], 25, SIZE, SIZE)


@pytest.mark.parametrize("kw, match", [
    ({"eta": 0.5}, "eta is DDIM's"),
    ({"guidance_rescale": 1.5}, "guidance_rescale must be from 0 to 1"),
])
def test_bad_stochastic_and_rescale_settings_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        sweep(tiny_components("sd15", "euler"), [7.5], **kw)


# -- which scheduler -------------------------------------------------------------------

def test_without_a_name_the_checkpoints_own_scheduler_is_used_and_named():
    path = tiny_pipeline_path("sd15")  # saved with an LMS scheduler
    assert checkpoint_scheduler(path) == "lms"
    c = load_components(path, device="cpu", dtype="fp32")
    assert scheduler_name(c.scheduler) == "lms" and c.describe()["scheduler"]["name"] == "lms"
    assert checkpoint_scheduler("static/demo-model") == "ddim"


def test_precompute_settings_name_the_checkpoints_scheduler_and_keep_a_named_one():
    """What config.json records: the concrete name, never a placeholder."""
    from precompute.run import Options, resolve_scheduler

    path = str(tiny_pipeline_path("sd15"))
    settings = {"model": path, "eta": 0, "guidance_rescale": 0.7}
    resolve_scheduler(settings, Options())
    assert settings == {"model": path, "scheduler": "lms", "eta": None, "guidance_rescale": 0.7}
    named = {"model": path, "scheduler": "ddim", "eta": 0.3}
    resolve_scheduler(named, Options())
    assert (named["scheduler"], named["eta"]) == ("ddim", 0.3)


def test_a_checkpoints_dpm_solver_is_named_by_its_config_and_other_solvers_are_refused(tmp_path):
    import shutil

    from diffusers import DPMSolverMultistepScheduler

    path = tmp_path / "dpm"
    shutil.copytree(tiny_pipeline_path("sd15"), path)
    base = dict(tiny_components("sd15", "lms").scheduler.config)
    for config, name in (({}, "dpmpp_2m"), ({"use_karras_sigmas": True}, "dpmpp_2m_karras")):
        DPMSolverMultistepScheduler.from_config({**base, **config}).save_pretrained(path / "scheduler")
        index = (path / "model_index.json").read_text().replace("LMSDiscreteScheduler",
                                                                "DPMSolverMultistepScheduler")
        (path / "model_index.json").write_text(index)
        assert checkpoint_scheduler(path) == name
    DPMSolverMultistepScheduler.from_config({**base, "solver_order": 3}).save_pretrained(path / "scheduler")
    with pytest.raises(ValueError, match=r"DPMSolverMultistepScheduler.*solver_order.*3.*--scheduler"):
        checkpoint_scheduler(path)


def test_a_named_dpm_solver_keeps_the_checkpoints_betas_and_prediction_type():
    base = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
            "prediction_type": "v_prediction", "timestep_spacing": "trailing",
            "rescale_betas_zero_snr": True, "use_karras_sigmas": True}
    plain = make_scheduler("dpmpp_2m", base)
    assert plain.config.prediction_type == "v_prediction" and plain.config.rescale_betas_zero_snr
    assert plain.config.use_karras_sigmas is False  # the name fixes the solver
    assert make_scheduler("dpmpp_2m_karras", base).config.use_karras_sigmas is True


# -- the bundle ------------------------------------------------------------------------

BUNDLE_PROMPTS = """\
[settings]
num_inference_steps = 3
height = 16
width = 16
seeds = [1]
guidance_scales = [0, 1, 5]
guidance_rescale = 0.7
storage = "compact"

[[groups]]
prompt = "a red circle"
negative_prompt = "blue"
"""


def _precompute(out, prompts, scheduler):
    import io

    from precompute.prompts import parse_prompt_set
    from precompute.run import Options, precompute

    import tomllib
    prompt_set = parse_prompt_set(tomllib.loads(prompts))
    opts = Options(device="cpu", projection="pca", progress=False, log=io.StringIO(),
                   components=tiny_components("sd15", scheduler))
    precompute(prompt_set, out, {}, opts)
    return out


@pytest.fixture(scope="module")
def heun_bundle(tmp_path_factory):
    """Heun (two UNet calls per step), a negative prompt, guidance_rescale, compact storage;
    no scheduler setting: the loaded model's own is named."""
    return _precompute(tmp_path_factory.mktemp("heun") / "b", BUNDLE_PROMPTS, "heun")


def _errors(root):
    from backend.validator import validate_bundle

    return [(p.file, p.field, p.message) for p in validate_bundle(root) if p.severity == "error"]


@pytest.mark.slow
def test_a_heun_bundle_with_a_negative_prompt_and_guidance_rescale_validates(heun_bundle):
    import json

    from backend import payloads
    from backend.bundle import Bundle
    from precompute.writer import prompt_id

    assert _errors(heun_bundle) == []
    config = json.loads((heun_bundle / "config.json").read_text())
    assert (config["scheduler"], config["num_inference_steps"], config["num_timesteps"]) == ("heun", 3, 5)
    assert config["guidance_rescale"] == 0.7 and "eta" not in config
    pid, nid = prompt_id("a red circle"), prompt_id("blue")
    index = json.loads((heun_bundle / "bundle.json").read_text())
    assert sorted(index["runs"]) == [f"{pid}--neg-{nid}--s1-g1", f"{pid}--neg-{nid}--s1-g5",
                                     f"{nid}--s1-g0"]
    assert {"empty", pid, nid} <= set(index["prompts"])  # the negative prompt's tokens too
    guided = json.loads((heun_bundle / "runs" / f"{pid}--neg-{nid}--s1-g5" / "run.json").read_text())
    assert guided["negative_prompt_id"] == nid and guided["guidance_rescale"] == 0.7
    assert len(guided["guidance_rescale_std_ratio"]) == 5
    assert guided["scheduler"]["step_index"] == [0, 0, 1, 1, 2]
    assert "derived" not in guided["arrays"]["noise_pred"]  # rescaled: not the guidance formula
    assert guided["arrays"]["latents"]["shape"][0] == 6
    shared = json.loads((heun_bundle / "runs" / f"{nid}--s1-g0" / "run.json").read_text())
    assert shared["prompt_id"] == nid and "guidance_rescale" not in shared
    lookup = payloads.run_lookup(Bundle(heun_bundle))
    assert lookup[pid]["1"] == {"0": f"{nid}--s1-g0", "1": f"{pid}--neg-{nid}--s1-g1",
                                "5": f"{pid}--neg-{nid}--s1-g5"}


@pytest.mark.slow
@pytest.mark.parametrize("change, field, words", [
    (lambda m: m["scheduler"].update(step_index=[0, 2, 2, 2, 2]), "scheduler.step_index",
     "rising by 0 or 1"),
    (lambda m: m["scheduler"].update(step_index=[0, 0, 1, 1]), "scheduler.step_index", "5 integers"),
    (lambda m: m.update(negative_prompt_id="nowhere"), "negative_prompt_id", "not a prompt"),
    (lambda m: m.pop("guidance_rescale_std_ratio"), "guidance_rescale_std_ratio", "5 numbers"),
    (lambda m: m.update(guidance_rescale=2), "guidance_rescale", "at most 1"),
    (lambda m: m["scheduler"].update(noise_scale=[0.1] * 5), "arrays.variance_noise", "missing"),
    (lambda m: m["scheduler"].update(pred_original_sample="guess"),
     "scheduler.pred_original_sample", "one of step, model_outputs, formula"),
])
def test_validate_rejects_broken_sampler_fields(heun_bundle, tmp_path, change, field, words):
    import json
    import shutil

    from precompute.writer import build_index, prompt_id, write_json_atomic

    root = tmp_path / "b"
    shutil.copytree(heun_bundle, root)
    rid = f"{prompt_id('a red circle')}--neg-{prompt_id('blue')}--s1-g5"
    path = root / "runs" / rid / "run.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    write_json_atomic(path, manifest)
    write_json_atomic(root / "bundle.json", build_index(root))  # the run's new checksum
    assert any(f == f"runs/{rid}/run.json" and fld == field and words in msg
               for f, fld, msg in _errors(root)), _errors(root)


@pytest.mark.slow
def test_a_ddpm_bundle_records_each_steps_noise_and_validates(tmp_path):
    import json

    prompts = BUNDLE_PROMPTS.replace('guidance_rescale = 0.7\nstorage = "compact"\n', "")
    root = _precompute(tmp_path / "b", prompts, "ddpm")
    assert _errors(root) == []
    runs = [json.loads(p.read_text()) for p in sorted((root / "runs").glob("*/run.json"))]
    for m in runs:
        assert m["arrays"]["variance_noise"]["shape"] == [3, 4, 8, 8]
        assert len(m["scheduler"]["noise_scale"]) == 3 and m["scheduler"]["noise_scale"][-1] == 0
    assert json.loads((root / "config.json").read_text())["scheduler"] == "ddpm"


def test_live_frames_scale_only_sigma_schedulers_latents():
    """A live frame divides a sigma scheduler's latent (x0 + sigma noise) by its RMS; the
    latent of ddim, pndm, dpmpp or unipc is already at unit scale and is shown as it is."""
    from precompute.live import latent_rgb

    preview = {"matrix": [[0.1, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.1], [0.0, 0.0, 0.0]],
               "bias": [0.5, 0.5, 0.5]}
    latent = np.full((4, 2, 2), 3.0, np.float32)  # RMS 3
    for name in ("ddim", "pndm", "dpmpp_2m", "unipc", "ddpm"):
        assert latent_rgb(latent, preview, name)[0, 0, 0] == round(255 * 0.8)
    for name in ("lms", "euler", "euler_a", "heun", "kdpm2"):
        assert latent_rgb(latent, preview, name)[0, 0, 0] == round(255 * 0.6)


def test_live_settings_of_another_model_name_its_own_scheduler():
    """serve --live with a model the shipped bundle was not made by: the precompute's
    defaults, whose scheduler is the checkpoint's own, named (the app and the live folder's
    key show it)."""
    from precompute.live import live_settings

    path = str(tiny_pipeline_path("sd15"))
    assert live_settings(path, {"model": "static/demo-model", "scheduler": "ddim"})["scheduler"] == "lms"
    shipped = {"model": path, "scheduler": "euler", "num_inference_steps": 5, "height": 16,
               "width": 16}
    assert live_settings(path, shipped)["scheduler"] == "euler"

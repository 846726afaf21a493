"""Our unrolled loop reproduces StableDiffusionPipeline, and records what it claims to.

Tiny random pipelines (tests/tiny_sd.py), fp32 on CPU, saved with save_pretrained and
loaded by path with HF_HUB_OFFLINE=1. Tolerances are fractions of the compared tensor's
scale (its largest |value|: latents here reach 30-50, attention weights 1), because float32
rounding errors are relative to the magnitudes summed, whatever the CPU:
- a one-scale sweep against the pipeline with the same batch layout: 1e-6 of the scale,
  about 8 float32 ulps (observed: exactly equal; the same operations on the same shapes);
- rows of a batched sweep against one-scale sweeps: 5e-5 of the scale. A different batch
  size makes the CPU kernels (GEMM, convolution, GroupNorm) block and sum in another order,
  so each UNet call differs by a few float32 ulps of its inputs' scale and the scheduler
  carries that through the steps: observed up to 4e-6 of the scale here (LMS, 1 or 2
  threads) and 3.7e-6 in a CI run on another CPU (1.1e-4 on values up to 30). A wrong row
  or guidance scale would be off by a good fraction of the scale.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from backend.previews import latent_preview  # noqa: E402
from precompute.loop import (  # noqa: E402
    decode_latents,
    encode_prompt_tokens,
    latent_rgb_factors,
    run_guidance_sweep,
)
from precompute.model import make_scheduler  # noqa: E402
from tests.tiny_sd import tiny_components as components  # noqa: E402

torch.set_num_threads(1)

PROMPT = "a photo of an astronaut riding a horse"
STEPS, SIZE, SEED = 4, 16, 7
PIPELINE_RTOL = 1e-6  # of the tensor's scale (see above)
BATCH_RTOL = 5e-5  # of the tensor's scale: float32 summation order (see above)


def assert_close_to_scale(actual, expected, fraction, err_msg=""):
    """|actual - expected| <= fraction * max|expected| everywhere."""
    np.testing.assert_allclose(actual, expected, rtol=0,
                               atol=fraction * float(np.abs(expected).max()), err_msg=err_msg)


def sweep(c, guidance_scales, prompt=PROMPT, **kw):
    return run_guidance_sweep(c, prompt, SEED, guidance_scales, STEPS, SIZE, SIZE, **kw)


def pipeline_latent(c, prompt, guidance_scale):
    pipe = c.pipeline()
    out = pipe(prompt, guidance_scale=guidance_scale, num_inference_steps=STEPS, height=SIZE, width=SIZE,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent")
    return out.images[0].numpy()  # (C, h, w)


@pytest.mark.parametrize("kind", ["sd15", "sd2v"])
@pytest.mark.parametrize("scheduler", ["lms", "ddim", "euler"])
@pytest.mark.parametrize("guidance_scale", [1.0, 7.5])
def test_final_latent_matches_pipeline(kind, scheduler, guidance_scale):
    """One-scale sweep == StableDiffusionPipeline(output_type="latent") (fp32 CPU).

    kind sd2v is a v-prediction checkpoint with linear projections (SD 2.x style).
    """
    c = components(kind, scheduler)
    (run,) = sweep(c, [guidance_scale])
    assert_close_to_scale(run.latents[-1], pipeline_latent(c, PROMPT, guidance_scale), PIPELINE_RTOL)


@pytest.mark.parametrize("scheduler", ["lms", "ddim", "euler"])
def test_shared_guidance_zero_run_matches_pipeline_with_empty_prompt(scheduler):
    """prompt=None at guidance 0 is the unconditional branch alone: the pipeline on ""."""
    c = components("sd15", scheduler)
    (run,) = sweep(c, [0.0], prompt=None)
    assert run.prompt is None and run.noise_pred_text is None and run.attention is None
    assert_close_to_scale(run.latents[-1], pipeline_latent(c, "", 1.0), PIPELINE_RTOL)


def test_initial_latent_equals_pipeline_prepare_latents():
    c = components()
    pipe = c.pipeline()
    pipe.scheduler.set_timesteps(STEPS)
    expected = pipe.prepare_latents(1, 4, SIZE, SIZE, torch.float32, torch.device("cpu"),
                                    torch.Generator("cpu").manual_seed(SEED))
    runs = sweep(c, [0.0, 1.0, 7.5], capture_attention=False)
    for run in runs:
        assert np.array_equal(run.latents[0], expected[0].numpy())


def test_batched_sweep_rows_match_single_scale_runs():
    """Rows of one batched call == separate one-scale sweeps, within float32 summation order."""
    c = components()
    scales = [0.0, 1.0, 3.0, 7.5]
    batched = sweep(c, scales)
    for run in batched:
        (alone,) = sweep(c, [run.guidance_scale])
        for name in ("latents", "noise_pred", "pred_original_sample"):
            assert_close_to_scale(getattr(run, name), getattr(alone, name), BATCH_RTOL, name)
        if run.attention is not None:
            for key in run.attention:
                assert_close_to_scale(run.attention[key], alone.attention[key], BATCH_RTOL, key)


def test_attention_capture_leaves_every_array_bit_identical():
    c = components()
    before = c.unet.attn_processors
    captured = sweep(c, [0.0, 1.0, 7.5], capture_attention=True)
    assert c.unet.attn_processors == before  # the stock processors are back
    plain = sweep(c, [0.0, 1.0, 7.5], capture_attention=False)
    for a, b in zip(captured, plain):
        for name in ("latents", "noise_pred", "pred_original_sample", "weaken"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert b.attention is None


def test_stored_guided_noise_is_uncond_plus_scale_times_difference():
    runs = sweep(components(), [0.0, 1.0, 7.5])
    for run in runs:
        s = run.guidance_scale
        if s == 0:
            assert run.noise_pred_text is None
            np.testing.assert_array_equal(run.noise_pred, run.noise_pred_uncond)
        elif s == 1:
            assert run.noise_pred_uncond is None
            np.testing.assert_array_equal(run.noise_pred, run.noise_pred_text)
        else:
            difference = run.noise_pred_text - run.noise_pred_uncond
            expected = run.noise_pred_uncond + s * difference
            # the same float32 operations elementwise, but torch may fuse them into one FMA
            # (one rounding instead of two): a few ulps of the largest term
            terms = np.abs(run.noise_pred_uncond).max() + s * np.abs(difference).max()
            np.testing.assert_allclose(run.noise_pred, expected, rtol=0,
                                       atol=4 * np.finfo(np.float32).eps * terms)


def test_run_result_shapes_and_scheduler_numbers():
    (run,) = sweep(components(), [7.5])
    t, latent = STEPS, (4, SIZE // 2, SIZE // 2)
    assert run.latents.shape == (t + 1, *latent) and run.latents.dtype == np.float32
    for name in ("noise_pred_uncond", "noise_pred_text", "noise_pred", "pred_original_sample"):
        assert getattr(run, name).shape == (t, *latent)
    for name in ("timesteps", "sigmas", "alphas_cumprod", "weaken"):
        assert getattr(run, name).shape == (t,)
    assert run.timesteps[0] == 999 and np.all(np.diff(run.timesteps) < 0)
    np.testing.assert_allclose(run.alphas_cumprod, 1 / (1 + run.sigmas**2.0), rtol=1e-6)


def test_ddim_has_no_sigmas_and_reads_alphas_cumprod_at_the_timestep():
    c = components("sd15", "ddim")
    (run,) = sweep(c, [1.0])
    assert run.sigmas is None
    expected = c.scheduler.alphas_cumprod[run.timesteps.astype(int)].numpy()
    np.testing.assert_array_equal(run.alphas_cumprod, expected)


def test_weaken_equals_sigma_minus_next_sigma_for_euler_epsilon():
    c = components("sd15", "euler")
    scheduler = c.scheduler.__class__.from_config(c.scheduler.config)
    scheduler.set_timesteps(STEPS)
    sigmas = scheduler.sigmas.numpy()  # (T+1,), ends in 0
    for run in sweep(c, [0.0, 7.5]):
        np.testing.assert_allclose(run.weaken, sigmas[:-1] - sigmas[1:], rtol=1e-4, atol=1e-5)


def test_progress_is_updated_once_per_step():
    class Counter:
        n = 0

        def update(self, k):
            self.n += k

    counter = Counter()
    sweep(components(), [1.0], progress=counter, capture_attention=False)
    assert counter.n == STEPS


@pytest.mark.parametrize("prompt, scales, match", [
    (None, [7.5], "only makes sense at guidance_scale 0"),
    (PROMPT, [], "empty"),
    (PROMPT, [1.0, 1.0], "duplicates"),
    (PROMPT, [-1.0], ">= 0"),
])
def test_bad_sweep_inputs_raise_value_error(prompt, scales, match):
    with pytest.raises(ValueError, match=match):
        sweep(components(), scales, prompt=prompt)


# -- tokens and text embeddings ---------------------------------------------------

def test_tokens_equal_the_tokenizers_own_output():
    c = components()
    tokens = encode_prompt_tokens(c, PROMPT)
    expected = c.tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
    assert tokens["input_ids"] == expected and len(expected) == 77
    assert tokens["pieces"] == c.tokenizer.convert_ids_to_tokens(expected)
    real = c.tokenizer(PROMPT).input_ids
    assert tokens["n_real"] == len(real) and tokens["pieces"][tokens["n_real"] - 1] == "<|endoftext|>"
    assert not tokens["truncated"] and tokens["dropped_pieces"] == []


def test_text_embeddings_are_the_text_encoders_output():
    c = components()
    for prompt in (PROMPT, ""):
        tokens = encode_prompt_tokens(c, prompt)
        ids = torch.tensor([tokens["input_ids"]])
        with torch.no_grad():
            expected = c.text_encoder(ids)[0][0].numpy()
        assert tokens["embeddings"].shape == (77, 32) and tokens["embeddings"].dtype == np.float32
        np.testing.assert_array_equal(tokens["embeddings"], expected)
    assert encode_prompt_tokens(c, "")["n_real"] == 2


def test_truncation_beyond_77_tokens_is_reported_with_dropped_pieces():
    c = components()
    prompt = " ".join(["red", "circle"] * 40)  # 80 words + start + end = 82 tokens
    tokens = encode_prompt_tokens(c, prompt)
    assert tokens["truncated"] and tokens["n_real"] == 77
    assert tokens["pieces"][-2:] == ["red</w>", "<|endoftext|>"]  # start + words 1..75 + end
    assert tokens["dropped_pieces"] == ["circle</w>", "red</w>"] * 2 + ["circle</w>"]  # words 76..80


# -- images ------------------------------------------------------------------------

def test_decoded_final_latent_equals_pipeline_image():
    c = components()
    (run,) = sweep(c, [7.5], capture_attention=False)
    pipe = c.pipeline()
    image = pipe(PROMPT, guidance_scale=7.5, num_inference_steps=STEPS, height=SIZE, width=SIZE,
                 generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images[0]
    ours = decode_latents(c, run.latents, batch_size=2)
    assert ours.shape == (STEPS + 1, SIZE, SIZE, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours[-1], (image * 255).round().astype(np.uint8))


def test_latent_rgb_factors_recover_a_linear_preview():
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(4, 8, 8)).astype(np.float32)
    matrix = rng.uniform(-0.1, 0.1, size=(4, 3)).astype(np.float32)
    bias = np.float32([0.5, 0.4, 0.6])
    image = latent_preview(latents[None], matrix, bias)[0].repeat(2, axis=0).repeat(2, axis=1)  # (16, 16, 3)
    fitted_matrix, fitted_bias = latent_rgb_factors(latents, image)
    assert fitted_matrix.shape == (4, 3) and fitted_bias.shape == (3,)
    np.testing.assert_allclose(fitted_matrix, matrix, atol=5e-3)
    preview = latent_preview(latents[None], fitted_matrix, fitted_bias)
    assert preview.shape == (1, 8, 8, 3) and preview.dtype == np.uint8


# -- model loading -------------------------------------------------------------------

def test_describe_reports_prediction_type_and_scheduler():
    info = components("sd2v", "euler").describe()
    assert info["prediction_type"] == "v_prediction"
    assert info["scheduler"]["class"] == "EulerDiscreteScheduler"
    assert (info["latent_channels"], info["vae_scale_factor"], info["cross_attention_dim"]) == (4, 2, 32)


def test_make_scheduler_carries_the_checkpoints_config_over():
    base = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
            "prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True}
    for name in ("ddim", "euler"):
        scheduler = make_scheduler(name, base)
        assert scheduler.config.prediction_type == "v_prediction"
        assert scheduler.config.timestep_spacing == "trailing"
        assert scheduler.config.rescale_betas_zero_snr
    # a key the checkpoint's config omits takes diffusers' default, as in the pipeline
    assert make_scheduler("ddim", base).config.clip_sample is True
    assert make_scheduler("ddim", {**base, "clip_sample": False}).config.clip_sample is False


def test_ddim_on_a_config_without_clip_sample_gives_diffusers_own_final_latent():
    """The tiny checkpoint ships an LMS config, which has no clip_sample: DDIM then clips x0
    to [-1, 1] in diffusers (its default), and so must the precompute (atol as above)."""
    from diffusers import DDIMScheduler

    checkpoint_config = components("sd15", "lms").scheduler.config
    assert "clip_sample" not in checkpoint_config
    c = components("sd15", "ddim")
    (run,) = sweep(c, [7.5])
    pipe = c.pipeline()
    pipe.scheduler = DDIMScheduler.from_config(checkpoint_config)  # diffusers' documented swap
    out = pipe(PROMPT, guidance_scale=7.5, num_inference_steps=STEPS, height=SIZE, width=SIZE,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent")
    assert_close_to_scale(run.latents[-1], out.images[0].numpy(), PIPELINE_RTOL)


@pytest.mark.parametrize("name", ["lms"])
def test_a_scheduler_that_would_drop_zero_terminal_snr_is_refused(name):
    """LMSDiscreteScheduler has no rescale_betas_zero_snr: it would sample another noise
    schedule than a zero-terminal-SNR model was trained on, so it is refused, saying why."""
    base = {"beta_schedule": "scaled_linear", "prediction_type": "v_prediction",
            "timestep_spacing": "trailing", "rescale_betas_zero_snr": True}
    with pytest.raises(ValueError, match=r"scheduler 'lms' cannot follow this checkpoint's "
                       r"scheduler config: it sets rescale_betas_zero_snr=True, which diffusers' "
                       r"LMSDiscreteScheduler does not support.*; use ddim, ddpm, euler, euler_a, "
                       r"dpmpp_2m, dpmpp_2m_karras or unipc"):
        make_scheduler(name, base)
    assert make_scheduler(name, {**base, "rescale_betas_zero_snr": False})  # SD 2.x's case


@pytest.mark.parametrize("name", ["dpm++", "tcd", "auto"])
def test_unsupported_scheduler_raises_naming_the_supported_ones(name):
    with pytest.raises(ValueError, match="pndm, lms, ddim, .*unipc"):
        make_scheduler(name, {})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_seed_draws_the_same_noise_on_cuda_as_on_the_cpu():
    """x_T comes from a CPU generator (loop.NOISE), so a seed's noise does not depend on the
    device; a generator on the GPU would draw other numbers."""
    from precompute.model import load_components
    from tests.tiny_sd import tiny_pipeline_path

    gpu = load_components(tiny_pipeline_path("sd15"), device="cuda", dtype="fp32", scheduler="lms")
    (on_gpu,) = sweep(gpu, [1.0], capture_attention=False)
    (on_cpu,) = sweep(components(), [1.0], capture_attention=False)
    np.testing.assert_array_equal(on_gpu.latents[0], on_cpu.latents[0])

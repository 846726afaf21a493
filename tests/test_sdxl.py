"""SDXL in the precompute: the loop reproduces StableDiffusionXLPipeline (two text
encoders, pooled embeddings, size and crop conditioning), records both tokenizers'
tokens and the conditioning inputs, and captures attention at every cross-attention
level.

A tiny random SDXL pipeline folder, offline, fp32 on CPU, shaped like diffusers' own
fast tests (tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py
get_dummy_components) and SDXL base's block layout: a "text_time" UNet whose first block
has no attention and whose two cross-attention levels have 1 and 2 transformer layers
(SDXL: 2 and 10), two CLIP text encoders of different widths (the second with a projection, as
OpenCLIP ViT-bigG), the second tokenizer padding with "!" as SDXL's does.
Tolerance: 1e-6 of the compared tensor's scale, tests/test_loop.py's PIPELINE_RTOL, for
its reason: the loop and the pipeline do the same float32 operations on the same shapes;
a wrong pooled vector, time id or concatenation order moves the latent by a good
fraction of its scale (test_conditioning_inputs_change_the_latent shows how much).
"""

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from precompute import sdxl  # noqa: E402
from precompute.loop import encode_prompt_tokens, run_guidance_sweep  # noqa: E402
from precompute.model import load_components  # noqa: E402
from tests.browser_helpers import SKIP_REASON, browser_available  # noqa: E402
from tests.test_loop import PIPELINE_RTOL, assert_close_to_scale  # noqa: E402
from tests.tiny_sd import build_tokenizer  # noqa: E402

torch.set_num_threads(1)

PROMPT, NEGATIVE = "a photo of an astronaut riding a horse", "red circle"
STEPS, SIZE, SEED = 3, 16, 7
TIME_EMBED, PROJECTION = 8, 40  # addition_time_embed_dim; text_encoder_2's projection_dim


def build_sdxl_pipeline(path, seed=0):
    """Write a tiny random SDXL pipeline folder (StableDiffusionXLPipeline.save_pretrained)."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = build_tokenizer(), build_tokenizer()
    tokenizer_2.pad_token = "!"  # OpenCLIP's tokenizer pads with "!", CLIP's with its end token

    def text_config(hidden, projection):
        return CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37,
            num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77,
            projection_dim=projection, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, block_out_channels=(32, 32, 64),
        layers_per_block=1, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",), attention_head_dim=(2, 4, 8),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED, transformer_layers_per_block=(1, 1, 2),
        projection_class_embeddings_input_dim=6 * TIME_EMBED + PROJECTION,
        cross_attention_dim=32 + 48, norm_num_groups=32)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
                        sample_size=SIZE)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_config(32, 32))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(text_config(48, PROJECTION))
    # SDXL base's own: Euler, "leading" spacing, steps_offset 1
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                     scheduler=scheduler, add_watermarker=False)
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sdxl_path(tmp_path_factory):
    return build_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl") / "sdxl")


@pytest.fixture(scope="module")
def components(sdxl_path):
    return load_components(sdxl_path, device="cpu", dtype="fp32")


def sweep(c, scales, **kw):
    return run_guidance_sweep(c, PROMPT, SEED, scales, STEPS, SIZE, SIZE, **kw)


def pipeline_latent(c, guidance_scale, negative_prompt=None, guidance_rescale=0.0, **kw):
    """StableDiffusionXLPipeline's final latent; the CPU generator gives x_T."""
    out = c.pipeline()(
        PROMPT, negative_prompt=negative_prompt, guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale, num_inference_steps=STEPS, height=SIZE, width=SIZE,
        generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent", **kw)
    return out.images[0].numpy()  # (C, h, w)


def test_an_sdxl_folder_loads_both_text_encoders_and_its_own_scheduler(sdxl_path, components):
    assert sdxl.is_sdxl_checkpoint(sdxl_path) and sdxl.is_sdxl(components)
    assert components.force_zeros_for_empty_prompt is True
    info = components.describe()
    assert info["scheduler"]["name"] == "euler" and info["cross_attention_dim"] == 80
    assert info["tokenizer_2"]["pad_token"] == "!" and info["text_encoder_2"]["projection_dim"] == PROJECTION


def test_without_a_size_an_sdxl_model_runs_at_its_own_as_the_pipeline_does(sdxl_path):
    """unet.sample_size x the VAE's scale factor (SDXL base: 128 x 8 = 1024), not 512."""
    from precompute.run import _model_size
    from tests.tiny_sd import tiny_pipeline_path

    assert _model_size({"model": str(sdxl_path)}, {}) == {"height": SIZE, "width": SIZE}
    assert _model_size({}, {"model": str(sdxl_path), "height": 32}) == {}
    assert _model_size({"model": str(tiny_pipeline_path("sd15"))}, {}) == {}  # SD: DEFAULTS' 512
    assert _model_size({"model": "no/such-model"}, {}) == {}  # loading it says why


def test_a_refiner_shaped_checkpoint_is_refused_with_the_reason(sdxl_path, tmp_path):
    """The SDXL refiner has no first text encoder (model_index.json: null)."""
    import shutil

    refiner = tmp_path / "refiner"
    shutil.copytree(sdxl_path, refiner, ignore=shutil.ignore_patterns("text_encoder", "tokenizer"))
    index = json.loads((refiner / "model_index.json").read_text())
    index.update(text_encoder=[None, None], tokenizer=[None, None])
    (refiner / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="refiner"):
        load_components(refiner, device="cpu", dtype="fp32")


def test_final_latent_matches_the_sdxl_pipeline_with_negative_prompt_and_guidance_rescale(components):
    (run,) = sweep(components, [7.5], negative_prompt=NEGATIVE, guidance_rescale=0.7)
    assert_close_to_scale(run.latents[-1], pipeline_latent(components, 7.5, NEGATIVE, 0.7), PIPELINE_RTOL)


def test_without_a_negative_prompt_the_unconditional_row_is_zeros_as_in_the_pipeline(components):
    """force_zeros_for_empty_prompt; guidance 1 (no unconditional row) too."""
    runs = sweep(components, [1.0, 5.0], capture_attention=False)
    for run in runs:
        expected = pipeline_latent(components, run.guidance_scale)
        assert_close_to_scale(run.latents[-1], expected, PIPELINE_RTOL)
    empty = encode_prompt_tokens(components, "")
    assert empty["zeroed"] and not empty["embeddings"].any() and not empty["pooled"].any()


def test_a_turbo_style_run_without_guidance_matches_the_pipeline_at_guidance_0(components):
    """SDXL-Turbo's settings (Euler ancestral, trailing spacing, 1 step, no classifier-free
    guidance): diffusers' guidance_scale 0 is the prompt alone, guidance 1 here (the
    few-step rules, precompute/fewstep.py)."""
    from dataclasses import replace

    from precompute.model import make_scheduler

    turbo = replace(components, scheduler=make_scheduler(
        "euler_a", {**components.scheduler.config, "timestep_spacing": "trailing"}))
    (run,) = run_guidance_sweep(turbo, PROMPT, SEED, [1.0], 1, SIZE, SIZE, capture_attention=False)
    out = turbo.pipeline()(PROMPT, guidance_scale=0.0, num_inference_steps=1, height=SIZE, width=SIZE,
                           generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent")
    assert_close_to_scale(run.latents[-1], out.images[0].numpy(), PIPELINE_RTOL)
    assert run.noise_pred_uncond is None  # one UNet row: the prompt alone


def test_conditioning_inputs_change_the_latent(components):
    """The time ids reach the UNet: another original_size in the pipeline moves the latent
    far beyond the tolerance (so the parity tests would catch wrong time ids)."""
    ours = sweep(components, [5.0], capture_attention=False)[0].latents[-1]
    other = pipeline_latent(components, 5.0, original_size=(4 * SIZE, 4 * SIZE))
    assert np.abs(ours - other).max() > 100 * PIPELINE_RTOL * np.abs(other).max()
    time_ids = sdxl.add_time_ids(components, SIZE, 2 * SIZE)
    assert time_ids.tolist() == [[SIZE, 2 * SIZE, 0, 0, SIZE, 2 * SIZE]]


def test_tokens_of_both_tokenizers_are_recorded(components):
    tokens = encode_prompt_tokens(components, PROMPT)
    first, second = tokens, tokens["tokens_2"]
    assert first["n_real"] == second["n_real"] and first["pieces"][:first["n_real"]] == \
        second["pieces"][:second["n_real"]]  # the same BPE vocabulary
    assert first["pieces"][-1] == "<|endoftext|>" and second["pieces"][-1] == "!"  # the padding differs
    assert tokens["embeddings"].shape == (77, 32 + 48) and tokens["pooled"].shape == (PROJECTION,)
    assert not tokens["zeroed"]


def test_attention_is_captured_at_every_cross_attention_level(components):
    """Every transformer layer's attn2 of both levels and the mid block: 1 + 2 down, 2 mid,
    2 x (2 + 1) up (layers_per_block + 1 attentions per up block)."""
    (run,) = sweep(components, [5.0])
    layers = [n.removesuffix(".processor") for n in components.unet.attn_processors
              if n.endswith("attn2.processor")]
    meta = run.attention_meta
    captured = [n for r in meta["resolutions"].values() for n in r["layers"]]
    assert sorted(captured) == sorted(layers) and len(layers) == 11
    assert list(meta["resolutions"]) == ["res4", "res2", "mid"]
    assert meta["combined"]["from"] == ["res4", "res2"]
    k = encode_prompt_tokens(components, PROMPT)["n_real"]
    assert run.attention["combined"].shape == (k, STEPS, SIZE // 2, SIZE // 2)
    assert run.attention["res2"].shape == (k, STEPS, 2, 2)


# -- the bundle ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def sdxl_bundle(sdxl_path, tmp_path_factory):
    """A tiny SDXL bundle: one prompt, seed 1, guidance 0 and 5, 2 steps, 16 x 16 px."""
    import io

    from precompute.prompts import single_prompt_set
    from precompute.run import Options, precompute

    out = tmp_path_factory.mktemp("sdxl-bundle") / "b"
    settings = {"model": str(sdxl_path), "num_inference_steps": 2, "height": SIZE, "width": SIZE,
                "seeds": [1], "guidance_scales": [0, 5]}
    precompute(single_prompt_set(PROMPT, []), out, settings,
               Options(device="cpu", dtype="fp32", projection="pca", progress=False, workers=0,
                       log=io.StringIO()))
    return out


def test_an_sdxl_bundle_records_both_token_rows_and_the_conditioning_and_validates(sdxl_bundle):
    from backend.bundle import Bundle
    from backend.payloads import index, prompt
    from backend.validator import validate_bundle

    assert [p for p in validate_bundle(sdxl_bundle) if p.severity == "error"] == []
    b = Bundle(sdxl_bundle, checksums=True)
    assert b.config["conditioning"] == {"original_size": [SIZE, SIZE], "crops_coords_top_left": [0, 0],
                                        "target_size": [SIZE, SIZE], "force_zeros_for_empty_prompt": True}
    assert index(b)["config"]["conditioning"] == b.config["conditioning"]
    pid = next(p for p in b.prompts if p != "empty")
    doc = prompt(b, pid)
    assert doc["tokens_2"]["pieces"][-1] == "!" and doc["tokens"]["pieces"][-1] == "<|endoftext|>"
    assert doc["zeroed"] is False and prompt(b, "empty")["zeroed"] is True
    assert doc["text_embeddings"]["shape"] == [77, 32 + 48]


def test_a_bad_second_token_row_or_conditioning_is_named_by_the_validator(sdxl_bundle, tmp_path):
    import shutil

    from backend.validator import validate_bundle

    bad = tmp_path / "b"
    shutil.copytree(sdxl_bundle, bad, ignore=shutil.ignore_patterns(".work", ".tmp"))
    prompt_json = bad / "prompts" / "empty" / "prompt.json"
    doc = json.loads(prompt_json.read_text())
    doc["tokens_2"]["pieces"] = doc["tokens_2"]["pieces"][:5]
    prompt_json.write_text(json.dumps(doc))
    problems = [(p.file, p.field) for p in validate_bundle(bad, checksums=False)]
    assert ("prompts/empty/prompt.json", "tokens_2.pieces") in problems
    index_doc = json.loads((bad / "bundle.json").read_text())
    index_doc["config"]["conditioning"]["crops_coords_top_left"] = [-1, 0]
    (bad / "bundle.json").write_text(json.dumps(index_doc))
    problems = [(p.file, p.field) for p in validate_bundle(bad, checksums=False)]
    assert ("bundle.json", "config.conditioning.crops_coords_top_left") in problems


# -- the app's text level ----------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.skipif(not browser_available(), reason=SKIP_REASON)
def test_the_text_level_shows_both_token_rows_and_the_conditioning_inputs(page, sdxl_bundle, shots,
                                                                          base_url):
    from tests.browser_helpers import serve_bundle, wait_ready

    with serve_bundle(sdxl_bundle) as url:
        page.goto(f"{url}?open=text")
        wait_ready(page, 30_000)
        first, second = page.locator("#token-chips .chip"), page.locator("#token-chips-2 .chip")
        second.first.wait_for()
        labels, labels_2 = first.all_inner_texts(), second.all_inner_texts()
        assert labels_2[:-1] == labels[:-1] and labels[-1].startswith("end ×")
        assert re.fullmatch(r"“!” × \d+", labels_2[-1]), labels_2  # OpenCLIP pads with "!"
        conditioning = page.locator("#sdxl-conditioning")
        assert conditioning.get_attribute("data-time-ids") == f"{SIZE},{SIZE},0,0,{SIZE},{SIZE}"
        rows = page.locator("#sdxl-conditioning .conditioning-row").all_inner_texts()
        assert [r.split()[0] for r in rows] == ["original_size", "crops_coords_top_left", "target_size"]
        assert f"{SIZE} × {SIZE} px" in rows[0] and page.locator("#sdxl-zeros-note").is_visible()
        second.nth(2).click()  # a token of either row selects that position in both
        page.locator("#token-chips .chip.is-selected").wait_for()
        assert page.locator("#token-chips .chip.is-selected").inner_text() == labels[2]
        assert "token=2" in page.url
        for width, height in ((390, 844), (1366, 768), (1920, 1080)):
            page.set_viewport_size({"width": width, "height": height})
            page.locator("#sdxl-text").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / f"sdxl-text-{width}.png"))
    page.goto(f"{base_url}?open=text")  # an SD bundle: no second row
    wait_ready(page)
    page.locator("#token-chips .chip").first.wait_for()
    assert page.locator("#sdxl-text").is_hidden()

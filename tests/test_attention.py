"""Cross-attention capture: complete, faithful, and reduced the way the bundle says.

Runs on the tiny pipeline and on bare SD-1.5- and SD-2-shaped UNets (random weights,
8x8 latents, random encoder states) so layer counting is checked on the real shapes.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from precompute.attention import (  # noqa: E402
    CrossAttentionCapture,
    attention_probs,
    is_cross_attention,
    layer_resolution,
    level_heights,
)
from precompute.loop import encode_prompt_tokens, run_guidance_sweep  # noqa: E402
from tests.tiny_sd import build_sd_shaped_unet, sd_shaped_unet_config  # noqa: E402
from tests.tiny_sd import tiny_components as components  # noqa: E402

torch.set_num_threads(1)

PROMPT = "a photo of an astronaut riding a horse"


def n_cross_layers(unet):
    return sum(map(is_cross_attention, unet.attn_processors))


def capture_one_call(unet, encoder_hidden_states, latent_hw=(8, 8), n_tokens=5, rows=(0,),
                     combined_levels=None):
    """One UNet call with and without capture: (output, captured output, maps, capture)."""
    torch.manual_seed(0)
    sample = torch.randn(encoder_hidden_states.shape[0], unet.config.in_channels, *latent_hw)
    with torch.no_grad():
        plain = unet(sample, 500, encoder_hidden_states=encoder_hidden_states).sample
        with CrossAttentionCapture(unet, latent_hw, n_tokens, rows=rows, check_softmax=True,
                                   combined_levels=combined_levels) as capture:
            captured = unet(sample, 500, encoder_hidden_states=encoder_hidden_states).sample
            maps = capture.pop_step()
    return plain, captured, maps, capture


def test_softmax_over_all_77_keys_sums_to_one_per_pixel():
    c = components()
    embeds = torch.from_numpy(encode_prompt_tokens(c, PROMPT)["embeddings"])[None]
    attn = c.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    hidden = torch.randn(1, 16, attn.to_q.in_features)
    probs = attention_probs(attn, hidden, embeds)
    assert probs.shape == (1, attn.heads, 16, 77) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, attn.heads, 16), rtol=0, atol=1e-6)
    _, _, _, capture = capture_one_call(c.unet, embeds.repeat(2, 1, 1), rows=(0, 1))
    assert capture.max_softmax_error < 1e-6  # every layer, every pixel, every head


def test_every_cross_attention_layer_of_the_tiny_model_is_captured():
    c = components()
    (run,) = run_guidance_sweep(c, PROMPT, 0, [7.5], 2, 16, 16)
    meta = run.attention_meta
    assert meta["n_layers"] == n_cross_layers(c.unet) == 6
    captured = [name for r in meta["resolutions"].values() for name in r["layers"]]
    assert sorted(captured) == sorted(n.removesuffix(".processor") for n in c.unet.attn_processors
                                      if is_cross_attention(n))


@pytest.mark.parametrize("kind, resolutions", [
    ("sd15", {"res8": 5, "res4": 5, "res2": 5, "mid": 1}),
    ("sd2", {"res8": 5, "res4": 5, "res2": 5, "mid": 1}),
])
def test_every_cross_attention_layer_of_sd_shaped_unets_is_captured(kind, resolutions):
    unet = build_sd_shaped_unet(kind, sample_size=8)
    encoder_hidden_states = torch.randn(1, 77, sd_shaped_unet_config(kind)["cross_attention_dim"])
    plain, captured, maps, capture = capture_one_call(unet, encoder_hidden_states)
    assert n_cross_layers(unet) == 16 == capture.meta["n_layers"]
    assert {k: len(v["layers"]) for k, v in capture.meta["resolutions"].items()} == resolutions
    assert torch.equal(plain, captured)  # the stock processor still makes the output
    assert capture.max_softmax_error < 1e-5
    assert maps["res2"].shape == (1, 5, 2, 2) and maps["combined"].shape == (1, 5, 8, 8)
    del unet


def test_capture_does_not_change_the_unet_output_and_restores_processors():
    c = components()
    before = c.unet.attn_processors
    embeds = torch.randn(3, 77, 32)
    plain, captured, maps, _ = capture_one_call(c.unet, embeds, rows=(0, 2))  # non-contiguous rows
    assert torch.equal(plain, captured)
    assert maps["combined"].shape == (2, 5, 8, 8)
    assert c.unet.attn_processors == before


def test_maps_keep_only_the_prompts_real_tokens():
    c = components()
    tokens = encode_prompt_tokens(c, PROMPT)
    runs = run_guidance_sweep(c, PROMPT, 0, [0.0, 1.0, 7.5], 3, 16, 16)
    assert runs[0].attention is None  # guidance 0 has no text branch
    for run in runs[1:]:
        assert run.attention["combined"].shape == (tokens["n_real"], 3, 8, 8)  # (K, T, h, w)
        assert run.attention["res4"].shape == (tokens["n_real"], 3, 4, 4)
        # real tokens take part of the attention mass; padding takes the rest
        assert np.all(run.attention["res4"].sum(axis=0) <= 1 + 1e-5)


def test_combined_map_averages_upsampled_resolutions_without_the_mid_block():
    c = components()
    (run,) = run_guidance_sweep(c, PROMPT, 0, [7.5], 2, 16, 16)
    assert run.attention_meta["combined"]["from"] == ["res4"]
    assert "mid" in run.attention and "mid" not in run.attention_meta["combined"]["from"]
    k, t = run.attention["res4"].shape[:2]
    res4 = torch.from_numpy(run.attention["res4"]).reshape(k * t, 1, 4, 4)
    expected = F.interpolate(res4, size=(8, 8), mode="bilinear", align_corners=False).reshape(k, t, 8, 8)
    np.testing.assert_allclose(run.attention["combined"], expected.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["sd15", "sd2"])
def test_attention_levels_choose_what_the_combined_map_averages(kind):
    unet = build_sd_shaped_unet(kind, sample_size=8)
    states = torch.randn(1, 77, sd_shaped_unet_config(kind)["cross_attention_dim"])
    assert level_heights(unet.config, (8, 8)) == [8, 4, 2]  # from the config, before any call
    _, _, maps, capture = capture_one_call(unet, states, combined_levels=[8])
    assert capture.meta["combined"]["from"] == ["res8"]
    assert torch.equal(maps["combined"], maps["res8"])  # one level: its own map, unchanged
    _, _, maps, capture = capture_one_call(unet, states, combined_levels=[4, 8])
    assert capture.meta["combined"]["from"] == ["res8", "res4"]
    up = F.interpolate(maps["res4"], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps["combined"], (maps["res8"] + up) / 2)
    with pytest.raises(ValueError, match=r"attention_levels \[3\].*its levels are 8, 4, 2"):
        capture_one_call(unet, states, combined_levels=[3, 8])
    del unet


@pytest.mark.parametrize("kind, latent_hw", [("sd15", (8, 8)), ("sd2", (8, 8)), ("sd15", (5, 7)),
                                             ("tiny", (8, 8)), ("tiny", (8, 12))])
def test_level_heights_from_the_config_match_the_captured_levels(kind, latent_hw):
    unet = components().unet if kind == "tiny" else build_sd_shaped_unet(kind, sample_size=8)
    states = torch.randn(1, 77, unet.config.cross_attention_dim)
    _, _, _, capture = capture_one_call(unet, states, latent_hw=latent_hw)
    captured = sorted({capture.sizes[k][0] for k in capture.sizes if k != "mid"}, reverse=True)
    assert level_heights(unet.config, latent_hw) == captured


def test_non_square_latents_give_non_square_maps():
    assert layer_resolution((8, 12), 8 * 12) == (8, 12)
    assert layer_resolution((8, 12), 4 * 6) == (4, 6)
    assert layer_resolution((5, 7), 3 * 4) == (3, 4)  # stride-2 convs round up
    with pytest.raises(ValueError, match="no downsampling"):
        layer_resolution((8, 8), 7)
    (run,) = run_guidance_sweep(components(), PROMPT, 0, [1.0], 2, 16, 24)
    assert run.attention["res4x6"].shape[2:] == (4, 6)
    assert run.attention["combined"].shape[2:] == (8, 12)

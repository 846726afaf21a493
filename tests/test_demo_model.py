"""The demo model's tokenizer, components and training script, at micro size."""
import json

import numpy as np
import pytest

from precompute.demo import model as demo_model
from precompute.demo import train, world


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return demo_model.train_tokenizer(world.caption_corpus(), tmp_path_factory.mktemp("tok"))


def test_tokenizer_wraps_captions_in_start_and_end_tokens(tokenizer):
    ids = tokenizer("a large red circle on the left, on a blue background").input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == demo_model.BOS and tokens[-1] == demo_model.EOS
    assert tokens[1:5] == ["a</w>", "large</w>", "red</w>", "circle</w>"]


def test_every_caption_word_is_one_token(tokenizer):
    words = {w for c in world.caption_corpus()[::7] for w in c.replace(",", " ,").split()}
    for word in words:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_tokenizer_round_trips_and_pads_to_77(tokenizer):
    caption = "an orange star at the top and a white square at the bottom, on a green background"
    ids = tokenizer(caption, padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 == tokenizer.model_max_length
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ,", ",") == caption


def test_unknown_words_still_encode_from_bytes(tokenizer):
    ids = tokenizer("zebra!", add_special_tokens=False).input_ids
    assert tokenizer.eos_token_id not in ids  # the end token doubles as "unknown" in CLIP
    assert tokenizer.decode(ids) == "zebra !"  # CLIP decodes every `</w>` as a space


def test_two_step_training_saves_a_loadable_pipeline_that_generates(tmp_path):
    import torch
    from diffusers import StableDiffusionPipeline

    cfg = train.TrainConfig(out=str(tmp_path / "run"), size="micro", model=demo_model.MICRO,
                            vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4, eval_every=1)
    folder = train.train(cfg)
    assert (tmp_path / "run" / "loss_unet.png").exists()
    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    sched = pipe.scheduler.config
    assert sched.prediction_type == "v_prediction" and sched.rescale_betas_zero_snr
    assert sched.timestep_spacing == "trailing"
    assert pipe.vae.config.scaling_factor != 0.18215  # measured, not SD 1.5's
    out = pipe("a large red circle on the left, on a blue background", num_inference_steps=2,
               guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()
    state = json.loads((folder / "training_state.json").read_text())
    assert state["unet_steps"] == 2
    train.export(folder, tmp_path / "fp16")
    half = StableDiffusionPipeline.from_pretrained(str(tmp_path / "fp16"), dtype=torch.float32)
    assert next(half.unet.parameters()).dtype == torch.float32


def test_resume_continues_from_the_checkpoint(tmp_path):
    cfg = train.TrainConfig(out=str(tmp_path / "run"), size="micro", model=demo_model.MICRO,
                            vae_steps=1, vae_batch=2, unet_steps=1, unet_batch=2, eval_every=100)
    train.train(cfg)
    cfg.unet_steps = 2
    folder = train.train(cfg)
    assert json.loads((folder / "training_state.json").read_text())["unet_steps"] == 2


def test_stop_at_ends_early_on_the_longer_schedule_and_resume_finishes(tmp_path):
    cfg = train.TrainConfig(out=str(tmp_path / "run"), size="micro", model=demo_model.MICRO,
                            vae_steps=1, vae_batch=2, unet_steps=3, unet_batch=2, eval_every=100,
                            stop_at=1)
    folder = train.train(cfg)
    assert json.loads((folder / "training_state.json").read_text())["unet_steps"] == 1
    cfg.stop_at = 0
    train.train(cfg)
    assert json.loads((folder / "training_state.json").read_text())["unet_steps"] == 3
    assert train.parse_args(["--out", str(tmp_path / "x"), "--steps", "9500",
                             "--stop-at", "8885"])[0].stop_at == 8885


def test_cli_refuses_to_overwrite_checkpoints_without_resume(tmp_path):
    (tmp_path / "vae.pt").write_bytes(b"")
    with pytest.raises(SystemExit):
        train.parse_args(["--out", str(tmp_path)])
    assert train.parse_args(["--out", str(tmp_path), "--resume"])[0].out == str(tmp_path)


@pytest.fixture(scope="module")
def micro_pipe(tmp_path_factory):
    from precompute.demo import evaluate

    out = tmp_path_factory.mktemp("micro")
    cfg = train.TrainConfig(out=str(out), size="micro", model=demo_model.MICRO, vae_steps=1,
                            vae_batch=2, unet_steps=1, unet_batch=2, eval_every=100)
    return evaluate.load(str(train.train(cfg)))


def test_guidance_zero_ignores_the_prompt(micro_pipe):
    from precompute.demo import evaluate

    a = evaluate.generate(micro_pipe, ["a large red circle on the left, on a blue background"], 0.0,
                          num_inference_steps=3)
    b = evaluate.generate(micro_pipe, ["a small white star at the top, on a black background"], 0.0,
                          num_inference_steps=3)
    assert np.array_equal(a, b)


def test_recorded_cross_attention_sums_to_one_over_tokens(micro_pipe):
    from precompute.demo import evaluate

    scenes = evaluate.held_out(2, two_objects=False)
    maps = evaluate.word_maps(micro_pipe, scenes, num_inference_steps=2)  # (2, 77, 64, 64)
    per_pixel = maps.sum(1)  # layers x steps of distributions that each sum to 1
    assert np.allclose(per_pixel, 3 * 2, rtol=1e-4)  # the 16x16 level's 3 layers, 2 steps
    both = evaluate.word_maps(micro_pipe, scenes, num_inference_steps=2, levels=(16, 8))
    assert np.allclose(both.sum(1), 6 * 2, rtol=1e-4)  # and the 8x8 level's 3, never the mid
    assert all(type(p).__name__ != "AttentionRecorder" for p in micro_pipe.unet.attn_processors.values())


def shipped_micro(tmp_path, unet_steps: int):
    """A micro model trained (1 VAE step, unet_steps UNet steps) and exported to
    tmp_path / "shipped", as static/demo-model is."""
    first = train.TrainConfig(out=str(tmp_path / "a"), size="micro", model=demo_model.MICRO,
                              vae_steps=1, vae_batch=2, unet_steps=unet_steps, unet_batch=2,
                              eval_every=100)
    train.export(train.train(first), tmp_path / "shipped")


def test_init_from_an_exported_pipeline_continues_its_weights_and_step_count(tmp_path):
    import torch
    from diffusers import StableDiffusionPipeline

    shipped_micro(tmp_path, unet_steps=3)
    cfg, _ = train.parse_args(["--out", str(tmp_path / "b"), "--size", "micro", "--init-from",
                               str(tmp_path / "shipped"), "--steps", "3", "--batch", "2"])
    folder = train.train(cfg)  # already at step 3: nothing to train, the weights pass through
    shipped = StableDiffusionPipeline.from_pretrained(str(tmp_path / "shipped"), dtype=torch.float32)
    again = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32)
    for a, b in zip(shipped.unet.parameters(), again.unet.parameters()):
        assert torch.equal(a, b)
    assert again.vae.config.scaling_factor == shipped.vae.config.scaling_factor
    state = json.loads((folder / "training_state.json").read_text())
    assert (state["unet_steps"], state["vae_steps"]) == (3, 1)
    assert cfg.vae_steps == 1  # no --vae-steps: the pipeline's own count, so no VAE training
    cfg.unet_steps = 5
    folder = train.train(cfg)  # resumes: two more steps with a fresh optimizer
    assert json.loads((folder / "training_state.json").read_text())["unet_steps"] == 5
    with pytest.raises(SystemExit):  # --init-from never overwrites checkpoints
        train.parse_args(["--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "shipped")])


def test_more_vae_steps_on_an_init_from_pipeline_train_its_vae_on(tmp_path):
    import torch
    from diffusers import StableDiffusionPipeline

    shipped_micro(tmp_path, unet_steps=1)
    cfg, _ = train.parse_args(["--out", str(tmp_path / "b"), "--size", "micro", "--init-from",
                               str(tmp_path / "shipped"), "--vae-steps", "3", "--steps", "1"])
    cfg.vae_batch = 2
    folder = train.train(cfg)
    shipped = StableDiffusionPipeline.from_pretrained(str(tmp_path / "shipped"), dtype=torch.float32)
    again = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32)
    assert not torch.equal(shipped.vae.encoder.conv_in.weight, again.vae.encoder.conv_in.weight)
    assert again.vae.config.scaling_factor != shipped.vae.config.scaling_factor  # measured again
    assert json.loads((folder / "training_state.json").read_text())["vae_steps"] == 3


def test_unet_learning_rate_warms_up_then_decays_along_a_cosine():
    cfg = train.TrainConfig(unet_lr=1e-3, unet_lr_final=1e-4, unet_steps=1100, warmup=100)
    assert train.unet_lr(cfg, 0) == pytest.approx(1e-5)
    assert train.unet_lr(cfg, 99) == pytest.approx(1e-3 * (1 + np.cos(np.pi * 99 / 1100)) / 2
                                                   + 1e-4 * (1 - np.cos(np.pi * 99 / 1100)) / 2)
    assert train.unet_lr(cfg, 1100) == pytest.approx(1e-4)
    assert train.unet_lr(cfg, 600, start_step=100) == pytest.approx(5.5e-4)  # half-way
    assert train.unet_lr(cfg, 100, start_step=100) == pytest.approx(1e-3 / 100)  # new warm-up
    constant = train.TrainConfig(unet_lr=1e-3, warmup=100)
    assert train.unet_lr(constant, 5000) == 1e-3


def test_fresh_unet_keeps_only_the_vae_and_tokenizer(tmp_path):
    import torch
    from diffusers import StableDiffusionPipeline

    shipped_micro(tmp_path, unet_steps=1)
    cfg, _ = train.parse_args(["--out", str(tmp_path / "b"), "--size", "micro", "--init-from",
                               str(tmp_path / "shipped"), "--fresh-unet", "--unet-channels",
                               "32,32,64", "--steps", "1", "--batch", "2"])
    folder = train.train(cfg)
    shipped = StableDiffusionPipeline.from_pretrained(str(tmp_path / "shipped"), dtype=torch.float32)
    fresh = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32)
    assert list(fresh.unet.config.block_out_channels) == [32, 32, 64]
    assert json.loads((folder / "training_state.json").read_text())["unet_steps"] == 1
    for a, b in zip(shipped.vae.parameters(), fresh.vae.parameters()):
        assert torch.equal(a, b)
    resumed, _ = train.parse_args(["--out", str(tmp_path / "b"), "--resume", "--size", "micro"])
    assert resumed.model.unet_channels == (32, 32, 64)  # read back from the run's config


def test_two_object_fraction_reaches_the_training_config(tmp_path):
    fraction = lambda *argv: train.parse_args(["--out", str(tmp_path), *argv])[0].two_object_fraction  # noqa: E731
    assert fraction("--two-object-fraction", "0.5") == 0.5
    assert fraction() == world.TWO_OBJECT_FRACTION == 0.3


def test_strip_positions_leaves_a_share_of_captions_without_position_words(tmp_path):
    from precompute.demo import sketch

    rng = np.random.default_rng(3)
    _, captions, scenes = world.sample_batch(rng, 400)
    plain, _ = train.parse_args(["--out", str(tmp_path)])
    assert plain.strip_positions == 0.0
    before = train.training_captions(plain, np.random.default_rng(5), 7, captions, scenes)
    cfg, _ = train.parse_args(["--out", str(tmp_path), "--strip-positions", "0.3"])
    after = train.training_captions(cfg, np.random.default_rng(5), 7, captions, scenes)
    assert [c == "" for c in before] == [c == "" for c in after]  # the same ones dropped
    stripped = [a != b for a, b in zip(after, before)]
    assert all(a == sketch.caption_without_positions(s)
               for a, s, x in zip(after, scenes, stripped) if x)
    assert not any(w in a for a, x in zip(after, stripped) if x
                   for w in world.POSITION_PHRASES.values())
    share = sum(stripped) / sum(1 for b in before if b)
    assert 0.23 < share < 0.37, share  # 0.3 of about 360 captions: 3 sd is about 0.07
    assert train.training_captions(cfg, np.random.default_rng(5), 7, captions, scenes) == after
    (tmp_path / "config.json").write_text(json.dumps({"strip_positions": 0.3}))
    resumed, _ = train.parse_args(["--out", str(tmp_path), "--resume"])
    assert resumed.strip_positions == 0.3  # a resumed run keeps its share


@pytest.mark.parametrize("argv", [["--fresh-unet"], ["--unet-channels", "64,100,128"],
                                  ["--two-object-fraction", "1.5"], ["--stop-at", "30000"],
                                  ["--strip-positions", "-0.1"], ["--strip-positions", "2"],
                                  ["--unet-channels", "a,b,c"], ["--unet-channels", "64,128"]])
def test_cli_rejects_bad_model_options(tmp_path, argv, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--out", str(tmp_path / "x"), *argv])
    assert "error:" in capsys.readouterr().err


def test_the_text_levels_example_words_are_words_the_shipped_demo_knows():
    """The text level's example of context ("X" after "a black" is not "X" after "a white")
    is shown over the demo too: its words are whole tokens of the demo's vocabulary (and
    of Stable Diffusion's), not a word the demo would split into pieces."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    html = (root / "frontend" / "index.html").read_text()
    sentence = re.search(r"Every token's vector depends on the tokens before it, so ([^<]*)</p>", html)
    assert sentence, "the text level's example sentence moved"
    words = {w for quoted in re.findall(r'"([^"]+)"', sentence.group(1)) for w in quoted.split()}
    vocab = json.loads((root / "static" / "demo-model" / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert words and all(f"{w}</w>" in vocab for w in words), sorted(w for w in words if f"{w}</w>" not in vocab)

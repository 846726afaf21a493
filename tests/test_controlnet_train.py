"""The demo ControlNet's training (precompute/demo/controlnet_train.py): its sketches
(precompute/demo/sketch.py), its objective, a micro run on the shipped demo model (batch 2,
a few steps) that resumes to the same state and exports a ControlNet folder that loads
offline and changes the output, and the command line's one-line refusals."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from precompute.demo import controlnet_train as ct  # noqa: E402
from precompute.demo import model as demo_model  # noqa: E402
from precompute.demo import sketch, train, world  # noqa: E402
from tests.test_reflow import assert_same  # noqa: E402

BASE = Path(__file__).resolve().parents[1] / "static" / "demo-model"
PAIR = world.Scene("white", (world.SceneObject("red", "star", "left", dx=1),
                             world.SceneObject("blue", "triangle", "right", dy=-1)))


def test_a_sketch_is_deterministic_per_seed_grey_and_blind_to_colour():
    image, regions = sketch.draw_sketch(PAIR, np.random.default_rng(5))
    again, regions_again = sketch.draw_sketch(PAIR, np.random.default_rng(5))
    assert np.array_equal(image, again) and np.array_equal(regions, regions_again)
    assert not np.array_equal(image, sketch.draw_sketch(PAIR, np.random.default_rng(6))[0])
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    recoloured = world.Scene("black", tuple(replace(o, colour=c) for o, c in
                                            zip(PAIR.objects, ("yellow", "green"))))
    assert np.array_equal(sketch.draw_sketch(recoloured, np.random.default_rng(5))[0], image)
    # where the objects are, roughly: each region overlaps its own mask, not the other's
    masks = world.masks(PAIR)
    for i in (0, 1):
        iou = (regions[i] & masks[i]).sum() / (regions[i] | masks[i]).sum()
        assert iou > 0.5 and not (regions[i] & masks[1 - i]).any()
    assert image[:3].max() == 0 and image[-3:].max() == 0  # black above and below them


def test_a_fixed_sketch_kind_keeps_the_wobble_and_the_command_draws_a_caption(tmp_path, capsys):
    """--kind changes how an object is drawn, not where: the first object's region (its
    outline's wobble, drawn before its strokes) is the random kind's; the command writes a caption's sketch and
    refuses a caption outside the world in one line."""
    from PIL import Image

    _, regions = sketch.draw_sketch(PAIR, np.random.default_rng(5))
    filled, filled_regions = sketch.draw_sketch(PAIR, np.random.default_rng(5), kind="filled")
    outline, _ = sketch.draw_sketch(PAIR, np.random.default_rng(5), kind="outline")
    assert np.array_equal(regions[0], filled_regions[0])
    assert (filled[..., 0] > 0).sum() > (outline[..., 0] > 0).sum()  # filled covers more
    out = tmp_path / "s.png"
    assert sketch.main([world.caption_of(PAIR), "--out", str(out), "--seed", "5"]) == 0
    parsed = world.parse_caption(world.caption_of(PAIR))  # no jitter: captions do not say it
    assert np.array_equal(np.asarray(Image.open(out)), sketch.draw_sketch(
        parsed, np.random.default_rng(5))[0])
    with pytest.raises(SystemExit) as e:
        sketch.main(["a purple cat", "--out", str(out)])
    assert e.value.code == 2 and "not a demo-world caption" in capsys.readouterr().err


def test_captions_without_positions_keep_what_and_drop_where():
    caption = sketch.caption_without_positions(PAIR)
    assert caption == "a red star and a blue triangle, on a white background"
    assert not any(p in caption for p in world.POSITION_PHRASES.values())


@pytest.fixture(scope="module")
def base():
    return ct.load_base(str(BASE), "cpu")


def test_the_objective_is_the_teachers_v_prediction_plus_residuals(base):
    """A fresh ControlNet adds zero residuals: its loss is train.diffusion_loss exactly."""
    torch.manual_seed(0)
    net = ct.build_controlnet(base.unet, base.vae_scale_factor)
    cfg = ct.ControlConfig()
    images, control, captions, _, _ = ct.sample_batch(cfg, np.random.default_rng(1), 2, "train",
                                                      0.5, 0.0)
    scheduler = demo_model.training_scheduler()
    got = ct.controlnet_loss(cfg, base, net, scheduler, images, control, captions,
                             torch.Generator().manual_seed(3))
    want = train.diffusion_loss(cfg, base.vae, base.unet, base.text_encoder, base.tokenizer,
                                scheduler, images, captions, torch.Generator().manual_seed(3))
    assert got.item() == want.item()
    # the conditioning embedding downsamples the 64 px sketch to the 16x16 latents
    down, _ = net(torch.zeros(1, 4, 16, 16), 5, torch.zeros(1, 77, 128), torch.zeros(1, 3, 64, 64),
                  return_dict=False)
    assert down[0].shape[-2:] == (16, 16)


def test_object_weight_weighs_the_sketched_latents_and_none_is_the_plain_mean(base):
    """region_weight is 1 + W x (the share of each 4x4 pixel block the sketch covers); a
    weight of ones gives the plain MSE (to float32 rounding: a sum over 2,048 terms of
    order 1, so 1e-6 of the loss), and weight on the region alone gives the region's MSE."""
    cfg = ct.ControlConfig()
    images, control, captions, _, regions = ct.sample_batch(cfg, np.random.default_rng(2), 2,
                                                            "train", 1.0, 0.0)
    w = ct.region_weight(regions, 16, 4.0)  # (2, 1, 16, 16)
    union = torch.from_numpy(np.stack([r.any(axis=0) for r in regions]))
    assert w.shape == (2, 1, 16, 16) and w.min() == 1.0 and w.max() == 5.0
    assert torch.allclose(w[:, 0], 1 + 4 * union.float().reshape(2, 16, 4, 16, 4).mean((2, 4)))
    torch.manual_seed(0)
    net = ct.build_controlnet(base.unet, base.vae_scale_factor)
    scheduler = demo_model.training_scheduler()

    def loss(weight):
        return ct.controlnet_loss(cfg, base, net, scheduler, images, control, captions,
                                  torch.Generator().manual_seed(3), weight=weight).item()

    plain = loss(None)
    assert abs(loss(torch.ones(2, 1, 16, 16)) - plain) <= 1e-6 * plain
    inside, outside = loss((w > 1).float()), loss((w == 1).float())
    share = (w > 1).float().mean().item()  # the plain mean splits into the two regions' means
    assert abs(share * inside + (1 - share) * outside - plain) <= 1e-5 * plain
    assert abs(loss(w) - plain) > 1e-4 * plain  # the weight changes what is minimised


def micro(out, **kw) -> ct.ControlConfig:
    return ct.ControlConfig(**{"out": str(out), "base": str(BASE), "steps": 3, "batch": 2,
                               "val_size": 2, "eval_every": 2, "warmup": 1, "lr": 1e-2,
                               "checkpoint_minutes": 100, **kw})


@pytest.mark.slow
def test_a_micro_run_resumes_to_the_same_state_and_its_controlnet_steers_the_image(tmp_path):
    from PIL import Image
    from safetensors.torch import load_file

    straight = micro(tmp_path / "a")
    assert ct.train(straight)
    interrupted = micro(tmp_path / "b", stop_at=1)
    assert not ct.train(interrupted)
    assert ct.train(micro(tmp_path / "b"))
    a = torch.load(tmp_path / "a" / ct.CHECKPOINT, weights_only=False)
    assert_same(a, torch.load(tmp_path / "b" / ct.CHECKPOINT, weights_only=False), "checkpoint")
    assert a["step"] == 3 and len(a["losses"]) == 3 and a["val"][0][0] == 2
    assert (tmp_path / "a" / "loss_controlnet.png").exists()
    folder = tmp_path / "a" / ct.FOLDER
    assert json.loads((folder / "training_state.json").read_text())["steps"] == 3
    assert not any(p.name.endswith((".tmp", ".old")) for p in (tmp_path / "a").iterdir())

    ct.export(folder, tmp_path / "fp16")  # the copy that would ship
    weights = load_file(tmp_path / "fp16" / "diffusion_pytorch_model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float16}
    pipe = ct.load_pipeline(BASE, tmp_path / "fp16")  # offline, fp32
    control, _ = sketch.draw_sketch(PAIR, np.random.default_rng(0))
    run = lambda scale: pipe("a red star, on a white background", image=Image.fromarray(control),  # noqa: E731
                             num_inference_steps=2, guidance_scale=3.0, output_type="latent",
                             controlnet_conditioning_scale=scale,
                             generator=torch.Generator().manual_seed(0)).images
    with_control, without = run(1.0), run(0.0)
    # scale 0 adds zero residuals: exactly the plain pipeline; scale 1 moves the latents by
    # far more than float rounding (1e-6 of their scale, about 1)
    assert torch.equal(without, demo_model.make_pipeline(
        pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.scheduler)(
        "a red star, on a white background", num_inference_steps=2, guidance_scale=3.0,
        output_type="latent", generator=torch.Generator().manual_seed(0)).images)
    assert (with_control - without).abs().max() > 1e-3 * without.abs().max()


def test_cubic_timesteps_are_mostly_high_noise_and_uniform_ones_are_the_teachers():
    """"cubic" (t = (1 - u^3) T) puts a share 0.5^(1/3) = 0.794 of the samples above T/2
    (t > T/2 when u < 0.5^(1/3)); 20,000 draws estimate it within 0.003 (one standard
    error), so 0.02 is a wide margin. "uniform" draws exactly what train.diffusion_loss draws."""
    t = ct.sample_timesteps(20_000, 1000, "cubic", torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.min() >= 0 and t.max() <= 999
    assert abs((t > 500).float().mean().item() - 0.5 ** (1 / 3)) < 0.02
    assert (t >= 900).float().mean() > 0.25  # uniform: 0.10
    uniform = ct.sample_timesteps(64, 1000, "uniform", torch.Generator().manual_seed(1))
    assert torch.equal(uniform, torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(1)))


@pytest.mark.slow
def test_a_run_can_start_from_a_trained_controlnet(tmp_path, capsys):
    """--init: the shipped ControlNet's weights are where a fine-tuning run starts (one step
    at a learning rate of 1e-9 leaves them within 1e-4 of their scale, while a fresh copy of
    the UNet's encoder has zero output convolutions); a resume with another --init or
    --timesteps or --object-weight is refused."""
    from diffusers import ControlNetModel

    shipped = Path(__file__).resolve().parents[1] / "static" / "demo-controlnet"
    cfg = micro(tmp_path / "ft", steps=1, lr=1e-9, init=str(shipped), timesteps="cubic")
    assert ct.train(cfg)
    start = ControlNetModel.from_pretrained(str(shipped), torch_dtype=torch.float32).state_dict()
    tuned = ControlNetModel.from_pretrained(str(tmp_path / "ft" / ct.FOLDER)).state_dict()
    scale = max(v.abs().max().item() for v in start.values())
    assert max((tuned[k] - v).abs().max().item() for k, v in start.items()) < 1e-4 * scale
    assert start["controlnet_mid_block.weight"].abs().max() > 0  # not a fresh copy
    state = json.loads((tmp_path / "ft" / ct.FOLDER / "training_state.json").read_text())
    assert state["init"] == str(shipped) and state["timesteps"] == "cubic"
    from dataclasses import asdict

    run = tmp_path / "run"  # a run's config.json as the command line writes it
    run.mkdir()
    (run / "config.json").write_text(json.dumps(asdict(ct.ControlConfig(
        base=str(BASE), init=str(shipped), timesteps="cubic"))))
    capsys.readouterr()
    for flag, value in (("--init", str(tmp_path / "ft" / ct.FOLDER)), ("--timesteps", "uniform"),
                        ("--object-weight", "4")):
        argv = ["controlnet", "--out", str(run), "--resume", "--base", str(BASE),
                "--timesteps", "cubic", "--init", str(shipped), flag, value]
        with pytest.raises(SystemExit):
            train.main(argv)
        err = capsys.readouterr().err
        assert f"{flag} " in err and "differs from the run's" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--strip-positions", "1.5"], "--strip-positions 1.5: a share between 0 and 1"),
    (["--stop-at", "9", "--steps", "5"], "--stop-at 9: a step from 1 to --steps (5)"),
    (["--lr", "nan"], "--lr nan: must be a finite number"),
    (["--base", "nowhere"], "--base nowhere: not a pipeline folder"),
    (["--init", "nowhere"], "--init nowhere: not a ControlNetModel folder"),
    (["--timesteps", "log"], "--timesteps: invalid choice: 'log'"),
    (["--object-weight", "-1"], "--object-weight -1.0: a number from 0 to 100"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags_are_refused_in_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["controlnet", "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_a_run_is_never_restarted_or_resumed_with_other_batches(tmp_path, capsys):
    from dataclasses import asdict

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(asdict(ct.ControlConfig(base=str(BASE)))))
    for argv, message in ((["--base", str(BASE)], "pass --resume"),
                          (["--base", str(BASE), "--resume", "--seed", "1"], "--seed 1 differs"),
                          (["--base", str(tmp_path), "--resume"], "not a pipeline folder")):
        with pytest.raises(SystemExit):
            train.main(["controlnet", "--out", str(run), *argv])
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1, err
    sd2 = tmp_path / "eps"  # a base of another recipe (epsilon prediction) is refused
    (sd2 / "scheduler").mkdir(parents=True)
    (sd2 / "model_index.json").write_text("{}")
    (sd2 / "scheduler" / "scheduler_config.json").write_text('{"prediction_type": "epsilon"}')
    with pytest.raises(SystemExit):
        train.main(["controlnet", "--out", str(tmp_path / "x"), "--base", str(sd2)])
    assert "prediction_type 'epsilon'" in capsys.readouterr().err

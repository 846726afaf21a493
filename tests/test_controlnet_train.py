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


def micro(out, **kw) -> ct.ControlConfig:
    return ct.ControlConfig(out=str(out), base=str(BASE), steps=3, batch=2, val_size=2,
                            eval_every=2, warmup=1, lr=1e-2, checkpoint_minutes=100, **kw)


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


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--strip-positions", "1.5"], "--strip-positions 1.5: a share between 0 and 1"),
    (["--stop-at", "9", "--steps", "5"], "--stop-at 9: a step from 1 to --steps (5)"),
    (["--lr", "nan"], "--lr nan: must be a finite number"),
    (["--base", "nowhere"], "--base nowhere: not a pipeline folder"),
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

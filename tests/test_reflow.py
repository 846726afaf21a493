"""The demo model's students (precompute/demo/reflow.py): teacher pairs, the 2-rectified flow
and the one-step student, on a micro teacher, offline."""
import json

import numpy as np
import pytest
import torch

from precompute.demo import model as demo_model
from precompute.demo import reflow, train, world

CAPTION = "a large red circle on the left, on a blue background"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A micro teacher (1 VAE step, 1 UNet step), exported in fp16 as static/demo-model is."""
    root = tmp_path_factory.mktemp("teacher")
    cfg = train.TrainConfig(out=str(root / "run"), size="micro", model=demo_model.MICRO,
                            vae_steps=1, vae_batch=2, unet_steps=1, unet_batch=2, eval_every=100)
    train.export(train.train(cfg), root / "shipped")
    return root / "shipped"


def micro_config(out, teacher) -> reflow.ReflowConfig:
    """10 pairs in shards of 5 (the last one held out), 2 DDIM steps, a few training steps."""
    return reflow.ReflowConfig(out=str(out), teacher=str(teacher), pairs=10, shard_size=5,
                               teacher_steps=2, val_pairs=1, reflow_steps=3, student_pairs=10,
                               student_steps=2, distill_steps=2, batch=4, warmup=1,
                               eval_every=2, checkpoint_minutes=100)


@pytest.fixture(scope="module")
def straight(teacher, tmp_path_factory):
    """All three stages in one uninterrupted run."""
    out = tmp_path_factory.mktemp("straight")
    cfg = micro_config(out, teacher)
    assert reflow.run(cfg) == {"pairs": True, "reflow": True, "distill": True}
    return cfg


@pytest.mark.slow
def test_pairs_are_the_teachers_own_ddim_samples_from_seeded_noise(straight):
    shard = torch.load(reflow.shard_path(reflow.Path(straight.out) / "pairs", 1), weights_only=False)
    assert shard["indices"] == [5, 6, 7, 8, 9]
    i = 2  # pair 7, computed again alone: a pair does not depend on its batch
    noise = reflow.pair_noise(straight, reflow.RNG_PAIR_NOISE, 7, (4, 16, 16))
    assert torch.equal(shard["noise"][i], noise)
    pipe = reflow.load_teacher(straight.teacher)
    alone = pipe([shard["captions"][i]], latents=noise[None], output_type="latent",
                 num_inference_steps=2, guidance_scale=3.0).images[0]
    # batch size changes the float summation order only: 1e-4 of the latents' scale (about 1)
    assert torch.allclose(shard["latents"][i], alone, atol=1e-4 * alone.abs().max())
    assert not torch.allclose(shard["latents"][i], noise, atol=0.1)  # the ODE moved it
    scenes = [world.parse_caption(c) for c in shard["captions"]]
    assert not any(world.is_held_out(s) for s in scenes)  # captions from the training split


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_state(straight, tmp_path):
    cfg = micro_config(tmp_path / "b", straight.teacher)
    cfg.stop_at = 1  # stopped after one step of the reflow
    assert reflow.run(cfg) == {"pairs": True, "reflow": False}
    assert torch.load(tmp_path / "b" / "reflow.pt", weights_only=False)["step"] == 1
    pairs = tmp_path / "b" / "pairs"
    reflow.shard_path(pairs, 1).unlink()  # as if killed while writing shard 1: a .tmp is left
    reflow.shard_path(pairs, 1).with_suffix(".tmp").write_bytes(b"partial")
    cfg.stop_at = 0
    assert reflow.run(cfg, ("pairs", "reflow")) == {"pairs": True, "reflow": True}
    cfg.stop_at = 1
    assert reflow.run(cfg, ("distill",)) == {"distill": False}
    cfg.stop_at = 0
    assert reflow.run(cfg) == {"pairs": True, "reflow": True, "distill": True}
    for name in ("pairs/shard_00001.pt", "student-pairs/shard_00000.pt", "reflow.pt", "distill.pt"):
        a = torch.load(reflow.Path(straight.out) / name, weights_only=False)
        b = torch.load(tmp_path / "b" / name, weights_only=False)
        assert_same(a, b, name)


def assert_same(a, b, where: str) -> None:
    """Equal nested checkpoints: tensors bit for bit, losses exactly (same ops, same order)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where  # nan == nan for a missing held-out value


@pytest.mark.slow
def test_the_students_load_offline_differ_from_the_teacher_and_step_as_stated(straight, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    out = reflow.Path(straight.out)
    assert (out / "loss_reflow.png").exists() and (out / "loss_distill.png").exists()
    teacher = reflow.load_teacher(straight.teacher)
    flow = reflow.load_student(out / "rectified-flow")
    one = reflow.load_student(out / "one-step")
    for pipe in (flow, one):
        assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
        assert any(not torch.equal(a, b) for a, b in zip(pipe.unet.parameters(),
                                                         teacher.unet.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(one.unet.parameters(), flow.unet.parameters()))
    state = json.loads((out / "one-step" / "training_state.json").read_text())
    assert (state["stage"], state["steps"], state["guidance_scale"]) == ("distill", 2, 1.0)
    # one Euler step from sigma 1 to 0 is x0 = z - v(z, timestep 1000): the stated convention
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    got = one(CAPTION, latents=z, num_inference_steps=1, guidance_scale=1.0,
              output_type="latent").images
    with torch.no_grad():
        hidden = train.encode_text(one.tokenizer, one.text_encoder, [CAPTION], "cpu")
        v = one.unet(z, torch.tensor([1000.0]), hidden).sample
    assert torch.allclose(got, z - v, atol=1e-5 * v.abs().max())  # fp32 rounding only
    images = one(CAPTION, num_inference_steps=1, guidance_scale=1.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    reflow.export(out / "one-step", tmp_path / "fp16")  # the copy that would ship
    name = "vae/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "fp16" / name).read_bytes() == (reflow.Path(straight.teacher) / name).read_bytes()
    assert reflow.load_student(tmp_path / "fp16").unet.dtype == torch.float32


def test_the_cli_runs_under_train_demo_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    from dataclasses import asdict

    teacher = tmp_path / "teacher"  # the checks below never load it
    teacher.mkdir()
    (teacher / "model_index.json").write_text("{}")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(asdict(reflow.ReflowConfig(teacher=str(teacher)))))
    from backend import cli

    with pytest.raises(SystemExit):
        cli.main(["train-demo", "students", "--help"])
    assert "usage: noisepath train-demo students" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train.main(["students", "--out", str(tmp_path / "x"), "--teacher", str(tmp_path)])
    assert "not a pipeline folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a run's folder is never restarted by accident
        train.main(["students", "--out", str(run), "--teacher", str(teacher)])
    assert "--resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # nor resumed with other pairs
        train.main(["students", "--out", str(run), "--teacher", str(teacher), "--resume",
                    "--seed", "1"])
    assert "--seed 1 differs" in capsys.readouterr().err
    code = train.main(["students", "--out", str(tmp_path / "y"), "--teacher", str(teacher),
                       "--stage", "distill"])
    err = capsys.readouterr().err
    assert code == 2 and "run stage reflow to its end first" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "y" / "run.lock").exists()  # released on the way out
    (tmp_path / "y" / "run.lock").write_text("1")  # a live process (init) holds the folder
    code = train.main(["students", "--out", str(tmp_path / "y"), "--teacher", str(teacher),
                       "--resume"])
    assert code == 2 and "in use by process 1" in capsys.readouterr().err

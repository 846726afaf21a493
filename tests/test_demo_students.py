"""The shipped students (static/demo-students: the 2-rectified flow and the one-step
student made from static/demo-model by `noisepath train-demo students`) load offline and
generate, and the demo bundle's "Fifty steps, four, one" section was made by them: the
same model files, the teacher at 50, 4 and 1 steps beside the students at 1, 2, 4 and 1."""

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
STUDENTS = ROOT / "static" / "demo-students"
TEACHER = ROOT / "static" / "demo-model"
BUNDLE = ROOT / "static" / "demo-bundle"


def test_the_bundles_fewstep_section_was_made_by_the_shipped_models():
    from precompute.fewstep_bundle import folder_sha256

    index = json.loads((BUNDLE / "fewstep" / "index.json").read_text())
    models = {m["id"]: m for m in index["models"]}
    assert set(models) == {"teacher", "rectified-flow", "one-step"}
    for m in models.values():  # the section's up-to-date check hashes the same files
        assert m["model_sha256"] == folder_sha256(ROOT / m["model"]), m["id"]
    assert Path(models["rectified-flow"]["model"]).parts[-2:] == ("demo-students", "rectified-flow")
    assert models["teacher"]["guidance_scale"] == 3 and models["one-step"]["guidance_scale"] == 1
    bundle = json.loads((BUNDLE / "bundle.json").read_text())
    firsts = {g["prompts"][0] for g in bundle["groups"] if g["prompts"]}
    assert {e["prompt_id"] for e in index["examples"]} == firsts  # every group's first prompt
    for e in index["examples"]:
        paths = sorted((p["model"], p["num_inference_steps"]) for p in e["paths"])
        assert paths == [("one-step", 1), ("rectified-flow", 1), ("rectified-flow", 2),
                         ("rectified-flow", 4), ("teacher", 1), ("teacher", 4), ("teacher", 50)]


@pytest.mark.slow
def test_the_shipped_students_load_offline_and_their_one_step_is_not_the_teachers(monkeypatch):
    """Each student is a StableDiffusionPipeline folder with a flow-matching scheduler,
    sampled at guidance 1; from the same noise the one-step student's image differs from
    the teacher's single DDIM step (the blur the lesson is about) by far more than float
    rounding."""
    pytest.importorskip("torch")
    import torch

    from precompute.demo.reflow import load_student, load_teacher

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    teacher = load_teacher(TEACHER)
    noise = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(1))
    prompt = "a large red circle on the left, on a blue background"
    slow = teacher(prompt, latents=noise, num_inference_steps=1, guidance_scale=3.0,
                   output_type="np").images[0]
    for name in ("rectified-flow", "one-step"):
        student = load_student(STUDENTS / name)
        assert type(student.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
        state = json.loads((STUDENTS / name / "training_state.json").read_text())
        assert state["guidance_scale"] == 1.0 and state["steps"] == state["of_steps"]
        image = student(prompt, latents=noise, num_inference_steps=1, guidance_scale=1.0,
                        output_type="np").images[0]
        assert image.shape == slow.shape == (64, 64, 3) and np.isfinite(image).all()
        # 8-bit pixels: 0.05 is 13 levels on average, far above rounding
        assert np.abs(image - slow).mean() > 0.05, name

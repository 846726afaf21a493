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
                                          ("colour", 0.95), ("shape", 0.8)])
def test_default_guidance_follows_held_out_prompts(adherence, attr, target):
    """colour: the issue's target is 0.95, 46 of these 48. The weights shipped on 3 December
    2026 (fine-tuned with captions without position words) get 46 (0.958); those before
    got 45 and this was a strict xfail. At the threshold, but not on a knife's edge: every
    colour read right is at least 16.5 RGB units nearer its palette colour than the next
    one (pixels are uint8; 1 and 2 torch threads give the same pixels), so float noise
    cannot turn a hit into a miss (benchmarks/bench_demo_colour_margins.py measures both).
    docs/demo-model.md has the tables."""
    assert adherence[3.0][attr] >= target, adherence[3.0]


def test_guidance_zero_is_near_chance(adherence):
    row = adherence[0.0]
    for attr, chance in CHANCE.items():
        assert row[attr] <= chance + 0.2, (attr, row)

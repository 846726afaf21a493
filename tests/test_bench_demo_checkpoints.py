"""benchmarks/bench_demo_checkpoints.py, the checkpoint picker on the selection draw: two
folders with the same weights score the same (same captions, same noise, one judge), the
draw is the selection draw and not the tests' (held_out seed 12 against 11), and a folder
that is not a pipeline is a one-line error."""

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tests.bench_loader import load_benchmark  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "static" / "demo-model"


def test_the_selection_draw_is_not_the_test_draw():
    from precompute.demo import evaluate
    test = [s.caption for s in evaluate.held_out(48, two_objects=False)]
    selection = [s.caption for s in evaluate.held_out(48, two_objects=False, seed=12)]
    assert selection != test
    assert len(set(selection) - set(test)) >= 24  # mostly other captions, not a reshuffle


@pytest.mark.slow
def test_same_weights_score_the_same(tmp_path, capsys):
    bench = load_benchmark("bench_demo_checkpoints")
    copy = tmp_path / "copy"
    shutil.copytree(MODEL, copy)
    threads = torch.get_num_threads()
    try:
        assert bench.main([str(MODEL), str(copy), "--n", "2", "--steps", "2",
                           "--json", str(tmp_path / "out.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "out.json").read_text())["results"]
    assert list(results) == [str(MODEL), str(copy)]
    a, b = results.values()
    assert list(a) == ["one object, guidance 3", "two objects, guidance 3"]
    assert a == b
    for row in a.values():
        assert all(0.0 <= v <= 1.0 for v in row.values()), row
    printed = capsys.readouterr().out
    assert f"| {copy} | two objects, guidance 3 |" in printed


def test_not_a_pipeline_is_a_one_line_error(tmp_path, capsys):
    bench = load_benchmark("bench_demo_checkpoints")
    with pytest.raises(SystemExit) as e:
        bench.main([str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("not a pipeline folder (no model_index.json)")

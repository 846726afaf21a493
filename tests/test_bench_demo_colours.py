"""benchmarks/bench_demo_colours.py: every (object colour, background) pair gets its
captions, each a caption of the world with that pair; the bench runs end to end on the
shipped model (numbers checked for being well formed, not good)."""

import pytest

from tests.bench_loader import load_benchmark


def test_every_colour_background_pair_has_its_captions():
    from precompute.demo import world

    bench = load_benchmark("bench_demo_colours")
    scenes = bench.captions(2, seed=7)
    n = len(world.COLOURS)
    assert len(scenes) == 2 * n * (n - 1)
    pairs = {(s.objects[0].colour, s.background) for s in scenes}
    assert len(pairs) == n * (n - 1) and all(c != bg for c, bg in pairs)
    assert set(bench.POSITIONS) == set(world.POSITIONS)
    assert all(world.parse_caption(s.caption) == s for s in scenes)  # captions of the world
    assert [s.caption for s in scenes] == [s.caption for s in bench.captions(2, seed=7)]


@pytest.mark.slow
def test_the_bench_prints_both_tables(capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from pathlib import Path

    bench = load_benchmark("bench_demo_colours")
    model = str(Path(__file__).resolve().parent.parent / "static" / "demo-model")
    threads = torch.get_num_threads()
    try:
        assert bench.main([model, model, "--per-pair", "1", "--steps", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "| colour read right, by object colour | all |" in out
    assert "| colour read right, by background | all |" in out
    assert "worse in" in out and "better in" in out

"""benchmarks/bench_demo_colour_margins.py: the margin is what it says, and the bench runs end
to end on the shipped model (a quick draw: numbers checked for being well formed)."""

import numpy as np
import pytest

from tests.bench_loader import load_benchmark


def test_the_margin_is_the_gap_between_the_two_nearest_palette_colours():
    from precompute.demo import judge, world

    bench = load_benchmark("bench_demo_colour_margins")
    red, orange = (np.array(world.COLOURS[c], dtype=np.float32) for c in ("red", "orange"))
    for rgb, expected_read in ((red, "red"), ((red + orange) / 2 + 1, None)):
        image = np.zeros((64, 64, 3), np.uint8)  # the world's black background, one 16x16 object
        image[:] = world.COLOURS["black"]
        image[20:36, 20:36] = rgb.round().astype(np.uint8)
        reading = judge.read_scene(image)
        read = reading.objects[0].colour
        m = bench.margin(image, reading)
        pal = judge._PALETTE
        d = np.sort(np.sqrt(((pal - image[28, 28].astype(np.float32)) ** 2).sum(-1)))
        assert m == pytest.approx(d[1] - d[0], rel=1e-6)
        if expected_read:  # a pure palette colour: its margin is its distance to the next
            assert read == expected_read and m == pytest.approx(d[1], rel=1e-6)
        else:  # halfway between red and orange: a small margin, near the decision
            assert m < 0.1 * np.linalg.norm(red - orange) + 2


def test_not_a_pipeline_is_a_one_line_error(tmp_path, capsys):
    bench = load_benchmark("bench_demo_colour_margins")
    with pytest.raises(SystemExit) as e:
        bench.main(["--model", str(tmp_path)])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("not a pipeline folder (no model_index.json)")


@pytest.mark.slow
def test_the_bench_runs_on_the_shipped_model(capsys):
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    try:
        assert load_benchmark("bench_demo_colour_margins").main(["--n", "3", "--steps", "3"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "largest pixel difference, 1 against 2 torch threads:" in out
    assert "1 thread(s): colour read right in" in out and "2 thread(s): colour read right in" in out

"""`noisepath compact SRC DST`: a full bundle re-encoded through the writer, validated."""

import argparse

import numpy as np
import pytest

from backend import previews
from backend.bundle import Bundle
from precompute import compact
from precompute.writer import COMPACT_FRAME_QUALITY


def parse(*argv):
    p = argparse.ArgumentParser()
    compact.add_arguments(p)
    return p.parse_args([str(a) for a in argv])


def test_compacting_keeps_every_run_within_its_recorded_error(synthetic_bundle_ro, tmp_path,
                                                              capsys):
    out = tmp_path / "c"
    assert compact.run(parse(synthetic_bundle_ro, out)) == 0
    assert "it validates with checksums" in capsys.readouterr().out
    full, small = Bundle(synthetic_bundle_ro), Bundle(out, checksums=True)
    assert small.storage == "compact" and set(small.runs) == set(full.runs)
    assert small.index["groups"] == full.index["groups"]
    assert small.trajectories == full.trajectories
    for rid, m in small.runs.items():
        for name, e in m["arrays"].items():
            a = np.asarray(full.array(rid, name), np.float32)
            assert (np.abs(small.array(rid, name) - a) <= e["max_abs_error"] + 1e-7).all()
        for name in ("decoded", "pred_original_sample"):  # encoded again, error recorded
            e, f = m["images"][name], full.runs[rid]["images"][name]
            frames = [previews.crop_frames((b.root / "runs" / rid / x["file"]).read_bytes(), x)
                      for b, x in ((small, e), (full, f))]
            assert e["quality"] == COMPACT_FRAME_QUALITY[name]
            assert {k: e[k] for k in ("count", "frame_width", "frame_height", "columns")} == \
                {k: f[k] for k in ("count", "frame_width", "frame_height", "columns")}
            assert np.abs(frames[0].astype(int) - frames[1]).mean() == \
                pytest.approx(e["mean_abs_error"], abs=1e-3)  # recorded rounded to 0.001
        assert {k: m[k] for k in ("scheduler", "latent_preview", "attention")} == \
            {k: full.runs[rid][k] for k in ("scheduler", "latent_preview", "attention")}
    for pid in full.prompts:
        assert np.array_equal(small.text_embeddings(pid), full.text_embeddings(pid))


@pytest.mark.parametrize("case", ["compact source", "non-empty target"])
def test_compact_refuses_what_it_cannot_do(compact_bundle_ro, synthetic_bundle_ro, tmp_path,
                                           capsys, case):
    if case == "compact source":
        args = parse(compact_bundle_ro, tmp_path / "c")
    else:
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "mine.txt").write_text("keep")
        args = parse(synthetic_bundle_ro, tmp_path / "c")
    assert compact.run(args) == 1
    assert "noisepath compact:" in capsys.readouterr().err

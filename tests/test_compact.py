"""`noisepath compact SRC DST`: a full bundle re-encoded through the writer, validated."""

import argparse

import numpy as np
import pytest

from backend.bundle import Bundle
from precompute import compact


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
        for name in ("decoded", "pred_original_sample"):
            assert (out / "runs" / rid / m["images"][name]["file"]).read_bytes() == \
                (full.root / "runs" / rid / full.runs[rid]["images"][name]["file"]).read_bytes()
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

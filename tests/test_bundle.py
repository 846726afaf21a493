"""The bundle format: what the writer writes, the reader reads, and the validator catches."""

import json

import numpy as np
import pytest

from backend.bundle import Bundle, BundleError, validate_bundle
from precompute.writer import (BundleConfigMismatch, BundleWriter, build_index, prompt_id,
                               run_id)


def problems_of(root, **kw):
    return [p for p in validate_bundle(root, **kw) if p.severity == "error"]


def test_written_bundle_validates_with_checksums(synthetic_bundle_ro):
    assert problems_of(synthetic_bundle_ro, checksums=True) == []


def test_reader_returns_what_the_writer_wrote(tmp_path):
    from tests.synthetic_bundle import make_bundle
    root = make_bundle(tmp_path / "b", seeds=(3,), guidance_scales=(7,))
    b = Bundle(root, checksums=True)
    rid = run_id(prompt_id("a red circle on the left"), 3, 7)
    latents = b.array(rid, "latents")
    assert latents.shape == (6, 4, 8, 8) and latents.dtype == np.float16
    assert isinstance(latents, np.memmap)
    assert b.runs[rid]["images"]["decoded"]["count"] == 6
    assert b.prompts[prompt_id("a red circle on the left")]["tokens"]["n_real"] == 8
    assert b.text_embeddings("empty").shape == (77, 8)
    assert set(b.trajectories) == {"3"}


def test_index_is_rebuilt_identically_from_disk(synthetic_bundle):
    on_disk = json.loads((synthetic_bundle / "bundle.json").read_text())
    assert build_index(synthetic_bundle) == on_disk


def test_guidance_zero_run_is_shared_by_all_prompts():
    assert run_id(prompt_id("a"), 1, 0) == run_id(prompt_id("b"), 1, 0) == "empty--s1-g0"
    assert run_id(prompt_id("a"), 1, 7.5).endswith("-s1-g7p5")


def test_appending_with_other_settings_is_refused(synthetic_bundle):
    config = json.loads((synthetic_bundle / "config.json").read_text())
    config["num_inference_steps"] = 50
    with pytest.raises(BundleConfigMismatch, match="num_inference_steps: bundle has 5"):
        BundleWriter(synthetic_bundle, config)


def test_claim_is_exclusive_between_holders(tmp_path, synthetic_bundle):
    config = json.loads((synthetic_bundle / "config.json").read_text())
    w = BundleWriter(synthetic_bundle, config)
    with w.claim("job-1") as first:
        with BundleWriter(synthetic_bundle, config).claim("job-1") as second:
            assert first is True and second is False
    with w.claim("job-1") as again:
        assert again is True


def _first_run(root):
    index = json.loads((root / "bundle.json").read_text())
    rid = next(r for r, e in index["runs"].items() if e["guidance_scale"] == 7)
    return rid, root / "runs" / rid


@pytest.mark.parametrize("corrupt, file_part, field_part", [
    (lambda d: (d / "latents.npy").unlink(), "latents.npy", ""),
    (lambda d: (d / "latents.npy").write_bytes((d / "latents.npy").read_bytes()[:-7]),
     "latents.npy", "sha256"),
    (lambda d: (d / "decoded.webp").write_bytes(b"not an image"), "decoded.webp", "sha256"),
    (lambda d: (d / "run.json").write_text("{ half-written"), "run.json", "sha256"),
])
def test_corruption_is_reported_by_file_and_field(synthetic_bundle, corrupt, file_part,
                                                  field_part):
    rid, folder = _first_run(synthetic_bundle)
    corrupt(folder)
    problems = problems_of(synthetic_bundle, checksums=True)
    assert any(file_part in p.file + p.field and field_part in p.field + p.file
               for p in problems), problems
    assert all(p.run_id == rid for p in problems if p.run_id)


def test_wrong_shape_is_reported_even_without_checksums(synthetic_bundle):
    rid, folder = _first_run(synthetic_bundle)
    np.save(folder / "noise_pred.npy", np.zeros((2, 4, 8, 8), np.float16))
    problems = problems_of(synthetic_bundle, checksums=False)
    assert [(p.file, p.field) for p in problems] == [(f"runs/{rid}/noise_pred.npy", "shape")]
    assert "manifest says [5, 4, 8, 8]" in problems[0].message


def test_manifest_field_errors_name_the_field(synthetic_bundle):
    rid, folder = _first_run(synthetic_bundle)
    m = json.loads((folder / "run.json").read_text())
    m["seed"] = "one"
    m["scheduler"]["timesteps"] = [1, 2]
    (folder / "run.json").write_text(json.dumps(m))
    index = json.loads((synthetic_bundle / "bundle.json").read_text())
    from precompute.writer import sha256_file
    index["runs"][rid]["sha256"] = sha256_file(folder / "run.json")
    (synthetic_bundle / "bundle.json").write_text(json.dumps(index))
    fields = {p.field for p in problems_of(synthetic_bundle)}
    assert {"seed", "scheduler.timesteps"} <= fields


def test_missing_index_is_one_clear_problem(tmp_path):
    (tmp_path / "b").mkdir()
    [p] = validate_bundle(tmp_path / "b")
    assert p.file == "bundle.json" and "missing" in p.message


def test_reader_refuses_a_bad_bundle_or_skips_its_bad_runs(synthetic_bundle):
    rid, folder = _first_run(synthetic_bundle)
    (folder / "latents.npy").unlink()
    with pytest.raises(BundleError, match="latents.npy"):
        Bundle(synthetic_bundle)
    b = Bundle(synthetic_bundle, skip_invalid=True)
    assert rid not in b.runs and b.skipped_runs == [rid] and len(b.runs) > 0


def test_file_path_never_leaves_the_bundle(synthetic_bundle_ro):
    b = Bundle(synthetic_bundle_ro)
    assert b.file_path("../bundle.json") is None
    assert b.file_path("/etc/passwd") is None
    assert b.file_path(".work/index.lock") is None
    assert b.file_path("config.json") is not None
    assert b.file_path("runs/\x00/run.json") is None


@pytest.mark.parametrize("key, value", [
    ("prompts", {"empty": "not an object"}),
    ("trajectories", {"1": None}),
    ("trajectories", {"1": {"file": "../../etc/passwd", "sha256": "x"}}),
    ("runs", {"x": 3}),
])
def test_malformed_index_entries_are_problems_not_crashes(synthetic_bundle, key, value):
    index = json.loads((synthetic_bundle / "bundle.json").read_text())
    index[key] = value
    (synthetic_bundle / "bundle.json").write_text(json.dumps(index))
    problems = problems_of(synthetic_bundle)
    assert problems and all(p.file == "bundle.json" or p.severity == "error" for p in problems)
    assert any(p.file == "bundle.json" and p.field.startswith(key) for p in problems)

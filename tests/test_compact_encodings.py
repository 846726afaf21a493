"""Compact storage's frame and attention encodings (docs/bundle-format.md, "Compact
storage"): attention levels stored no larger than the app draws them, VAE sprites at a
per-kind WebP quality, each with its measured error in run.json."""

import json

import numpy as np
import pytest

from backend import codec, previews
from backend.bundle import Bundle
from backend.validator import validate_bundle
from precompute import writer
from precompute.writer import sha256_file
from tests.synthetic_bundle import make_bundle


def problems_of(root, **kw):
    return [p for p in validate_bundle(root, **kw) if p.severity == "error"]


@pytest.fixture
def small_side(monkeypatch):
    """The synthetic bundle's largest level is 8 x 8: store levels at most 4 a side, so
    they are resized as an SD bundle's 64 x 64 level is to 32."""
    monkeypatch.setattr(codec, "ATTENTION_STORED_SIDE", 4)


def _bundle(root, storage):
    return make_bundle(root, storage=storage, seeds=(1,), guidance_scales=(7,))


def _g7(root):
    return next(p.name for p in (root / "runs").iterdir() if p.name.endswith("-g7"))


def test_stored_factor_keeps_maps_at_most_the_side_and_small_maps_as_they_are():
    assert codec.stored_factor((3, 50, 64, 64), 32) == 2
    assert codec.stored_factor((3, 50, 64, 64), 16) == 4
    assert codec.stored_factor((3, 50, 32, 32), 32) == 1
    assert codec.stored_factor((3, 50, 96, 64), 32) == 4      # 24 x 16
    assert codec.stored_factor((3, 50, 37, 37), 32) == 1      # no divisor: kept as it is
    assert codec.stored_factor((3, 50, 8, 8), 32) == 1


def test_resized_attention_round_trips_within_its_recorded_error(tmp_path, small_side):
    full = Bundle(_bundle(tmp_path / "full", "full"))
    root = _bundle(tmp_path / "compact", "compact")
    small = Bundle(root, checksums=True)
    assert problems_of(root, checksums=True, decode=True) == []
    resized = 0
    for rid, m in small.runs.items():
        for name, e in m["arrays"].items():
            ref = np.asarray(full.array(rid, name), np.float32)
            got = np.asarray(small.array(rid, name), np.float32)
            assert got.shape == ref.shape == tuple(e["shape"])  # served at the level's size
            # the error was measured against the float32 original; the full bundle holds it
            # as float16: allow half a float16 step of the values' scale on top
            slack = 2.0 ** -11 * float(np.abs(ref).max())
            assert np.abs(got - ref).max() <= e["max_abs_error"] + slack, (rid, name)
            if "stored_shape" in e:
                resized += 1
                assert e["stored_shape"] == e["shape"][:2] + [4, 4]
                members = codec.read_npz(root / "runs" / rid / e["file"])
                assert list(members["q"].shape) == e["stored_shape"]
    # attention_res8 of each guided run; the 4 x 4 level is stored as it was
    assert resized == sum(1 for m in small.runs.values() if m["attention"]) == 4


def test_smooth_maps_lose_little_when_stored_at_half_size():
    """A smooth map (a Gaussian blob of sigma 6.4 cells at 64 x 64, as SD's object maps are
    at least) averaged 2 x 2 and upsampled back: the two smoothings lower its peak by about
    (0.25 + 0.5) / 6.4^2 = 1.8% of its range, 8-bit quantization adds up to 0.2%: 3% allows
    for both and fails for a map stored at a quarter of its size."""
    yy, xx = np.mgrid[0:64, 0:64] / 64
    blob = np.exp(-((yy - 0.4) ** 2 + (xx - 0.6) ** 2) / (2 * 0.1 ** 2)).astype(np.float32)
    x = np.broadcast_to(blob, (2, 3, 64, 64)).copy()
    _, values, stored = codec.encode_resized(x, 1, 2)
    assert stored == [2, 3, 32, 32]
    assert np.abs(values - x).max() <= 0.03 * (x.max() - x.min())
    _, quarter, _ = codec.encode_resized(x, 1, 4)
    assert np.abs(quarter - x).max() > 0.03 * (x.max() - x.min())


def test_compact_sprites_record_their_quality_and_measured_error(tmp_path):
    root = _bundle(tmp_path / "c", "compact")
    full = _bundle(tmp_path / "f", "full")
    for b, quality in ((Bundle(root), writer.COMPACT_FRAME_QUALITY),
                       (Bundle(full), {"decoded": 82, "pred_original_sample": 82})):
        for rid, m in b.runs.items():
            for name in ("decoded", "pred_original_sample"):
                e = m["images"][name]
                assert e["quality"] == quality[name]
                assert 0 <= e["final_mean_abs_error"] <= e["max_frame_mean_abs_error"]
                assert e["mean_abs_error"] <= e["max_frame_mean_abs_error"]


def test_recorded_frame_error_is_what_decoding_the_sprite_gives(tmp_path):
    rng = np.random.default_rng(3)
    smooth = np.linspace(0, 255, 32)[None, :, None, None] * np.ones((6, 1, 32, 3))
    frames = np.clip(smooth + rng.normal(0, 30, smooth.shape), 0, 255).astype(np.uint8)
    e = writer.save_sprite(tmp_path, "decoded", frames, "webp", quality=40)
    back = previews.crop_frames((tmp_path / e["file"]).read_bytes(), e)
    diff = np.abs(back.astype(int) - frames.astype(int)).reshape(6, -1).mean(axis=1)
    assert e["quality"] == 40
    assert e["mean_abs_error"] == pytest.approx(diff.mean(), abs=1e-3)  # rounded to 0.001
    assert e["final_mean_abs_error"] == pytest.approx(diff[-1], abs=1e-3)
    assert e["max_frame_mean_abs_error"] == pytest.approx(diff.max(), abs=1e-3)
    higher = writer.save_sprite(tmp_path, "better", frames, "webp", quality=90)
    assert higher["mean_abs_error"] < e["mean_abs_error"]


def _edit_run(root, rid, edit):
    path = root / "runs" / rid / "run.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))
    index = json.loads((root / "bundle.json").read_text())
    index["runs"][rid]["sha256"] = sha256_file(path)
    (root / "bundle.json").write_text(json.dumps(index))


@pytest.mark.parametrize("edit, field, words", [
    (lambda m: m["arrays"]["attention_res8"].update({"stored_shape": [1, 5, 16, 16]}),
     "arrays.attention_res8.stored_shape", "no larger than [8, 8]"),
    (lambda m: m["arrays"]["attention_res8"].update({"stored_shape": "4x4"}),
     "arrays.attention_res8.stored_shape", "4 positive integers"),
    (lambda m: m["images"]["decoded"].update({"quality": 0}), "images.decoded.quality",
     "1 to 100"),
    (lambda m: m["images"]["decoded"].update({"mean_abs_error": -2}),
     "images.decoded.mean_abs_error", "0 to 255"),
])
def test_validator_names_the_file_and_field_of_a_damaged_encoding(tmp_path, small_side, edit,
                                                                   field, words):
    root = _bundle(tmp_path / "b", "compact")
    rid = _g7(root)
    _edit_run(root, rid, edit)
    problems = problems_of(root)
    assert any(p.file == f"runs/{rid}/run.json" and p.field == field and words in p.message
               for p in problems), problems


def test_validator_finds_a_resized_file_whose_maps_are_not_its_stored_shape(tmp_path,
                                                                            small_side):
    root = _bundle(tmp_path / "b", "compact")
    rid = _g7(root)
    e = json.loads((root / "runs" / rid / "run.json").read_text())["arrays"]["attention_res8"]
    _edit_run(root, rid, lambda m: m["arrays"]["attention_res8"].update(
        {"stored_shape": e["shape"][:2] + [2, 2]}))
    rel = f"runs/{rid}/{e['file']}"
    assert any(p.file == rel and p.field == "q" and "manifest says" in p.message
               for p in problems_of(root, checksums=False)), problems_of(root)


def test_compact_and_full_serve_the_same_views(tmp_path, small_side):
    """The API's documents and arrays have the same shapes whichever way a bundle stores
    its attention and frames: the app cannot tell them apart but by the recorded errors."""
    from backend import create_app
    frontend = tmp_path / "frontend"
    frontend.mkdir()
    (frontend / "index.html").write_text("<!doctype html><title>app</title>")
    shapes = []
    for storage in ("full", "compact"):
        root = _bundle(tmp_path / storage, storage)
        client = create_app({"BUNDLE_DIR": root, "FRONTEND_DIR": frontend}).test_client()
        rid = _g7(root)
        doc = client.get(f"api/runs/{rid}.json").get_json()
        # the same frames at the same sizes; how they are encoded (quality, measured
        # error) may differ: compact storage keeps the x_t frames at a lower quality
        seen = {"arrays": {n: a["shape"] for n, a in doc["arrays"].items()},
                "images": {n: {k: v for k, v in i.items()
                               if k not in ("url", "quality") and not k.endswith("error")}
                           for n, i in doc["images"].items()},
                "attention": doc["attention"]}
        for res in ["combined", *doc["attention"]["resolutions"]]:
            for url in (f"api/runs/{rid}/attention/{res}/tokens/0.npy",
                        f"api/runs/{rid}/attention/{res}/steps/2.npy"):
                r = client.get(url)
                assert r.status_code == 200, url
                seen[url] = len(r.data)  # float16 .npy: its size is its shape
        shapes.append(seen)
    assert shapes[0] == shapes[1]


def test_a_sprite_given_with_more_entry_fields_keeps_them_and_gets_quality_and_error(
        tmp_path, monkeypatch):
    """(frames, fmt, fields): e.g. a preview decoder's `approximate` note, merged into the
    entry of a sprite the writer still encodes at its storage's quality."""
    stage = writer.BundleWriter.stage_run

    def with_fields(self, manifest, arrays, images):
        return stage(self, manifest, arrays,
                     {n: (*v, {"approximate": {"by": n}}) for n, v in images.items()})

    monkeypatch.setattr(writer.BundleWriter, "stage_run", with_fields)
    root = _bundle(tmp_path / "b", "compact")
    e = json.loads((root / "runs" / _g7(root) / "run.json").read_text())["images"]["decoded"]
    assert e["approximate"] == {"by": "decoded"}
    assert e["quality"] == writer.COMPACT_FRAME_QUALITY["decoded"] and "mean_abs_error" in e

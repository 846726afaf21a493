"""The bundle format: what the writer writes, the reader reads, and the validator catches."""

import json

import numpy as np
import pytest

from backend.bundle import Bundle, load_array
from backend.format import BundleError
from backend.validator import validate_bundle
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


def test_title_and_description_follow_the_prompt_file(synthetic_bundle):
    config = json.loads((synthetic_bundle / "config.json").read_text())
    BundleWriter(synthetic_bundle, {**config, "description": "now it can draw stars"}).rebuild_index()
    assert json.loads((synthetic_bundle / "config.json").read_text())["description"] == \
        "now it can draw stars"
    assert validate_bundle(synthetic_bundle, checksums=True) == []


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


# ------------------------------------------------------------------ compact storage

def digest(root):
    import hashlib
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in (".work", ".tmp")}


def _g7_run(b):
    return next(r for r, m in b.runs.items() if m["guidance_scale"] == 7)


def test_compact_bundle_validates_and_lists_encoded_and_derived_entries(compact_bundle_ro):
    assert problems_of(compact_bundle_ro, checksums=True) == []
    b = Bundle(compact_bundle_ro)
    assert b.storage == "compact" and b.index["format_version"] == 2
    m = b.runs[_g7_run(b)]
    for name in ("latents", "noise_pred_uncond", "noise_pred_text", "pred_original_sample",
                 "attention_res8", "attention_res4"):
        e = m["arrays"][name]
        assert e["file"] == f"{name}.q8.npz" and e["encoding"] == "q8-delta"
        assert e["dtype"] == "float16" and e["max_abs_error"] > 0
    assert m["arrays"]["noise_pred"]["derived"] == "guidance"
    assert m["arrays"]["noise_pred"]["from"] == ["noise_pred_uncond", "noise_pred_text"]
    assert m["arrays"]["attention"] == {**m["arrays"]["attention"], "derived": "attention_mean",
                                        "from": ["attention_res8"], "shape": [5, 5, 8, 8]}
    assert "file" not in m["arrays"]["attention"]
    for name in ("latents", "noise_pred", "noise_pred_uncond", "noise_pred_text"):
        assert m["images"][name]["derived"] is True and "file" not in m["images"][name]
    assert "file" in m["images"]["decoded"]
    assert not list((compact_bundle_ro / "runs").glob("*/*.npy"))
    assert not list((compact_bundle_ro / "runs").glob("*/*.png"))


def test_one_branch_runs_alias_the_guided_prediction(compact_bundle_ro):
    b = Bundle(compact_bundle_ro)
    for rid, m in b.runs.items():
        if m["guidance_scale"] in (0, 1):
            branch = "noise_pred_uncond" if m["guidance_scale"] == 0 else "noise_pred_text"
            assert m["arrays"]["noise_pred"]["from"] == [branch]
            assert np.array_equal(b.array(rid, "noise_pred"), b.array(rid, branch))


def test_compact_values_are_the_full_values_within_the_recorded_error(synthetic_bundle_ro,
                                                                     compact_bundle_ro):
    full, compact = Bundle(synthetic_bundle_ro), Bundle(compact_bundle_ro)
    assert set(full.runs) == set(compact.runs)
    for rid, m in compact.runs.items():
        for name, e in m["arrays"].items():
            a = np.asarray(full.array(rid, name), np.float32)   # float16 of the originals
            c = compact.array(rid, name)
            assert c.dtype == np.float16 and not c.flags.writeable and not isinstance(c, np.memmap)
            # the error was measured against the float32 originals; float16 storage of
            # the full bundle adds at most half a float16 ulp
            bound = e["max_abs_error"] + np.abs(a) * 2.0 ** -11 + 1e-7
            assert (np.abs(c.astype(np.float32) - a) <= bound).all(), (rid, name)


def test_recorded_error_is_the_measured_one_and_within_half_a_step(tmp_path):
    """Re-encode one run's arrays by hand: max_abs_error is max |decoded - original|, and
    each element is within scale/2 (+ float16 rounding) of the original."""
    from backend import codec
    from precompute.writer import save_encoded
    x = np.random.default_rng(9).standard_normal((6, 4, 8, 8)).astype(np.float32) * 3
    entry, values = save_encoded(tmp_path, "latents", x)
    decoded = load_array(tmp_path, {"latents": entry}, "latents", 7.0).astype(np.float32)
    assert entry["max_abs_error"] == float(np.abs(decoded - x).max())
    scale = codec.read_npz(tmp_path / entry["file"])["scale"]
    assert (np.abs(values - x) <= scale / 2 * (1 + 1e-5)).all()
    assert (np.abs(decoded - x) <= scale / 2 * (1 + 1e-5) + np.abs(decoded) * 2.0 ** -11).all()


def test_writing_a_compact_bundle_twice_gives_identical_files(tmp_path):
    from tests.synthetic_bundle import make_bundle
    a = make_bundle(tmp_path / "a", storage="compact", seeds=(1,), guidance_scales=(0, 7))
    b = make_bundle(tmp_path / "b", storage="compact", seeds=(1,), guidance_scales=(0, 7))
    assert digest(a) == digest(b) and any(k.endswith(".q8.npz") for k in digest(a))


def test_exact_arrays_give_a_compact_bundle_equal_to_the_full_one(tmp_path):
    """Values on the 8-bit grid survive quantization: every array, derived or decoded, and
    every preview PNG, is what the full bundle stores (so the derivations are the
    precompute's own, to the bit, and previews are byte-identical)."""
    from backend.previews import preview_sprite
    from tests.synthetic_bundle import make_bundle
    kw = dict(seeds=(1,), guidance_scales=(0, 1, 7), exact=True)
    full = Bundle(make_bundle(tmp_path / "f", **kw), checksums=True)
    compact = Bundle(make_bundle(tmp_path / "c", storage="compact", **kw), checksums=True)
    for rid, m in full.runs.items():
        cm = compact.runs[rid]
        for name in m["arrays"]:
            assert np.array_equal(full.array(rid, name), compact.array(rid, name)), (rid, name)
            assert cm["arrays"][name]["max_abs_error"] == 0
        for name, e in m["images"].items():
            if name in ("decoded", "pred_original_sample"):
                continue
            stored = (full.root / "runs" / rid / e["file"]).read_bytes()
            assert preview_sprite(name, compact.array(rid, name), cm["latent_preview"],
                                  cm["scheduler"]["sigmas"])[0] == stored
            assert {k: v for k, v in cm["images"][name].items() if k not in ("derived", "from")} \
                == {k: v for k, v in e.items() if k not in ("file", "sha256")}


def test_full_previews_are_the_rendering_of_the_stored_arrays(synthetic_bundle_ro):
    from backend.previews import preview_sprite
    b = Bundle(synthetic_bundle_ro)
    rid = _g7_run(b)
    for name in ("latents", "noise_pred", "noise_pred_uncond", "noise_pred_text"):
        e = b.runs[rid]["images"][name]
        assert preview_sprite(name, b.array(rid, name), b.runs[rid]["latent_preview"],
                              b.runs[rid]["scheduler"]["sigmas"])[0] == \
            (b.root / "runs" / rid / e["file"]).read_bytes()


def test_decoded_arrays_are_cached_within_the_bound(compact_bundle_ro):
    b = Bundle(compact_bundle_ro, cache_bytes=4096)
    rid = _g7_run(b)
    first = b.array(rid, "latents")                    # 6 x 4 x 8 x 8 float16 = 3 KB
    assert b.array(rid, "latents") is first
    b.array(rid, "pred_original_sample")
    assert b.array(rid, "latents") is not first and np.array_equal(b.array(rid, "latents"), first)
    assert b._decoded.bytes <= 4096


def test_compact_writer_refuses_arrays_its_sources_do_not_give(tmp_path):
    from tests.synthetic_bundle import make_bundle
    root = make_bundle(tmp_path / "b", storage="compact", seeds=(1,), guidance_scales=(7,))
    config = json.loads((root / "config.json").read_text())
    w = BundleWriter(root, config)
    m = json.loads(next((root / "runs").glob("*/run.json")).read_text())
    rng = np.random.default_rng(0)
    arrays = {n: rng.standard_normal(e["shape"]).astype(np.float32)
              for n, e in m["arrays"].items()}
    manifest = {k: m[k] for k in ("prompt_id", "seed", "guidance_scale", "num_inference_steps",
                                  "scheduler", "latent_preview", "attention")}
    with pytest.raises(ValueError, match="'noise_pred' is not the guidance of"):
        w.stage_run({**manifest, "run_id": "x--s1-g7"}, arrays, {})


def test_appending_with_another_storage_is_refused(synthetic_bundle):
    config = json.loads((synthetic_bundle / "config.json").read_text())
    assert config["storage"] == "full"
    with pytest.raises(BundleConfigMismatch,
                       match="storage: bundle has 'full', you asked for 'compact'"):
        BundleWriter(synthetic_bundle, {**config, "storage": "compact"})


def _rewrite_npz(path, **members):
    from backend import codec
    old = codec.read_npz(path)
    new = {k: v for k, v in {**old, **members}.items() if v is not None}
    path.write_bytes(codec.npz_bytes(new))


@pytest.mark.parametrize("corrupt, field, words", [
    (lambda p: _rewrite_npz(p, lo=np.zeros((5, 4, 1, 1), np.float64)), "lo", "float64"),
    (lambda p: _rewrite_npz(p, scale=None), "members", "expected exactly q, lo, scale"),
    (lambda p: _rewrite_npz(p, extra=np.zeros(3)), "members", "expected exactly"),
    (lambda p: _rewrite_npz(p, q=np.zeros((4, 4, 8, 8), np.uint8)), "q", "manifest says"),
    (lambda p: _rewrite_npz(p, q=np.zeros((5, 4, 8, 8), np.int16)), "q", "expected uint8"),
    (lambda p: _rewrite_npz(p, scale=np.full((5, 4, 1, 1), -1, np.float32)), "scale", ">= 0"),
    (lambda p: _rewrite_npz(p, lo=np.zeros((5, 4, 8, 1), np.float32)), "lo", "shape"),
    (lambda p: p.write_bytes(b"PK\x03\x04 not a zip"), "", "not a readable .npz"),
])
def test_corrupt_npz_member_is_reported_by_file_and_field(tmp_path, corrupt, field, words):
    """In full (validate, serve --skip-invalid); at start-up by q's header and the other
    members' sizes, and what only their values show when the array is first decoded."""
    from backend.format import ArrayReadError
    from tests.synthetic_bundle import make_bundle
    root = make_bundle(tmp_path / "b", storage="compact", seeds=(1,), guidance_scales=(7,))
    rid = next(p.name for p in (root / "runs").iterdir())
    rel = f"runs/{rid}/noise_pred_text.q8.npz"
    corrupt(root / rel)
    [p] = [p for p in validate_bundle(root, checksums=False, decode=True)
           if p.severity == "error"]
    assert (p.file, p.field, p.run_id) == (rel, field, rid)
    assert words in p.message
    [p] = problems_of(root, checksums=True)
    assert p.field == "arrays.noise_pred_text.sha256"
    at_start_up = problems_of(root, checksums=False)
    if field == "scale":  # a value: -1
        assert at_start_up == []
        with pytest.raises(ArrayReadError, match=f"{rel}: arrays.noise_pred_text: .*scale"):
            Bundle(root).array(rid, "noise_pred_text")
    else:
        assert [(p.file, p.field) for p in at_start_up] == [(rel, field)]


@pytest.mark.parametrize("edit, field, words", [
    (lambda a: a["noise_pred"].update({"from": ["noise_pred_uncond", "nope"]}),
     "arrays.noise_pred.from", "'nope'"),
    (lambda a: a["noise_pred"].update({"from": ["noise_pred_text"]}),
     "arrays.noise_pred.from", "at guidance 7.0"),
    (lambda a: a["attention"].update({"derived": "median"}), "arrays.attention.derived",
     "'median'"),
    (lambda a: a["attention"].update({"from": ["latents"]}), "arrays.attention.from",
     "attention_res"),
    (lambda a: a["latents"].update({"encoding": "q4"}), "arrays.latents.encoding", "'q4'"),
    (lambda a: a["latents"].update({"max_abs_error": -1}), "arrays.latents.max_abs_error",
     ">= 0"),
    (lambda a: a["attention"].update({"shape": a["attention"]["shape"][:2] + [4, 4]}),
     "arrays.attention.shape", "5, 8, 8]"),
])
def test_bad_compact_manifest_entries_name_the_field(tmp_path, edit, field, words):
    from precompute.writer import sha256_file
    from tests.synthetic_bundle import make_bundle
    root = make_bundle(tmp_path / "b", storage="compact", seeds=(1,), guidance_scales=(7,))
    rid = next(p.name for p in (root / "runs").iterdir())
    path = root / "runs" / rid / "run.json"
    m = json.loads(path.read_text())
    edit(m["arrays"])
    path.write_text(json.dumps(m))
    index = json.loads((root / "bundle.json").read_text())
    index["runs"][rid]["sha256"] = sha256_file(path)
    (root / "bundle.json").write_text(json.dumps(index))
    problems = problems_of(root)
    assert any(p.file == f"runs/{rid}/run.json" and p.field == field and words in p.message
               for p in problems), problems


def _as_format_1(root):
    """What noisepath 0.1 wrote: version 1 everywhere, no storage in the config."""
    for path in [root / "bundle.json", root / "config.json"]:
        doc = json.loads(path.read_text())
        doc["format_version"] = 1
        (doc.get("config") or doc).pop("storage", None)
        path.write_text(json.dumps(doc))


def test_format_1_bundles_are_read_as_full_storage(synthetic_bundle):
    _as_format_1(synthetic_bundle)
    assert problems_of(synthetic_bundle, checksums=True) == []
    b = Bundle(synthetic_bundle)
    assert b.storage == "full" and isinstance(b.array(_g7_run(b), "latents"), np.memmap)


def test_format_1_bundles_have_no_encoded_or_derived_entries(tmp_path):
    from tests.synthetic_bundle import make_bundle
    root = make_bundle(tmp_path / "b", storage="compact", seeds=(1,), guidance_scales=(7,))
    _as_format_1(root)
    fields = {p.field for p in problems_of(root)}
    assert {"arrays.latents.encoding", "arrays.noise_pred.derived",
            "images.latents.derived"} <= fields


def test_unknown_format_version_is_refused(synthetic_bundle):
    index = json.loads((synthetic_bundle / "bundle.json").read_text())
    index["format_version"] = 3
    (synthetic_bundle / "bundle.json").write_text(json.dumps(index))
    [p] = problems_of(synthetic_bundle)
    assert p.field == "format_version" and "reads versions 1, 2" in p.message


# ------------------------------------------------------- hostile and damaged bundles

def rewrite(root, rel, edit):
    """Replace the JSON document `rel` by edit(doc) (which may also change doc in place and
    return None) and re-chain its sha256 in bundle.json, so checksums pass."""
    from precompute.writer import sha256_file
    path = root / rel
    doc = json.loads(path.read_text())
    new = edit(doc)
    path.write_text(json.dumps(doc if new is None else new))  # NaN is written as NaN
    if rel == "bundle.json":
        return
    index = json.loads((root / "bundle.json").read_text())
    kind, key = rel.split("/")[:2]
    if kind == "trajectories":
        key = next(s for s, t in index["trajectories"].items() if t["file"] == rel)
    index[kind][key]["sha256"] = sha256_file(path)
    (root / "bundle.json").write_text(json.dumps(index))


def _g7(root):
    return _first_run(root)[0]


def _g7_prompt(root):
    return json.loads((root / "runs" / _g7(root) / "run.json").read_text())["prompt_id"]


def _set(path, value):
    """An edit setting the field at `path` (keys and indices) to value, or deleting it."""
    def edit(doc):
        *parents, last = path
        for key in parents:
            doc = doc[key]
        if value is _DELETE:
            del doc[last]
        else:
            doc[last] = value
    return edit


_DELETE = object()
MALFORMED = [  # (document, edit, the problem's file, its field)
    ("bundle.json", lambda d: [], "bundle.json", ""),
    ("bundle.json", lambda d: "a string", "bundle.json", ""),
    ("bundle.json", _set(["runs"], 3), "bundle.json", "runs"),
    ("bundle.json", _set(["prompts"], ["empty"]), "bundle.json", "prompts"),
    ("bundle.json", _set(["trajectories"], [{"1": {}}]), "bundle.json", "trajectories"),
    ("bundle.json", _set(["groups", 0, "prompts"], 1), "bundle.json", "groups[0].prompts"),
    ("bundle.json", _set(["groups", 0, "id"], _DELETE), "bundle.json", "groups[0].id"),
    ("bundle.json", _set(["groups", 0], "a group"), "bundle.json", "groups[0]"),
    ("run", lambda d: [], "run", ""),
    ("run", _set(["scheduler", "sigmas"], 3), "run", "scheduler.sigmas"),
    ("run", _set(["attention"], "yes"), "run", "attention"),
    ("run", _set(["guidance_scale"], float("nan")), "run", "guidance_scale"),
    ("run", _set(["seed"], float("inf")), "run", "seed"),
    ("run", _set(["images", "decoded", "mime"], ["image/webp"]), "run", "images.decoded"),
    ("run", _set(["arrays", "latents", "file"], "../../../bundle.json"), "run",
     "arrays.latents"),
    ("prompt", _set(["arrays"], []), "prompt", "arrays"),
    ("prompt", _set(["arrays", "text_embeddings", "shape"], 77), "prompt",
     "arrays.text_embeddings"),
    ("bundle.json", _set(["config", "latent_shape"], [4, 8, -8]), "bundle.json",
     "config.latent_shape"),
]


@pytest.mark.parametrize("doc, edit, file, field", MALFORMED)
def test_malformed_documents_are_named_by_file_and_field_not_crashes(synthetic_bundle, doc,
                                                                     edit, file, field):
    """Each of these crashed the validator, or passed it and then crashed the server."""
    rels = {"run": f"runs/{_g7(synthetic_bundle)}/run.json",
            "prompt": f"prompts/{_g7_prompt(synthetic_bundle)}/prompt.json"}
    rewrite(synthetic_bundle, rels.get(doc, doc), edit)
    problems = problems_of(synthetic_bundle, checksums=True)
    assert (rels.get(file, file), field) in {(p.file, p.field) for p in problems}, problems
    with pytest.raises(BundleError):
        Bundle(synthetic_bundle)


def test_a_run_id_is_a_name_never_a_path(synthetic_bundle, tmp_path):
    """`../../evilrun` in bundle.json named a folder outside the bundle, which was read."""
    import shutil
    rid, folder = _first_run(synthetic_bundle)
    evil = "../../evilrun"
    shutil.copytree(folder, synthetic_bundle / "runs" / evil)  # tmp_path/evilrun: outside
    assert (tmp_path / "evilrun" / "run.json").is_file()
    rewrite(synthetic_bundle, f"runs/{rid}/run.json", _set(["run_id"], evil))
    index = json.loads((synthetic_bundle / "bundle.json").read_text())
    index["runs"][evil] = index["runs"].pop(rid)
    (synthetic_bundle / "bundle.json").write_text(json.dumps(index))
    [p] = problems_of(synthetic_bundle)
    assert (p.file, p.field, p.run_id) == ("bundle.json", f"runs.{evil}", evil)
    assert "never a path" in p.message
    b = Bundle(synthetic_bundle, skip_invalid=True)
    assert evil not in b.runs and evil not in b.index["runs"] and b.skipped_runs == [evil]


@pytest.mark.parametrize("target", ["runs/{rid}/latents.npy", "runs/{rid}",
                                    "prompts/{pid}/text_embeddings.npy"])
def test_files_symlinked_outside_the_bundle_are_not_read(synthetic_bundle, tmp_path, target):
    import shutil
    rel = target.format(rid=_g7(synthetic_bundle), pid=_g7_prompt(synthetic_bundle))
    inside, outside = synthetic_bundle / rel, tmp_path / "outside"
    shutil.move(inside, outside)
    inside.symlink_to(outside)  # the same bytes, but outside the bundle
    problems = problems_of(synthetic_bundle, checksums=True)
    [p] = [p for p in problems if "outside the bundle" in p.message]
    assert p.file.startswith(rel) and p.field == "", problems
    b = Bundle(synthetic_bundle, skip_invalid=True)
    assert _g7(synthetic_bundle) in b.skipped_runs


def test_symlinks_that_stay_inside_the_bundle_are_read(synthetic_bundle):
    import shutil
    rid, folder = _first_run(synthetic_bundle)
    shutil.move(folder / "latents.npy", synthetic_bundle / "latents-elsewhere.npy")
    (folder / "latents.npy").symlink_to("../../latents-elsewhere.npy")
    assert problems_of(synthetic_bundle, checksums=True) == []


def _flip(path, at=0.6, n=64):
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i:i + n] = bytes(b ^ 0xFF for b in data[i:i + n])
    path.write_bytes(bytes(data))


def _served_without_5xx(root, **config):
    """create_app over `root`, and every API URL it lists answers below 500."""
    from backend import create_app
    app = create_app({"BUNDLE_DIR": root, **config})
    store = app.extensions["noisepath.store"]
    client = app.test_client()
    paths = list(store.api_paths())
    for path in paths:
        r = client.get("/" + path)
        assert r.status_code < 500, (path, r.data[:300])
    return store


def test_skip_invalid_skips_a_run_damaged_past_its_header(tmp_path):
    """64 bytes flipped at 60% of a latents.q8.npz passed start-up (only headers are read)
    and made serve --skip-invalid exit with an LZMAError."""
    from tests.synthetic_bundle import make_bundle
    # latents of 16x16 over 10 steps: 60% of the file lies past the 4 KiB that reading
    # q's header inflates (a demo run's latents.q8.npz is 15 KB)
    root = make_bundle(tmp_path / "b", storage="compact", seeds=(1,), guidance_scales=(0, 7),
                       steps=10, latent=16)
    rid = _g7(root)
    assert (root / "runs" / rid / "latents.q8.npz").stat().st_size > 4096 / 0.5
    _flip(root / "runs" / rid / "latents.q8.npz")
    Bundle(root)  # only headers are read by default: start-up stays fast
    b = Bundle(root, skip_invalid=True)
    assert b.skipped_runs == [rid] and len(b.runs) == len(b.index["runs"]) == 4
    assert [(p.file, p.run_id) for p in b.problems] == [(f"runs/{rid}/latents.q8.npz", rid)]
    store = _served_without_5xx(root, SKIP_INVALID=True)
    assert rid not in store.runs


def test_skip_invalid_skips_a_damaged_prompt_with_its_runs(synthetic_bundle):
    """Damage in a prompt's files refused the whole bundle, also with --skip-invalid."""
    pid = _g7_prompt(synthetic_bundle)
    emb = synthetic_bundle / "prompts" / pid / "text_embeddings.npy"
    emb.write_bytes(emb.read_bytes()[:-10])
    with pytest.raises(BundleError, match="text_embeddings.npy"):
        Bundle(synthetic_bundle)
    b = Bundle(synthetic_bundle, skip_invalid=True)
    assert b.skipped_prompts == [pid] and pid not in b.prompts and pid not in b.index["prompts"]
    own = {rid for rid, r in b.index["runs"].items() if r["prompt_id"] == pid}
    assert own == set() and b.skipped_runs and len(b.runs) > 0
    assert all(json.loads((synthetic_bundle / "runs" / r / "run.json").read_text())["prompt_id"]
               == pid for r in b.skipped_runs)
    assert all(pid not in g["prompts"] for g in b.index["groups"])
    store = _served_without_5xx(synthetic_bundle, SKIP_INVALID=True)
    assert json.loads(store.index.body)["skipped_runs"] == b.skipped_runs


@pytest.fixture
def unreadable(monkeypatch):
    """unreadable(path): from now on opening `path`, or anything inside it, fails as it
    does for a user without read permission (tests run as root, who may read anything)."""
    import builtins
    import io
    import os
    import stat
    blocked = []  # (absolute path, is a folder)

    def guard(real, *, opens):
        """`real` failing inside a blocked folder, and on a blocked file if it opens it."""
        def call(path, *args, **kwargs):
            p = os.path.abspath(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else ""
            for b, folder in blocked:
                if p.startswith(b + os.sep) or (p == b and (opens or not folder)
                                                and (opens or folder)):
                    raise PermissionError(13, "Permission denied", p)
            return real(path, *args, **kwargs)
        return call

    is_folder = lambda path: stat.S_ISDIR(os.stat(path).st_mode)  # noqa: E731 (before patching)
    for module, name, opens in [(builtins, "open", True), (io, "open", True),
                                (os, "stat", False), (os, "lstat", False),
                                (os, "scandir", True), (os, "listdir", True)]:
        monkeypatch.setattr(module, name, guard(getattr(module, name), opens=opens))
    return lambda path: blocked.append((os.path.abspath(path), is_folder(path)))


@pytest.mark.parametrize("what", ["run.json", "folder", "latents.npy", "prompt.json"])
def test_unreadable_files_are_named_and_skipped_not_a_traceback(synthetic_bundle, unreadable,
                                                                 what):
    """A run.json or run folder of mode 000 gave a PermissionError traceback."""
    rid, folder = _first_run(synthetic_bundle)
    pid = _g7_prompt(synthetic_bundle)
    path = {"folder": folder, "prompt.json": synthetic_bundle / "prompts" / pid / "prompt.json"
            }.get(what, folder / what)
    unreadable(path)
    problems = problems_of(synthetic_bundle, checksums=True)
    assert any("Permission denied" in p.message and str(path.relative_to(synthetic_bundle))
               in p.file for p in problems), problems
    with pytest.raises(BundleError, match="Permission denied"):
        Bundle(synthetic_bundle)
    b = Bundle(synthetic_bundle, skip_invalid=True)
    assert rid in b.skipped_runs and rid not in b.runs and len(b.runs) > 0
    assert (pid in b.skipped_prompts) == (what == "prompt.json")


def _bomb(path, member, size):
    """Replace `member` of an .npz by `size` bytes of zeros that deflate to a few KB."""
    import zipfile
    from backend import codec
    members = codec.read_npz(path)
    members[member] = np.zeros(size // 4, np.float32)
    path.write_bytes(codec.npz_bytes(members, compression=zipfile.ZIP_DEFLATED))


@pytest.mark.parametrize("member", ["lo", "q"])
def test_a_compressed_member_is_not_inflated_past_what_its_shape_allows(tmp_path, member):
    """A 71 KB q8.npz whose member inflates to 400 MB took validate to 1 GB of memory."""
    import tracemalloc
    from backend import codec
    from tests.synthetic_bundle import make_bundle
    root = make_bundle(tmp_path / "b", storage="compact", seeds=(1,), guidance_scales=(7,))
    rid = _g7(root)
    path = root / "runs" / rid / "noise_pred_text.q8.npz"
    size = 32 << 20

    def validate_peak(decode):
        tracemalloc.start()
        try:
            problems = [p for p in validate_bundle(root, checksums=False, decode=decode)
                        if p.severity == "error"]
            return problems, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    baseline = {decode: validate_peak(decode)[1] for decode in (False, True)}  # LZMA: ~8 MB
    _bomb(path, member, size)
    assert path.stat().st_size < size / 100
    for decode in (False, True):
        problems, peak = validate_peak(decode)
        # refused unread, not inflated and then judged (that took the whole 32 MB)
        assert peak < baseline[decode] + size / 8
        assert [(p.file, p.field) for p in problems] == [(str(path.relative_to(root)), member)]
        assert "declares 33,554,5" in problems[0].message
    with pytest.raises(codec.MemberTooLarge):  # the server's decoding checks the same
        codec.load(path, 0, [5, 4, 8, 8])


def test_validate_decodes_every_array_by_default(tmp_path, capsys):
    """A file damaged past its start whose checksums were recorded after the damage (a
    writer bug, a crafted file) passes a read of headers; `noisepath validate` reads it all."""
    from backend.cli import main
    from precompute.writer import sha256_file
    from tests.synthetic_bundle import make_bundle
    root = make_bundle(tmp_path / "b", storage="compact", seeds=(1,), guidance_scales=(7,),
                       steps=10, latent=16)
    rid = _g7(root)
    path = root / "runs" / rid / "latents.q8.npz"
    _flip(path)
    rewrite(root, f"runs/{rid}/run.json",
            _set(["arrays", "latents", "sha256"], sha256_file(path)))
    assert main(["validate", "--no-checksums", str(root)]) == 0  # headers only: fast
    assert main(["validate", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"runs/{rid}/latents.q8.npz" in out and "Traceback" not in out


def test_file_path_of_an_unreadable_folder_is_none(synthetic_bundle, unreadable):
    rid, folder = _first_run(synthetic_bundle)
    b = Bundle(synthetic_bundle)
    unreadable(folder)  # after start-up: permissions changed under a running server
    assert b.file_path(f"runs/{rid}/decoded.webp") is None


def test_an_array_linked_outside_the_bundle_after_start_up_is_not_read(synthetic_bundle,
                                                                         tmp_path):
    from backend.format import ArrayReadError
    rid, folder = _first_run(synthetic_bundle)
    b = Bundle(synthetic_bundle)
    outside = tmp_path / "outside.npy"
    np.save(outside, np.ones((6, 4, 8, 8), np.float16))
    (folder / "latents.npy").unlink()
    (folder / "latents.npy").symlink_to(outside)
    with pytest.raises(ArrayReadError, match="outside the bundle"):
        b.array(rid, "latents")

"""The app and its JSON API over a synthetic bundle (docs/api.md)."""

import gzip
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from backend import SECURITY_HEADERS, create_app
from backend.format import BundleError
from backend.payloads import npy_bytes
from backend.resource import NPY, make_resource


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    """A stand-in front end, only for these tests."""
    root = tmp_path_factory.mktemp("frontend")
    (root / "js").mkdir()
    (root / "index.html").write_text("<!doctype html><title>t</title>"
                                     "<script type=module src=js/app.js></script>")
    (root / "js" / "app.js").write_text("export const x = 1;\n" * 50)
    (root / ".secret").write_text("no")
    return root


@pytest.fixture(scope="module")
def app(synthetic_bundle_ro, frontend):
    return create_app({"BUNDLE_DIR": synthetic_bundle_ro, "FRONTEND_DIR": frontend})


@pytest.fixture(scope="module")
def compact_app(compact_bundle_ro, frontend):
    return create_app({"BUNDLE_DIR": compact_bundle_ro, "FRONTEND_DIR": frontend})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def index(app):
    return app.test_client().get("/api/index.json").get_json()


def get_json(client, url):
    r = client.get(url)
    assert r.status_code == 200, (url, r.data)
    assert r.mimetype == "application/json"
    return r.get_json()


def load_npy(data: bytes):
    return np.load(io.BytesIO(data), allow_pickle=False)


def a_run(index, guidance):
    return next(rid for rid, r in index["runs"].items() if r["guidance_scale"] == guidance)


# ------------------------------------------------------------------------- documents

def test_index_describes_bundle(index):
    assert index["config"]["num_inference_steps"] == 5
    assert index["config"]["latent_shape"] == [4, 8, 8]
    assert index["seeds"] == [1, 2]
    assert index["guidance_scales"] == [0, 1, 7]
    assert len(index["groups"]) == 2 and index["groups"][0]["prompts"]
    assert index["skipped_runs"] == []
    assert index["trajectories"] == [1, 2]
    assert index["fewstep"] is False  # no fewstep/ section: the app never asks for one
    for rid, r in index["runs"].items():
        assert set(r) == {"prompt_id", "seed", "guidance_scale"}
        assert r["prompt_id"] in index["prompts"]
    assert index["about"]["format"] == "noisepath-bundle"


def test_run_lookup_points_guidance_zero_at_shared_run(index):
    for pid in index["prompts"]:
        for seed, by_g in index["run_lookup"][pid].items():
            assert by_g["0"] == f"empty--s{seed}-g0"
            for g, rid in by_g.items():
                r = index["runs"][rid]
                assert str(r["seed"]) == seed and float(g) == r["guidance_scale"]
    pid = next(p for p in index["prompts"] if p != "empty")
    assert set(index["run_lookup"][pid]["1"]) == {"0", "1", "7"}


def test_prompt_has_tokens_and_embeddings_url(client, index):
    pid = next(p for p in index["prompts"] if p != "empty")
    p = get_json(client, f"/api/prompts/{pid}.json")
    assert p["text"] == index["prompts"][pid]["text"]
    assert len(p["tokens"]["input_ids"]) == 77 and p["tokens"]["n_real"] >= 2
    assert p["empty_prompt_id"] == "empty"
    emb = client.get(p["text_embeddings"]["url"])
    assert emb.status_code == 200
    assert load_npy(emb.data).shape == tuple(p["text_embeddings"]["shape"]) == (77, 8)


def test_run_manifest_urls_and_stats(client, index, synthetic_bundle_ro):
    rid = a_run(index, 7)
    run = get_json(client, f"/api/runs/{rid}.json")
    assert run["run_id"] == rid and run["num_inference_steps"] == 5
    assert len(run["scheduler"]["timesteps"]) == 5
    assert run["attention"]["resolutions"] == [8, 4]
    for name, img in run["images"].items():
        assert "?v=" in img["url"] and client.get(img["url"]).status_code == 200
    for name, arr in run["arrays"].items():
        assert load_npy(client.get(arr["url"]).data).shape == tuple(arr["shape"])
    latents = np.load(synthetic_bundle_ro / "runs" / rid / "latents.npy").astype(np.float32)
    assert run["stats"]["latents_std"] == pytest.approx(latents.reshape(6, -1).std(1), rel=1e-5)
    norms = np.load(synthetic_bundle_ro / "runs" / rid / "noise_pred.npy").astype(np.float32)
    assert run["stats"]["noise_pred_norm"] == pytest.approx(
        np.linalg.norm(norms.reshape(5, -1), axis=1), rel=1e-5)


def test_stats_are_null_where_the_array_is_absent(client, index):
    run = get_json(client, f"/api/runs/{a_run(index, 1)}.json")
    assert run["stats"]["noise_pred_uncond_norm"] is None
    assert len(run["stats"]["noise_pred_text_norm"]) == 5
    g0 = get_json(client, f"/api/runs/{a_run(index, 0)}.json")
    assert g0["stats"]["noise_pred_text_norm"] is None and g0["attention"] is None


def test_step_gives_scheduler_numbers_and_centre_pixel(client, index, synthetic_bundle_ro):
    rid = a_run(index, 7)
    run = get_json(client, f"/api/runs/{rid}.json")
    latents = np.load(synthetic_bundle_ro / "runs" / rid / "latents.npy")
    for i in range(5):
        s = get_json(client, f"/api/runs/{rid}/steps/{i}.json")
        assert s["timestep"] == run["scheduler"]["timesteps"][i]
        assert s["sigma"] == run["scheduler"]["sigmas"][i]
        assert s["weaken"] == run["scheduler"]["weaken"][i]
        assert s["latents"] == latents[i, :, 4, 4].astype(float).tolist()
        assert s["latents_next"] == latents[i + 1, :, 4, 4].astype(float).tolist()
        assert len(s["noise_pred_text"]) == 4 and s["guidance_scale"] == 7


def test_step_has_null_for_absent_branch(client, index):
    s = get_json(client, f"/api/runs/{a_run(index, 0)}/steps/0.json")
    assert s["noise_pred_text"] is None and len(s["noise_pred_uncond"]) == 4


@pytest.mark.parametrize("step", ["5", "-1", "01", "1.0", "1e3", "abc", "99999999999999999999999",
                                  "\u0663", "\uff11", "%20", "1 "])
def test_step_out_of_range_returns_400(client, index, step):
    r = client.get(f"/api/runs/{a_run(index, 7)}/steps/{step}.json")
    assert r.status_code == 400
    body = r.get_json()
    assert body["status"] == 400 and "0 to 4" in body["message"]


def test_attention_by_token_and_by_step_match_the_bundle(client, index, synthetic_bundle_ro):
    rid = a_run(index, 7)
    combined = np.load(synthetic_bundle_ro / "runs" / rid / "attention.npy")   # (K, T, 8, 8)
    res4 = np.load(synthetic_bundle_ro / "runs" / rid / "attention_res4.npy")  # (K, T, 4, 4)
    k = combined.shape[0]
    for res, arr in (("combined", combined), ("8", combined), ("4", res4)):
        for t in range(k):
            a = load_npy(client.get(f"/api/runs/{rid}/attention/{res}/tokens/{t}.npy").data)
            assert a.dtype == np.dtype("<f2") and np.array_equal(a, arr[t])
        for i in range(5):
            r = client.get(f"/api/runs/{rid}/attention/{res}/steps/{i}.npy")
            assert r.mimetype == "application/octet-stream"
            assert r.data[:8] == b"\x93NUMPY\x01\x00"
            assert np.array_equal(load_npy(r.data), arr[:, i])


@pytest.mark.parametrize("tail,status", [
    ("attention/combined/tokens/99.npy", 400), ("attention/combined/tokens/-1.npy", 400),
    ("attention/combined/steps/5.npy", 400), ("attention/16/tokens/0.npy", 404),
    ("attention/04/tokens/0.npy", 404), ("attention/x/steps/0.npy", 404),
])
def test_attention_bad_index_or_resolution(client, index, tail, status):
    r = client.get(f"/api/runs/{a_run(index, 7)}/{tail}")
    assert r.status_code == status and r.get_json()["status"] == status


def test_attention_of_guidance_zero_run_is_404(client, index):
    r = client.get(f"/api/runs/{a_run(index, 0)}/attention/combined/steps/0.npy")
    assert r.status_code == 404 and "no attention" in r.get_json()["message"]


def test_sweep_lists_runs_by_ascending_guidance(client, index):
    pid = next(p for p in index["prompts"] if p != "empty")
    sweep = get_json(client, f"/api/sweeps/{pid}/1.json")
    gs = [r["guidance_scale"] for r in sweep["runs"]]
    assert gs == sorted(gs) == [0, 1, 7]
    assert sweep["runs"][0]["run_id"] == "empty--s1-g0"
    for r in sweep["runs"]:
        assert r["final_frame"] == r["decoded"]["count"] - 1 == 5
        assert client.get(r["decoded"]["url"]).mimetype == "image/webp"


def test_trajectory_has_every_run_of_the_seed(client, index):
    t = get_json(client, "/api/trajectories/2.json")
    assert t["seed"] == 2 and t["method"] == "pca"
    assert set(t["runs"]) == {rid for rid, r in index["runs"].items() if r["seed"] == 2}
    assert all(len(xy) == 6 for xy in t["runs"].values())


@pytest.mark.parametrize("url", [
    "/api/prompts/nope.json", "/api/runs/nope.json", "/api/runs/nope/steps/0.json",
    "/api/runs/nope/attention/combined/steps/0.npy", "/api/sweeps/empty/9.json",
    "/api/sweeps/nope/1.json", "/api/sweeps/empty/01.json", "/api/trajectories/3.json",
    "/api/trajectories/-1.json", "/api/trajectories/1e0.json", "/api/runs/\u00e9t\u00e9.json",
    "/api/nothing", "/api/index", "/nope.html", "/bundle/bundle.json",
    "/bundle/config.json", "/bundle/.work/index.lock", "/bundle/runs",
])
def test_unknown_ids_and_files_are_404_json(client, url):
    r = client.get(url)
    assert r.status_code == 404 and r.mimetype == "application/json"
    assert set(r.get_json()) == {"error", "message", "status"}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("url", ["/api/index.json", "/", "/bundle/x", "/js/app.js"])
def test_wrong_method_is_405_json(client, method, url):
    r = client.open(url, method=method)
    assert r.status_code == 405 and r.get_json()["status"] == 405
    assert "GET" in r.headers["Allow"]


# --------------------------------------------------------------------- files, caching

def test_bundle_files_with_version_are_immutable(client, index):
    run = get_json(client, f"/api/runs/{a_run(index, 7)}.json")
    img = client.get(run["images"]["decoded"]["url"])
    assert img.mimetype == "image/webp"
    assert img.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    png = client.get(run["images"]["latents"]["url"])
    assert png.mimetype == "image/png"
    plain = client.get(run["images"]["decoded"]["url"].split("?")[0])
    assert plain.headers["Cache-Control"] == "no-cache" and plain.data == img.data
    wrong = client.get(run["images"]["decoded"]["url"].split("?")[0] + "?v=000000000000")
    assert wrong.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("url", ["/api/index.json", "/api/runs/empty--s1-g0/steps/2.json",
                                 "/bundle/runs/empty--s1-g0/latents.npy", "/", "/js/app.js",
                                 "/api/runs/empty--s1-g0.json"])
def test_etag_gives_304(client, url):
    first = client.get(url)
    assert first.status_code == 200 and first.headers["ETag"]
    again = client.get(url, headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    assert again.headers["ETag"] == first.headers["ETag"]
    other = client.get(url, headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200


@pytest.mark.parametrize("url", ["/api/index.json", "/api/runs/empty--s1-g0.json",
                                 "/api/runs/empty--s1-g0/steps/0.json", "/js/app.js"])
def test_gzip_when_accepted(client, url):
    plain = client.get(url)
    packed = client.get(url, headers={"Accept-Encoding": "gzip, deflate, br"})
    assert packed.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in packed.headers["Vary"]
    assert gzip.decompress(packed.data) == plain.data
    assert packed.headers["ETag"] != plain.headers["ETag"]
    refused = client.get(url, headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers


def test_npy_is_gzipped_only_where_it_helps():
    smooth = npy_bytes(np.zeros((5, 8, 8)))
    noisy = npy_bytes(np.random.default_rng(0).standard_normal((5, 8, 8)))
    assert make_resource(smooth, NPY).gz is not None
    assert make_resource(noisy, NPY).gz is None
    assert make_resource(b"x" * 100, NPY).gz is None  # too small to bother


def test_frontend_served_at_root_with_content_types(client):
    root = client.get("/")
    assert root.status_code == 200 and root.mimetype == "text/html"
    assert client.get("/index.html").data == root.data
    js = client.get("/js/app.js")
    assert js.status_code == 200 and js.mimetype == "text/javascript"


@pytest.mark.parametrize("url", [
    "/.secret", "/js/../.secret", "/../pyproject.toml", "/%2e%2e/pyproject.toml",
    "/js/..%2f..%2fpyproject.toml", "/bundle/../../etc/passwd", "/bundle/%2e%2e/bundle.json",
    "/bundle/runs/..%2f..%2fbundle.json", "/js/app.js%00.png", "/bundle/%00", "/js\\app.js",
    "/%5c..%5cpyproject.toml", "/js/", "/js",
])  # "//etc/passwd": the test client reads it as Host "etc"; tests/test_hostile_server.py
def test_paths_outside_the_folders_are_404(client, url):
    r = client.get(url)
    assert r.status_code == 404 and r.mimetype == "application/json"


def test_security_headers_on_every_response(client):
    for url in ["/", "/api/index.json", "/nope", "/api/runs/x/steps/0.json",
                "/bundle/runs/empty--s1-g0/latents.npy"]:
        r = client.get(url)
        for name, value in SECURITY_HEADERS.items():
            assert r.headers[name] == value
        assert r.headers["ETag"]
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "unsafe" not in csp and "frame-ancestors 'self'" in csp


def test_missing_frontend_is_404_json(synthetic_bundle_ro, tmp_path):
    app = create_app({"BUNDLE_DIR": synthetic_bundle_ro, "FRONTEND_DIR": tmp_path / "none"})
    r = app.test_client().get("/")
    assert r.status_code == 404 and "frontend/index.html" in r.get_json()["message"]


def test_unexpected_exception_is_500_json_without_details(synthetic_bundle_ro, frontend):
    app = create_app({"BUNDLE_DIR": synthetic_bundle_ro, "FRONTEND_DIR": frontend})

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret detail /etc/passwd")

    app.logger.disabled = True
    r = app.test_client().get("/boom")
    assert r.status_code == 500
    assert r.get_json() == {"error": "internal_server_error", "status": 500,
                            "message": r.get_json()["message"]}
    assert b"secret" not in r.data and b"Traceback" not in r.data
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def _break_crc(path):
    """Make a .q8.npz's values disagree with their CRC-32 (the central directory's, which
    zipfile checks once a member is read to its end)."""
    data = bytearray(path.read_bytes())
    data[data.index(b"PK\x01\x02") + 16] ^= 0xFF
    path.write_bytes(bytes(data))


def test_array_file_unreadable_when_first_decoded_is_500_json_naming_file_and_field(
        compact_bundle_ro, tmp_path, frontend):
    """Validation reads the start of each array file; damage past it in a large file, or
    after start-up, shows when the array is first decoded: reported by file and field."""
    import shutil
    bundle = tmp_path / "b"
    shutil.copytree(compact_bundle_ro, bundle)
    rid = sorted(p.parent.name for p in (bundle / "runs").glob("*/attention_res8.q8.npz"))[0]
    app = create_app({"BUNDLE_DIR": bundle, "FRONTEND_DIR": frontend})
    app.logger.disabled = True
    client = app.test_client()
    _break_crc(bundle / "runs" / rid / "attention_res8.q8.npz")
    for url in (f"/api/runs/{rid}/attention/8/tokens/0.npy",
                f"/api/runs/{rid}/arrays/attention.npy"):  # the combined map, derived from it
        r = client.get(url)
        assert r.status_code == 500, (url, r.data[:80])
        body = r.get_json()
        assert body["error"] == "bundle_file_unreadable"
        assert body["message"].startswith(f"runs/{rid}/attention_res8.q8.npz: "
                                          "arrays.attention_res8: cannot be read (BadZipFile: Bad CRC-32")
        assert "corrupt or half-written" in body["message"] and b"Traceback" not in r.data
    assert client.get(f"/api/runs/{rid}/arrays/latents.npy").status_code == 200  # the rest serves


@pytest.mark.parametrize("fast_path", [True, False])
def test_array_file_damaged_before_its_run_is_first_asked_for_is_named_then(
        compact_bundle_ro, tmp_path, frontend, fast_path):
    """Start-up decodes no run array (a run's stats are computed when its document is
    first asked for), so damage past what validation reads shows at the run's first
    request: its document and steps answer 500 bundle_file_unreadable naming file and
    field, every time (a failed build is not kept), and the other runs serve."""
    import shutil
    bundle = tmp_path / "b"
    shutil.copytree(compact_bundle_ro, bundle)
    app = create_app({"BUNDLE_DIR": bundle, "FRONTEND_DIR": frontend, "FAST_PATH": fast_path})
    app.logger.disabled = True
    rid, other = sorted(app.extensions["noisepath.store"].runs)[:2]
    _break_crc(bundle / "runs" / rid / "latents.q8.npz")
    client = app.test_client()
    for url in [f"/api/runs/{rid}.json", f"/api/runs/{rid}/steps/0.json",
                f"/api/runs/{rid}.json"]:
        r = client.get(url)
        assert r.status_code == 500, (url, r.data[:80])
        body = r.get_json()
        assert body["error"] == "bundle_file_unreadable"
        assert body["message"].startswith(f"runs/{rid}/latents.q8.npz: arrays.latents: "
                                          "cannot be read (BadZipFile: Bad CRC-32")
        assert b"Traceback" not in r.data
    assert client.get(f"/api/runs/{other}.json").status_code == 200
    assert client.get(f"/api/runs/{other}/steps/0.json").status_code == 200


# -------------------------------------------------------------------- compact bundles

def test_compact_run_urls_serve_decoded_and_derived_arrays(compact_app, compact_bundle_ro):
    from backend.bundle import Bundle
    b = Bundle(compact_bundle_ro)
    client = compact_app.test_client()
    index = get_json(client, "/api/index.json")
    for rid in (a_run(index, 0), a_run(index, 7)):
        run = get_json(client, f"/api/runs/{rid}.json")
        version = run["arrays"]["latents"]["url"].split("?v=")[1]
        for name, arr in run["arrays"].items():
            assert arr["url"] == f"api/runs/{rid}/arrays/{name}.npy?v={version}"
            r = client.get(arr["url"])
            assert r.status_code == 200 and r.mimetype == "application/octet-stream"
            assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
            a = load_npy(r.data)
            assert a.dtype == np.dtype("<f2") and a.shape == tuple(arr["shape"])
            assert np.array_equal(a, b.array(rid, name))
        for name in ("latents", "noise_pred"):
            img = run["images"][name]
            assert img["url"] == f"api/runs/{rid}/images/{name}.png?v={version}"
            r = client.get(img["url"])
            assert r.mimetype == "image/png" and r.data[:8] == b"\x89PNG\r\n\x1a\n"
        assert run["images"]["decoded"]["url"].startswith(f"bundle/runs/{rid}/decoded.webp?v=")


def test_compact_stats_and_steps_come_from_the_decoded_arrays(compact_app, compact_bundle_ro):
    from backend.bundle import Bundle
    b = Bundle(compact_bundle_ro)
    client = compact_app.test_client()
    rid = a_run(get_json(client, "/api/index.json"), 7)
    run = get_json(client, f"/api/runs/{rid}.json")
    norms = np.asarray(b.array(rid, "noise_pred"), np.float32).reshape(5, -1)
    assert run["stats"]["noise_pred_norm"] == pytest.approx(np.linalg.norm(norms, axis=1),
                                                            rel=1e-5)
    s = get_json(client, f"/api/runs/{rid}/steps/2.json")
    assert s["noise_pred"] == b.array(rid, "noise_pred")[2, :, 4, 4].astype(float).tolist()
    att = load_npy(client.get(f"/api/runs/{rid}/attention/combined/steps/1.npy").data)
    assert np.array_equal(att, b.array(rid, "attention")[:, 1])


def test_served_previews_are_byte_identical_to_a_full_bundle_s_files(tmp_path, frontend):
    """On arrays that 8-bit storage keeps exactly, the server's PNG is the writer's."""
    from tests.synthetic_bundle import make_bundle
    kw = dict(seeds=(1,), guidance_scales=(0, 7), exact=True)
    full = make_bundle(tmp_path / "full", **kw)
    app = create_app({"BUNDLE_DIR": make_bundle(tmp_path / "compact", storage="compact", **kw),
                      "FRONTEND_DIR": frontend})
    client = app.test_client()
    for rid in get_json(client, "/api/index.json")["runs"]:
        images = get_json(client, f"/api/runs/{rid}.json")["images"]
        for name in ("latents", "noise_pred", "noise_pred_uncond", "noise_pred_text"):
            if name in images:
                served = client.get(images[name]["url"]).data
                assert served == (full / "runs" / rid / f"{name}.png").read_bytes(), (rid, name)


def test_compact_urls_without_version_revalidate_and_answer_304(compact_app):
    client = compact_app.test_client()
    url = "/api/runs/empty--s1-g0/arrays/latents.npy"
    first = client.get(url)
    assert first.status_code == 200 and first.headers["Cache-Control"] == "no-cache"
    assert client.get(url + "?v=000000000000").headers["Cache-Control"] == "no-cache"
    again = client.get(url, headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    png = client.get("/api/runs/empty--s1-g0/images/latents.png")
    assert png.status_code == 200 and png.headers["ETag"]


@pytest.mark.parametrize("url", [
    "/api/runs/nope/arrays/latents.npy", "/api/runs/empty--s1-g0/arrays/nope.npy",
    "/api/runs/empty--s1-g0/arrays/noise_pred_text.npy", "/api/runs/empty--s1-g0/arrays/.npy",
    "/api/runs/empty--s1-g0/arrays/..%2flatents.npy", "/api/runs/empty--s1-g0/arrays/latents",
    "/api/runs/empty--s1-g0/images/decoded.png", "/api/runs/empty--s1-g0/images/nope.png",
    "/api/runs/empty--s1-g0/images/latents.webp", "/api/runs/nope/images/latents.png",
    "/api/runs/empty--s1-g0/images/noise_pred_text.png",
])
def test_unknown_compact_arrays_and_images_are_404_json(compact_app, url):
    r = compact_app.test_client().get(url)
    assert r.status_code == 404 and set(r.get_json()) == {"error", "message", "status"}


def test_a_full_bundle_serves_its_files_not_api_arrays(client, index):
    rid = a_run(index, 7)
    assert client.get(f"/api/runs/{rid}/arrays/latents.npy").status_code == 404
    assert client.get(f"/api/runs/{rid}/images/latents.png").status_code == 404
    run = get_json(client, f"/api/runs/{rid}.json")
    assert all(a["url"].startswith("bundle/") for a in run["arrays"].values())


# ----------------------------------------------------------------------- validation

def _corrupt_one_run(bundle):
    rid = "empty--s2-g0"
    (bundle / "runs" / rid / "latents.npy").write_bytes(b"not an array")
    return rid


def test_bad_bundle_stops_the_app_with_the_problems(synthetic_bundle, frontend):
    rid = _corrupt_one_run(synthetic_bundle)
    with pytest.raises(BundleError) as e:
        create_app({"BUNDLE_DIR": synthetic_bundle, "FRONTEND_DIR": frontend})
    assert f"runs/{rid}/latents.npy" in str(e.value)


def test_skip_invalid_serves_the_rest_and_lists_skipped(synthetic_bundle, frontend):
    rid = _corrupt_one_run(synthetic_bundle)
    app = create_app({"BUNDLE_DIR": synthetic_bundle, "FRONTEND_DIR": frontend,
                      "SKIP_INVALID": True})
    client = app.test_client()
    index = get_json(client, "/api/index.json")
    assert index["skipped_runs"] == [rid] and rid not in index["runs"]
    assert index["run_lookup"]["empty"].keys() == {"1"}
    assert rid not in get_json(client, "/api/trajectories/2.json")["runs"]
    r = client.get(f"/api/runs/{rid}.json")
    assert r.status_code == 404 and "skipped" in r.get_json()["message"]
    assert client.get(f"/bundle/runs/{rid}/decoded.webp").status_code == 404


def test_checksums_are_verified_only_when_asked(synthetic_bundle, frontend):
    path = synthetic_bundle / "runs" / "empty--s1-g0" / "decoded.webp"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    create_app({"BUNDLE_DIR": synthetic_bundle, "FRONTEND_DIR": frontend})
    with pytest.raises(BundleError, match="sha256"):
        create_app({"BUNDLE_DIR": synthetic_bundle, "FRONTEND_DIR": frontend,
                    "CHECKSUMS": True})


def test_missing_bundle_folder_is_reported(tmp_path, frontend):
    with pytest.raises(BundleError, match="does not exist"):
        create_app({"BUNDLE_DIR": tmp_path / "nope", "FRONTEND_DIR": frontend})


def test_json_never_contains_nan(client, index):
    for url in ["/api/index.json", *(f"/api/runs/{rid}.json" for rid in index["runs"])]:
        json.loads(client.get(url).data, parse_constant=lambda c: pytest.fail(c))


# -------------------------------------------------------------------------- OpenAPI

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"


def load_spec() -> dict:
    """docs/openapi.yaml is JSON-syntax YAML after its comment lines (see its header)."""
    text = SPEC_PATH.read_text(encoding="utf-8")
    return json.loads("\n".join(line for line in text.splitlines()
                                if not line.lstrip().startswith("#")))


SPEC = load_spec()
TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
         "array": list, "object": dict, "null": type(None)}


def check_schema(value, schema, where="$"):
    """A small JSON Schema check: the keywords docs/openapi.yaml uses. Returns problems."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return check_schema(value, SPEC["components"]["schemas"][name], where)
    problems = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(value, TYPES[t]) and not (isinstance(value, bool) and t != "boolean")
                 for t in types)
        if not ok:
            return [f"{where}: {type(value).__name__} is not {types}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        problems += [f"{where}: missing {k}" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                problems += check_schema(v, props[k], f"{where}.{k}")
            elif extra is False:
                problems.append(f"{where}: unexpected {k}")
            elif isinstance(extra, dict):
                problems += check_schema(v, extra, f"{where}.{k}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 1 << 30):
            problems.append(f"{where}: {len(value)} items")
        for i, v in enumerate(value):
            problems += check_schema(v, schema.get("items", {}), f"{where}[{i}]")
    return problems


def spec_template(path: str) -> str | None:
    """The spec path a concrete URL path matches (parameters match one segment)."""
    for template in SPEC["paths"]:
        pattern = re.escape(template)
        pattern = re.sub(r"\\\{path\\\}", ".+", pattern)
        pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", pattern)
        if re.fullmatch(pattern, path):
            return template
    return None


LIVE_PATHS = {path for path, item in SPEC["paths"].items()
              if any(op.get("x-noisepath-live") for op in item.values())}
LIVE_MOUNT = "/live/{path}"  # backend/live.py's LiveMount: a WSGI mount, not a route


def test_spec_is_openapi_31_with_a_response_for_every_operation():
    assert SPEC["openapi"] == "3.1.0"
    for path, item in SPEC["paths"].items():
        assert set(item) == {"get"} or (path in LIVE_PATHS and set(item) == {"post"}), path
        for op in item.values():
            assert {"200", "400", "405"} <= set(op["responses"]), path  # 400: host_not_allowed
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert params == set(re.findall(r"\{(\w+)\}", path)), path


def app_routes(app) -> set[str]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("frontend.frontend_file",):  # the front end's own files: see "/"
            continue
        routes.add(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule))
    return routes


def test_spec_paths_are_the_app_routes(app, live_app):
    """A plain server has the paths not marked x-noisepath-live; a --live server all."""
    assert app_routes(app) == set(SPEC["paths"]) - LIVE_PATHS
    assert app_routes(live_app) | {LIVE_MOUNT} == set(SPEC["paths"])
    for path in LIVE_PATHS - {LIVE_MOUNT}:
        methods = {m.lower() for rule in live_app.url_map.iter_rules()
                   if re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule) == path
                   for m in rule.methods - {"HEAD", "OPTIONS"}}
        assert methods == set(SPEC["paths"][path]), path


def check_every_api_response(app) -> set[str]:
    """Every API path and bundle file of an app answers as its spec path says; returns
    the spec paths seen."""
    store, client = app.extensions["noisepath.store"], app.test_client()
    seen = set()
    for rel in store.api_paths():
        template = spec_template("/" + rel)
        assert template, rel
        seen.add(template)
        r = client.get("/" + rel)
        assert r.status_code == 200, rel
        content = SPEC["paths"][template]["get"]["responses"]["200"]["content"]
        assert r.mimetype in content, rel
        if r.mimetype == "application/json":
            assert check_schema(r.get_json(), content[r.mimetype]["schema"]) == [], rel
    files = [f"/bundle/{f}" for f in store.files]
    for url in files:
        r = client.get(url)
        assert spec_template(url) == "/bundle/{path}" and r.status_code == 200
        assert r.mimetype in SPEC["paths"]["/bundle/{path}"]["get"]["responses"]["200"]["content"]
    return seen


def test_every_api_response_matches_its_schema(app, compact_app):
    """The full bundle uses every path but the compact one's arrays and images."""
    seen = check_every_api_response(app) | check_every_api_response(compact_app)
    # these bundles have no spoken examples, so no clip to fetch: test_speech_examples.py
    # checks api/speech/files/{name} against its spec on a bundle that has them
    clips = {"/api/speech/files/{name}"}
    # nor a fewstep/ section: test_fewstep_responses_match_their_schema below
    fewstep = {"/api/fewstep/index.json", "/api/fewstep/files/{name}"}
    assert seen | {"/", "/bundle/{path}"} | clips | fewstep == set(SPEC["paths"]) - LIVE_PATHS


def test_fewstep_responses_match_their_schema(tmp_path, frontend):
    """A bundle with a fewstep/ section answers its two paths as the spec says."""
    from tests.synthetic_bundle import PROMPTS, make_bundle, write_fewstep_section
    bundle = make_bundle(tmp_path / "b", steps=3, seeds=(1,), prompts=PROMPTS[:1],
                         guidance_scales=(7,))
    write_fewstep_section(bundle)
    app = create_app({"BUNDLE_DIR": bundle, "FRONTEND_DIR": frontend})
    seen = check_every_api_response(app)
    assert {"/api/fewstep/index.json", "/api/fewstep/files/{name}"} <= seen


@pytest.mark.parametrize("url,status", [
    ("/api/runs/nope.json", 404), ("/api/runs/empty--s1-g0/steps/99.json", 400),
    ("/api/runs/empty--s1-g0/attention/combined/steps/0.npy", 404), ("/bundle/nope", 404),
    ("/api/sweeps/empty/7.json", 404), ("/api/trajectories/x.json", 404),
])
def test_errors_match_the_declared_error_responses(client, url, status):
    r = client.get(url)
    assert r.status_code == status
    template = spec_template(url.split("?")[0])
    assert str(status) in SPEC["paths"][template]["get"]["responses"]
    assert check_schema(r.get_json(), {"$ref": "#/components/schemas/Error"}) == []


def declared(path: str, method: str, status: int) -> dict:
    responses = SPEC["paths"][path][method]["responses"]
    assert str(status) in responses, (path, method, status)
    resp = responses[str(status)]
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[-1]]
    return resp


def test_a_host_not_allowed_is_the_declared_400(client):
    for url in ["/", "/api/index.json", "/api/runs/empty--s1-g0.json", "/bundle/nope"]:
        r = client.get(url, headers={"Host": "evil.example"})
        assert r.status_code == 400 and r.get_json()["error"] == "host_not_allowed", url
        assert r.mimetype in declared(spec_template(url), "get", 400)["content"]
        assert check_schema(r.get_json(), {"$ref": "#/components/schemas/Error"}) == []


def test_a_browsers_404_page_is_declared_as_html(client):
    r = client.get("/no-such-page", headers={"Accept": "text/html,*/*;q=0.8"})
    assert r.status_code == 404 and r.mimetype == "text/html"
    assert "text/html" in declared("/", "get", 404)["content"]
    r = client.get("/no-such-page")
    assert r.status_code == 404 and r.mimetype in declared("/", "get", 404)["content"]


@pytest.fixture
def live_app(tmp_path, synthetic_bundle_ro, frontend):
    from backend.live import LiveService
    from tests.test_live import FakeRunner

    runner = FakeRunner(tmp_path / "live", steps=2)
    svc = LiveService(runner, lambda root: None, max_queue=1, per_client=1,
                      info={"num_inference_steps": 2, "default_guidance_scale": 7.0})
    yield create_app({"BUNDLE_DIR": synthetic_bundle_ro, "FRONTEND_DIR": frontend, "LIVE": svc})
    runner.release.set()


def test_live_answers_match_their_declared_responses(live_app):
    """Each live endpoint's answers (and its errors: 400 415 413 403 429 503 404) have a
    declared status, and their JSON the declared schema."""
    client, runner = live_app.test_client(), live_app.config["LIVE"].runner

    def check(r, path, method):
        resp = declared(path, method, r.status_code)
        assert r.mimetype in resp["content"], (path, r.status_code)
        if r.mimetype == "application/json":
            assert check_schema(r.get_json(), resp["content"][r.mimetype]["schema"]) == []
        if r.status_code in (429, 503):
            assert int(r.headers["Retry-After"]) >= 1 and "Retry-After" in resp["headers"]
        return r

    def submit(body, ip="10.0.0.1", **kw):
        return check(client.post("/api/live/jobs", environ_base={"REMOTE_ADDR": ip},
                                 **({"json": body} if body is not None else kw)),
                     "/api/live/jobs", "post")

    check(client.get("/api/live/info.json"), "/api/live/info.json", "get")
    first = submit({"prompt": "a red star", "seed": 1, "guidance_scale": 3})
    assert first.status_code == 202
    job = first.get_json()["id"]
    assert runner.started.wait(10)  # running: the queue is empty again
    assert submit({"prompt": "a blue star"}, ip="10.0.0.2").status_code == 202  # queued
    assert submit({"prompt": "again"}).status_code == 429
    assert submit({"prompt": "a third"}, ip="10.0.0.3").status_code == 503
    assert submit({"prompt": ""}).status_code == 400
    assert submit(None, data="x", content_type="text/plain").status_code == 415
    assert submit(None, data="{" * 5000, content_type="application/json").status_code == 413
    r = client.post("/api/live/jobs", json={"prompt": "x"},
                    headers={"Origin": "https://evil.example"})
    assert check(r, "/api/live/jobs", "post").status_code == 403
    check(client.get(f"/api/live/jobs/{job}.json"), "/api/live/jobs/{job_id}.json", "get")
    check(client.get("/api/live/jobs/nope.json"), "/api/live/jobs/{job_id}.json", "get")
    runner.release.set()
    deadline = time.monotonic() + 10
    while client.get(f"/api/live/jobs/{job}.json").get_json()["steps_done"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    frames = "/api/live/jobs/{job_id}/frames/{i}/{kind}.png"
    for url, status in [(f"/api/live/jobs/{job}/frames/1/latent.png", 200),
                        (f"/api/live/jobs/{job}/frames/9/latent.png", 404),
                        (f"/api/live/jobs/{job}/frames/0/other.png", 404)]:
        assert check(client.get(url), frames, "get").status_code == status
    cancel = "/api/live/jobs/{job_id}/cancel"
    check(client.post(f"/api/live/jobs/{job}/cancel"), cancel, "post")
    check(client.post("/api/live/jobs/nope/cancel"), cancel, "post")
    r = client.get("/live/api/index.json")  # no live bundle yet
    assert check(r, LIVE_MOUNT, "get").status_code == 404


def test_schema_check_catches_mismatches():
    step = {"$ref": "#/components/schemas/Step"}
    assert check_schema({"run_id": "x"}, step)
    assert check_schema([], {"$ref": "#/components/schemas/Index"})
    assert check_schema({"error": "e", "message": "m", "status": True},
                        {"$ref": "#/components/schemas/Error"})


# ------------------------------------------------------------------------ fast path

@pytest.fixture(scope="module")
def slow_app(synthetic_bundle_ro, frontend):
    return create_app({"BUNDLE_DIR": synthetic_bundle_ro, "FRONTEND_DIR": frontend,
                       "FAST_PATH": False})


def fast_path_urls(app):
    store = app.extensions["noisepath.store"]
    # the spoken examples' index is not a hot document: Flask answers it (backend/speech_examples.py)
    return [p for p in store.api_paths() if p.endswith(".json") and not p.startswith("api/speech/")]


@pytest.mark.parametrize("encoding", [None, "gzip", "gzip, deflate, br, zstd", "*", "identity",
                                      "GZIP", "br", "gzip;q=0", "gzip;q=0.5"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_fast_path_answers_exactly_as_flask(app, slow_app, encoding, method):
    headers = {"Accept-Encoding": encoding} if encoding else {}
    fast, slow = app.test_client(), slow_app.test_client()
    for url in ["/" + p for p in fast_path_urls(app)] + [
            "/api/runs/nope/steps/0.json", "/api/runs/empty--s1-g0/steps/05.json",
            "/api/runs/empty--s1-g0/steps/5.json", "/api/index.json?x=1", "/api/prompts/x.json"]:
        a = fast.open(url, method=method, headers=headers)
        b = slow.open(url, method=method, headers=headers)
        assert (a.status_code, a.data) == (b.status_code, b.data), url
        strip = {"Date"}
        assert ({k: v for k, v in a.headers if k not in strip}
                == {k: v for k, v in b.headers if k not in strip}), url


def test_fast_path_takes_the_documents_and_leaves_the_rest_to_flask(app, monkeypatch):
    fast = app.wsgi_app.app  # the fast path, inside the Host check (backend/hosts.py)
    calls = []

    def flask(environ, start_response):
        calls.append(environ["PATH_INFO"])
        start_response("204 No Content", [])
        return []

    monkeypatch.setattr(fast, "wsgi_app", flask)
    client = app.test_client()
    for url in ["/" + p for p in fast_path_urls(app)]:
        assert client.get(url, headers={"Accept-Encoding": "gzip"}).status_code == 200
    assert calls == []
    for url in ["/", "/api/index.json?v=1", "/api/runs/nope.json", "/bundle/x"]:
        assert client.get(url).status_code == 204
    client.get("/api/index.json", headers={"If-None-Match": '"x"'})
    client.post("/api/index.json")
    assert len(calls) == 6

"""Start-up builds only the index: per-run documents are built on first request, once,
also when many threads ask at the same moment (backend/store.py, LazyMap)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from backend import create_app, payloads
from backend.bundle import Bundle
from backend.store import LazyMap

THREADS = 8


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontend")
    (root / "index.html").write_text("<!doctype html><title>t</title>")
    return root


@pytest.fixture
def no_decoding(monkeypatch):
    """Any read of a run array fails loudly."""
    def refuse(self, run_id, name):
        raise AssertionError(f"decoded {run_id}/{name}")
    monkeypatch.setattr(Bundle, "array", refuse)


def test_start_up_and_index_decode_no_run_array(compact_bundle_ro, frontend, no_decoding):
    app = create_app({"BUNDLE_DIR": compact_bundle_ro, "FRONTEND_DIR": frontend})
    client = app.test_client()
    assert client.get("/").status_code == 200
    index = client.get("/api/index.json").get_json()
    assert index["runs"]
    store = app.extensions["noisepath.store"]
    for docs in (store.runs, store.numbers, store.sweeps, store.trajectories, store.prompts):
        assert docs.built() == []


def test_keys_are_known_at_start_up_without_building(compact_bundle_ro, frontend, no_decoding):
    """api.py, fastpath.py and export iterate and look up runs: that builds nothing."""
    app = create_app({"BUNDLE_DIR": compact_bundle_ro, "FRONTEND_DIR": frontend})
    store = app.extensions["noisepath.store"]
    index = app.test_client().get("/api/index.json").get_json()
    assert sorted(store.runs) == sorted(index["runs"]) and len(store.runs) == len(index["runs"])
    rid = next(iter(index["runs"]))
    assert rid in store.runs and "nope" not in store.runs and store.runs.get("nope") is None
    assert ["x"] not in store.runs  # an unhashable key is no key, not a TypeError
    assert app.test_client().get("/api/runs/nope.json").status_code == 404
    assert store.runs.built() == []


@pytest.fixture
def counted_numbers(monkeypatch):
    """Count payloads.run_numbers calls per run; each takes a little while, so threads
    asking at once overlap."""
    calls: dict[str, int] = {}
    real = payloads.run_numbers

    def counting(b, rid):
        calls[rid] = calls.get(rid, 0) + 1
        time.sleep(0.05)
        return real(b, rid)
    monkeypatch.setattr(payloads, "run_numbers", counting)
    return calls


def test_run_numbers_are_computed_once_per_run_on_first_request(compact_bundle_ro, frontend,
                                                                counted_numbers):
    app = create_app({"BUNDLE_DIR": compact_bundle_ro, "FRONTEND_DIR": frontend})
    client = app.test_client()
    assert counted_numbers == {}
    rid = next(iter(app.extensions["noisepath.store"].runs))
    first = client.get(f"/api/runs/{rid}.json")
    assert first.status_code == 200 and first.get_json()["stats"]["latents_std"]
    assert client.get(f"/api/runs/{rid}/steps/3.json").status_code == 200  # shares them
    assert client.get(f"/api/runs/{rid}.json").data == first.data
    assert counted_numbers == {rid: 1}


@pytest.mark.parametrize("fast_path", [True, False])
def test_concurrent_first_requests_build_a_run_once(compact_bundle_ro, frontend,
                                                     counted_numbers, fast_path):
    """Waitress answers from many threads: all first requests of one run at the same
    moment get the same body, and the run's arrays are decoded for it once."""
    app = create_app({"BUNDLE_DIR": compact_bundle_ro, "FRONTEND_DIR": frontend,
                      "FAST_PATH": fast_path})
    rid = next(iter(app.extensions["noisepath.store"].runs))
    urls = [f"/api/runs/{rid}.json", f"/api/runs/{rid}/steps/0.json"] * (THREADS // 2)
    start = threading.Barrier(THREADS)
    answers: list = [None] * THREADS

    def ask(i):
        client = app.test_client()
        start.wait()
        r = client.get(urls[i])
        answers[i] = (urls[i], r.status_code, r.data)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(a is not None and a[1] == 200 for a in answers), answers
    assert len({data for url, _, data in answers if url.endswith(f"{rid}.json")}) == 1
    assert counted_numbers == {rid: 1}


def test_lazy_map_keeps_nothing_when_a_build_fails():
    attempts = []

    def build(key):
        attempts.append(key)
        if len(attempts) == 1:
            raise KeyError("a field the build needed")  # not mistaken for an unknown key
        return key.upper()

    m = LazyMap(["a", "b"], build)
    with pytest.raises(KeyError, match="a field the build needed"):
        m.get("a")
    assert m.built() == [] and m["a"] == "A" and m.get("a") == "A"
    assert attempts == ["a", "a"] and list(m) == ["a", "b"] and m.built() == ["a"]


def test_serve_imports_no_other_subcommand_and_no_torch():
    """`noisepath serve` builds only its own parser: the precompute commands import torch
    (about 2 s on this machine), which serving never needs."""
    code = ("import sys\nfrom backend.cli import main\n"
            "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'precompute') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--bundle DIR" in r.stdout and r.stdout.strip().endswith("[]")


def test_reading_an_npz_member_header_inflates_little(tmp_path, monkeypatch):
    """Validation reads the header of every q8 file's q member at start-up. zipfile
    inflates everything one read fetches (LZMA has no output bound there), so the header
    read must fetch few compressed bytes: 4 KiB of compressed deltas inflate to ~16 KiB,
    and the 1,569 files of the demo bundle took 1 CPU s more that way."""
    import zipfile

    import numpy as np

    from backend import codec
    rng = np.random.default_rng(0)
    q = rng.integers(0, 4, size=(50, 4, 64, 64), dtype=np.uint8)  # like q8 deltas: ~4x smaller
    path = tmp_path / "latents.q8.npz"
    path.write_bytes(codec.npz_bytes({"q": q, "lo": np.zeros((50, 4, 1, 1), np.float32),
                                      "scale": np.ones((50, 4, 1, 1), np.float32)}))
    inflated = []
    real = zipfile.LZMADecompressor.decompress

    def counting(self, data):
        out = real(self, data)
        inflated.append(len(out))
        return out
    monkeypatch.setattr(zipfile.LZMADecompressor, "decompress", counting)
    members = codec.read_npz(path, header_only=("q", "lo", "scale"))
    assert members["q"] == (np.dtype(np.uint8), q.shape)
    assert 0 < sum(inflated) <= 3 * 2048, inflated  # three headers of 128 bytes, read in steps
    assert np.array_equal(codec.read_npz(path)["q"], q)  # full reads are unchanged

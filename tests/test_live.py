"""`noisepath serve --live` (backend/live.py, precompute/live.py): the job API, its
limits and bad input, and (slow) real jobs on the shipped demo model: streamed steps,
the run served under live/, cache hits, a failed job leaving nothing half-written, and
the size bound."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from backend import REPO, create_app
from backend.clients import BROWSER_COOKIE
from backend.live import LiveService, missing_libraries

DEMO_BUNDLE = REPO / "static" / "demo-bundle"
DEMO_MODEL = REPO / "static" / "demo-model"


# ------------------------------------------------------------ a runner without a model

class FakeRunner:
    """Stands in for precompute.live.LiveRunner: each job waits for `release`, streams
    `steps` frames, and fails when its prompt is "fail"."""

    def __init__(self, live_dir: Path, steps: int = 3):
        self.live_dir, self.steps = live_dir, steps
        self.base_scales = [0.0, 1.0, 7.0]
        self.release = threading.Event()
        self.started = threading.Event()
        self.evicted = {}  # prompt id -> text, as the size bound leaves them

    def target(self, prompt, seed, g):
        from precompute.writer import prompt_id, run_id

        return run_id(prompt_id(prompt), seed, g)

    def has(self, prompt, seed, g):
        return False

    def used(self, prompt):
        pass

    def evicted_text(self, pid):
        return self.evicted.get(pid)

    def words(self, prompt):
        return [{"word": w, "pieces": [w + "</w>"], "known": True} for w in prompt.split()]

    def run(self, prompt, seed, g, on_frame=None, should_stop=None):
        from precompute.live import Frame

        from backend.live import JobCancelled

        self.started.set()
        assert self.release.wait(10)
        for i in range(self.steps):
            if should_stop is not None and should_stop():  # as LiveRunner's step hook does
                raise JobCancelled()
            on_frame(i, self.steps, Frame(b"latent-png", b"predicted-png"))
        if prompt == "fail":
            raise MemoryError("out of memory on the device")
        return self.target(prompt, seed, g)


@pytest.fixture
def fake(tmp_path, synthetic_bundle_ro):
    runner = FakeRunner(tmp_path / "live")
    svc = LiveService(runner, lambda root: None, max_queue=2, per_client=1,
                      info={"num_inference_steps": 3, "default_guidance_scale": 7.0})
    app = create_app({"BUNDLE_DIR": synthetic_bundle_ro, "LIVE": svc})
    yield runner, svc, app.test_client()
    runner.release.set()


def post(client, body, ip="10.0.0.1", **headers):
    return client.post("/api/live/jobs", json=body, headers=headers,
                       environ_base={"REMOTE_ADDR": ip})


def wait_state(client, job_id, states=("done", "failed"), timeout=300):
    """Wait for a job to end: a guard against a hang (300 s: on a busy two-core machine a
    run that takes seconds alone has taken over 120), not a speed target."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/live/jobs/{job_id}.json").get_json()
        if status["state"] in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {status['state']} after {timeout} s")


GOOD = {"prompt": "a red star", "seed": 1, "guidance_scale": 3}


@pytest.mark.parametrize("body, fragment", [
    ({**GOOD, "prompt": ""}, "prompt is empty"),
    ({**GOOD, "prompt": "   \n "}, "prompt is empty"),
    ({**GOOD, "prompt": 5}, "prompt must be a string"),
    ({**GOOD, "prompt": "x" * 1001}, "longer than 1000"),
    ({**GOOD, "seed": -1}, "seed must be"),
    ({**GOOD, "seed": 2**31}, "seed must be"),
    ({**GOOD, "seed": 1.5}, "seed must be"),
    ({**GOOD, "seed": "1"}, "seed must be"),
    ({**GOOD, "seed": True}, "seed must be"),
    ({**GOOD, "guidance_scale": -0.5}, "guidance_scale must be"),
    ({**GOOD, "guidance_scale": 20.5}, "guidance_scale must be"),
    ({**GOOD, "guidance_scale": "7"}, "guidance_scale must be"),
    ({**GOOD, "guidance_scale": None}, "guidance_scale must be"),
    ({**GOOD, "model": "stabilityai/sd"}, "unknown field(s) 'model'"),
    ({**GOOD, "path": "/etc/passwd"}, "unknown field(s) 'path'"),
    ([GOOD], "JSON object"),
])
def test_bad_job_is_a_400_json_error(fake, body, fragment):
    _, svc, client = fake
    resp = post(client, body)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.is_json and fragment in resp.get_json()["message"]
    assert not svc.queue


def test_non_finite_guidance_is_refused(fake):
    _, _, client = fake
    resp = client.post("/api/live/jobs", data='{"prompt": "a", "seed": 1, "guidance_scale": NaN}',
                       content_type="application/json")
    assert resp.status_code == 400 and "guidance_scale" in resp.get_json()["message"]


def test_wrong_content_type_oversized_and_broken_bodies(fake):
    _, _, client = fake
    form = client.post("/api/live/jobs", data={"prompt": "a"})
    assert form.status_code == 415 and form.is_json
    big = client.post("/api/live/jobs", data=json.dumps({**GOOD, "prompt": "x" * 5000}),
                      content_type="application/json")
    assert big.status_code == 413 and big.is_json
    broken = client.post("/api/live/jobs", data="{not json", content_type="application/json")
    assert broken.status_code == 400 and broken.is_json


def test_cross_site_posts_are_refused(fake):
    _, svc, client = fake
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}):
        resp = post(client, GOOD, **headers)
        assert resp.status_code == 403 and resp.get_json()["error"] == "cross_site", headers
    assert not svc.queue
    same = post(client, GOOD, Origin="http://localhost")  # the test client's host
    assert same.status_code == 202


def test_get_is_not_a_way_to_submit(fake):
    _, svc, client = fake
    resp = client.get("/api/live/jobs?prompt=a")
    assert resp.status_code in (404, 405) and resp.is_json and not svc.queue


def test_job_streams_its_steps_and_a_run_that_cannot_be_served_is_a_failure(fake):
    runner, svc, client = fake
    resp = post(client, GOOD)
    assert resp.status_code == 202
    job = resp.get_json()
    assert job["state"] in ("queued", "running") and job["open"] is None
    assert client.get(f"/api/live/jobs/{job['id']}/frames/0/latent.png").status_code == 404
    runner.release.set()
    done = wait_state(client, job["id"])
    # the fake runner's bundle app is None, so the run is not served: reported, not hidden
    assert done["state"] == "failed" and "does not load" in done["error"]
    assert done["steps_done"] == 3
    frame = client.get(f"/api/live/jobs/{job['id']}/frames/2/predicted.png")
    assert frame.status_code == 200 and frame.data == b"predicted-png"
    assert frame.mimetype == "image/png"
    assert client.get(f"/api/live/jobs/{job['id']}/frames/3/latent.png").status_code == 404
    assert client.get(f"/api/live/jobs/{job['id']}/frames/0/other.png").status_code == 404


def test_a_failing_job_reports_its_failure(fake):
    runner, _, client = fake
    runner.release.set()
    job = post(client, {**GOOD, "prompt": "fail"}).get_json()
    status = wait_state(client, job["id"])
    assert status["state"] == "failed"
    assert "MemoryError: out of memory on the device" in status["error"]


def test_full_queue_and_per_client_limit_answer_with_retry_after(fake):
    runner, svc, client = fake
    assert post(client, GOOD, ip="10.0.0.1").status_code == 202
    assert runner.started.wait(10)                  # that one is running: the queue is empty
    again = post(client, {**GOOD, "seed": 2}, ip="10.0.0.1")
    assert again.status_code == 429 and again.is_json
    assert int(again.headers["Retry-After"]) >= 1
    second = post(client, GOOD, ip="10.0.0.2").get_json()
    assert post(client, GOOD, ip="10.0.0.3").status_code == 202
    full = post(client, GOOD, ip="10.0.0.4")
    assert full.status_code == 503 and full.get_json()["error"] == "busy"
    assert int(full.headers["Retry-After"]) >= 1
    assert client.get(f"/api/live/jobs/{second['id']}.json").get_json()["ahead"] == 1
    info = client.get("/api/live/info.json").get_json()
    assert info["available"] and info["queue"] == {"waiting": 2, "max": 2, "per_client": 1,
                                                   "per_address": 8}


def test_cancel_drops_a_queued_job(fake):
    runner, svc, client = fake
    post(client, GOOD, ip="10.0.0.1")
    assert runner.started.wait(10)
    owner = another_browser(client)
    queued = post(owner, GOOD, ip="10.0.0.2").get_json()
    other = cancel(client, queued["id"], ip="10.0.0.1")
    assert other.status_code == 403 and other.get_json()["error"] == "not_yours"
    assert len(svc.queue) == 1
    resp = cancel(owner, queued["id"], ip="10.0.0.2")
    assert resp.status_code == 200 and resp.get_json()["state"] == "cancelled"
    assert not svc.queue
    assert client.post(f"/api/live/jobs/{queued['id']}/cancel",
                       headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/api/live/jobs/nope/cancel").status_code == 404


def cancel(client, job_id, ip="10.0.0.1"):
    return client.post(f"/api/live/jobs/{job_id}/cancel", environ_base={"REMOTE_ADDR": ip})


def another_browser(client):
    """A test client of the same app with a cookie jar of its own: another browser."""
    return client.application.test_client()


def test_cancel_stops_a_running_job_at_its_next_step_and_the_next_job_runs(fake):
    runner, svc, client = fake
    running = post(client, GOOD, ip="10.0.0.1").get_json()
    assert runner.started.wait(10)
    other = another_browser(client)
    queued = post(other, {**GOOD, "seed": 2}, ip="10.0.0.2").get_json()
    assert cancel(other, running["id"], ip="10.0.0.2").status_code == 403  # not its job
    assert not svc.jobs[running["id"]].stop
    resp = cancel(client, running["id"], ip="10.0.0.1")
    assert resp.status_code == 200 and resp.get_json()["state"] == "running"  # until its step
    runner.release.set()
    status = wait_state(client, running["id"], states=("done", "failed", "cancelled"))
    assert status["state"] == "cancelled" and status["error"] is None
    assert status["steps_done"] == 0 and status["open"] is None
    # the worker went on to the queued job (the fake's bundle app is None: "failed")
    nxt = wait_state(other, queued["id"], states=("done", "failed", "cancelled"))
    assert nxt["state"] == "failed" and nxt["steps_done"] == runner.steps


# ------------------------------------------- a class behind one router (one address)

NAT = "203.0.113.7"  # the school's one public address


def test_two_browsers_behind_one_address_each_queue_a_job_and_see_only_their_own(fake):
    """The server knows a browser by the id in its cookie, not by its address: two
    students behind one NAT each queue a job, and neither can poll, watch or cancel
    the other's (404 as for an unknown job; 403 for a cancel)."""
    runner, svc, alice = fake
    bob = another_browser(alice)
    first = post(alice, GOOD, ip=NAT)
    assert first.status_code == 202
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith(f"{BROWSER_COOKIE}=") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie and "Path=/" in cookie
    assert runner.started.wait(10)
    second = post(bob, {**GOOD, "seed": 2}, ip=NAT)
    assert second.status_code == 202, second.get_json()
    again = post(alice, {**GOOD, "seed": 3}, ip=NAT)  # one job per browser
    assert again.status_code == 429 and "--live-per-client" in again.get_json()["message"]
    a, b = first.get_json()["id"], second.get_json()["id"]
    assert alice.get(f"/api/live/jobs/{a}.json").status_code == 200
    for url in (f"/api/live/jobs/{a}.json", f"/api/live/jobs/{a}/frames/0/latent.png"):
        peek = bob.get(url, environ_base={"REMOTE_ADDR": NAT})
        assert peek.status_code == 404 and peek.get_json()["error"] == "not_found", url
    assert cancel(bob, a, ip=NAT).get_json()["error"] == "not_yours"
    assert cancel(alice, b, ip=NAT).status_code == 403
    assert svc.jobs[a].state == "running" and svc.jobs[b].state == "queued"
    runner.release.set()
    assert wait_state(bob, b)["steps_done"] == runner.steps


def test_minting_browser_ids_from_one_address_hits_the_per_address_ceiling(fake):
    """A script without cookies is a new browser at every request: the address's
    ceiling (--live-per-address) stops it, with a one-line 429 naming that limit and
    when to retry; X-Forwarded-For is not believed; other addresses still get in."""
    runner, svc, client = fake
    svc.per_address, svc.max_queue = 2, 8
    fresh = [another_browser(client) for _ in range(4)]
    assert post(fresh[0], GOOD, ip=NAT).status_code == 202
    assert runner.started.wait(10)
    assert post(fresh[1], GOOD, ip=NAT).status_code == 202
    refused = post(fresh[2], GOOD, ip=NAT)
    assert refused.status_code == 429 and len(refused.data.strip().splitlines()) == 1
    err = refused.get_json()
    assert err["error"] == "too_many_requests" and "--live-per-address" in err["message"]
    wait = int(refused.headers["Retry-After"])
    assert wait >= 1 and f"try again in about {wait} s" in err["message"]
    spoofed = post(fresh[3], GOOD, ip=NAT, **{"X-Forwarded-For": "10.9.9.9"})
    assert spoofed.status_code == 429
    assert post(fresh[3], GOOD, ip="198.51.100.1").status_code == 202
    assert len(svc.queue) == 2


@pytest.mark.parametrize("value", ["", "A" * 31 + "!", "A" * 33, "é" * 32])
def test_a_malformed_browser_cookie_is_a_new_browser(fake, value):
    runner, svc, client = fake
    client.set_cookie(BROWSER_COOKIE, value)
    resp = post(client, GOOD)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    given = client.get_cookie(BROWSER_COOKIE).value
    assert given != value and len(given) == 32
    assert svc.jobs[resp.get_json()["id"]].client == given
    client.set_cookie(BROWSER_COOKIE, value)  # the id it was given, lost: not its job
    peek = client.get(f"/api/live/jobs/{resp.get_json()['id']}.json")
    assert peek.status_code == 404 and peek.is_json


def test_unknown_job_and_no_live_bundle_yet(fake):
    _, _, client = fake
    resp = client.get("/api/live/jobs/0123.json")
    assert resp.status_code == 404 and resp.is_json
    live = client.get("/live/api/index.json")
    assert live.status_code == 404 and "no typed prompt" in live.get_json()["message"]
    assert client.get("/live").status_code == 308


def test_without_live_the_api_says_it_is_not_there(synthetic_bundle_ro):
    client = create_app({"BUNDLE_DIR": synthetic_bundle_ro}).test_client()
    resp = client.get("/api/live/info.json")
    assert resp.status_code == 404 and resp.is_json
    assert client.post("/api/live/jobs", json=GOOD).status_code in (404, 405)


# ------------------------------------------------------------------- the command line

def live_args(*argv):
    """`serve --live` arguments as the real parser reads them (its defaults, not copies)."""
    from backend import cli
    return cli.build_parser("serve").parse_args(
        ["serve", "--live", "--model", str(DEMO_MODEL), "--bundle", str(DEMO_BUNDLE), *argv])


def test_serve_live_without_the_model_libraries_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    from backend import serve_cli
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    assert "noisepath[precompute]" in missing_libraries()
    assert serve_cli.start_live(live_args()) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'noisepath[precompute]'" in err


def test_serve_live_on_all_interfaces_warns(monkeypatch, capsys):
    from backend import live, serve_cli
    monkeypatch.setattr(live, "make_service", lambda *a, **k: "service")
    assert serve_cli.start_live(live_args("--host", "0.0.0.0")) == "service"
    assert "anyone on the network can spend" in capsys.readouterr().err
    serve_cli.start_live(live_args())
    assert "anyone on the network" not in capsys.readouterr().err


def test_serve_parses_the_live_options():
    import argparse

    from backend import serve_cli
    p = argparse.ArgumentParser()
    serve_cli.add_arguments(p)
    args = p.parse_args(["--live", "--live-steps", "5", "--live-dir", "/x", "--device", "cuda"])
    assert args.live and args.live_steps == 5 and args.live_dir == Path("/x")
    assert Path(args.model) == DEMO_MODEL and args.device == "cuda"
    assert p.parse_args([]).device == "cpu"
    with pytest.raises(SystemExit):
        p.parse_args(["--live-queue", "0"])


def test_the_live_api_imports_no_torch():
    code = ("import sys, backend.live, backend.serve_cli; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ------------------------------------------------- real jobs on the shipped demo model

STEPS = 2


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The demo model behind a live service, 2 steps a run, at most 2 typed prompts."""
    from backend import FRONTEND
    from backend.live import make_service

    index = json.loads((DEMO_BUNDLE / "bundle.json").read_text())
    live_dir = tmp_path_factory.mktemp("live") / "bundle"
    svc = make_service(str(DEMO_MODEL), "cpu", live_dir, index["config"],
                       index["guidance_scales"], FRONTEND, steps=STEPS, max_queue=4,
                       per_client=2, max_prompts=2, threads=1, shipped_dir=DEMO_BUNDLE)
    app = create_app({"BUNDLE_DIR": DEMO_BUNDLE, "LIVE": svc})
    return svc, app.test_client(), live_dir


@pytest.mark.slow
def test_with_other_settings_the_box_offers_the_shipped_prompts_to_run_live(live):
    """2 steps a run is not the shipped bundle's 50: its runs cannot join the live bundle,
    so the info says which setting differs and lists the shipped texts (the box offers
    them: run in the live settings, they compare with a typed prompt)."""
    _, client, _ = live
    shipped = client.get("/api/live/info.json").get_json()["shipped"]
    texts = sorted(json.loads(f.read_text())["text"]
                   for f in (DEMO_BUNDLE / "prompts").glob("*/prompt.json"))
    assert shipped == {"in_live_bundle": False, "differs_in": ["num_inference_steps"],
                       "texts": [t for t in texts if t]}


def check_valid(root: Path):
    from backend.validator import validate_bundle

    problems = [p for p in validate_bundle(root, checksums=True, decode=True)
                if p.severity == "error"]
    assert not problems, problems


@pytest.mark.slow
def test_a_typed_prompt_becomes_an_ordinary_run_and_then_a_cache_hit(live):
    svc, client, live_dir = live
    body = {"prompt": "a blue star on a yellow background", "seed": 5, "guidance_scale": 4.5}
    first = post(client, body)
    assert first.status_code == 202
    done = wait_state(client, first.get_json()["id"])
    assert done["state"] == "done", done
    assert done["steps_done"] == STEPS and done["num_inference_steps"] == STEPS
    assert done["unet_calls"] == STEPS  # DDIM: one call a step
    for i in range(STEPS):
        for kind in ("latent", "predicted"):
            png = client.get(f"/api/live/jobs/{done['id']}/frames/{i}/{kind}.png")
            assert png.status_code == 200 and png.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [w["word"] for w in done["words"]] == body["prompt"].split()
    assert all(w["known"] and len(w["pieces"]) == 1 for w in done["words"])
    rid = done["run_id"]
    assert done["open"] == (f"live/?prompt={rid.split('--s')[0]}&seed=5&guidance=4.5"
                            f"&text={quote(body['prompt'], safe='')}")
    # the live bundle is served like any bundle: the run, its sweep with the shipped
    # bundle's scales plus the typed one, its attention, its trajectory map
    run = client.get(f"/live/api/runs/{rid}.json")
    assert run.status_code == 200
    index = client.get("/live/api/index.json").get_json()
    assert sorted(index["guidance_scales"]) == [0.0, 1.0, 3.0, 4.5, 7.0]
    assert index["config"]["num_inference_steps"] == STEPS
    pid = rid.split("--s")[0]
    assert client.get(f"/live/api/sweeps/{pid}/5.json").status_code == 200
    assert client.get("/live/api/trajectories/5.json").status_code == 200
    assert client.get(f"/live/api/runs/{rid}/attention/16/tokens/1.npy").status_code == 200
    assert client.get("/live/").status_code == 200
    check_valid(live_dir)
    # the same job again is answered at once from the live bundle
    started = time.perf_counter()
    again = post(client, body)
    elapsed = time.perf_counter() - started
    assert again.status_code == 200 and again.get_json()["cached"]
    assert again.get_json()["state"] == "done" and elapsed < 5  # no model call: far below a run
    # the shipped bundle was not touched
    assert rid not in json.loads((DEMO_BUNDLE / "bundle.json").read_text())["runs"]


@pytest.mark.slow
def test_words_new_to_the_demo_model_are_split_into_pieces(live):
    svc, _, _ = live
    words = svc.runner.words("a dragon, red")
    assert [(w["word"], w["known"]) for w in words] == [
        ("a", True), ("dragon", False), (",", True), ("red", True)]
    assert len(words[1]["pieces"]) > 1 and "".join(words[1]["pieces"]) == "dragon</w>"
    assert len(svc.runner.words("red " * 100)) == 100  # past 77 tokens: all words shown


@pytest.mark.slow
def test_a_prompt_past_77_tokens_runs_truncated_as_the_precompute_does(live):
    _, client, _ = live
    status = wait_state(client, post(client, {"prompt": "a red star " * 30, "seed": 9,
                                              "guidance_scale": 3}).get_json()["id"])
    assert status["state"] == "done", status
    prompt = client.get(f"/live/api/prompts/{status['run_id'].split('--s')[0]}.json").get_json()
    assert prompt["tokens"]["truncated"] and prompt["tokens"]["dropped_pieces"]


@pytest.mark.slow
def test_a_job_that_dies_mid_run_leaves_no_half_written_run(live, monkeypatch):
    import os

    from precompute import writer

    svc, client, live_dir = live
    if not (live_dir / "bundle.json").exists():  # run alone: a first job makes the bundle
        first = post(client, {"prompt": "a red circle", "seed": 7, "guidance_scale": 1})
        assert wait_state(client, first.get_json()["id"])["state"] == "done"
    real_stage = writer.BundleWriter.stage_run
    calls = []

    def stage_then_die(self, *a, **k):  # dies after the first run of the job is staged
        calls.append(real_stage(self, *a, **k))
        if len(calls) == 2:
            raise MemoryError("killed while writing")
        return calls[-1]
    monkeypatch.setattr(writer.BundleWriter, "stage_run", stage_then_die)
    body = {"prompt": "a green square", "seed": 6, "guidance_scale": 3}
    status = wait_state(client, post(client, body).get_json()["id"])
    assert status["state"] == "failed" and "killed while writing" in status["error"]
    assert not list((live_dir / "runs").glob("a-green-square-*"))
    assert not list((live_dir / ".tmp").glob(f"{os.getpid()}-*"))
    check_valid(live_dir)
    monkeypatch.setattr(writer.BundleWriter, "stage_run", real_stage)
    retry = wait_state(client, post(client, body).get_json()["id"])
    assert retry["state"] == "done", retry  # the failed job left no claim behind


@pytest.mark.slow
def test_a_killed_servers_half_written_run_is_invisible_and_cleaned(live):
    """A server killed mid-job leaves a staging folder named by its (now dead) pid: the
    live bundle still validates, and the next job removes the folder."""
    svc, client, live_dir = live
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = live_dir / ".tmp" / f"{dead.pid}-0123456789abcdef"
    leftover.mkdir(parents=True)
    (leftover / "latents.npy").write_bytes(b"\x93NUMPY half")
    check_valid(live_dir)
    status = wait_state(client, post(client, {"prompt": "a tiny orange circle", "seed": 8,
                                              "guidance_scale": 3}).get_json()["id"])
    assert status["state"] == "done"
    assert not leftover.exists()
    check_valid(live_dir)


@pytest.mark.slow
def test_the_least_recently_used_prompt_is_evicted(live):
    svc, client, live_dir = live
    def job(text):
        return post(client, {"prompt": text, "seed": 7, "guidance_scale": 3})

    for text in ["a red circle", "a small yellow star"]:  # max_prompts is 2
        assert wait_state(client, job(text).get_json()["id"])["state"] == "done"
    assert job("a red circle").get_json()["cached"]  # a use: the star is now the oldest
    assert wait_state(client, job("a big purple square").get_json()["id"])["state"] == "done"
    kept = {p.name.rsplit("-", 1)[0] for p in (live_dir / "prompts").iterdir()}
    assert kept >= {"a-red-circle", "a-big-purple-square"}
    assert not (kept & {"a-small-yellow-star"})
    index = client.get("/live/api/index.json").get_json()
    assert not [r for r in index["runs"] if r.startswith("a-small-yellow-star")]
    assert [r for r in index["runs"] if r.startswith("a-red-circle")]
    check_valid(live_dir)
    # its URL reopens it: the server queues the evicted prompt's job again
    star = svc.runner.target("a small yellow star", 7, 3).split("--s")[0]
    r = client.get(f"/live/?prompt={star}&seed=7&guidance=3")
    assert r.status_code == 303
    job_id = r.headers["Location"].split("/?live_job=", 1)[1]
    assert wait_state(client, job_id)["state"] == "done"
    index = client.get("/live/api/index.json").get_json()
    assert f"{star}--s7-g3" in index["runs"]
    check_valid(live_dir)


@pytest.mark.slow
def test_a_running_job_cancelled_by_its_client_leaves_no_run(live, monkeypatch):
    """The page is left after the first streamed step: the job stops at the next step,
    its staged runs are removed, and the live bundle still validates."""
    import os

    svc, client, live_dir = live
    real_run = svc.runner.run

    def run_then_leave(prompt, seed, g, on_frame=None, should_stop=None):
        def frame_then_cancel(i, total, frame):
            on_frame(i, total, frame)
            job = next(j for j in svc.jobs.values() if j.state == "running")
            assert cancel(client, job.id).status_code == 200  # post() submits as 10.0.0.1
        return real_run(prompt, seed, g, on_frame=frame_then_cancel, should_stop=should_stop)
    monkeypatch.setattr(svc.runner, "run", run_then_leave)
    body = {"prompt": "a grey triangle", "seed": 11, "guidance_scale": 3}
    status = wait_state(client, post(client, body).get_json()["id"],
                        states=("done", "failed", "cancelled"))
    assert status["state"] == "cancelled", status
    assert status["steps_done"] == 1 < STEPS  # it stopped at the step after the cancel
    assert not list((live_dir / "runs").glob("a-grey-triangle-*"))
    assert not list((live_dir / ".tmp").glob(f"{os.getpid()}-*"))
    assert not [r for r in client.get("/live/api/index.json").get_json()["runs"]
                if r.startswith("a-grey-triangle")]
    check_valid(live_dir)


def test_the_url_of_an_evicted_prompt_queues_it_again(fake):
    runner, svc, client = fake
    runner.evicted["a-blue-star-0123abcd"] = "a blue star"
    r = client.get("/live/?prompt=a-blue-star-0123abcd&seed=5&guidance=3",
                   environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert r.status_code == 303
    job_id = r.headers["Location"].split("/?live_job=", 1)[1]
    job = svc.jobs[job_id]
    assert (job.prompt, job.seed, job.guidance_scale, job.address) == ("a blue star", 5, 3.0,
                                                                        "10.0.0.9")
    # a new browser gets its id with the redirect, so the page can watch the job
    assert f"{BROWSER_COOKIE}={job.client};" in r.headers["Set-Cookie"]
    runner.release.set()
    assert wait_state(client, job_id)["state"] in ("done", "failed")
    # a prompt that was never evicted, or a bad seed, opens the page as before (no job)
    for url in ["/live/?prompt=never-typed&seed=5&guidance=3",
                "/live/?prompt=a-blue-star-0123abcd&seed=x&guidance=3",
                "/live/?prompt=a-blue-star-0123abcd&seed=5&guidance=99"]:
        assert client.get(url).status_code == 404, url  # the fake has no live bundle
    # another site's link or image never queues work (Fetch Metadata)
    url = "/live/?prompt=a-blue-star-0123abcd&seed=6&guidance=3"
    for headers in [{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "document"},
                    {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Dest": "document"},
                    {"Sec-Fetch-Site": "none", "Sec-Fetch-Dest": "image"}]:
        assert client.get(url, headers=headers).status_code == 404, headers
    jobs = len(svc.jobs)
    r = client.get(url, headers={"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Dest": "document"})
    assert r.status_code == 303 and len(svc.jobs) == jobs + 1


def test_the_url_of_a_run_recomputes_it_from_its_text_after_the_live_folder_is_gone(fake):
    """A job's `open` carries its prompt's text: with the live folder deleted (nothing
    evicted is remembered), that URL queues the job again; a text that is not the id's
    prompt, too long, or empty queues nothing."""
    runner, svc, client = fake
    bundle = {"holds_runs": True}  # the fake has no live bundle: this stands in for its runs
    svc.has_run = lambda rid: bundle["holds_runs"]
    r = client.post("/api/live/jobs", json={"prompt": "a  red kite", "seed": 4,
                                            "guidance_scale": 2.5})
    runner.release.set()
    done = wait_state(client, r.get_json()["id"])
    assert done["state"] == "done"
    url = "/" + done["open"]
    assert "text=a%20red%20kite" in url and runner.evicted == {}
    r = client.post("/api/live/jobs", json={"prompt": "a red kite", "seed": 4, "guidance_scale": 0})
    zero = wait_state(client, r.get_json()["id"])
    assert zero["state"] == "done"
    shutil.rmtree(runner.live_dir, ignore_errors=True)  # the user cleared the cache
    bundle["holds_runs"] = False
    r = client.get(url, headers={"Sec-Fetch-Site": "none", "Sec-Fetch-Dest": "document"})
    assert r.status_code == 303
    job = svc.jobs[r.headers["Location"].split("/?live_job=", 1)[1]]
    assert (job.prompt, job.seed, job.guidance_scale) == ("a red kite", 4, 2.5)
    assert wait_state(client, job.id)["state"] in ("done", "failed")  # the fake's bundle is gone
    from precompute.writer import prompt_id

    pid = url.split("prompt=")[1].split("&")[0]
    long = "x" * 1001  # its own id, but longer than a typed prompt may be
    for pid_, text in [(pid, "a%20red%20kit"), (pid, "a%20blue%20kite"), (pid, ""),
                       (prompt_id(long), long)]:
        crafted = f"/live/?prompt={pid_}&seed=5&guidance=3&text={text}"
        assert client.get(crafted).status_code == 404, text  # no job; no live bundle here
    assert len(svc.jobs) == 3
    # guidance 0: the run is the seed's shared one ("empty"), the link still names the
    # typed prompt, so the page shows it and the URL computes it again
    assert zero["run_id"].startswith("empty--s4") and f"prompt={pid}&" in zero["open"]
    r = client.get("/" + zero["open"], headers={"Sec-Fetch-Site": "none", "Sec-Fetch-Dest": "document"})
    assert r.status_code == 303 and len(svc.jobs) == 4
    # another site's link never queues work, even with the right text
    assert client.get(url.replace("seed=4", "seed=6"), headers={
        "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "document"}).status_code == 404


def test_only_a_live_server_marks_its_answers(fake, synthetic_bundle_ro):
    _, _, client = fake
    assert client.head("/api/index.json").headers["Noisepath-Live"] == "1"
    plain = create_app({"BUNDLE_DIR": synthetic_bundle_ro}).test_client()
    assert "Noisepath-Live" not in plain.head("/api/index.json").headers


def test_frames_of_old_jobs_are_dropped_but_their_count_stays(fake, monkeypatch):
    import backend.live

    runner, _, client = fake
    monkeypatch.setattr(backend.live, "KEPT_FRAMES", 0)
    runner.release.set()
    job = post(client, GOOD).get_json()
    status = wait_state(client, job["id"])
    assert status["steps_done"] == 3
    gone = client.get(f"/api/live/jobs/{job['id']}/frames/0/latent.png")
    assert gone.status_code == 404 and "no longer kept" in gone.get_json()["message"]


def test_a_new_live_bundle_starts_with_the_shipped_runs_linked_not_written(tmp_path):
    """Same settings as the shipped bundle: its runs join the live bundle (so a typed
    prompt compares with a shipped one), by hard link or copy; the shipped files are
    untouched, the live bundle validates, and shipped prompts are never evicted."""
    from precompute.live import LiveRunner, live_settings
    from precompute.writer import read_config

    shipped_config = read_config(DEMO_BUNDLE)
    settings = live_settings("static/demo-model", shipped_config)
    assert settings["storage"] == shipped_config["storage"]
    before = (DEMO_BUNDLE / "bundle.json").read_bytes()
    runner = LiveRunner(settings, tmp_path / "cache" / "live", [0, 1, 3, 7], max_prompts=0)
    assert runner.seed_from(DEMO_BUNDLE)
    live_dir = runner.live_dir
    index = json.loads((live_dir / "bundle.json").read_text())
    shipped_index = json.loads(before)
    assert index["runs"].keys() == shipped_index["runs"].keys()
    run = next(iter(index["runs"]))
    a, b = live_dir / "runs" / run / "run.json", DEMO_BUNDLE / "runs" / run / "run.json"
    assert a.read_bytes() == b.read_bytes()
    assert (DEMO_BUNDLE / "bundle.json").read_bytes() == before
    import shutil
    some = next(p for p in (live_dir / "prompts").iterdir() if p.name != "empty")
    shutil.copytree(some, live_dir / "prompts" / "typed-1234")  # stands for a typed prompt
    assert runner.evict() == ["typed-1234"]  # max_prompts 0: only the typed one goes
    assert sorted(p.name for p in (live_dir / "prompts").iterdir()) == sorted(
        shipped_index["prompts"])
    assert not runner.seed_from(DEMO_BUNDLE)  # only a new live bundle is seeded
    other = LiveRunner({**settings, "num_inference_steps": 7}, tmp_path / "other", [0])
    assert not other.seed_from(DEMO_BUNDLE)  # other settings: not one bundle
    from backend.validator import validate_bundle
    assert not [p for p in validate_bundle(live_dir, checksums=True) if p.severity == "error"]


@pytest.mark.slow
def test_a_typed_prompt_joins_the_shipped_runs_of_its_seed(tmp_path):
    """With the shipped bundle's settings (50 steps), the typed prompt's runs sit in one
    bundle with the shipped ones: one trajectory map and comparable sweeps per seed."""
    from backend import FRONTEND
    from backend.live import make_service

    index = json.loads((DEMO_BUNDLE / "bundle.json").read_text())
    svc = make_service(str(DEMO_MODEL), "cpu", tmp_path / "live", index["config"],
                       index["guidance_scales"], FRONTEND, threads=1, shipped_dir=DEMO_BUNDLE)
    client = create_app({"BUNDLE_DIR": DEMO_BUNDLE, "LIVE": svc}).test_client()
    assert client.get("/api/live/info.json").get_json()["shipped"] == {
        "in_live_bundle": True, "differs_in": [], "texts": []}
    status = wait_state(client, post(client, {"prompt": "a red star in the middle", "seed": 1,
                                              "guidance_scale": 3}).get_json()["id"])
    assert status["state"] == "done", status
    live = client.get("/live/api/index.json").get_json()
    typed = status["run_id"].split("--s")[0]
    shipped = next(p for p in index["prompts"] if p != "empty")
    assert typed in live["prompts"] and shipped in live["prompts"]
    for pid in (typed, shipped):
        assert client.get(f"/live/api/sweeps/{pid}/1.json").status_code == 200
    runs = client.get("/live/api/trajectories/1.json").get_json()["runs"]
    lookup = client.get("/api/index.json").get_json()["run_lookup"]
    assert status["run_id"] in runs and lookup[shipped]["1"]["3"] in runs
    check_valid(tmp_path / "live")



@pytest.mark.slow
def test_a_two_call_scheduler_streams_one_frame_per_unet_call(tmp_path):
    """Heun calls the UNet twice a step (once in its last): a live job streams every call,
    and its total says so (the page shows "UNet call i of N")."""
    from precompute.live import LiveRunner
    from tests.tiny_sd import tiny_pipeline_path

    # the tiny SD 1.x config: the demo model's zero-SNR schedule is not Heun's
    settings = {"model": str(tiny_pipeline_path("sd15")), "scheduler": "heun",
                "num_inference_steps": 3, "height": 16, "width": 16, "image_size": 16,
                "storage": "compact", "attention_levels": None}
    runner = LiveRunner(settings, tmp_path / "live", [1.0], threads=1)
    runner.load()
    assert runner.unet_calls() == 2 * 3 - 1
    frames = []
    runner.run("a red circle on the left", 1, 1.0, on_frame=lambda i, n, f: frames.append((i, n)))
    assert frames == [(i, 5) for i in range(5)]

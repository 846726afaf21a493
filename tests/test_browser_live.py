"""The prompt box of `noisepath serve --live` in a browser (Playwright driving Debian's
chromium): a typed prompt streams its steps, then opens as an ordinary run whose words'
attention works; without --live the box says what it needs. Screenshots go to
NOISEPATH_SCREENSHOT_DIR, or to a pytest temporary folder."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.browser_helpers import SKIP_REASON, browser_available, serve_folder, wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not browser_available(), reason=SKIP_REASON)]

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "static" / "demo-bundle"
STEPS = 50  # the shipped bundle's: the live bundle starts with its runs, to compare with
# How long a test waits for the demo model to compute (or for the job before it to end):
# a guard against a hang, not a speed target (benchmarks/bench_live.py measures speed). A
# 50-step run takes seconds alone; on a busy two-core machine (the suite on two processes
# beside other work) one took over 120 s, the bound this was before.
COMPUTE_WAIT = 300_000


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """The demo bundle with --live on the demo model, on a loopback server: (url, service)."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    from backend import FRONTEND, create_app
    from backend.live import make_service

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args, **kwargs):
            pass

    index = json.loads((DEMO / "bundle.json").read_text())
    svc = make_service(str(REPO / "static" / "demo-model"), "cpu",
                       tmp_path_factory.mktemp("live") / "bundle", index["config"],
                       index["guidance_scales"], FRONTEND, threads=1, shipped_dir=DEMO)
    app = create_app({"BUNDLE_DIR": DEMO, "LIVE": svc})
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/", svc
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def live_url(live_server):
    return live_server[0]


VIEWPORT = {"width": 1440, "height": 900}  # the module's browser context (conftest.py)


def test_without_live_the_box_says_what_it_needs(page, base_url):
    page.goto(base_url)
    wait_ready(page)
    note = page.locator("#live-prompt .live-unavailable")
    note.wait_for()
    assert "needs noisepath serve --live" in note.inner_text()
    assert page.locator("#live-text").count() == 0


@pytest.fixture(scope="module")
def exported_url(synthetic_bundle_ro, tmp_path_factory):
    """`noisepath export` of the synthetic bundle with the real front end, served by a
    plain static file server under a sub-path (as tests/test_export.py serves one)."""
    from backend import create_app
    from backend.export_cli import write_site

    www = tmp_path_factory.mktemp("www")
    write_site(create_app({"BUNDLE_DIR": synthetic_bundle_ro}), www / "course")
    with serve_folder(www) as url:
        yield url + "course/"


def test_an_exported_site_says_typing_needs_live_and_asks_for_no_live_api(page, exported_url):
    asked = []
    page.on("request", lambda r: asked.append(r.url))
    page.goto(exported_url)
    wait_ready(page)
    note = page.locator("#live-prompt .live-unavailable")
    note.wait_for()
    assert "needs noisepath serve --live" in note.inner_text()
    assert page.locator("#live-text").count() == 0
    assert not [u for u in asked if "/api/live/" in u]
    # the page fixture fails the test on any console error or uncaught exception


def type_prompt(page, url: str, text: str, seed: int, guidance: float) -> None:
    """Open the page, type a prompt with its seed and guidance scale, press Enter."""
    page.goto(url)
    wait_ready(page)
    page.locator("#live-text").fill(text)
    page.locator("#live-seed").fill(str(seed))
    page.locator("#live-guidance").fill(str(guidance))
    page.locator("#live-text").press("Enter")


@pytest.mark.slow
def test_a_typed_prompt_streams_its_steps_then_opens_as_a_run(page, live_url, shots):
    type_prompt(page, live_url, "a yellow star on a green background", seed=2, guidance=3)
    # a step on screen while the job still runs (the page has not moved to the run yet)
    page.locator(".live-frames img[src*='/frames/']").first.wait_for(timeout=COMPUTE_WAIT)
    assert "/live/" not in page.url
    assert "Step" in page.locator(".live-status").inner_text() or "Done" in \
        page.locator(".live-status").inner_text()
    page.screenshot(path=str(shots / "live-streaming.png"))
    page.wait_for_url("**/live/?prompt=*", timeout=COMPUTE_WAIT)
    wait_ready(page, timeout=60_000)
    assert "seed=2" in page.url and "guidance=3" in page.url
    words = page.locator("#prompt-words .token-word")
    assert "yellow" in " ".join(words.all_inner_texts())
    # an ordinary run: a word's cross-attention opens on it
    page.locator("#prompt-words .token-word", has_text="star").click()
    page.locator("#decoded-frame.has-attention").wait_for()
    assert "star" in page.locator("#attention-controls .ac-title").inner_text()
    # the URL, rewritten by the page as it changes, keeps the prompt's text: with the live
    # folder deleted the server computes the run again from it (tests/test_live.py)
    text = page.evaluate("() => new URLSearchParams(location.search).get('text')")
    assert "token=" in page.url and text == "a yellow star on a green background"
    page.screenshot(path=str(shots / "live-opened-run.png"))
    # and it compares with a shipped prompt of the same seed (one live bundle holds both)
    page.locator("#compare-open").click()
    page.wait_for_function("() => new URLSearchParams(location.search).get('compare')")
    compared = page.evaluate("() => new URLSearchParams(location.search).get('compare')")
    shipped = json.loads((DEMO / "bundle.json").read_text())["prompts"]
    assert compared in shipped
    for n in (1, 2):  # both lanes' frames drawn before the screenshot
        page.locator(f"#compare-lanes .lane-{n} .lane-decoded[data-frame]").wait_for()
    page.screenshot(path=str(shots / "live-compare.png"))


def test_with_other_settings_the_box_offers_the_shipped_prompts(page, live_url, shots):
    """A live server whose settings differ from the shipped bundle's (info.shipped, as
    tests/test_live.py checks the server says it) offers the shipped texts in the box."""
    texts = ["a red circle on the left", "a blue square in the middle"]

    def other_settings(route):
        info = route.fetch().json()
        info["shipped"] = {"in_live_bundle": False, "differs_in": ["num_inference_steps"],
                           "texts": texts}
        route.fulfill(json=info)

    page.route("**/api/live/info.json", other_settings)
    for width, height in [(390, 844), (1366, 768)]:
        page.set_viewport_size({"width": width, "height": height})
        page.goto(live_url)
        wait_ready(page)
        assert page.locator("#live-text").get_attribute("list") == "live-shipped"
        options = page.locator("#live-shipped option")
        assert [options.nth(i).get_attribute("value") for i in range(options.count())] == texts
        note = page.locator(".live-note").inner_text()
        assert "another number of steps" in note and "compare" in note
        page.locator("#live-prompt").screenshot(path=str(shots / f"live-shipped-offer-{width}.png"))


def test_with_the_shipped_settings_the_box_offers_nothing_more(page, live_url):
    page.goto(live_url)
    wait_ready(page)
    assert page.locator("#live-text").get_attribute("list") is None
    assert page.locator(".live-note").count() == 0


@pytest.mark.slow
def test_steps_arrive_one_by_one(page, live_url):
    """Every step's frame is fetched while the job runs (not all at the end)."""
    frames = []
    page.on("request", lambda r: frames.append(r.url) if "/frames/" in r.url else None)
    page.goto(live_url)
    wait_ready(page)
    page.locator("#live-text").fill("a small red dragon circle")
    page.locator("#live-text").press("Enter")
    words = page.locator(".live-words")
    words.wait_for()
    assert "dragon" in words.inner_text() and "no effect" in words.inner_text()
    assert "circle" not in words.inner_text()
    page.wait_for_url("**/live/?prompt=*", timeout=COMPUTE_WAIT)
    steps = sorted({int(u.split("/frames/")[1].split("/")[0]) for u in frames})
    assert len(steps) >= 2 and steps[-1] == STEPS - 1, steps


@pytest.mark.slow
def test_the_url_of_an_evicted_prompt_computes_it_again(page, live_server):
    """As if the size bound had evicted it: the server knows its text, not its runs."""
    from precompute.live import EVICTED_FILE
    from precompute.writer import prompt_id, write_json_atomic

    url, svc = live_server
    pid = prompt_id("a blue square on a red background")
    write_json_atomic(svc.runner.live_dir / ".work" / EVICTED_FILE,
                      {pid: "a blue square on a red background"})
    page.goto(f"{url}live/?prompt={pid}&seed=2&guidance=3")
    page.wait_for_url("**live_job=*", timeout=COMPUTE_WAIT)  # kept in the address while the job runs (a reload watches it)
    page.locator(".live-frames img[src*='/frames/']").first.wait_for(timeout=COMPUTE_WAIT)
    assert "computing it again" in page.locator(".live-status").inner_text() or \
        "Step" in page.locator(".live-status").inner_text()
    assert page.locator("#live-text").input_value() == "a blue square on a red background"
    page.wait_for_url(f"**/live/?prompt={pid}*", timeout=COMPUTE_WAIT)
    wait_ready(page, timeout=60_000)
    assert "seed=2" in page.url and "guidance=3" in page.url
    assert "blue" in " ".join(page.locator("#prompt-words .token-word").all_inner_texts())


@pytest.mark.slow
def test_leaving_the_page_cancels_its_running_job(page, live_server):
    """pagehide sends the cancel: the running job stops at its next step, no run is kept."""
    import time

    url, svc = live_server
    type_prompt(page, url, "a purple circle on a white background", seed=4, guidance=3)
    page.locator(".live-frames img[src*='/frames/']").first.wait_for(timeout=COMPUTE_WAIT)
    job = next(j for j in svc.jobs.values() if j.prompt.startswith("a purple circle"))
    assert job.state == "running"
    page.goto("about:blank")  # the page is left while its job runs
    deadline = time.monotonic() + 60
    while job.state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.state == "cancelled" and job.steps_done < STEPS
    assert not list((svc.runner.live_dir / "runs").glob("a-purple-circle-*"))

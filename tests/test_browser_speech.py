"""Saying a prompt in a browser (Playwright driving Debian's chromium): a clip file
spoken by espeak-ng in the test is picked beside the live prompt box; the page shows its
waveform, spectrogram and transcript with confidences, fills the box and starts the run
(the live queue's runner is a fake that streams steps: no model is needed). And a
static export of a bundle with spoken examples (speech/) plays one, shows what the
recognizer heard and opens its run. Screenshots at phone, laptop and projector widths go
to NOISEPATH_SCREENSHOT_DIR or a temporary folder."""

from __future__ import annotations

import io
import threading

import pytest

from backend import speech
from tests.browser_helpers import SKIP_REASON, browser_available, serve_folder, wait_ready
from tests.speech_helpers import ESPEAK, ESPEAK_SKIP, speak
from tests.test_live import FakeRunner

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not browser_available(), reason=SKIP_REASON),
              pytest.mark.skipif(ESPEAK is None, reason=ESPEAK_SKIP),
              pytest.mark.skipif(speech.missing_library() is not None,
                                 reason=speech.missing_library() or "")]

CAPTION = "a yellow star at the top, on a green background"
SIZES = {"phone": (390, 844), "laptop": (1366, 768), "projector": (1920, 1080)}


def png(colour) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()


class SteppingRunner(FakeRunner):
    """FakeRunner whose frames are images, and which holds after its first step until
    `release` (so the page is seen while the run streams)."""

    def run(self, prompt, seed, g, on_frame=None, should_stop=None):
        from precompute.live import Frame

        self.prompts = [*getattr(self, "prompts", []), prompt]
        self.started.set()
        on_frame(0, self.steps, Frame(png((40, 40, 40)), png((240, 210, 40))))
        assert self.release.wait(30)
        for i in range(1, self.steps):
            on_frame(i, self.steps, Frame(png((40, 40, 40)), png((240, 210, 40))))
        return self.target(prompt, seed, g)


@pytest.fixture(scope="module")
def recognizer():
    return speech.DemoRecognizer()  # one decoder for the module: each takes a second to build


@pytest.fixture(scope="module")
def speech_server(synthetic_bundle_ro, tmp_path_factory, recognizer):
    """The synthetic bundle with --live (the stepping fake) and the demo recognizer."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    from backend import create_app
    from backend.live import LiveService

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args, **kwargs):
            pass

    runner = SteppingRunner(tmp_path_factory.mktemp("live"))
    svc = LiveService(runner, lambda root: None, info={"num_inference_steps": 3,
                                                       "default_guidance_scale": 7.0})
    app = create_app({"BUNDLE_DIR": synthetic_bundle_ro, "LIVE": svc,
                      "SPEECH": speech.SpeechService(recognizer)})
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/", runner
    runner.release.set()
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "prompt.wav"
    path.write_bytes(speak(CAPTION, "en-us+f3"))
    return path


def test_a_spoken_clip_fills_the_box_and_starts_the_run(page, speech_server, clip, shots):
    url, runner = speech_server
    page.goto(url)
    wait_ready(page)
    page.locator(".speech-mic").wait_for()
    page.set_input_files("#speech-file", str(clip))
    words = page.locator(".speech-words .speech-word")
    words.first.wait_for(timeout=30_000)
    assert " ".join(words.all_inner_texts()).split() == CAPTION.replace(",", "").split()
    label = words.first.get_attribute("aria-label")
    assert label.startswith("a, confidence ") and label.endswith("%")
    assert page.locator(".speech-wave path").get_attribute("d").startswith("M")
    assert page.locator(".speech-spectrogram").get_attribute("src").startswith("data:image/png")
    assert page.locator("#live-text").input_value() == CAPTION
    # the run starts as if typed: its first step is on screen while it runs
    page.locator(".live-frames img[src*='/frames/0/']").first.wait_for(timeout=30_000)
    assert runner.prompts[-1] == CAPTION
    assert "Step" in page.locator(".live-status").inner_text()
    for name, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        page.locator("#live-prompt").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / f"speech-{name}.png"))
    runner.release.set()


def test_a_clip_that_is_not_a_caption_offers_hypotheses_and_runs_nothing(
        page, speech_server, tmp_path, shots):
    url, runner = speech_server
    before = list(getattr(runner, "prompts", []))
    path = tmp_path / "weather.wav"
    path.write_bytes(speak("hello, what is the weather like today"))
    page.goto(url)
    wait_ready(page)
    page.set_input_files("#speech-file", str(path))
    status = page.locator(".live-status.error")
    status.wait_for(timeout=30_000)
    assert status.inner_text().startswith("not understood")
    hypothesis = page.locator(".speech-nbest .link-button").first
    hypothesis.focus()
    page.keyboard.press("Enter")  # keyboard: the hypothesis goes into the box, not run
    assert page.locator("#live-text").input_value() == hypothesis.inner_text()
    assert list(getattr(runner, "prompts", [])) == before
    page.locator("#live-prompt").screenshot(path=str(shots / "speech-not-understood.png"))


def test_a_file_that_is_no_audio_says_so_in_one_line(page, speech_server, tmp_path):
    url, _ = speech_server
    path = tmp_path / "notes.wav"
    path.write_bytes(b"this is not audio")
    page.goto(url)
    wait_ready(page)
    page.set_input_files("#speech-file", str(path))
    status = page.locator(".live-status.error")
    status.wait_for(timeout=30_000)
    assert "cannot decode notes.wav" in status.inner_text()


def test_the_clip_picker_and_microphone_are_reached_by_keyboard(page, speech_server):
    url, _ = speech_server
    page.goto(url)
    wait_ready(page)
    page.locator("#live-text").focus()
    reached = []
    for _ in range(8):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("() => document.activeElement.className"))
    assert any("speech-mic" in c for c in reached) and any("speech-pick" in c for c in reached)


def test_the_microphone_without_a_device_says_what_to_do(page, speech_server):
    url, _ = speech_server
    page.goto(url)
    wait_ready(page)
    page.locator(".speech-mic").click()
    status = page.locator(".live-status.error")
    status.wait_for(timeout=10_000)
    assert "microphone" in status.inner_text()
    assert page.locator(".speech-mic").get_attribute("aria-pressed") == "false"


def test_without_the_speech_extra_the_row_says_what_to_install(page, synthetic_bundle_ro,
                                                               tmp_path, monkeypatch):
    from werkzeug.serving import make_server

    from backend import create_app
    from backend.live import LiveService

    monkeypatch.setattr(speech, "missing_library", lambda: "speaking a prompt needs "
                        "pocketsphinx: pip install 'noisepath[speech]'")
    svc = LiveService(FakeRunner(tmp_path / "live"), lambda root: None)
    app = create_app({"BUNDLE_DIR": synthetic_bundle_ro, "LIVE": svc})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page.goto(f"http://127.0.0.1:{server.server_port}/")
        wait_ready(page)
        note = page.locator(".speech-unavailable")
        note.wait_for()
        assert note.inner_text() == ("Speaking a prompt needs pocketsphinx: pip install "
                                     "'noisepath[speech]'.")
        assert page.locator(".speech-mic").count() == 0
    finally:
        # the page first: its requests still in flight would be reset by the server's
        # shutdown and logged as console errors (a flaky teardown error)
        page.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_an_uncertain_word_waits_for_enter_before_running(page, speech_server, clip):
    """The recognizer's answer with one word under the page's threshold (0.8): the box
    is filled and waits; Enter runs it."""
    url, runner = speech_server
    runner.release.set()  # the fake runner streams every step at once

    def unsure(route):
        body = route.fetch().json()
        body["words"][2]["confidence"] = 0.55  # "star"
        route.fulfill(json=body)

    page.route("**/api/live/speech", unsure)
    page.goto(url)
    wait_ready(page)
    before = len(getattr(runner, "prompts", []))
    page.set_input_files("#speech-file", str(clip))
    page.locator(".speech-word.unsure").wait_for(timeout=30_000)
    assert page.locator(".speech-word.unsure").get_attribute("aria-label") == \
        "star, confidence 55%"
    status = page.locator(".live-status").inner_text()
    assert "Not sure of “star”" in status and "press Enter" in status
    assert page.locator("#live-text").input_value() == CAPTION
    assert len(getattr(runner, "prompts", [])) == before  # nothing run yet
    page.locator("#live-text").press("Enter")
    page.wait_for_function("() => /Step|job failed|does not load/.test("
                           "document.querySelector('.live-status').textContent)")
    assert runner.prompts[-1] == CAPTION and len(runner.prompts) == before + 1


@pytest.fixture(scope="module")
def spoken_site(tmp_path_factory, recognizer):
    """`noisepath export` of a small bundle with one spoken example (en-us says its first
    caption; tests/test_speech_examples.py), served by a plain static file server."""
    from backend import create_app
    from backend.export_cli import write_site
    from tests.test_speech_examples import make_spoken_bundle

    bundle = make_spoken_bundle(tmp_path_factory.mktemp("spoken") / "b", recognizer)
    www = tmp_path_factory.mktemp("www")
    write_site(create_app({"BUNDLE_DIR": bundle}), www / "course")
    with serve_folder(www) as url:
        yield url + "course/"


def test_a_static_site_plays_a_spoken_example_and_opens_its_run(page, spoken_site, shots):
    from tests.test_speech_examples import CAPTIONS

    page.goto(spoken_site)
    wait_ready(page)
    page.locator(".speech-examples summary").click()
    page.locator(".speech-audio").wait_for(state="attached")  # drawn when first opened
    # the clip: the browser decodes the exported WAV (its length is the index's)
    seconds = page.evaluate("""() => new Promise((done) => {
      const audio = document.querySelector('.speech-audio');
      if (audio.readyState >= 1) done(audio.duration);
      else audio.addEventListener('loadedmetadata', () => done(audio.duration));
    })""")
    assert seconds == pytest.approx(float(page.locator(".speech-wave").get_attribute(
        "aria-label").split()[3]), abs=0.01)  # "waveform of the 3.043 s clip": ms rounding
    assert page.locator(".speech-spectrogram").evaluate("img => img.naturalHeight") == 64
    words = page.locator(".speech-examples .speech-word")
    assert " ".join(words.all_inner_texts()).split() == CAPTIONS[0].replace(",", "").split()
    assert words.first.get_attribute("aria-label").startswith("a, confidence ")
    for name, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        page.locator("#speech-examples").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / f"speech-examples-{name}.png"))
    page.set_viewport_size({"width": 1366, "height": 768})
    page.locator(".speech-open a").click()  # opens the run the spoken caption leads to
    page.wait_for_function("() => /[?&]guidance=7/.test(location.search)")
    assert "seed=1" in page.url
    assert page.locator(".speech-examples-box").evaluate("(d) => d.open")   # the box stays (speech= in the URL)
    page.wait_for_function(f"() => document.getElementById('prompt-words').textContent"
                           f".includes({CAPTIONS[0]!r})")


def test_the_address_bar_opens_the_spoken_prompts_on_a_clip(page, spoken_site):
    """The box's open state and clip are in the URL (js/state.js `speech=`): a link opens
    it (an id the bundle lacks: on its first clip, which the address then names), closing
    it is a history entry, and what is no id is dropped."""
    speech = "() => new URLSearchParams(location.search).get('speech')"
    page.goto(spoken_site + "?speech=no-such-clip")
    page.locator(".speech-examples .speech-seek").wait_for()
    first = page.locator("#speech-example").input_value()
    page.wait_for_function(f"(id) => ({speech})() === id", arg=first)
    page.locator(".speech-examples summary").click()
    page.wait_for_function(f"() => ({speech})() === null")
    page.go_back()
    page.wait_for_function("() => document.querySelector('.speech-examples-box').open")
    assert page.evaluate(speech) == first
    read = page.evaluate("""async (searches) => {
      const state = await import('./js/state.js');
      const index = await (await fetch('api/index.json')).json();
      return searches.map((q) => state.toSearch(index, state.normalize(index, state.fromSearch(q))));
    }""", ["?speech=bad%20id!", "?speech=", f"?speech={first}"])
    assert ["speech=" in q for q in read] == [False, False, True]

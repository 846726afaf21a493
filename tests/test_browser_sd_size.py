"""Loading order (issue 15, frontend/js/api.js): the first screen is drawn from what it
needs alone, and the rest arrives after it; once loaded, every step draws from memory.

On the session's synthetic bundle (a small stand-in for an SD-sized one: the order, not
the bytes, is tested here; benchmarks/bench_frontend.py --sd-size measures the bytes)."""

from __future__ import annotations

import pytest

from tests.browser_helpers import SKIP_REASON, browser_available, wait_ready, watch_errors

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not browser_available(), reason=SKIP_REASON)]

# Resource Timing of the sprites and attention maps, and the first full render's mark
TIMING_JS = """() => {
  const mark = performance.getEntriesByName('noisepath:first-full-render')[0].startTime;
  const name = (e) => new URL(e.name).pathname.split('/').slice(-1)[0];
  return { mark, loads: performance.getEntriesByType('resource')
    .filter((e) => /\\.(png|webp|jpg|npy|npz)$/.test(new URL(e.name).pathname))
    .map((e) => ({ name: name(e), path: new URL(e.name).pathname, start: e.startTime, end: e.responseEnd })) };
}"""

# Every step through the slider, as a reader scrubs: what each frame shows after the draw
SCRUB_JS = """async () => {
  const slider = document.querySelector('.tc-slider');
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  const seen = [];
  for (let s = 0; s <= Number(slider.max); s++) {
    slider.value = String(s);
    slider.dispatchEvent(new Event('input', { bubbles: true }));
    await frame();
    await frame();
    const at = (id) => document.getElementById(id).getAttribute('data-frame');
    seen.push({ s, latent: at('latent-frame'), decoded: at('decoded-frame'), pred: at('pred-frame'),
                busy: document.getElementById('viz').getAttribute('aria-busy') });
  }
  return seen;
}"""


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    yield page
    page.goto("about:blank")  # before the session's server stops (playing keeps fetching)
    context.close()


def test_the_first_screen_is_drawn_before_the_rest_is_fetched(page, base_url):
    """A first visit (step 0): the latent preview and decoded sprites arrive before the first
    full render; the predicted-image sprite and any word's attention map (not drawn at step 0)
    are asked for only after it; playing starts from the drawn first screen."""
    problems = watch_errors(page)
    page.goto(base_url)
    wait_ready(page)
    page.wait_for_load_state("networkidle")
    t = page.evaluate(TIMING_JS)
    by_name = {load["name"].split(".")[0]: load for load in t["loads"]}
    for first in ("latents", "decoded"):
        assert by_name[first]["end"] <= t["mark"], f"{first} arrived after the first render: {t}"
    later = [load for load in t["loads"] if load["name"].startswith("pred_original_sample")
             or "/attention/" in load["path"]]
    assert any(load["name"].startswith("pred_original_sample") for load in later), t
    for load in later:
        assert load["start"] >= t["mark"], f"{load['path']} was fetched before the first render: {t}"
    assert page.locator(".tc-play").get_attribute("aria-label") == "Pause"  # a first visit plays
    assert not problems


def test_scrubbing_shows_every_step_once_loaded(page, base_url):
    page.goto(f"{base_url}?step=0")
    wait_ready(page)
    page.wait_for_load_state("networkidle")
    seen = page.evaluate(SCRUB_JS)
    assert len(seen) > 2
    for d in seen:
        s = d["s"]
        assert (d["latent"], d["decoded"]) == (str(s), str(s)), d
        assert d["pred"] == (None if s == 0 else str(s - 1)), d   # the call that made step s
        assert d["busy"] == "false", d

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


def test_a_first_visit_asks_for_its_first_screen_before_the_app_has_loaded(page, base_url):
    """js/opening.js: with the app itself (js/main.js) held back, a first visit already asks
    for its run's documents and the sprites its step 0 draws; the app then takes those loads
    over (every URL fetched once) and draws from them. The sprites come through fetch and
    createImageBitmap (decoded once, off the main thread), not an <img>, which a canvas
    decodes a second time on the main thread when it first draws it."""
    held, requests = [], []
    page.on("request", lambda r: requests.append(r.url) if r.method == "GET" else None)  # live-prompt.js HEADs the index
    page.route("**/js/main.js", lambda route: held.append(route))
    with page.expect_request(lambda r: "/decoded." in r.url, timeout=5000):
        page.goto(base_url, wait_until="commit")
    assert held, "js/main.js was not asked for"
    assert not any("pred_original_sample" in u for u in requests), requests  # not on step 0's screen
    held[0].continue_()
    wait_ready(page)  # the app's loads of the first screen are all made by now
    data = [u.split("?")[0].replace(base_url, "") for u in requests if "/api/" in u or "/bundle/" in u]
    opening = [u for u in data if u == "api/index.json" or u.startswith("api/prompts/")
               or (u.startswith("api/runs/") and u.endswith(".json")) or "/latents." in u or "/decoded." in u]
    assert len(opening) >= 5 and len(set(opening)) == len(opening), data
    kinds = page.evaluate("""() => performance.getEntriesByType('resource')
        .filter((e) => /\\/(latents|decoded)\\./.test(e.name)).map((e) => e.initiatorType)""")
    assert kinds and set(kinds) == {"fetch"}, kinds


def test_when_the_app_asks_first_an_early_load_is_the_apps_own(page, base_url):
    """The other order (the app's module ran before js/opening.js): prefetch hands back the
    app's load of the same URL instead of fetching it a second time."""
    page.goto(f"{base_url}not-the-app")  # a page (a 404) at the app's root, without the app
    result = page.evaluate("""async () => {
      const { createApi, prefetch, urls } = await import(new URL('js/api.js', document.baseURI).href);
      let fetches = 0;
      const fetch0 = window.fetch;
      window.fetch = (...args) => { fetches += 1; return fetch0(...args); };
      const api = createApi();
      const url = urls.index();
      const first = api.load(url);
      const same = prefetch(url) === first;
      await first;
      return { same, fetches };
    }""")
    assert result == {"same": True, "fetches": 1}


def test_decoded_images_past_the_budget_are_let_go_least_recently_drawn_first(page, base_url):
    """api.js keeps decoded sprites (an SD-sized run's are about 30 MB) up to a budget of
    pixels; past it the least recently drawn are let go, never one drawn just now."""
    page.goto(f"{base_url}not-the-app")  # a page (a 404) at the app's root, without the app
    forgotten = page.evaluate("""async () => {
      const { decodedPixels } = await import(new URL('js/api.js', document.baseURI).href);
      const px = { width: 1, height: 1 };  // 4 bytes of RGBA each
      const out = [];
      const old = decodedPixels((url) => out.push(url), { budget: 12, inUseMs: 0 });
      for (const url of ['a', 'b', 'c']) old.keep(url, px);
      old.use('a');
      old.keep('d', px);
      const recent = decodedPixels((url) => out.push('recent ' + url), { budget: 4, inUseMs: 1e9 });
      for (const url of ['a', 'b']) recent.keep(url, px);
      return out;
    }""")
    assert forgotten == ["b"]

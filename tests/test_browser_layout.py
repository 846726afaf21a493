"""How the page reads on real screens, in a real browser (Playwright driving Debian's chromium).

Most tests use the synthetic bundle (random arrays in the real format, short prompts);
those about the first screen, the opening example and the Trajectory Map use the shipped
demo bundle, whose long prompts and real trajectories are what a visitor meets. Every
test fails on any console error or uncaught exception. Screenshots go to
NOISEPATH_SCREENSHOT_DIR, or to a pytest temporary folder.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser_helpers import SKIP_REASON, browser_available, wait_ready, watch_errors

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not browser_available(), reason=SKIP_REASON)]

DEMO = Path(__file__).resolve().parent.parent / "static" / "demo-bundle"
PROMPT = "a-red-circle-on-the-left-ad3b43dc"   # tests/synthetic_bundle.py, group 0 main
VARIANT = "a-red-square-on-the-left-0cb5c515"
# the demo's colour pair: its lanes' images are what the comparison must show side by side
DEMO_PROMPT = "a-large-red-circle-on-the-left-on-a-blue-630ba501"
DEMO_VARIANT = "a-large-yellow-circle-on-the-left-on-a-b-bcdf988c"


@pytest.fixture(scope="module")
def demo_url():
    """The app over the shipped demo bundle."""
    from tests.browser_helpers import serve_bundle
    with serve_bundle(DEMO) as url:
        yield url


@pytest.fixture
def screen(browser):
    """screen(width, height, **context options) -> a fresh page of that size; every page
    must end without console errors."""
    made = []

    def make(width, height, **options):
        context = browser.new_context(viewport={"width": width, "height": height}, **options)
        page = context.new_page()
        made.append((context, page, watch_errors(page)))
        return page

    yield make
    for context, page, problems in made:
        page.goto("about:blank")   # before the module's server stops (autoplay keeps fetching)
        context.close()
        assert problems == [], "the page logged errors:\n" + "\n".join(problems)


def query(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def box(page, selector: str) -> dict:
    b = page.locator(selector).first.bounding_box()
    assert b is not None, f"{selector} is not displayed"
    return b


def within_viewport(page, selector: str) -> bool:
    b, view = box(page, selector), page.viewport_size
    return b["x"] >= 0 and b["y"] >= 0 and b["x"] + b["width"] <= view["width"] + 0.5 \
        and b["y"] + b["height"] <= view["height"] + 0.5


# ---------------------------------------------------------------------- the comparison


@pytest.mark.parametrize("width, height, present", [(1440, 900, False), (1920, 1080, True), (1100, 700, True)])
def test_comparison_lanes_sit_side_by_side_with_both_decoded_images_on_the_first_screen(
        screen, demo_url, shots, width, height, present):
    page = screen(width, height)
    page.goto(f"{demo_url}?prompt={DEMO_PROMPT}&compare={DEMO_VARIANT}&step=30"
              + ("&present=1" if present else ""))
    wait_ready(page)
    page.locator("#compare-lanes .lane-2 .lane-decoded[data-frame='30']").wait_for()
    one, two = box(page, "#compare-lanes .lane-1"), box(page, "#compare-lanes .lane-2")
    assert abs(one["y"] - two["y"]) < 1 and two["x"] >= one["x"] + one["width"], (one, two)
    for n in (1, 2):
        assert within_viewport(page, f"#compare-lanes .lane-{n} .lane-decoded"), n
    page.screenshot(path=str(shots / f"compare-{width}{'-present' if present else ''}.png"))


# ---------------------------------------------------------------------- the Trajectory Map


def node_boxes(page, selector: str) -> list[dict]:
    return page.evaluate("""(sel) => [...document.querySelectorAll(sel)].map((n) => {
        const r = n.getBoundingClientRect(); return { x: r.x + r.width / 2, y: r.y + r.height / 2 }; })""",
                         selector)


def test_the_trajectory_map_frames_the_paths_shown_and_zooms_around_the_current_nodes(
        screen, demo_url, shots):
    page = screen(1440, 900)
    page.goto(f"{demo_url}?prompt={DEMO_PROMPT}&compare={DEMO_VARIANT}&step=50")
    wait_ready(page)
    page.locator("#trajectory-map .tm-now").nth(1).wait_for()
    page.wait_for_timeout(300)   # the map is drawn again once its width is measured
    plot = box(page, "#trajectory-map .tm-svg")
    nodes = node_boxes(page, "#trajectory-map .tm-node")
    assert len(nodes) == 2 * 51
    xs, ys = [n["x"] for n in nodes], [n["y"] for n in nodes]
    # one scale for both axes (distances are what the map shows): the paths fill one
    # dimension of the plot, and all of them are inside it
    span = max((max(xs) - min(xs)) / plot["width"], (max(ys) - min(ys)) / plot["height"])
    assert span > 0.8, f"the paths fill only {span:.0%} of the plot"
    assert min(xs) >= plot["x"] and max(xs) <= plot["x"] + plot["width"]
    assert min(ys) >= plot["y"] and max(ys) <= plot["y"] + plot["height"]
    # the first step, from the noise, is drawn shortened and says so
    assert page.locator("#trajectory-map .tm-break").count() == 2
    assert "shortened" in page.locator("#trajectory-map .tm-note").inner_text()

    for _ in range(3):
        page.locator("#trajectory-map .tm-zoom[aria-label='Zoom in']").click()
        page.wait_for_timeout(350)   # the zoom's transition
    plot = box(page, "#trajectory-map .tm-svg")
    for now in node_boxes(page, "#trajectory-map .tm-now"):
        assert plot["x"] <= now["x"] <= plot["x"] + plot["width"], (now, plot)
        assert plot["y"] <= now["y"] <= plot["y"] + plot["height"], (now, plot)
    page.screenshot(path=str(shots / "trajectory-zoomed.png"))

    # other guidance scales: the view is fitted again, to all the paths shown
    page.locator("#trajectory-map .tm-faint-input").check()
    page.wait_for_function("() => document.querySelectorAll('#trajectory-map .tm-faint-path').length > 0")
    page.wait_for_timeout(300)
    plot = box(page, "#trajectory-map .tm-svg")
    faint = page.evaluate("""() => [...document.querySelectorAll('#trajectory-map .tm-faint-path path')]
        .map((p) => { const r = p.getBoundingClientRect(); return [r.x, r.y, r.right, r.bottom]; })""")
    for x0, y0, x1, y1 in faint:
        assert plot["x"] - 1 <= x0 and x1 <= plot["x"] + plot["width"] + 1, (faint, plot)
        assert plot["y"] - 1 <= y0 and y1 <= plot["y"] + plot["height"] + 1, (faint, plot)


# ---------------------------------------------------------------------- layout shift

SHIFTS = """() => {
  window.__shifts = [];
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      window.__shifts.push({ value: e.value, when: e.startTime,
        sources: (e.sources || []).map((s) => s.node ? (s.node.id || s.node.className || s.node.nodeName) : '?') });
    }
  }).observe({ type: 'layout-shift', buffered: true });
}"""


def test_hovering_anything_shifts_no_layout(screen, base_url):
    """The browser's own layout-shift entries (what CLS is made of) while the pointer moves
    over the image with a word selected, over the words, the options and the boxes."""
    page = screen(1440, 900)
    page.goto(f"{base_url}?prompt={PROMPT}&step=3&token=3")
    wait_ready(page)
    page.locator("#decoded-frame.has-attention").wait_for()
    page.evaluate(SHIFTS)
    page.wait_for_timeout(300)
    before = page.evaluate("() => window.__shifts.length")   # the page's own loading
    frame = box(page, "#decoded-frame")
    for fx, fy in ((0.2, 0.3), (0.5, 0.5), (0.8, 0.7)):
        page.mouse.move(frame["x"] + frame["width"] * fx, frame["y"] + frame["height"] * fy, steps=3)
        page.locator("#attention-hover li").first.wait_for()
    assert "attends most to" in page.locator("#attention-hover").inner_text()
    for selector in ("#prompt-words .token-word >> nth=1", "#seed-choice .option >> nth=1",
                     "#guidance-choice .option >> nth=0", "#text-open", "#image-open",
                     "#present-toggle", ".tc-play"):
        page.locator(selector).hover()
        page.wait_for_timeout(150)
    page.mouse.move(5, 5)
    page.wait_for_timeout(300)
    shifts = page.evaluate("(n) => window.__shifts.slice(n)", before)
    assert [s for s in shifts if s["value"] > 0] == [], shifts


# ---------------------------------------------------------------------- levels and presentation


def test_a_link_that_opens_a_level_shows_it_on_a_phone(screen, base_url):
    """A teacher's link from the projector (a level open, presenting) on a phone: it lands
    on that level, not on the overview two screens above it, and in the phone's layout, not
    presentation mode's (which overlapped the captions, its toggle hidden there); a tap on
    a vector strip shows its value; the article's words claim no left-to-right layout."""
    page = screen(390, 844, is_mobile=True, has_touch=True)
    page.goto(f"{base_url}?prompt={PROMPT}&step=2&open=text&present=1")
    wait_ready(page)
    assert page.evaluate("document.documentElement.classList.contains('presenting')") is False
    page.wait_for_function("""() => { const r = document.querySelector('#panel-text').getBoundingClientRect();
        return r.top >= 0 && r.top < innerHeight / 2; }""", timeout=5_000)
    # its title below the sticky player (two rows on a phone), not under it
    page.wait_for_timeout(300)
    title, player = (box(page, sel) for sel in ("#panel-text h2", ".timestep-controller"))
    assert title["y"] >= player["y"] + player["height"], (title, player)
    # the text level's "Hover or tap a cell": a tap (no hover on a phone) shows its value,
    # on strips wide enough to aim at (most of the row, not the laptop's third)
    strip, row = (box(page, sel) for sel in ("#vector-strips .strips", "#vector-strips .strip-row"))
    assert strip["width"] >= 0.6 * row["width"], (strip, row)
    page.locator("#vector-strips .strips").nth(1).tap(position={"x": 20, "y": 4})
    assert "number" in page.locator("#vector-readout").inner_text()
    assert "left to right" not in page.locator("#article-what").inner_text()
    # a finger's targets: every dropdown shown (the speed) at least 24 px high (WCAG 2.5.8)
    assert page.evaluate("matchMedia('(pointer: coarse)').matches")
    heights = page.evaluate("""() => [...document.querySelectorAll('select')].filter((s) => s.offsetParent)
        .map((s) => [s.className, s.getBoundingClientRect().height])""")
    assert heights and all(h >= 24 for _, h in heights), heights


def test_a_level_that_opens_below_the_fold_is_scrolled_into_view(screen, base_url):
    page = screen(1440, 700)
    page.goto(f"{base_url}?prompt={PROMPT}&step=3")
    wait_ready(page)
    assert box(page, "#image-open")["y"] < 700
    page.locator("#image-open").click()
    page.locator("#panel-image").wait_for()
    page.wait_for_function("""() => { const r = document.querySelector('#panel-image').getBoundingClientRect();
        return r.top >= 0 && r.top < innerHeight / 2; }""", timeout=5_000)


SMALL_TEXT = """(least) => [...document.querySelectorAll('body *')].filter((el) => {
    if (![...el.childNodes].some((n) => n.nodeType === 3 && n.data.trim())) return false;
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && r.bottom > 0 && r.top < innerHeight
      && getComputedStyle(el).visibility !== 'hidden' && parseFloat(getComputedStyle(el).fontSize) < least;
  }).map((el) => `${getComputedStyle(el).fontSize} ${el.className.baseVal ?? el.className}: ${el.textContent.trim().slice(0, 30)}`)"""


@pytest.mark.parametrize("width, height, word", [
    (1280, 720, False), (1024, 768, False), (1280, 720, True), (1024, 768, True), (1100, 700, True)])
def test_presentation_mode_fits_the_pictures_and_the_controller_on_the_first_screen(
        screen, demo_url, shots, width, height, word):
    """At step 0 (where a lesson starts) the predicted image's note is shown; with a word
    selected (a first visit selects the first group's marked word, then the teacher
    presses P) the attention controls are shown too: neither may push the controller
    off the screen."""
    page = screen(width, height)
    if word:
        page.goto(demo_url)
        wait_ready(page)
        page.wait_for_function("() => new URLSearchParams(location.search).has('token')")
        page.keyboard.press("p")
    else:
        page.goto(f"{demo_url}?present=1&step=0")
        page.locator("#pred-note-start").wait_for()
        wait_ready(page)
    page.wait_for_function("() => document.documentElement.classList.contains('presenting')")
    page.evaluate("() => document.querySelector('.tc-back').click()")   # pause, without scrolling
    page.wait_for_timeout(300)
    assert page.evaluate("scrollY") == 0
    shown = ("#prompt-words", "#decoded-frame", "#pred-frame", "#timestep-controller")
    if word:
        # the pause is a step back: when the opening animation was at step 1 it lands on
        # step 0, the starting noise, which no UNet call (no attention) has yet
        if page.evaluate("() => document.querySelector('.tc-back').disabled"):
            page.evaluate("() => document.querySelector('.tc-forward').click()")
        page.locator("#decoded-frame.has-attention").wait_for()
        shown += ("#attention-controls",)
    for selector in shown:
        assert within_viewport(page, selector), selector
    assert box(page, "#decoded-frame")["width"] >= 180, "the pictures stay large"
    # a projector's smallest text is 16 px (the captions under the pictures were 13.5 px
    # at 1024, 15 at 1280; the attention controls the same)
    small = page.evaluate(SMALL_TEXT, 16)
    assert small == [], small
    # the refiner's "i" is off the refiner box and its dashed cycle (it sat on its
    # corner), and off the seeds and their noise
    info = box(page, ".stage-refiner > .info")
    for other in (".refiner-box", "#seed-choice", "#noise-frame", "#seed-label"):
        b = box(page, other)
        assert (info["y"] + info["height"] <= b["y"] or b["y"] + b["height"] <= info["y"]
                or info["x"] + info["width"] <= b["x"] or b["x"] + b["width"] <= info["x"]), (other, info, b)
    page.screenshot(path=str(shots / f"presentation-{width}x{height}{'-word' if word else ''}.png"))


# ---------------------------------------------------------------------- phones


def test_a_phones_first_screen_shows_the_prompt_the_image_and_the_controller(screen, demo_url, shots):
    page = screen(390, 844, device_scale_factor=2, is_mobile=True, has_touch=True)
    page.goto(f"{demo_url}?step=30")
    wait_ready(page)
    for selector in ("#prompt-words", "#decoded-frame", "#pred-frame"):
        assert within_viewport(page, selector), selector
    controller = box(page, "#timestep-controller")
    assert controller["y"] + controller["height"] <= 844.5 and controller["y"] >= box(page, "#decoded-frame")["y"]
    # the sticky controller may cover what follows, not the pictures or their captions' first line
    for figure in page.locator(".stage-output .output").all():
        frame = figure.locator(".frame").bounding_box()
        caption_top, line = figure.locator("figcaption").evaluate(
            "el => [el.getBoundingClientRect().top, parseFloat(getComputedStyle(el).lineHeight)]")
        assert frame["y"] + frame["height"] <= controller["y"] and caption_top + line <= controller["y"] + 0.5
    assert box(page, "#decoded-frame")["width"] >= 150, "pictures a phone can see"
    background = page.locator("#timestep-controller").evaluate("el => getComputedStyle(el).backgroundColor")
    assert background == "rgb(255, 255, 255)", f"the sticky controller is opaque, not {background}"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(shots / "phone-first-screen.png"))
    # the article's display formulas (the demo's v-prediction ones are long) wrap instead of
    # running off the column: their boxes scroll sideways, which a phone does not show
    page.wait_for_function("() => document.querySelectorAll('.article .formula .katex').length >= 5")
    wide = page.evaluate("""() => [...document.querySelectorAll('.article .formula')]
        .filter((f) => f.offsetParent && f.scrollWidth > f.clientWidth + 1)
        .map((f) => f.textContent.slice(0, 40))""")
    assert wide == []


def test_a_phones_prompt_words_are_targets_a_finger_can_hit(screen, demo_url):
    """Every word button of the prompt is at least 24 x 24 px on a touch screen (WCAG 2.5.8):
    "a" and "," were 7-12 px wide; and the prompt still fits the phone's width."""
    page = screen(390, 844, device_scale_factor=2, is_mobile=True, has_touch=True)
    page.goto(f"{demo_url}?step=30")
    wait_ready(page)
    sizes = page.evaluate("""() => [...document.querySelectorAll('#prompt-words .token-word')]
        .map((b) => { const r = b.getBoundingClientRect(); return [b.textContent, r.width, r.height]; })""")
    assert len(sizes) >= 5 and any(len(t.strip()) <= 1 for t, _, _ in sizes), sizes
    small = [s for s in sizes if s[1] < 24 or s[2] < 24]
    assert small == [], small
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


# the demo's ControlNet prompt: recorded at conditioning scales 0, 0.25, 0.5, 1 and 2
DEMO_SKETCH = "a-large-red-circle-on-a-blue-background-3c70d7b4"


def stop_boxes(page, selector: str) -> list[dict]:
    return page.evaluate("""(sel) => [...document.querySelectorAll(sel + ' .gs-stop')].map((b) => {
        const r = b.getBoundingClientRect(), range = b.closest('.gs').querySelector('.gs-range')
            .getBoundingClientRect();
        return {text: b.textContent, left: r.left, right: r.right, centre: r.left + r.width / 2,
                place: range.left + 8 + (range.width - 16) * Number(b.dataset.pos) / 100,
                rangeLeft: range.left, rangeRight: range.right}; })""", selector)


@pytest.mark.parametrize("width", [320, 390])
def test_a_phones_scale_stops_never_overlap(screen, demo_url, width):
    """On a phone, 0, 0.25 and 0.5 on a range to 2 are 35-40 px apart, and their buttons
    touched or overlapped (a finger could not tell them apart): neighbours are pushed
    apart, at least 4 px, and stay over the range."""
    page = screen(width, 800, device_scale_factor=2, is_mobile=True, has_touch=True)
    page.goto(f"{demo_url}?prompt={DEMO_SKETCH}&seed=1&guidance=3&step=40&open=controlnet&control=1")
    wait_ready(page)
    page.locator("#controlnet-slider .gs-stop").first.wait_for()
    stops = stop_boxes(page, "#controlnet-slider")
    assert [s["text"] for s in stops] == ["0", "0.25", "0.5", "1", "2"]
    gaps = [b["left"] - a["right"] for a, b in zip(stops, stops[1:])]
    assert min(gaps) >= 3.5, gaps
    assert stops[0]["left"] >= stops[0]["rangeLeft"] - 20 and stops[-1]["right"] <= width, stops
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_a_prompt_without_a_variant_is_offered_its_nearest_prompt_to_compare(screen, demo_url):
    """The demo's sketch prompt is a group of one: the offer was the bundle's first prompt
    ("a blue circle on the left and a red square on the right, ...": five words off) with
    "(the marked words differ)" though none was marked. Now it is the prompt one change
    away (the same circle with a position phrase), without that claim; a group's variant
    keeps its marked words and the note."""
    page = screen(1366, 768)
    page.goto(f"{demo_url}?prompt={DEMO_SKETCH}&seed=1&guidance=3&step=40")
    wait_ready(page)
    page.locator("#compare-entry").wait_for()
    assert page.locator("#compare-variant").inner_text() == \
        "a large red circle on the left, on a blue background"
    assert not page.locator("#compare-marked").is_visible()
    page.locator("#compare-open").click()
    page.wait_for_function("() => new URLSearchParams(location.search).get('compare') === "
                           f"'{DEMO_PROMPT}'")
    page.goto(f"{demo_url}?prompt={DEMO_PROMPT}&seed=1&guidance=3&step=40")
    wait_ready(page)
    page.locator("#compare-entry").wait_for()
    assert page.locator("#compare-variant").inner_text().startswith("a large yellow circle on the left")
    assert page.locator("#compare-marked").is_visible()
    assert page.locator("#prompt-words .is-highlight").count() >= 1


@pytest.mark.parametrize("touch", [True, False])
def test_how_to_use_a_control_is_told_in_the_screens_own_terms(screen, demo_url, touch):
    """A phone has no hover: its captions say tap; a laptop's say hover and click."""
    page = (screen(390, 844, device_scale_factor=2, is_mobile=True, has_touch=True) if touch
            else screen(1366, 768))
    page.goto(f"{demo_url}?prompt={DEMO_SKETCH}&seed=1&guidance=3&step=40&open=controlnet&control=1")
    wait_ready(page)
    caption = page.locator("#panel-controlnet .caption", has_text="Conditioning scale (0:").inner_text()
    assert ("Tap a scale" in caption) is touch and ("Hover a scale" in caption) is not touch, caption
    # the Trajectory Map's caption (its section is closed here): which of its two texts shows
    shown = page.evaluate("""() => [...document.querySelectorAll('.trajectory .caption span')]
        .filter((s) => getComputedStyle(s).display !== 'none').map((s) => s.textContent)""")
    assert len(shown) == 1 and shown[0].startswith("Tap a node" if touch else "Hover a node"), shown


def test_stops_with_room_sit_at_their_scales_place_on_the_range(screen, demo_url):
    """At laptop width no stop is pushed: each is centred under its value on the range
    (the range's thumb travels its width less the thumb's own, about 16 px); the same
    after the window narrows to a phone's, for the stops that still have room (1 and 2)."""
    page = screen(1366, 768)
    page.goto(f"{demo_url}?prompt={DEMO_SKETCH}&seed=1&guidance=3&step=40&open=controlnet&control=1")
    wait_ready(page)
    page.locator("#controlnet-slider .gs-stop").first.wait_for()
    for s in stop_boxes(page, "#controlnet-slider"):
        assert abs(s["centre"] - s["place"]) <= 10, s
    page.set_viewport_size({"width": 360, "height": 800})
    page.wait_for_function("""() => { const b = [...document.querySelectorAll('#controlnet-slider .gs-stop')]
        .map((e) => e.getBoundingClientRect()); return b[1].left - b[0].right >= 3.5
        && b[2].left - b[1].right >= 3.5; }""")
    for s in stop_boxes(page, "#controlnet-slider")[3:]:
        assert abs(s["centre"] - s["place"]) <= 10, s


# ---------------------------------------------------------------------- clipping


def test_the_guidance_formulas_note_wraps_under_it_on_a_phone(screen, base_url):
    """At g = 0 the formula carries a bracketed note ("g = 0: the prompt's branch is not
    run"); in a phone's panel it wraps under the formula instead of running off the panel's
    edge (the box scrolled sideways, which a phone shows as text cut off)."""
    page = screen(390, 844, device_scale_factor=2, is_mobile=True, has_touch=True)
    page.goto(f"{base_url}?prompt={PROMPT}&guidance=0&step=2&open=guidance")
    wait_ready(page)
    page.wait_for_function("() => document.querySelector('#guidance-formula').innerText"
                           ".replace(/\\u00a0/g, ' ').includes('not run')")
    formula = page.locator("#guidance-formula")
    formula.scroll_into_view_if_needed()
    assert formula.evaluate("el => el.scrollWidth - el.clientWidth") <= 1
    right = formula.evaluate("el => el.getBoundingClientRect().right")
    ends = formula.evaluate("el => [...el.querySelectorAll('.katex-html, .gf-note')]"
                            ".map((n) => n.getBoundingClientRect().right)")
    assert len(ends) >= 2 and max(ends) <= right + 0.5, (ends, right)
    # the slider's end stops, centred on the range's ends, stay inside it (the last one
    # reached the panel's border)
    slider = box(page, "#guidance-slider")
    for stop in page.locator("#guidance-slider .gs-stop").all():
        b = stop.bounding_box()
        assert slider["x"] <= b["x"] and b["x"] + b["width"] <= slider["x"] + slider["width"], (b, slider)


def test_the_spoken_prompts_player_has_a_seek_bar_at_every_width_and_leaves_the_pictures_alone(
        screen, demo_url):
    """The clip's seek bar is the page's own (chromium's audio controls dropped theirs in
    the prompt column from 720 to 1023 px: a 32 px stub), at least 7.5rem wide at every
    width, and it seeks. Opening the box does not shrink the pictures: the one-row
    pipeline (>= 1440 px) used to widen the prompt column for chromium's player, taking
    the width from the pictures' column (177 -> 136 px at 1440)."""
    page = screen(1440, 900)
    page.goto(f"{demo_url}?step=30")
    wait_ready(page)
    frames = "() => ['#decoded-frame', '#pred-frame'].map((s) => document.querySelector(s).getBoundingClientRect().width)"
    closed = {1440: page.evaluate(frames)}   # the one row's narrowest
    page.locator(".speech-examples summary").click()
    seek = page.locator(".speech-seek")
    seek.wait_for()
    for width in (390, 720, 1023, 1440):   # a phone, the two-row pipeline's narrowest and widest, one row
        page.set_viewport_size({"width": width, "height": 900})
        bar = seek.bounding_box()
        assert bar is not None and bar["width"] >= 120, (width, bar)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        if width in closed:
            assert page.evaluate(frames) == closed[width], width
    page.locator(".speech-audio").evaluate("""(a) => a.readyState >= 1 || new Promise((done) =>
        a.addEventListener('loadedmetadata', done))""")
    seek.fill("2")   # a range input takes its value and fires input
    assert page.locator(".speech-audio").evaluate("(a) => a.currentTime") == pytest.approx(2, abs=0.05)
    assert page.locator(".speech-time").inner_text().startswith("2.0 / ")


def test_a_comma_never_starts_a_line_of_the_prompt(screen, demo_url):
    """The prompt's words are buttons, and a line may break between any two buttons: a
    comma token followed its word onto the next line (", on a blue background" at 828-844
    px, also at 586-592 and when presenting at 1100 px). Those widths are tried on one page."""
    page = screen(836, 900)
    page.goto(f"{demo_url}?step=30")
    wait_ready(page)
    starts = []
    for width in range(828, 845, 4):
        page.set_viewport_size({"width": width, "height": 900})
        if page.evaluate("""() => [...document.querySelectorAll('#prompt-words .token-word')].some((w, i, all) =>
                i > 0 && /^[,.;:]$/.test(w.textContent)
                && w.getBoundingClientRect().top > all[i - 1].getBoundingClientRect().bottom - 2)"""):
            starts.append(width)
    assert starts == []


# ---------------------------------------------------------------------- keyboard


def test_space_plays_after_clicking_a_word_and_the_word_stays_selected(screen, base_url):
    page = screen(1280, 900)
    page.goto(f"{base_url}?prompt={PROMPT}&step=2")
    wait_ready(page)
    word = page.locator("#prompt-words .token-word", has_text="circle")
    word.click()
    page.wait_for_function("() => new URLSearchParams(location.search).get('token') === '3'")
    assert page.evaluate("() => document.activeElement.textContent") == "circle"
    page.keyboard.press(" ")
    page.wait_for_function("() => document.querySelector('.tc-play').getAttribute('aria-label') === 'Pause'")
    assert word.get_attribute("aria-pressed") == "true"
    page.keyboard.press(" ")
    page.wait_for_function("() => document.querySelector('.tc-play').getAttribute('aria-label') === 'Play'")
    # the arrows step and P presents from a focused button too
    word.focus()
    step = int(page.locator(".tc-slider").input_value())
    page.keyboard.press("ArrowRight")
    page.wait_for_function("(s) => document.querySelector('.tc-slider').value === String(s)", arg=min(step + 1, 5))
    # Space on a focused button plays instead of pressing it (Enter presses it)
    page.locator("#image-open").focus()
    page.keyboard.press(" ")
    page.wait_for_function("() => document.querySelector('.tc-play').getAttribute('aria-label') === 'Pause'")
    page.wait_for_timeout(200)
    assert page.locator("#panel-image").is_hidden() and "open" not in query(page)


# ---------------------------------------------------------------------- contrast

CONTRAST = """(selector) => {
  const parse = (c) => {
    const m = c.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const over = (top, bottom) => ({ r: top.r * top.a + bottom.r * (1 - top.a), g: top.g * top.a + bottom.g * (1 - top.a),
    b: top.b * top.a + bottom.b * (1 - top.a), a: 1 });
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const results = [];
  for (const el of document.querySelectorAll(selector)) {
    if (!el.offsetParent || el.disabled || !el.textContent.trim()) continue;
    // the effective background: every layer down to an opaque one, on white paper
    const layers = [];
    let unknown = false;
    let opacity = 1;
    for (let n = el; n && n.nodeType === 1; n = n.parentElement) {
      const cs = getComputedStyle(n);
      opacity *= Number(cs.opacity);
      if (cs.backgroundImage !== 'none') { unknown = true; break; }
      const c = parse(cs.backgroundColor);
      if (c && c.a > 0) { layers.push(c); if (c.a >= 1) break; }
    }
    if (unknown) continue;
    let bg = { r: 255, g: 255, b: 255, a: 1 };
    for (const c of layers.reverse()) bg = over(c, bg);
    const fg0 = parse(getComputedStyle(el).color);
    const fg = over({ ...fg0, a: fg0.a * opacity }, bg);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    results.push({ what: (el.id ? '#' + el.id : el.className) + ' “' + el.textContent.trim().slice(0, 20) + '”',
                   ratio: (hi + 0.05) / (lo + 0.05) });
  }
  return results;
}"""
CONTROLS = ("#viz button, #viz [role=radio], #viz select, #viz .chip, #viz summary, "
            ".site-header .button, .site-header summary")


def contrast(page, selector=CONTROLS) -> list[dict]:
    return page.evaluate(CONTRAST, selector)


@pytest.mark.parametrize("search", [
    f"prompt={PROMPT}&step=2&token=3&open=text,guidance",
    f"prompt={PROMPT}&step=2&token=3&open=image",
    f"prompt={PROMPT}&compare={VARIANT}&step=3",
])
def test_every_control_meets_wcag_aa_contrast_normal_hovered_selected_and_focused(screen, base_url, search):
    """Text against its effective background (every layer down to an opaque one), for
    every visible button, option, chip and word; selected ones come from the URL (a word,
    a token chip, the seed and guidance options); each is measured as it is, hovered and
    focused. WCAG AA asks 4.5:1 for text."""
    page = screen(1440, 900)
    page.goto(f"{base_url}?{search}")
    wait_ready(page)
    page.wait_for_timeout(400)   # the levels' opening animation
    failures = [("normal", r) for r in contrast(page) if r["ratio"] < 4.5]
    controls = page.locator(CONTROLS)
    count = controls.count()
    assert count >= 15
    checked = 0
    for i in range(count):
        control = controls.nth(i)
        if not control.is_visible() or not control.is_enabled() or not control.inner_text().strip():
            continue
        checked += 1
        control.hover()
        control.evaluate("el => el.setAttribute('data-under-test', '')")
        failures += [("hovered", r) for r in contrast(page, "[data-under-test]") if r["ratio"] < 4.5]
        control.evaluate("el => el.focus()")
        failures += [("focused", r) for r in contrast(page, "[data-under-test]") if r["ratio"] < 4.5]
        control.evaluate("el => { el.removeAttribute('data-under-test'); el.blur(); }")
        page.mouse.move(1, 1)
    assert checked >= 15
    assert page.locator("#viz .is-selected").count() >= 2, "selected states were measured too"
    assert failures == []


# ---------------------------------------------------------------------- wrapping


@pytest.mark.parametrize("width, height, extra", [(1440, 900, ""), (1024, 768, "&present=1")])
def test_choices_and_labels_do_not_break_inside(screen, demo_url, width, height, extra):
    page = screen(width, height)
    page.goto(f"{demo_url}?step=10{extra}")
    wait_ready(page)
    tops = page.evaluate("() => [...document.querySelectorAll('#guidance-choice .option')].map((o) => o.getBoundingClientRect().top)")
    assert len(tops) == 4 and max(tops) - min(tops) < 1, f"guidance options on several lines: {tops}"
    # "step 0" of "Random noise at step 0" stays on one line
    lines = page.evaluate("""() => { const el = document.querySelector('#seed-label');
        const text = el.firstChild; const i = text.data.indexOf('step');
        const r = document.createRange(); r.setStart(text, i); r.setEnd(text, text.data.length);
        return new Set([...r.getClientRects()].map((x) => Math.round(x.top))).size; }""")
    assert lines == 1
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_the_maps_tooltip_title_is_one_line(screen, demo_url):
    page = screen(1440, 900)
    page.goto(f"{demo_url}?prompt={DEMO_PROMPT}&compare={DEMO_VARIANT}&step=30")
    wait_ready(page)
    node = page.locator("#trajectory-map .tm-node.lane-2[data-step='10']")
    node.wait_for()
    page.locator("#trajectory-map .tm-svg").scroll_into_view_if_needed()
    page.wait_for_timeout(300)   # the map is drawn again once its width is measured
    b = node.bounding_box()
    page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
    title = page.locator("#trajectory-map .tm-tip-title")
    title.wait_for()
    assert title.inner_text().startswith("Prompt 2, step ")
    height, line = title.evaluate("el => [el.getBoundingClientRect().height, parseFloat(getComputedStyle(el).lineHeight)]")
    assert height < 1.5 * line


# ---------------------------------------------------------------------- the opening example


def test_a_first_visit_opens_on_two_objects_with_a_shape_words_attention(screen, demo_url, shots):
    """The demo's colour word of a single object also lights the background; a shape word
    lights its own object, also when there are two: that is the example to open on."""
    linked = screen(1440, 900)
    linked.goto(f"{demo_url}?step=3")
    wait_ready(linked)
    page = screen(1440, 900)
    page.goto(demo_url)
    wait_ready(page)
    page.wait_for_function("() => new URLSearchParams(location.search).has('token')")
    assert " and " in page.locator("#prompt-words").inner_text()
    selected = page.locator("#prompt-words .token-word[aria-pressed=true]")
    assert selected.inner_text() in {"circle", "square", "triangle", "star"}
    page.locator("#decoded-frame.has-attention").wait_for()
    assert page.evaluate("() => history.length") == linked.evaluate("() => history.length"), \
        "the opening choice adds no history entry"
    page.locator(".tc-back").click()   # pause, to look
    page.screenshot(path=str(shots / "opening-1440.png"))


def test_clicking_a_marked_word_shows_where_it_acts_as_the_hint_says(screen, base_url):
    page = screen(1280, 900)
    page.goto(f"{base_url}?prompt={PROMPT}&step=2")
    wait_ready(page)
    assert "Click a word to see where it acts" in page.locator(".stage-prompt .hint").inner_text()
    marked = page.locator("#prompt-words .token-word.is-highlight").first
    marked.click()
    page.locator("#decoded-frame.has-attention").wait_for()
    assert "compare" not in query(page) and query(page)["token"] == "1"
    assert page.locator("#panel-compare").is_hidden()

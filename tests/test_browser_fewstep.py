"""The "Fifty steps, four, one" box (frontend/js/views/fewstep-view.js) in a browser
(Playwright driving Debian's chromium), over a synthetic bundle with a fewstep/ section
(tests/synthetic_bundle.py write_fewstep_section: a 50-step teacher path and 1-, 2- and
4-step student paths per example): absent without the section, and nothing asked for;
opened, every path starts at the same noise, the scrubber moves every path's node and
frame, each path has its straightness; Escape closes it. The same from a static
`noisepath export`. Screenshots at phone, laptop and projector widths go to
NOISEPATH_SCREENSHOT_DIR or a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser_helpers import (SKIP_REASON, browser_available, serve_bundle, serve_folder,
                                   wait_ready)
from tests.synthetic_bundle import PROMPTS, make_bundle, write_fewstep_section

needs_chromium = pytest.mark.skipif(not browser_available(), reason=SKIP_REASON)
ROOT = Path(__file__).resolve().parent.parent

SIZES = {"phone": (390, 844), "laptop": (1366, 768), "projector": (1920, 1080)}
NODES = """() => [...document.querySelectorAll('#fewstep .fs-node')].map((g) => ({
  path: g.dataset.path, step: Number(g.dataset.step), x: Number(g.dataset.x), y: Number(g.dataset.y)}))"""
FEWSTEP_PARAM = "() => new URLSearchParams(location.search).get('fewstep')"
FRAMES = """() => Object.fromEntries([...document.querySelectorAll('#fewstep .fs-card')].map((c) =>
  [c.dataset.path, c.querySelector('.fs-frame').dataset.frame]))"""


@pytest.fixture(scope="module")
def fewstep_bundle(tmp_path_factory):
    """A small synthetic bundle (one prompt pair, seed 1, guidance 7) with a fewstep/
    section of two examples (seeds 1 and 2: the second names no run)."""
    bundle = make_bundle(tmp_path_factory.mktemp("fewstep") / "b", steps=3, seeds=(1,),
                         prompts=PROMPTS[:1], guidance_scales=(7,))
    write_fewstep_section(bundle)
    return bundle


@pytest.fixture(scope="module")
def fewstep_url(fewstep_bundle):
    with serve_bundle(fewstep_bundle) as url:
        yield url


def test_the_synthetic_section_passes_the_validator(fewstep_bundle):
    from backend.validator import validate_bundle

    assert validate_bundle(fewstep_bundle) == []


NODE_BOXES = """() => [...document.querySelectorAll('#fewstep .fs-node path')].map((n) => {
  const b = n.getBoundingClientRect(); return [b.x + b.width / 2, b.y + b.height / 2, b.width]; })"""


def assert_no_node_hides_another(page):
    """Every two nodes' centres at least a node's width apart (1 px of rounding): where
    paths share a point (the noise; at t = 0, often the result) all are still seen."""
    boxes = page.evaluate(NODE_BOXES)
    for j, (x, y, w) in enumerate(boxes):
        for (u, v, z) in boxes[j + 1:]:
            assert ((x - u) ** 2 + (y - v) ** 2) ** 0.5 >= max(w, z) - 1, boxes


def open_box(page, url):
    page.goto(url)
    wait_ready(page)
    page.locator("#fewstep summary").click()
    page.locator("#fewstep .fs-node").first.wait_for()
    # every sprite drawn (data-frame is set once a frame is on its canvas)
    page.wait_for_function("() => [...document.querySelectorAll('#fewstep .fs-frame')]"
                           ".every((f) => f.dataset.frame !== undefined)")


@pytest.mark.browser
@needs_chromium
def test_the_box_is_absent_and_nothing_asked_for_without_the_section(page, base_url):
    asked = []
    page.on("request", lambda r: asked.append(r.url) if "api/fewstep" in r.url else None)
    page.goto(base_url)
    wait_ready(page)
    assert page.locator("#fewstep").is_hidden()
    assert asked == []


@pytest.mark.browser
@needs_chromium
def test_every_path_starts_at_the_same_noise_and_the_scrubber_moves_them_all(
        page, fewstep_url, fewstep_bundle, shots):
    section = json.loads((fewstep_bundle / "fewstep" / "index.json").read_text())
    example = section["examples"][0]
    steps = {p["id"]: p["num_inference_steps"] for p in example["paths"]}
    open_box(page, fewstep_url)

    # time 1 (the noise): every path's node on the example's one noise point, each
    # showing what its first call predicts (frame 0)
    start = page.evaluate(NODES)
    assert {n["path"] for n in start} == set(steps)
    assert all(n["step"] == 0 for n in start)
    assert {(n["x"], n["y"]) for n in start} == {tuple(example["paths"][0]["xy"][0])}
    assert set(page.evaluate(FRAMES).values()) == {"0"}
    # ... and each node is still seen: set around the point, none over another
    assert_no_node_hides_another(page)
    # the noise's label stays readable where the paths leave it (a halo, in the map's background)
    assert page.locator("#fewstep .fs-start-label").evaluate("(t) => getComputedStyle(t).paintOrder") == "stroke"

    # each path's straightness: a number, or for one step what it means
    words = dict(zip(page.locator("#fewstep .fs-card").evaluate_all("(cs) => cs.map((c) => c.dataset.path)"),
                     page.locator("#fewstep .fs-straightness").all_inner_texts()))
    for path in example["paths"]:
        if path["num_inference_steps"] == 1:
            assert words[path["id"]] == "one step: straight by construction"
        else:
            assert words[path["id"]].startswith("straightness ")
            assert float(words[path["id"]].split()[1]) == pytest.approx(path["straightness"], rel=0.01)  # 2 digits shown
    # the sentence sets each model's path with the most steps (its ODE's) side by side: the
    # teacher's 50 against the student's 4, not the student's straightest coarser walk
    finest = {p["model"]: p for p in sorted(example["paths"], key=lambda p: p["num_inference_steps"])}
    sentence = page.locator("#fewstep .fs-reading").inner_text()
    assert "straighter" in sentence
    assert "Teacher (the demo model), 50 steps: straightness" in sentence
    assert f"2-rectified flow, 4 steps: {finest['rectified-flow']['straightness']:.2g}" in sentence
    # each path's cost in UNet evaluations (two a step with guidance), not the builder's
    # seconds (which include decoding every prediction), which stay in the tooltip
    guidance = {m["id"]: m["guidance_scale"] for m in section["models"]}
    costs = dict(zip(page.locator("#fewstep .fs-card").evaluate_all("(cs) => cs.map((c) => c.dataset.path)"),
                     page.locator("#fewstep .fs-cost").all_inner_texts()))
    for path in example["paths"]:
        n = path["num_inference_steps"] * (2 if guidance[path["model"]] != 1 else 1)
        assert costs[path["id"]].startswith(f"{n} UNet evaluation{'' if n == 1 else 's'}")
    assert costs["teacher-50"] == "100 UNet evaluations (2 a step: guidance)"

    # arrows step to the next time any path has a point: the teacher's, whose first two
    # points both have time 1 (rounded), so it moves two steps, alone
    teacher = next(p for p in example["paths"] if p["id"] == "teacher-50")["time"]
    assert teacher[1] == 1.0
    after = max(t for t in teacher if t < 1)
    scrubber = page.locator("#fs-time")
    scrubber.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('#fewstep .fs-node[data-path=\"teacher-50\"]')"
                           ".dataset.step === '2'")
    moved = {n["path"]: n["step"] for n in page.evaluate(NODES)}
    assert moved == {p: 2 if p == "teacher-50" else 0 for p in steps}
    readout = page.locator("#fewstep .fs-time-readout").inner_text()  # the step's own time, to 4 decimals
    assert readout.startswith("t = ") and float(readout[4:]) == pytest.approx(after, abs=5e-5)

    # scrubbed to the image: every node on its path's result, every frame the result
    page.keyboard.press("End")
    page.wait_for_function("() => document.querySelector('#fewstep .fs-time-readout').textContent === 't = 0.00'")
    page.wait_for_function(f"() => ({FEWSTEP_PARAM})() === '0'")   # the address bar follows (a link opens it)
    end = {n["path"]: n for n in page.evaluate(NODES)}
    for path in example["paths"]:
        node = end[path["id"]]
        assert node["step"] == path["num_inference_steps"]
        assert [node["x"], node["y"]] == path["xy"][-1] != path["xy"][0]
    assert page.evaluate(FRAMES) == {p: str(n) for p, n in steps.items()}
    # the 8-px sprites stay crisp when drawn again unchanged (hovering a card marks its
    # path): frame.js keeps the class its join resets
    page.locator("#fewstep .fs-card").first.hover()
    page.wait_for_selector("#fewstep .fs-card.is-focused")
    assert set(page.locator("#fewstep .fs-frame canvas").evaluate_all(
        "(cs) => cs.map((c) => getComputedStyle(c).imageRendering)")) == {"pixelated"}

    page.keyboard.press("Home")
    page.wait_for_function("() => document.querySelector('#fewstep .fs-time-readout').textContent === 't = 1.00'")
    page.keyboard.press("ArrowRight")
    for name, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        page.locator("#fewstep").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / f"fewstep-{name}.png"))
    page.set_viewport_size({"width": 1366, "height": 768})

    # Escape closes the box and leaves the focus on its summary
    scrubber.focus()
    page.keyboard.press("Escape")
    assert page.locator("#fewstep details").evaluate("(d) => d.open") is False
    assert page.evaluate("() => document.activeElement.tagName") == "SUMMARY"
    page.wait_for_function(f"() => ({FEWSTEP_PARAM})() === null")


@pytest.mark.browser
@needs_chromium
def test_a_static_site_shows_the_paths_and_their_pictures(page, fewstep_bundle, tmp_path):
    from backend import create_app
    from backend.export_cli import write_site

    write_site(create_app({"BUNDLE_DIR": fewstep_bundle}), tmp_path / "course")
    with serve_folder(tmp_path) as url:
        open_box(page, url + "course/")
        assert len(page.evaluate(NODES)) == len(json.loads(
            (fewstep_bundle / "fewstep" / "index.json").read_text())["examples"][0]["paths"])
        page.locator("#fewstep .fs-example").select_option(index=1)  # the other example
        page.wait_for_function("() => document.querySelector('#fewstep .fs-start-label')"
                               ".textContent.endsWith('(seed 2)')")
        assert page.locator("#fewstep .fs-frame canvas").first.evaluate("(c) => c.width") == 8
        page.close()  # before the server stops: no request of its is cut off



@pytest.mark.browser
@needs_chromium
def test_the_address_bar_opens_the_box_at_its_example_and_time(page, fewstep_url, fewstep_bundle):
    """The box's open state, example and time are in the URL (js/state.js `fewstep=`, which
    the scrubbing test above sees follow the box), so a teacher's link opens it there;
    closing it is a history entry; what is no time, or no example id, is dropped."""
    section = json.loads((fewstep_bundle / "fewstep" / "index.json").read_text())
    second = section["examples"][1]
    teacher = next(p for p in second["paths"] if p["id"] == "teacher-50")["time"]
    # a link: the second example at the teacher's third point (a step's exact time)
    page.goto(f"{fewstep_url}?fewstep={teacher[2]}:{second['id']}")
    page.locator("#fewstep .fs-node").first.wait_for()
    page.wait_for_function("() => document.querySelector('#fewstep .fs-node[data-path=\"teacher-50\"]')"
                           ".dataset.step === '2'")
    assert page.locator("#fewstep .fs-example").input_value() == second["id"]
    assert page.locator("#fewstep .fs-start-label").text_content().endswith("(seed 2)")
    page.locator("#fewstep summary").click()
    page.wait_for_function(f"() => ({FEWSTEP_PARAM})() === null")
    page.go_back()
    page.wait_for_function("() => document.querySelector('#fewstep details').open")
    assert page.evaluate(FEWSTEP_PARAM) == f"{teacher[2]}:{second['id']}"
    read = page.evaluate("""async (searches) => {
      const state = await import('./js/state.js');
      const index = await (await fetch('api/index.json')).json();
      return searches.map((q) => state.toSearch(index, state.normalize(index, state.fromSearch(q))));
    }""", ["?fewstep=2", "?fewstep=abc", "?fewstep=-0.1", "?fewstep=0.5:bad%20id", "?fewstep=0.25"])
    assert ["fewstep=" in q for q in read] == [False, False, False, True, True]
    # the readout never rounds a time onto a step's time it has not reached (0.5019 is not 0.50)
    assert page.evaluate("""async (ts) => (await import('./js/views/fewstep-view.js')).timeText && ts.map(
      (await import('./js/views/fewstep-view.js')).timeText)""", [0.5019, 0.5, 0.99951, 1, 0, 0.25]) == [
        "0.5019", "0.50", "0.9995", "1.00", "0.00", "0.25"]
    assert read[3].endswith("fewstep=0.5") and read[4].endswith("fewstep=0.25")


def assert_presentation_fits(page, height):
    """Presenting, scrolled to the box's scrubber: every path's card ends on the screen and
    no text of the box is under 16 px."""
    assert page.evaluate("() => document.documentElement.classList.contains('presenting')")
    page.evaluate("() => window.scrollTo(0, document.querySelector('#fewstep .fs-controls')"
                  ".getBoundingClientRect().top + scrollY)")
    bottoms = page.locator("#fewstep .fs-card").evaluate_all("(cs) => cs.map((c) => c.getBoundingClientRect().bottom)")
    assert bottoms and max(bottoms) <= height, bottoms
    small = page.evaluate("""() => [...document.querySelectorAll('#fewstep *')].filter((e) =>
      [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())
      && e.getClientRects().length && !e.closest('select')
      && parseFloat(getComputedStyle(e).fontSize) < 16).map((e) => `${e.className.baseVal ?? e.className}:
      ${getComputedStyle(e).fontSize} ${e.textContent.slice(0, 30)}`)""")
    assert small == []


@pytest.mark.browser
@needs_chromium
def test_nodes_on_one_point_are_set_around_it_and_presentation_fits_one_screen(page, fewstep_url):
    """Where several paths' nodes fall on one point (at t = 0 the teacher's 50 steps and the
    students' results can coincide on the real models) they are set on a circle around it,
    none hiding another, a line to the point each stands for. Presenting on a 1366 x 768
    projector, under the scrubber at the top the map and every path's card fit the screen,
    and no text of the box is under 16 px (the map's labels in rem scale with it)."""
    page.set_viewport_size({"width": 1366, "height": 768})
    page.goto(f"{fewstep_url}?fewstep=0&present=1")
    page.locator("#fewstep .fs-node").first.wait_for()
    page.wait_for_function("() => [...document.querySelectorAll('#fewstep .fs-frame')]"
                           ".every((f) => f.dataset.frame !== undefined)")
    spread = page.evaluate("""async () => {
      const { spread } = await import('./js/views/fewstep-view.js');
      const same = spread([[50, 50], [50, 50], [50, 50], [50, 50], [50, 50], [50, 50], [200, 50]], 20);
      const edge = spread([[0, 0], [0, 0]], 20, [10, 10, 300, 300]);
      return { same, edge };
    }""")
    same = spread["same"]
    gaps = [((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) ** 0.5 for j, a in enumerate(same) for b in same[j + 1:]]
    assert min(gaps) >= 20 - 1e-6                                    # none closer than the gap
    assert all(((x - 50) ** 2 + (y - 50) ** 2) ** 0.5 <= 20 + 1e-6 for x, y in same[:6])  # close to their point
    assert same[0][0] == pytest.approx(50) and same[0][1] < 50       # the first (the teacher's 50) on top
    assert same[6] == [200, 50]                                      # a node alone stays on its point
    assert all(10 - 1e-6 <= v for q in spread["edge"] for v in q)   # a circle at the box's edge moves in whole
    assert ((spread["edge"][0][0] - spread["edge"][1][0]) ** 2
            + (spread["edge"][0][1] - spread["edge"][1][1]) ** 2) ** 0.5 >= 20 - 1e-6

    assert_presentation_fits(page, 768)
    assert_no_node_hides_another(page)
    assert page.locator("#fewstep .fs-leader").count() >= 1          # a line to the point each stands for


@pytest.mark.browser
@needs_chromium
def test_on_a_phone_the_examples_whole_prompt_is_readable(page, fewstep_url):
    """A phone's select shows a long prompt's first words only: the box shows the chosen
    example's whole prompt (wrapped, inside the screen) when the select cannot. The
    synthetic prompts are short: the section is served here with the demo's longest kind."""
    prompt = "a green square at the top and a yellow circle at the bottom, on a blue background"

    def longer(route):
        served = route.fetch()
        section = served.json()
        for example in section["examples"]:
            example["prompt"] = prompt
        route.fulfill(response=served, json=section)

    page.route("**/api/fewstep/index.json*", longer)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{fewstep_url}?fewstep=1")
    page.locator("#fewstep .fs-node").first.wait_for()
    readable = page.evaluate("""(prompt) => {
      const select = document.querySelector('#fewstep .fs-example');
      const font = getComputedStyle(select);
      const ctx = document.createElement('canvas').getContext('2d');
      ctx.font = `${font.fontWeight} ${font.fontSize} ${font.fontFamily}`;
      const text = select.selectedOptions[0].textContent;
      const fits = ctx.measureText(text).width <= select.clientWidth - 24;  // 24: the arrow, the padding
      const shown = [...document.querySelectorAll('#fewstep .fewstep-view *')].some((e) => !e.closest('select')
        && e.textContent.includes(prompt) && e.getClientRects().length && e.scrollWidth <= e.clientWidth
        && e.getBoundingClientRect().right <= innerWidth && e.getBoundingClientRect().width < innerWidth
        && getComputedStyle(e).visibility === 'visible' && e.children.length === 0);
      return { fits, shown, text };
    }""", prompt)
    assert readable["fits"] or readable["shown"], readable


@pytest.mark.browser
@needs_chromium
@pytest.mark.parametrize("width, height", [(1024, 768), (1280, 720), (1366, 768), (1920, 1080)])
def test_the_shipped_sections_seven_paths_fit_a_projector(page, width, height, shots):
    """The demo bundle's section (static/demo-bundle/fewstep: the teacher at 50, 4 and 1
    steps, the 2-rectified flow at 4, 2 and 1, the one-step student) presented on a
    1024 x 768, 1280 x 720, 1366 x 768 and 1920 x 1080 projector: the map and all seven
    cards on one screen under the scrubber (two rows of four; with two cards a row the
    one-step student's was below the screen; at 1280 x 720 the second row was 73 px below
    it until the key moved under the map), at a time where the teacher's first prediction
    shows, the key beside the cards rather than above them."""
    from tests.browser_helpers import serve_bundle

    demo = ROOT / "static" / "demo-bundle"
    with serve_bundle(demo) as url:
        page.set_viewport_size({"width": width, "height": height})
        page.goto(f"{url}?fewstep=0.97&present=1")
        page.locator("#fewstep .fs-node").first.wait_for()
        assert page.locator("#fewstep .fs-card").count() == 7
        page.wait_for_function("() => [...document.querySelectorAll('#fewstep .fs-frame')]"
                               ".every((f) => f.dataset.frame !== undefined)")
        assert_presentation_fits(page, height)
        pictures = page.locator("#fewstep .fs-card .fs-frame").evaluate_all(
            "(fs) => fs.map((f) => f.getBoundingClientRect().width)")
        assert min(pictures) >= 72, pictures  # 4.5rem: a picture the back of the room sees
        key, cards = (page.locator(f"#fewstep {c}").bounding_box() for c in (".fs-legend", ".fs-cards"))
        assert key["y"] > cards["y"] and key["x"] + key["width"] <= cards["x"] + 1  # under the map
        page.screenshot(path=str(shots / f"fewstep-demo-present-{width}x{height}.png"))
        page.goto("about:blank")  # nothing left loading when the server stops

"""The Refinement Comparison View in a real browser (Playwright driving Debian's chromium).

Served by `create_app` over the synthetic bundle (random arrays in the real format:
5 steps, seeds 1 and 2, guidance 0, 1 and 7, two groups of a main prompt and a variant,
one trajectory map per seed). Every test fails on any console error or uncaught exception.
Screenshots go to NOISEPATH_SCREENSHOT_DIR, or to a pytest temporary folder.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from tests.browser_helpers import SKIP_REASON, browser_available, wait_ready, watch_errors

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not browser_available(), reason=SKIP_REASON)]

PROMPT = "a-red-circle-on-the-left-ad3b43dc"   # tests/synthetic_bundle.py, group 0 main
VARIANT = "a-red-square-on-the-left-0cb5c515"
OTHER = "a-blue-star-3fa90ba3"                     # group 1's variant: same seeds, another group
T = 5
COMPARE = f"prompt={PROMPT}&compare={VARIANT}&seed=1&guidance=7"


VIEWPORT = {"width": 1440, "height": 1000}  # the module's browser context (conftest.py)


def query(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def open_compare(page, base_url, extra: str = "step=3") -> None:
    page.goto(f"{base_url}?{COMPARE}&{extra}")
    wait_ready(page)
    page.locator("#panel-compare").wait_for()
    page.locator("#trajectory-map .tm-now").nth(1).wait_for()


def lane(n: int) -> str:
    return f"#compare-lanes .lane-{n}"


def frames_of(page, n: int) -> dict[str, str | None]:
    return {kind: page.locator(f"{lane(n)} .lane-{kind}").get_attribute("data-frame")
            for kind in ("latent", "pred", "decoded")}


def node_counts(page) -> dict:
    return page.evaluate("""() => ({
      step: Number(document.querySelector('.tc-slider').value),
      lane1: document.querySelectorAll('#trajectory-map .tm-node.lane-1').length,
      lane2: document.querySelectorAll('#trajectory-map .tm-node.lane-2').length })""")


# ---------------------------------------------------------------------- entering and leaving


def test_the_compare_button_enters_compare_mode_and_back_to_overview_leaves(page, base_url):
    page.goto(f"{base_url}?prompt={PROMPT}&step=2")
    wait_ready(page)
    page.locator("#compare-open").click()
    page.locator("#panel-compare").wait_for()
    assert query(page)["compare"] == VARIANT
    assert page.locator("#pipeline").is_hidden(), "the comparison replaces the overview"
    assert page.locator("#compare-lanes .lane").count() == 2
    page.wait_for_function("() => document.activeElement.id === 'panel-compare-title'")
    assert page.locator(f"{lane(1)} .lane-diff").all_inner_texts() == ["circle"]
    assert page.locator(f"{lane(2)} .lane-diff").all_inner_texts() == ["square"]

    page.locator("#compare-close").click()   # "Back to overview"
    page.locator("#panel-compare").wait_for(state="hidden")
    assert page.locator("#pipeline").is_visible() and "compare" not in query(page)

    page.locator("#compare-open").click()    # Escape leaves too
    page.locator("#panel-compare").wait_for()
    page.keyboard.press("Escape")
    page.locator("#panel-compare").wait_for(state="hidden")
    page.wait_for_function("() => document.activeElement.id === 'compare-open'")


# ---------------------------------------------------------------------- the timestep


def test_both_lanes_follow_the_one_timestep_controller(page, base_url, shots):
    open_compare(page, base_url, "step=1")
    page.locator(f"{lane(2)} .lane-pred[data-frame='0']").wait_for()
    assert frames_of(page, 1) == frames_of(page, 2) == {"latent": "1", "pred": "0", "decoded": "1"}
    src = [page.locator(f"{lane(n)} .lane-decoded").get_attribute("data-src") for n in (1, 2)]
    assert src[0] != src[1] and "--s1-g7" in src[0] and VARIANT in src[1]

    page.locator(".tc-slider").fill("4")
    page.wait_for_function("() => document.querySelectorAll('#compare-lanes .lane-decoded[data-frame=\"4\"]').length === 2")
    for n in (1, 2):
        assert frames_of(page, n) == {"latent": "4", "pred": "3", "decoded": "4"}
    assert page.locator("#difference-image").get_attribute("aria-label").endswith(
        "dark where they agree, bright where they differ")
    assert "step 4" in page.locator("#difference-image").get_attribute("aria-label")
    assert node_counts(page) == {"step": 4, "lane1": 5, "lane2": 5}
    assert query(page)["step"] == "4"
    page.screenshot(path=str(shots / "compare-1440.png"))


def test_the_trajectory_grows_with_playback(page, base_url):
    open_compare(page, base_url, "step=0")
    assert node_counts(page) == {"step": 0, "lane1": 1, "lane2": 1}
    page.locator(".tc-play").click()
    seen = set()
    deadline = time.monotonic() + 20  # a generous bound: a busy CPU slows the browser's frames
    while time.monotonic() < deadline:
        c = node_counts(page)
        assert c["lane1"] == c["lane2"] == c["step"] + 1, c   # nodes revealed up to the current step
        seen.add(c["step"])
        if len(seen) >= 4:
            break
        page.wait_for_timeout(60)
    assert len(seen) >= 4, f"playback showed only steps {seen}"
    opacity = page.evaluate("""() => [...document.querySelectorAll('#trajectory-map .tm-node.lane-1')]
        .map((n) => Number(n.getAttribute('fill-opacity')))""")
    assert opacity == sorted(opacity) and opacity[0] < 0.5, "early steps are pale"


# ---------------------------------------------------------------------- the map


def test_hovering_a_node_shows_its_step_and_picture_and_a_click_jumps_there(page, base_url):
    open_compare(page, base_url, f"step={T}")
    page.locator("#trajectory-map .tm-svg").scroll_into_view_if_needed()   # below the lanes
    node = page.locator("#trajectory-map .tm-node.lane-2[data-step='2']")
    box = node.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    tip = page.locator("#trajectory-map .tm-tip")
    tip.wait_for()
    assert tip.locator(".tm-tip-title").inner_text() == "Prompt 2, step 2"
    page.locator("#trajectory-map .tm-tip-frame[data-frame='2']").wait_for()
    assert VARIANT in tip.locator(".tm-tip-frame").get_attribute("data-src")
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("() => document.querySelector('.tc-slider').value === '2'")
    assert query(page)["step"] == "2"
    page.locator(f"{lane(1)} .lane-decoded[data-frame='2']").wait_for()


def test_the_map_zooms_and_pans_and_resets(page, base_url):
    open_compare(page, base_url, f"step={T}")
    node = page.locator("#trajectory-map .tm-node.lane-1[data-step='3']")
    before = node.get_attribute("transform")
    page.locator("#trajectory-map .tm-zoom[aria-label='Zoom in']").click()
    page.wait_for_function("(t) => document.querySelector(\"#trajectory-map .tm-node.lane-1[data-step='3']\")"
                           ".getAttribute('transform') !== t", arg=before)
    page.locator("#trajectory-map .tm-svg").scroll_into_view_if_needed()
    box = page.locator("#trajectory-map .tm-svg").bounding_box()
    page.mouse.move(box["x"] + 40, box["y"] + 40)
    page.mouse.wheel(0, 300)   # zoom out around the pointer
    page.mouse.down()
    page.mouse.move(box["x"] + 90, box["y"] + 70, steps=4)   # pan
    page.mouse.up()
    assert query(page)["step"] == str(T), "a drag is not a click"
    page.locator("#trajectory-map .tm-reset").click()
    page.wait_for_function("(t) => document.querySelector(\"#trajectory-map .tm-node.lane-1[data-step='3']\")"
                           ".getAttribute('transform') === t", arg=before)


# ---------------------------------------------------------------------- the second lane


def test_choosing_another_prompt_of_the_same_seed_for_the_second_lane(page, base_url):
    open_compare(page, base_url)
    url = page.url
    page.locator(f"{lane(2)} .picker-button").click()
    options = page.locator(f"{lane(2)} [role=option]")
    ids = [options.nth(i).get_attribute("data-id") for i in range(options.count())]
    assert PROMPT not in ids and VARIANT in ids and OTHER in ids, ids   # not only the predefined pair
    page.locator(f"{lane(2)} [role=option][data-id='{OTHER}']").hover()
    page.wait_for_function("() => document.querySelector('#compare-lanes .lane-2 .lane-words').textContent === 'a blue star'")
    assert page.url == url, "hovering previews without committing"
    page.locator(f"{lane(2)} [role=option][data-id='{OTHER}']").click()
    page.wait_for_function("(o) => new URLSearchParams(location.search).get('compare') === o", arg=OTHER)
    assert page.locator(f"{lane(1)} .lane-diff").all_inner_texts() == ["red", "circle", "on", "the", "left"]
    assert page.locator(f"{lane(2)} .lane-diff").all_inner_texts() == ["blue", "star"]
    page.locator(f"{lane(2)} .lane-decoded[data-src*='{OTHER}--s1-g7']").wait_for()
    page.go_back()
    page.wait_for_function("(v) => new URLSearchParams(location.search).get('compare') === v", arg=VARIANT)
    page.wait_for_function("() => document.querySelector('#compare-lanes .lane-2 .lane-words').textContent"
                           " === 'a red square on the left'")


# ---------------------------------------------------------------------- the URL


def test_a_deep_link_opens_the_comparison_and_history_moves_in_and_out(page, base_url):
    page.goto(f"{base_url}?prompt={PROMPT}&compare={VARIANT}&seed=2&guidance=1&step=4&paths=all")
    wait_ready(page)
    page.locator("#panel-compare").wait_for()
    assert int(page.locator(".tc-slider").input_value()) == 4
    assert page.locator(".tc-play").get_attribute("aria-label") == "Play"
    assert page.locator("#compare-seed-choice [aria-checked=true]").inner_text() == "2"
    assert page.locator("#compare-guidance-choice [aria-checked=true]").inner_text() == "1"
    page.locator(f"{lane(1)} .lane-decoded[data-src*='{PROMPT}--s2-g1']").wait_for()
    page.locator(f"{lane(2)} .lane-decoded[data-src*='{VARIANT}--s2-g1']").wait_for()
    assert page.locator("#trajectory-map .tm-faint-input").is_checked()
    # the other scales of both prompts (g 7) and the prompt-free guidance-0 run
    page.wait_for_function("() => document.querySelectorAll('#trajectory-map .tm-faint-path').length === 3")
    page.locator("#trajectory-map .tm-faint-input").uncheck()
    page.wait_for_function("() => !new URLSearchParams(location.search).has('paths')")
    assert page.locator("#trajectory-map .tm-faint-path").count() == 0

    page.locator("#compare-close").click()
    page.locator("#panel-compare").wait_for(state="hidden")
    page.go_back()
    page.locator("#panel-compare").wait_for()
    page.go_forward()
    page.locator("#panel-compare").wait_for(state="hidden")
    assert page.locator("#pipeline").is_visible()


# ---------------------------------------------------------------------- what differs


def test_what_differs_measures_the_latents_and_images_and_shows_where_the_words_act(
        page, base_url, synthetic_bundle_ro):
    open_compare(page, base_url, "step=3")
    page.locator("#difference-chart .dc-latents .dc-line[d]").wait_for()
    page.locator("#difference-chart .dc-images .dc-line[d]").wait_for()
    a = np.load(synthetic_bundle_ro / "runs" / f"{PROMPT}--s1-g7" / "latents.npy").astype(np.float32)
    b = np.load(synthetic_bundle_ro / "runs" / f"{VARIANT}--s1-g7" / "latents.npy").astype(np.float32)
    rms = float(np.sqrt(np.mean((a[3] - b[3]) ** 2)))
    value = page.locator("#difference-chart .dc-latents .dc-value").inner_text().strip()
    assert value.startswith("step 3: ") and abs(float(value.split(": ")[1]) - rms) < 0.01 * rms, (value, rms)
    assert "step 3" in page.locator("#difference-chart .dc-images .dc-value").inner_text()
    lit = page.locator("#difference-image canvas").evaluate("""(c) => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] + d[i + 1] + d[i + 2] > 60 ? 1 : 0;
        return n / (d.length / 4); }""")
    assert lit > 0.2, "random images differ almost everywhere"

    # each lane: the cross-attention of its own words over its decoded image
    for n, word in ((1, "circle"), (2, "square")):
        page.locator(f"{lane(n)} .lane-attention.has-attention").wait_for()
        assert page.locator(f"{lane(n)} .lane-figure-attention figcaption").inner_text() == f"Where “{word}” acts"

    # a click on a chart jumps to that step
    page.locator("#difference-chart .dc-latents .dc-hit").click(position={"x": 2, "y": 20})
    page.wait_for_function("() => document.querySelector('.tc-slider').value === '0'")
    page.locator(f"{lane(1)} .lane-attention-note:not([hidden])").wait_for()
    assert "Step 0" in page.locator(f"{lane(1)} .lane-attention-note").inner_text()


def test_every_control_is_named_and_the_map_zooms_from_the_keyboard(page, base_url):
    open_compare(page, base_url, f"step={T}")
    unnamed = page.evaluate("""() => [...document.querySelectorAll('#panel-compare button, #panel-compare input, #panel-compare [role=radio]')]
        .filter((el) => el.offsetParent !== null)
        .filter((el) => {
          const label = el.getAttribute('aria-label') || el.closest('label')?.textContent || el.textContent;
          return !label || !label.trim();
        }).map((el) => el.outerHTML.slice(0, 80))""")
    assert unnamed == []
    assert "Prompt 1 as circles, Prompt 2 as squares" in page.locator("#trajectory-map .tm-svg").get_attribute("aria-label")
    node = page.locator("#trajectory-map .tm-node.lane-1[data-step='3']")
    before = node.get_attribute("transform")
    page.locator("#trajectory-map .tm-svg").focus()
    page.keyboard.press("+")
    page.wait_for_function("(t) => document.querySelector(\"#trajectory-map .tm-node.lane-1[data-step='3']\")"
                           ".getAttribute('transform') !== t", arg=before)
    page.keyboard.press("0")
    page.wait_for_function("(t) => document.querySelector(\"#trajectory-map .tm-node.lane-1[data-step='3']\")"
                           ".getAttribute('transform') === t", arg=before)


# ---------------------------------------------------------------------- phones


def test_phone_layout_stacks_the_lanes_without_horizontal_scrolling(browser, base_url, shots):
    context = browser.new_context(viewport={"width": 375, "height": 812}, device_scale_factor=2,
                                  is_mobile=True, has_touch=True)
    page = context.new_page()
    problems = watch_errors(page)
    try:
        open_compare(page, base_url)
        page.locator(f"{lane(2)} .lane-decoded[data-frame='3']").wait_for()
        one = page.locator(lane(1)).bounding_box()
        two = page.locator(lane(2)).bounding_box()
        tmap = page.locator("#trajectory-map").bounding_box()
        assert two["y"] >= one["y"] + one["height"] and abs(two["x"] - one["x"]) < 1, (one, two)
        assert tmap["y"] >= two["y"] + two["height"], "the map comes after the lanes"
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.screenshot(path=str(shots / "compare-phone.png"), full_page=True,
                        clip={"x": 0, "y": 0, "width": 375, "height": 2400})
        assert problems == []
    finally:
        context.close()


# ---------------------------------------------------------------------- modules on their own


def test_word_diff_marks_only_the_words_the_other_prompt_lacks(page, base_url):
    page.goto(base_url)
    wait_ready(page)
    result = page.evaluate("""async () => {
      const { wordDiff, splitRanges } = await import('./js/data.js');
      const cases = [
        ['a cute panda playing the guitar in a bamboo forest', 'a cute panda playing the guitar'],
        ['calm winter night, Thomas Kinkade', 'calm winter night, Van Gogh'],
        ['spiderman in space', 'winnie the pooh in space'],
        ['A very very beautiful cityscape', 'a beautiful cityscape'],
      ];
      const words = cases.map(([a, b]) => {
        const [ra, rb] = wordDiff(a, b);
        return [ra.map(([s, e]) => a.slice(s, e)), rb.map(([s, e]) => b.slice(s, e))];
      });
      const spans = splitRanges('spiderman in space', wordDiff('spiderman in space', 'batman in space')[0])
        .map((s) => [s.text, s.highlight]);
      return { words, spans };
    }""")
    assert result["words"] == [
        [["in", "a", "bamboo", "forest"], []],
        [["Thomas", "Kinkade"], ["Van", "Gogh"]],
        [["spiderman"], ["winnie", "the", "pooh"]],
        [["very", "very"], []],
    ]
    assert result["spans"] == [["spiderman", True], [" in space", False]]

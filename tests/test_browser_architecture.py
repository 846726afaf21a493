"""The Architecture View in a real browser (Playwright driving Debian's chromium).

The app is served by `create_app` on a loopback server over the synthetic bundle
(random arrays in the real format: 5 steps, seeds 1 and 2, guidance 0, 1 and 7).
Every test fails on any console error or uncaught exception, CSP violations included.
Screenshots go to NOISEPATH_SCREENSHOT_DIR, or to a pytest temporary folder.
"""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser_helpers import SKIP_REASON, browser_available, wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not browser_available(), reason=SKIP_REASON)]

PROMPT = "a-red-circle-on-the-left-ad3b43dc"   # tests/synthetic_bundle.py, group 0 main
VARIANT = "a-red-square-on-the-left-0cb5c515"
T = 5


VIEWPORT = {"width": 1280, "height": 900}  # the module's browser context (conftest.py)


def query(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def open_app(page, base_url, search: str = "step=2") -> None:
    page.goto(f"{base_url}?{search}" if search else base_url)
    wait_ready(page)


def slider_value(page) -> int:
    return int(page.locator(".tc-slider").input_value())


def visible_frames(page) -> dict[str, str]:
    """Every visible picture: id (or position) -> 'src#frame'."""
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.frame[data-frame]')]
        .filter((el) => el.offsetParent !== null)
        .map((el, i) => [el.id || `frame-${i}`, `${el.dataset.src}#${el.dataset.frame}`]))""")


def visible_numbers(page) -> dict[str, str]:
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('[data-field]')]
        .filter((el) => el.offsetParent !== null)
        .map((el, i) => [`${el.dataset.field}-${i}`, el.textContent]))""")


# ---------------------------------------------------------------------- loading


def test_page_loads_with_no_console_errors(page, base_url, shots):
    open_app(page, base_url)
    assert page.title().startswith("Noisepath")
    assert page.locator("#decoded-frame canvas.frame-canvas").is_visible()
    assert page.locator("#pred-frame[data-frame]").count() == 1
    page.wait_for_function("() => document.querySelectorAll('.article .katex').length >= 5")  # math typeset
    assert page.locator("#prompt-words .token-word").count() == 6
    page.screenshot(path=str(shots / "load-1280.png"), full_page=True)


def test_header_names_the_bundle_and_says_what_it_is(page, base_url):
    open_app(page, base_url)
    about = page.locator(".bundle-about")
    assert about.locator("summary").inner_text() == "Showing: Synthetic test bundle"
    about.locator("summary").click()
    assert about.locator("p").inner_text() == "random arrays, real format"


def test_app_opens_on_the_bundles_default_guidance_scale(page, base_url, synthetic_bundle):
    """Without one, on 7 (the usual Stable Diffusion scale); with the prompt file's
    default_guidance_scale in config.json, on that one."""
    import json

    from precompute.writer import BundleWriter
    from tests.browser_helpers import serve_bundle

    page.goto(base_url)
    wait_ready(page)
    assert query(page)["guidance"] == "7"
    config = json.loads((synthetic_bundle / "config.json").read_text())
    BundleWriter(synthetic_bundle, {**config, "default_guidance_scale": 1.0}).rebuild_index()
    with serve_bundle(synthetic_bundle) as url:
        page.goto(url)
        wait_ready(page)
        assert query(page)["guidance"] == "1"
        assert page.locator("#guidance-choice [aria-checked=true]").inner_text().strip() == "1"
        page.goto("about:blank")  # before this server stops (autoplay keeps fetching)


def test_autoplay_advances_steps(page, base_url):
    page.goto(base_url)
    wait_ready(page)
    assert page.locator(".tc-play").get_attribute("aria-label") == "Pause"
    seen = {slider_value(page)}
    deadline = time.monotonic() + 20  # a generous bound: a busy CPU slows the browser's frames
    while len(seen) < 3 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
        seen.add(slider_value(page))
    assert len(seen) >= 3, f"autoplay showed only steps {seen}"
    assert page.locator("#refiner-cycle").evaluate(
        "el => getComputedStyle(el.querySelector('rect')).animationName") == "march"


def test_a_deep_link_with_a_step_does_not_autoplay(page, base_url):
    open_app(page, base_url, "step=3")
    page.wait_for_timeout(400)
    assert slider_value(page) == 3
    assert page.locator(".tc-play").get_attribute("aria-label") == "Play"


# ---------------------------------------------------------------------- levels


@pytest.mark.parametrize("opener, panel", [
    ("#text-open", "#panel-text"),
    ("#image-open", "#panel-image"),
    (".arrow-guidance [data-panel=guidance]", "#panel-guidance"),
])
def test_every_level_opens_and_closes_with_escape_the_close_button_and_a_click_outside(
        page, base_url, opener, panel):
    open_app(page, base_url)
    button = page.locator(opener)
    for close in ("escape", "button", "outside"):
        button.click()
        expect_open = page.locator(panel)
        expect_open.wait_for(state="visible")
        assert button.get_attribute("aria-expanded") == "true"
        assert panel.removeprefix("#panel-") in query(page)["open"].split(",")
        if close == "escape":
            page.keyboard.press("Escape")
        elif close == "button":
            page.locator(f"{panel} > .panel-header .close").click()
        else:
            page.locator("#article-what p").first.click()
        page.locator(panel).wait_for(state="hidden")
        assert button.get_attribute("aria-expanded") == "false"
        assert "open" not in query(page)


def test_level_three_opens_inside_level_two_and_escape_closes_the_deepest_first(page, base_url, shots):
    open_app(page, base_url)
    page.locator("#text-open").click()
    page.locator("#panel-text .encoder").click()
    page.locator("#panel-clip").wait_for(state="visible")
    assert page.locator("#clip-diagram svg .clip-point").count() == 4
    assert "not computed from the model" in page.locator("#panel-clip").inner_text()
    page.screenshot(path=str(shots / "text-levels.png"), full_page=True)
    page.keyboard.press("Escape")
    page.locator("#panel-clip").wait_for(state="hidden")
    assert page.locator("#panel-text").is_visible()
    page.keyboard.press("Escape")
    page.locator("#panel-text").wait_for(state="hidden")


def test_text_level_shows_real_token_chips_padding_and_vectors_with_hover_values(page, base_url):
    open_app(page, base_url, "step=2&open=text")
    chips = page.locator("#token-chips .chip")
    chips.first.wait_for()
    labels = chips.all_inner_texts()
    assert labels[0] == "start" and labels[-2] == "end", labels
    assert labels[1:7] == ["a", "red", "circle", "on", "the", "left"]
    assert labels[-1] == "end × 69", "padding to 77 is shown collapsed"
    page.locator("#vector-strips .strip-row").first.wait_for()
    assert page.locator("#vector-strips .strip-row").count() == 9   # 8 real tokens + padding
    page.locator("#vector-strips .strip-row .strips").nth(2).hover()
    assert re.search(r"“red”, number \d+: −?-?\d", page.locator("#vector-readout").inner_text())
    page.locator("#compare-empty").check()
    page.locator("#vector-strips .strip-empty:not([hidden])").first.wait_for()
    assert query(page)["vs"] == "empty"
    assert "cos" in page.locator("#vector-strips .strip-cos").first.inner_text()


# ---------------------------------------------------------------------- scrubbing


def test_scrubbing_updates_every_visible_picture_and_number(page, base_url, shots):
    open_app(page, base_url, "step=1&open=image,guidance&token=2")
    page.locator("#pixel-table tbody tr").first.wait_for()
    # every scale's picture drawn, not the first alone (each gets its frame as it loads)
    page.wait_for_function("""() => { const f = document.querySelectorAll('#guidance-sweep .sweep-button .frame');
        return f.length > 0 && [...f].every((el) => el.dataset.frame !== undefined); }""")
    before_frames, before_numbers = visible_frames(page), visible_numbers(page)
    before_table = page.locator("#pixel-table").inner_text()
    before_formula = page.locator("#guidance-formula").inner_text()
    before_overlay = page.locator("#decoded-frame .attention-canvas").evaluate("c => c.toDataURL()")

    page.locator(".tc-slider").fill("3")
    page.wait_for_function("() => document.querySelector('#decoded-frame').dataset.frame === '3'")
    page.wait_for_function("(t) => document.querySelector('#pixel-table').innerText !== t", arg=before_table)
    page.wait_for_function("(t) => document.querySelector('#guidance-formula').innerText !== t",
                           arg=before_formula)
    after_frames, after_numbers = visible_frames(page), visible_numbers(page)

    assert set(after_frames) == set(before_frames)
    unchanged = [k for k in before_frames if before_frames[k] == after_frames[k] and k != "noise-frame"]
    assert unchanged == [], f"pictures that did not follow the step: {unchanged}"
    assert len(after_frames) >= 12  # level 1, the refiner's step and the guidance sweep
    for field in ("step", "timestep", "weaken", "latent-std", "guided-norm", "call-from"):
        keys = [k for k in before_numbers if k.startswith(f"{field}-")]
        assert keys, field
        assert all(before_numbers[k] != after_numbers[k] for k in keys), field
    assert page.locator("#decoded-frame .attention-canvas").evaluate("c => c.toDataURL()") != before_overlay
    assert query(page)["step"] == "3"
    page.screenshot(path=str(shots / "scrub-step3-image-guidance.png"), full_page=True)


def test_keyboard_plays_steps_and_jumps_to_the_ends(page, base_url):
    open_app(page, base_url, "step=2")
    page.locator("body").press("ArrowRight")
    page.wait_for_function("() => document.querySelector('.tc-slider').value === '3'")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("() => document.querySelector('.tc-slider').value === '1'")
    page.keyboard.press("End")
    page.wait_for_function(f"() => document.querySelector('.tc-slider').value === '{T}'")
    page.keyboard.press("Home")
    page.wait_for_function("() => document.querySelector('.tc-slider').value === '0'")
    assert page.locator("#pred-note-start").is_visible(), "step 0 explains that nothing is predicted yet"
    page.keyboard.press(" ")
    page.wait_for_function("() => document.querySelector('.tc-play').getAttribute('aria-label') === 'Pause'")
    page.wait_for_function("() => document.querySelector('.tc-slider').value !== '0'")
    page.keyboard.press(" ")
    page.wait_for_function("() => document.querySelector('.tc-play').getAttribute('aria-label') === 'Play'")


def test_step_buttons_pause_playback(page, base_url):
    page.goto(base_url)
    wait_ready(page)
    page.locator(".tc-back").click()
    # the controller redraws on the next animation frame (main.js schedule), not in the click
    page.wait_for_function("() => document.querySelector('.tc-play').getAttribute('aria-label') === 'Play'",
                           timeout=2000)
    value = slider_value(page)
    page.wait_for_timeout(400)
    assert slider_value(page) == value


# ---------------------------------------------------------------------- attention


def test_clicking_a_token_shows_its_attention_and_hovering_a_pixel_lists_tokens(page, base_url, shots):
    open_app(page, base_url, "step=2")
    assert page.locator("#attention-controls").is_hidden()
    page.locator("#prompt-words .token-word", has_text="circle").click()
    page.locator("#decoded-frame.has-attention").wait_for()
    assert query(page)["token"] == "3"
    assert "circle" in page.locator("#attention-controls .ac-title").inner_text()
    assert page.locator("#prompt-words .token-word", has_text="circle").get_attribute("aria-pressed") == "true"
    combined = page.locator("#decoded-frame .attention-canvas").evaluate("c => [c.width, c.toDataURL()]")
    assert combined[0] == 8
    options = page.locator("#attention-controls .ac-res-select option").all_inner_texts()
    # the combined map is the 8x8 level's (combined.from): listed once, named
    assert options == ["combined (8×8)", "4 × 4 level"]

    page.locator("#attention-controls .ac-res-select").select_option("4")
    page.wait_for_function("() => document.querySelector('#decoded-frame .attention-canvas').width === 4")
    assert query(page)["res"] == "4"
    page.locator("#attention-controls .ac-avg-input").check()
    page.wait_for_function("() => new URLSearchParams(location.search).get('avg') === '1'")

    box = page.locator("#decoded-frame").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6)
    page.locator("#attention-hover li").first.wait_for()   # floats over the page
    assert 1 <= page.locator("#attention-hover li").count() <= 5
    page.screenshot(path=str(shots / "attention.png"))

    # a token chip in the text level selects a token too; a second click clears it
    page.locator("#text-open").click()
    page.locator("#token-chips .chip", has_text="left").click()
    page.wait_for_function("() => new URLSearchParams(location.search).get('token') === '6'")
    page.locator("#token-chips .chip", has_text="left").click()
    page.wait_for_function("() => !new URLSearchParams(location.search).has('token')")
    page.locator("#decoded-frame:not(.has-attention)").wait_for()


def test_at_guidance_zero_attention_is_explained_instead_of_shown(page, base_url):
    open_app(page, base_url, f"prompt={PROMPT}&guidance=0&step=2&token=2")
    assert "guidance 0" in page.locator("#attention-controls .ac-note").inner_text()
    assert page.locator("#decoded-frame.has-attention").count() == 0


# ---------------------------------------------------------------------- choices


def test_changing_guidance_seed_and_prompt_updates_everything(page, base_url, shots):
    open_app(page, base_url, f"prompt={PROMPT}&seed=1&guidance=7&step=2&open=image")
    page.locator("#step-guided[data-frame]").wait_for()
    runs = [page.locator("#viz").get_attribute("data-run")]
    frames = [visible_frames(page)]

    def choose(selector):
        page.locator(selector).click()
        page.wait_for_function("(r) => document.querySelector('#viz').dataset.run !== r", arg=runs[-1])
        wait_ready(page)
        page.wait_for_function("""() => [...document.querySelectorAll('.frame[data-frame]')]
            .every((el) => el.offsetParent === null || !el.classList.contains('is-loading'))""")
        # a frame can still show the last run's picture before it starts loading its new
        # one (seen on a busy machine): give every frame but the noise time to change
        page.wait_for_function("""(before) => [...document.querySelectorAll('.frame[data-frame]')]
            .filter((el) => el.offsetParent !== null && el.id && el.id !== 'noise-frame')
            .every((el) => before[el.id] !== `${el.dataset.src}#${el.dataset.frame}`)""",
                               arg=frames[-1], timeout=10_000)
        runs.append(page.locator("#viz").get_attribute("data-run"))
        frames.append(visible_frames(page))

    choose("#seed-choice [aria-label='Seed 2']")
    assert runs[-1] == f"{PROMPT}--s2-g7" and query(page)["seed"] == "2"
    choose("#guidance-choice [aria-label='Guidance scale 0']")
    assert runs[-1] == "empty--s2-g0"
    assert page.locator("#missing-text").is_visible() and page.locator("#branch-text").is_hidden()
    page.screenshot(path=str(shots / "guidance-0.png"), full_page=True)
    choose("#guidance-choice [aria-label='Guidance scale 1']")
    assert runs[-1] == f"{PROMPT}--s2-g1"
    assert page.locator("#missing-uncond").is_visible() and page.locator("#branch-uncond").is_hidden()
    page.locator("#prompt-picker .picker-button").click()
    choose(f"#prompt-picker [role=option][data-id='{VARIANT}']")
    assert runs[-1] == f"{VARIANT}--s2-g1" and query(page)["prompt"] == VARIANT
    assert page.locator("#prompt-words").inner_text() == "a red square on the left"

    for a, b in zip(frames, frames[1:]):
        same = [k for k in a if a[k] == b.get(k)]
        # the shared guidance-0 run keeps the same noise preview; the rest must change
        assert all(k == "noise-frame" for k in same), same


def test_hovering_an_option_previews_it_without_committing(page, base_url):
    open_app(page, base_url, f"prompt={PROMPT}&seed=1&guidance=7&step=2")
    url = page.url
    page.locator("#seed-choice [aria-label='Seed 2']").hover()
    page.wait_for_function("() => document.querySelector('#viz').dataset.run.endsWith('--s2-g7')")
    page.wait_for_function("() => document.querySelector('#decoded-frame').dataset.src.includes('--s2-g7')")
    assert page.url == url
    page.locator("#article-what").hover()
    page.wait_for_function("() => document.querySelector('#viz').dataset.run.endsWith('--s1-g7')")

    page.locator("#prompt-picker .picker-button").click()
    page.locator(f"#prompt-picker [role=option][data-id='{VARIANT}']").hover()
    page.wait_for_function("(v) => document.querySelector('#viz').dataset.run.startsWith(v)", arg=VARIANT)
    page.keyboard.press("Escape")
    page.wait_for_function("(p) => document.querySelector('#viz').dataset.run.startsWith(p)", arg=PROMPT)
    assert page.url == url


def test_guidance_level_snaps_to_the_bundle_scales_and_shows_the_formula(page, base_url, shots):
    open_app(page, base_url, f"prompt={PROMPT}&step=2&open=guidance")
    stops = page.locator("#guidance-slider .gs-stop")
    assert stops.all_inner_texts() == ["0", "1", "7"]
    page.locator("#guidance-formula .katex").wait_for()
    assert "×" in page.locator("#guidance-formula").inner_text()
    page.locator("#guidance-slider .gs-range").fill("5.2")   # snaps to the nearest scale
    page.wait_for_function("() => new URLSearchParams(location.search).get('guidance') === '7'")
    page.locator("#guidance-slider .gs-range").fill("0.4")
    page.wait_for_function("() => new URLSearchParams(location.search).get('guidance') === '0'")
    page.locator("#guidance-note-0").wait_for()   # drawn on the next frame after the URL changes
    # the step's numbers for the guidance-0 run arrive after the switch: wait for them
    page.wait_for_function("() => document.querySelector('#guidance-formula').innerText"
                           ".replace(/\\u00a0/g, ' ').includes('not run')")
    assert page.locator("#guidance-sweep .sweep-item").count() == 3
    page.screenshot(path=str(shots / "guidance-level.png"), full_page=True)


# ---------------------------------------------------------------------- the URL


def test_a_deep_link_restores_the_state(page, base_url):
    search = f"prompt={VARIANT}&seed=2&guidance=1&step=4&open=image,guidance&token=3&res=4&vs=empty&channel=2"
    open_app(page, base_url, search)
    assert slider_value(page) == 4
    assert page.locator("#seed-choice [aria-checked=true]").inner_text() == "2"
    assert page.locator("#guidance-choice [aria-checked=true]").inner_text() == "1"
    assert page.locator("#panel-image").is_visible() and page.locator("#panel-guidance").is_visible()
    assert page.locator("#panel-text").is_hidden()
    assert page.locator("#prompt-words .token-word[aria-pressed=true]").inner_text() == "square"
    assert page.locator("#attention-controls .ac-res-select").input_value() == "4"
    assert page.locator("#guidance-channel-choice [aria-checked=true]").inner_text() == "2"
    assert page.locator("#viz").get_attribute("data-run") == f"{VARIANT}--s2-g1"
    restored = query(page)
    for key, value in parse_qs(search).items():
        assert restored[key] == value[0], key


def test_back_and_forward_restore_earlier_choices(page, base_url):
    open_app(page, base_url, f"prompt={PROMPT}&seed=1&guidance=7&step=2")
    page.locator("#seed-choice [aria-label='Seed 2']").click()
    page.locator("#guidance-choice [aria-label='Guidance scale 1']").click()
    page.locator("#image-open").click()
    page.wait_for_function("() => location.search.includes('open=image')")
    page.go_back()
    page.locator("#panel-image").wait_for(state="hidden")
    page.go_back()
    page.wait_for_function("() => document.querySelector('#viz').dataset.run.endsWith('--s2-g7')")
    page.go_back()
    page.wait_for_function("() => document.querySelector('#viz').dataset.run.endsWith('--s1-g7')")
    assert page.locator("#seed-choice [aria-checked=true]").inner_text() == "1"
    page.go_forward()
    page.wait_for_function("() => document.querySelector('#viz').dataset.run.endsWith('--s2-g7')")
    assert page.locator("#seed-choice [aria-checked=true]").inner_text() == "2"


def test_comparison_entry_point_opens_two_lanes_from_the_same_noise(page, base_url):
    open_app(page, base_url, f"prompt={PROMPT}&step=3")
    page.locator("#compare-open").click()
    page.locator("#panel-compare").wait_for()
    assert query(page)["compare"] == VARIANT
    page.locator("#compare-lanes .lane .frame[data-frame='3']").nth(1).wait_for()
    page.keyboard.press("Escape")
    page.locator("#panel-compare").wait_for(state="hidden")


# ---------------------------------------------------------------------- layout and access


def test_phone_layout_has_no_horizontal_scrolling(browser, base_url, shots):
    context = browser.new_context(viewport={"width": 375, "height": 812}, device_scale_factor=2,
                                  is_mobile=True, has_touch=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{base_url}?step=3&token=2&open=text,clip")
        wait_ready(page)
        page.locator("#vector-strips .strip-row").first.wait_for()
        widths = [page.evaluate("document.documentElement.scrollWidth")]
        page.screenshot(path=str(shots / "phone-text.png"), full_page=True)
        page.locator("#image-open").click()
        page.locator("[data-panel=guidance]").first.click()
        page.locator("#pixel-table tbody tr").first.wait_for()
        widths.append(page.evaluate("document.documentElement.scrollWidth"))
        page.screenshot(path=str(shots / "phone-image.png"), full_page=True)
        assert max(widths) <= 375, widths
        assert errors == []
    finally:
        context.close()


def test_controls_have_accessible_names_and_focus_is_visible(page, base_url):
    open_app(page, base_url)
    unnamed = page.evaluate("""() => [...document.querySelectorAll('button, input, select, [role=radio]')]
        .filter((el) => el.offsetParent !== null)
        .filter((el) => {
          const label = el.getAttribute('aria-label') || el.labels?.[0]?.textContent || el.textContent;
          return !label || !label.trim();
        }).map((el) => el.outerHTML.slice(0, 80))""")
    assert unnamed == []
    page.keyboard.press("Tab")   # the skip link
    page.keyboard.press("Tab")
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"


def test_presentation_mode_enlarges_type_and_is_in_the_url(page, base_url, shots):
    open_app(page, base_url)
    size = page.evaluate("() => parseFloat(getComputedStyle(document.body).fontSize)")
    page.locator("body").press("p")
    page.wait_for_function("() => document.documentElement.classList.contains('presenting')")
    assert page.evaluate("() => parseFloat(getComputedStyle(document.body).fontSize)") > size
    assert query(page)["present"] == "1"
    page.screenshot(path=str(shots / "presentation.png"))
    page.locator("#present-toggle").click()
    page.wait_for_function("() => !document.documentElement.classList.contains('presenting')")


def test_info_buttons_jump_to_their_article_section(page, base_url):
    open_app(page, base_url)
    page.locator("[data-article=decoder]").first.click()
    page.wait_for_function("() => document.activeElement.closest('#article-decoder') !== null")


# ---------------------------------------------------------------------- modules on their own


def test_token_chips_show_word_pieces_padding_and_what_truncation_cut(page, base_url):
    """The text view's chart and helpers, called on their own with a too-long prompt."""
    open_app(page, base_url)
    result = page.evaluate("""async () => {
      const { d3 } = await import('./js/lib.js');
      const { tokenList, alignTokens } = await import('./js/data.js');
      const { tokenChips } = await import('./js/views/text-panel.js');
      const pieces = ['<|startoftext|>', 'an</w>', 'adora', 'ble</w>', 'bunny</w>'];
      while (pieces.length < 76) pieces.push('very</w>');
      pieces.push('<|endoftext|>');
      const prompt = { text: 'an adorable bunny very very', tokens: {
        input_ids: pieces.map((_, i) => i), pieces, n_real: 77, truncated: true,
        dropped_pieces: ['cute</w>', 'flowers</w>'] } };
      const tokens = tokenList(prompt);
      const host = d3.select('body').append('div').attr('id', 'chips-under-test');
      host.datum({ ...tokens, selected: 2 }).call(tokenChips());
      const chips = [...host.node().querySelectorAll('.chip')];
      return {
        padding: tokens.padding,
        continues: tokens.real.filter((t) => t.continues).map((t) => t.label),
        spans: alignTokens(prompt.text, tokens.real.slice(0, 6)).map((s) => [s.text, s.k]),
        dropped: chips.filter((c) => c.classList.contains('chip-dropped')).map((c) => c.textContent),
        selected: chips.filter((c) => c.getAttribute('aria-pressed') === 'true').map((c) => c.textContent),
        count: chips.length,
      };
    }""")
    assert result["padding"] == 0
    assert result["continues"] == ["adora"]
    assert result["spans"][:5] == [["an", 1], [" ", None], ["adora", 2], ["ble", 3], [" ", None]]
    assert result["dropped"] == ["cute", "flowers"]
    assert result["selected"] == ["adora"]
    assert result["count"] == 77 + 2


def test_state_round_trips_through_the_url_and_normalizes_bad_values(page, base_url):
    open_app(page, base_url)
    result = page.evaluate("""async () => {
      const { normalize, toSearch, fromSearch } = await import('./js/state.js');
      const index = await (await fetch('api/index.json')).json();
      const s = normalize(index, { prompt: 'nope', seed: 99, guidance: 7, step: 999, open: ['clip', 'bogus'],
                                   token: 3, res: 4, speed: 5 });
      const back = normalize(index, fromSearch(toSearch(index, s)));
      return { s, same: JSON.stringify(back) === JSON.stringify(s) };
    }""")
    s = result["s"]
    assert result["same"]
    assert s["prompt"] == PROMPT and s["seed"] == 1 and s["step"] == T
    assert s["open"] == [], "a level-3 panel needs its level-2 panel"
    assert s["token"] == 3 and s["res"] == 4 and s["speed"] == 5

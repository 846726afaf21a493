"""The page's words follow the bundle's model, and a seed's noise looks the same in every
run (Playwright driving Debian's chromium). The shipped demo (v-prediction, DDIM, its own
tokenizer, trained with noisepath) against the synthetic bundle (epsilon, Euler, no
model facts): each page says what is true for its model, its symbols typeset (no TeX
shown raw). Screenshots go to NOISEPATH_SCREENSHOT_DIR, or to a pytest temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser_helpers import SKIP_REASON, browser_available, serve_bundle, wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not browser_available(), reason=SKIP_REASON)]

DEMO = Path(__file__).resolve().parent.parent / "static" / "demo-bundle"


@pytest.fixture(scope="module")
def demo_url():
    with serve_bundle(DEMO) as url:
        yield url


VIEWPORT = {"width": 1440, "height": 900}  # the module's browser context (conftest.py)


def typeset(page) -> None:
    page.wait_for_function("() => document.querySelectorAll('.article .katex').length >= 5")


def tex(page, key: str) -> str:
    """The TeX source a model-dependent formula was typeset from."""
    return page.locator(f'[data-wording="{key}"]').first.get_attribute("data-tex")


def noise_pixels(page) -> list[int]:
    """The RGBA pixels of the "Random noise at step 0" picture as drawn."""
    page.wait_for_selector("#noise-frame[data-frame='0']")
    return page.evaluate("""() => { const c = document.querySelector('#noise-frame canvas');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""")


def test_demo_page_speaks_of_v_ddim_and_its_own_tokenizer(page, demo_url, shots):
    page.goto(f"{demo_url}?step=10&guidance=3&open=image")
    wait_ready(page, 60_000)
    typeset(page)
    assert page.locator("#step-uncond + figcaption").inner_text().startswith("v predicted for the empty prompt")
    assert page.locator("#step-guided + figcaption").inner_text().startswith("Guided v")
    assert "rescaling" in page.locator("#pixel-table .row-leftover th").inner_text()
    assert page.locator("#pixel-table .row-rescale").count() == 1
    assert tex(page, "x0-formula") == "\\hat x_0 = \\sqrt{\\bar\\alpha_t}\\,x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\hat v"
    assert tex(page, "training-loss").startswith("\\text{loss} = \\lVert v - v_\\theta")
    article = page.locator("#article").inner_text()
    assert "598 byte-pair pieces" in article and "49,000" not in article
    assert "not trained as CLIP" in article and "rising to 0.11 at the last" in article
    assert "Early steps remove a lot" not in article and "8 bits" in article
    why = page.locator("#article-why-shapes")
    assert why.is_visible() and "trained from scratch" in why.inner_text()
    assert page.locator(".tagline a[href='#article-why-shapes']").is_visible()
    page.screenshot(path=str(shots / "wording-demo-1440.png"), full_page=True)


def test_synthetic_epsilon_page_says_noise_and_hides_the_demo_text(page, base_url):
    page.goto(f"{base_url}?step=2&guidance=7&open=image")
    wait_ready(page)
    typeset(page)
    assert page.locator("#step-uncond + figcaption").inner_text().startswith("Noise predicted for the empty prompt")
    assert page.locator("#step-guided + figcaption").inner_text().startswith("Guided noise")
    assert tex(page, "x0-formula") == "\\hat x_0 = x - \\sigma\\,\\hat\\epsilon"  # Euler: sigma-scaled
    assert tex(page, "weaken-formula") == "w = \\sigma_s - \\sigma_{s+1}"
    assert not page.locator("#article-why-shapes").is_visible()
    assert not page.locator(".tagline a[href='#article-why-shapes']").is_visible()
    assert "text half of CLIP, a model trained on image" in page.locator("#article-clip").inner_text()


# Visible text outside KaTeX that reads as TeX or as a subscript written out: a TeX command,
# "_{" or "^{", a letter with "_" and an index (σ_s, x_0; not an identifier such as
# guidance_rescale), or x0 / x̂0. The same pattern as tests/test_wording.py's TEX_LEAK.
TEX_LEAKS = r"""() => {
  const leak = /\\[A-Za-z]+|[_^]\{|(?<![\p{L}\p{N}_])\p{L}\p{M}*_[\p{L}\p{N}]|(?<![\p{L}\p{N}_])[xz]\p{M}*\d(?![\p{L}\p{N}])/u;
  const found = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walk.nextNode(); node; node = walk.nextNode()) {
    const el = node.parentElement;
    if (el.closest(".katex, script, style") || !el.checkVisibility()) continue;
    const match = node.textContent.match(leak);
    if (match) found.push(`${match[0]} in: ${node.textContent.trim().slice(0, 120)}`);
  }
  return found;
}"""


def test_no_tex_reaches_the_page_as_plain_text(page, demo_url, base_url):
    """Every level open (the refiner's numbers, guidance, text, CLIP) and the article, on
    the demo (v, DDIM) and the synthetic bundle (epsilon, Euler): each symbol the words
    use (the step's sigmas and alpha-bars, x-hat-0) is typeset, none shows as raw TeX."""
    for url, run in ((demo_url, "step=10&guidance=3"), (base_url, "step=2&guidance=7")):
        page.goto(f"{url}?{run}&open=image,guidance,text,clip")
        wait_ready(page, 60_000)
        typeset(page)
        page.wait_for_function("() => document.querySelector('.scheduler-numbers').textContent !== ''")
        page.wait_for_function("() => !document.querySelector('.tex:not([data-tex])')")
        assert page.evaluate(TEX_LEAKS) == [], url


def test_a_seeds_noise_is_drawn_the_same_for_every_prompt_and_guidance(page, demo_url):
    """One latent -> RGB map per model: step 0 (the same x_T) gives the same pixels."""
    index = page.request.get(f"{demo_url}api/index.json").json()
    prompts = [p for g in index["groups"][:2] for p in g["prompts"]]
    drawn = {}
    for pid, g in [(prompts[0], 3), (prompts[1], 7), (prompts[2], 1), (prompts[3], 0)]:
        page.goto(f"{demo_url}?prompt={pid}&seed=2&guidance={g}&step=5")
        wait_ready(page, 60_000)
        drawn[(pid, g)] = noise_pixels(page)
    first = next(iter(drawn.values()))
    assert len(set(map(tuple, drawn.values()))) == 1, list(drawn)
    assert len(set(first)) > 20  # a real picture, not a blank canvas
    page.goto(f"{demo_url}?prompt={prompts[0]}&seed=3&guidance=3&step=5")
    wait_ready(page, 60_000)
    assert noise_pixels(page) != first  # another seed, other noise


def test_step_0_levels_say_there_is_no_call_and_signs_are_minus_signs(page, demo_url):
    """Step 0 is the starting noise: the refiner's level names no "step 0 → 0" call and
    promises no numbers that will never load, and the guidance formula says why it has
    none; at a later step the formula's stored number carries a minus sign like the
    formula's own numbers, not a hyphen."""
    page.goto(f"{demo_url}?step=0&guidance=3&open=image,guidance")
    wait_ready(page, 60_000)
    page.wait_for_function("() => document.querySelector('#guidance-formula .katex')")
    title = page.locator("#panel-image-title").inner_text()
    assert "0 → 0" not in title and "starting noise" in title, title
    numbers = page.locator("#pixel-numbers").inner_text()
    assert "have loaded" not in numbers and "Step 0 has none" in numbers, numbers
    formula = page.locator("#guidance-formula").get_attribute("aria-label")
    assert "loading" not in formula and "step 0" in formula, formula
    page.goto(f"{demo_url}?step=20&guidance=3&open=guidance&channel=0")
    wait_ready(page, 60_000)
    page.wait_for_function("() => document.querySelector('#guidance-formula').textContent.includes('stored')")
    shown = page.locator("#guidance-formula .katex-html").inner_text()
    assert "stored:" in shown and "\u2212" in shown.split("stored:")[1], shown  # a negative value
    assert "-" not in shown, shown

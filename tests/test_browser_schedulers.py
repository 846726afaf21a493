"""The page explains the scheduler a bundle was made with (issue 19), Playwright driving
Debian's chromium on two small bundles written by the real writer (random arrays, as
tests/synthetic_bundle.py does): Euler ancestral with a negative prompt and
guidance_rescale (stochastic: each step's noise draw and factor recorded), and Heun
(5 UNet calls for 3 scheduler steps). Screenshots go to NOISEPATH_SCREENSHOT_DIR, or to
a pytest temporary folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from precompute.writer import BundleWriter, prompt_id, run_id
from tests.browser_helpers import SKIP_REASON, browser_available, serve_bundle, wait_ready
from tests.synthetic_bundle import _frames, _tokens

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not browser_available(), reason=SKIP_REASON)]

PROMPTS = ("a red circle on the left", "a red square on the left")
NEGATIVE = "blurry, low quality"
LATENT, IMAGE, C, SEED = 8, 16, 4, 1
HEUN_STEP_INDEX = [0, 0, 1, 1, 2]  # two calls per step, the last step one (it ends at sigma 0)
# an LMS run's split of each step (precompute/multistep.py): this call's share, earlier calls'
LMS_MULTISTEP = {"current": [1.0, 1.62, 1.9, 2.25], "history": [[], [-0.62], [-1.2, 0.3], [-1.7, 0.55, -0.1]],
                 "history_calls": [0, 1, 2, 3]}


def make_scheduler_bundle(root: Path, scheduler: str) -> Path:
    """A bundle of one prompt pair at guidance 0 and 7, made with `scheduler`: "euler_a"
    (4 steps, noise_scale and variance_noise, negative prompt, guidance_rescale 0.7) or
    "heun" (3 steps, 5 calls, step_index), or "lms" (4 steps, scheduler.multistep)."""
    rng = np.random.default_rng(0)
    heun, lms = scheduler == "heun", scheduler == "lms"
    steps, calls = (3, 5) if heun else (4, 4)
    config = {"storage": "full", "title": f"{scheduler} test bundle", "description": "random arrays",
              "model": "synthetic", "scheduler": scheduler, "num_inference_steps": steps,
              "height": LATENT * 8, "width": LATENT * 8, "dtype": "float32", "image_size": IMAGE,
              "latent_shape": [C, LATENT, LATENT], "prediction_type": "epsilon",
              "model_info": {"cross_attention_dim": 8}, "scheduler_config": {}}
    if heun:
        config["num_timesteps"] = calls
    elif not lms:
        config["guidance_rescale"] = 0.7
    writer = BundleWriter(root, config)
    negative = "" if heun or lms else NEGATIVE
    for text in dict.fromkeys(["", negative, *PROMPTS]):
        writer.write_prompt(text, _tokens(text), rng.standard_normal((77, 8)))
    writer.write_group({"id": "group-0", "title": PROMPTS[0], "prompts": [prompt_id(t) for t in PROMPTS],
                        "highlights": {}})
    nid = prompt_id(negative)
    for g in (0, 7):
        for text in ([negative] if g == 0 else PROMPTS):
            _write_run(writer, rng, text, g, nid, calls, heun, LMS_MULTISTEP if lms else None)
    coords = {rid: rng.standard_normal((calls + 1, 2)) for rid in writer.rebuild_index()["runs"]}
    writer.write_trajectories(SEED, "pca", coords)
    writer.rebuild_index()
    return root


def _write_run(writer, rng, text, g, nid, calls, heun, multistep=None):
    draw = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    arrays = {"latents": draw(calls + 1, C, LATENT, LATENT), "pred_original_sample": draw(calls, C, LATENT, LATENT),
              "noise_pred_uncond": draw(calls, C, LATENT, LATENT)}
    if g:
        arrays["noise_pred_text"] = draw(calls, C, LATENT, LATENT)
    arrays["noise_pred"] = arrays["noise_pred_uncond"] if not g else draw(calls, C, LATENT, LATENT)
    sigmas = [14.6, 3.0, 3.0, 0.5, 0.5] if heun else [14.6, 4.0, 1.2, 0.3]
    sched = {"name": "heun" if heun else "euler_a", "timesteps": np.linspace(999, 0, calls).tolist(),
             "sigmas": sigmas, "alphas_cumprod": [1 / (1 + s * s) for s in sigmas],
             "weaken": np.linspace(2.0, 0.2, calls).tolist(),
             "step_index": HEUN_STEP_INDEX if heun else list(range(calls)),
             "pred_original_sample": "step"}
    manifest = {"run_id": run_id(prompt_id(text) if g else "empty", SEED, g, nid), "prompt_id": prompt_id(text),
                "seed": SEED, "guidance_scale": float(g), "num_inference_steps": 3 if heun else calls,
                "scheduler": sched, "attention": None,
                "latent_preview": {"matrix": rng.standard_normal((C, 3)).round(6).tolist(), "bias": [0.5] * 3}}
    if multistep:
        sched.update(name="lms", multistep=multistep)
    elif not heun:
        sched["noise_scale"] = [3.9, 1.15, 0.29, 0.0]
        arrays["variance_noise"] = draw(calls, C, LATENT, LATENT)
        manifest["negative_prompt_id"] = nid
        if g > 1:
            manifest["guidance_rescale"] = 0.7
            manifest["guidance_rescale_std_ratio"] = np.linspace(0.9, 0.6, calls).tolist()
    images = {"decoded": (_frames(rng, calls + 1, IMAGE), "webp"),
              "pred_original_sample": (_frames(rng, calls, IMAGE), "webp")}
    writer.write_run(manifest, arrays, images)


@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedulers")
    with serve_bundle(make_scheduler_bundle(root / "euler_a", "euler_a")) as euler_a, \
            serve_bundle(make_scheduler_bundle(root / "heun", "heun")) as heun, \
            serve_bundle(make_scheduler_bundle(root / "lms", "lms")) as lms:
        yield {"euler_a": euler_a, "heun": heun, "lms": lms}


def tex(page, key: str) -> str:
    return page.locator(f'[data-wording="{key}"]').first.get_attribute("data-tex")


def prose(page, selector: str) -> str:
    """An element's text with its inline math as `$TeX$` (how the words are written)."""
    return page.evaluate("""(selector) => { const copy = document.querySelector(selector).cloneNode(true);
        copy.querySelectorAll('.tex').forEach((t) => t.replaceWith(`$${t.dataset.tex ?? t.textContent}$`));
        return copy.textContent; }""", selector)


def typeset(page) -> None:
    page.wait_for_function("() => document.querySelectorAll('.article .katex').length >= 5")


def test_euler_a_page_shows_the_ancestral_step_its_noise_and_the_negative_prompt(page, urls, shots):
    page.goto(f"{urls['euler_a']}?step=2&guidance=7&open=image,guidance")
    wait_ready(page)
    typeset(page)
    assert "\\sigma_{\\uparrow}\\,z_s" in tex(page, "scheduler-step")
    article = page.locator("#article-scheduler").inner_text()
    assert "Euler ancestral" in article and "stochastic" in article
    # the step's numbers: sigma_up from sigmas 4.0 -> 1.2, and the noise factor it recorded
    numbers = prose(page, ".scheduler-numbers")
    up = "$\\sigma_{\\uparrow}$"
    assert "$\\sigma_s$ = 4.000" in numbers and f"{up} = 1.145" in numbers
    assert f"noise added: $\\sigma_{{\\uparrow}} \\times z$ with {up} = 1.150" in numbers
    assert "size $\\lvert \\sigma_{\\uparrow}\\, z \\rvert$" in numbers
    assert page.locator("#pixel-table .row-noise").count() == 1
    # the added noise drawn from the run's variance_noise: a picture, not a blank canvas
    page.wait_for_function("() => document.querySelector('#step-noise canvas')")
    pixels = page.evaluate("""() => { const c = document.querySelector('#step-noise canvas');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""")
    assert len(pixels) == 4 * LATENT * LATENT and len(set(pixels)) > 20
    assert page.locator("#step-uncond + figcaption").inner_text().startswith(f"Noise predicted for the negative prompt: “{NEGATIVE}”")
    # guidance_rescale: named with phi in the article and the guidance view, with this step's factor
    assert "guidance_rescale φ = 0.7 (Lin et al. 2023" in page.locator("#article-guidance").inner_text()
    note = page.locator("#panel-guidance [data-field='rescale-note']").inner_text()
    assert note.startswith("guidance_rescale φ = 0.7") and "scaled by φ × 0.8 + (1 − φ) = 0.86" in note
    assert "negative prompt" in page.locator("#panel-guidance").inner_text()
    assert page.locator("#guidance-formula-negative").is_visible() and not page.locator("#guidance-formula-empty").is_visible()
    assert "\\text{negative}" in tex(page, "guidance-panel-formula-negative")
    page.screenshot(path=str(shots / "schedulers-euler-a-1366.png"), full_page=True)


def test_heun_page_counts_unet_calls_and_scheduler_steps(page, urls, shots):
    page.goto(f"{urls['heun']}?step=2&guidance=7&open=image")
    wait_ready(page)
    typeset(page)
    assert "\\text{call 2: }" in tex(page, "scheduler-step")
    assert page.locator(".tc-step").inner_text() == "call 2 / 5 · step 1 / 3"
    note = page.locator("#panel-image .call-note")
    assert note.is_visible() and note.inner_text().startswith("UNet call 2 of 5 (scheduler step 1 of 3, its 2nd call of 2).")
    assert "5 calls for 3 steps" in page.locator("#article-scheduler").inner_text()
    assert "the Heun scheduler and 3 steps" in page.locator("#article-what").inner_text()
    page.keyboard.press("End")
    page.wait_for_function("() => document.querySelector('.tc-step').textContent === 'call 5 / 5 · step 3 / 3'")
    assert page.locator("#panel-image .call-note").inner_text().startswith("UNet call 5 of 5 (scheduler step 3 of 3).")
    page.screenshot(path=str(shots / "schedulers-heun-1366.png"), full_page=True)


@pytest.mark.parametrize("width,height", [(390, 844), (1920, 1080)])
def test_scheduler_texts_fit_phone_and_projector(browser, urls, shots, width, height):
    """The new notes wrap inside the panel at phone and projector widths (no sideways scroll)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    try:
        page.goto(f"{urls['heun']}?step=3&guidance=7&open=image")
        wait_ready(page)
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
        page.locator("#panel-image").screenshot(path=str(shots / f"schedulers-heun-{width}.png"))
        page.goto(f"{urls['euler_a']}?step=2&guidance=7&open=image")
        wait_ready(page)
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
        page.locator("#pixel-table .row-leftover td").first.wait_for()
        assert table_fits(page), "the step's number table is wider than its panel"
        page.locator("#panel-image").screenshot(path=str(shots / f"schedulers-euler-a-{width}.png"))
    finally:
        context.close()


def table_fits(page) -> bool:
    """The refiner's number table (4 channels) fits its scroll box: no hidden columns."""
    return page.evaluate("""() => { const box = document.querySelector('#pixel-numbers .table-scroll');
        return box.scrollWidth <= box.clientWidth + 1; }""")


LMS_STEP_3 = ("This step: 190% from this call's prediction, \u221290% from the previous 2 calls' predictions "
              "(newest first: \u2212120%, 30%). LMS extrapolates: it takes more than all of this call's prediction "
              "and subtracts part of the earlier ones, continuing the trend of its predictions.")


def test_a_multistep_step_says_what_earlier_calls_contribute(browser, urls, shots):
    """LMS (scheduler.multistep): the step view words this call's and the earlier calls'
    shares of the step, draws one bar each, and fits the panel at laptop, phone and
    projector widths (one page, resized); the API serves the split per step."""
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    try:
        page.goto(f"{urls['lms']}?step=3&guidance=7&open=image")
        wait_ready(page)
        history = page.locator("#step-history")
        assert history.locator(".history-text").inner_text() == LMS_STEP_3
        assert history.locator("g.bar").count() == 3
        assert history.locator("g.bar .bar-value").all_text_contents() == ["190%", "\u2212120%", "30%"]
        assert "LMS is a multistep solver" in page.locator("#article-scheduler").inner_text()
        page.locator("#pixel-table .row-leftover td").first.wait_for()
        for width, height in ((1366, 768), (390, 844), (1920, 1080)):
            page.set_viewport_size({"width": width, "height": height})
            assert table_fits(page) and page.evaluate(
                "() => document.documentElement.scrollWidth <= window.innerWidth + 1"), width
            box, panel = history.bounding_box(), page.locator("#panel-image").bounding_box()
            assert box["x"] >= panel["x"] and box["x"] + box["width"] <= panel["x"] + panel["width"] + 1
            page.locator("#pixel-numbers").screenshot(path=str(shots / f"schedulers-lms-history-{width}.png"))
        lookup = page.request.get(f"{urls['lms']}api/index.json").json()["run_lookup"]
        rid = lookup[prompt_id(PROMPTS[0])][str(SEED)]["7"]
        step = page.request.get(f"{urls['lms']}api/runs/{rid}/steps/2.json").json()
        assert step["multistep"] == {"current": 1.9, "history": [-1.2, 0.3], "history_calls": 2}
        page.keyboard.press("Home")  # call 1: no earlier call yet
        page.keyboard.press("ArrowRight")
        page.wait_for_function("() => document.querySelector('#step-history .history-text').textContent"
                               ".includes('no earlier call')")
        assert history.locator("g.bar").count() == 1
    finally:
        context.close()


# -- a real precomputed bundle (the tiny random SD pipeline of tests/tiny_sd.py) ------------

@pytest.fixture(scope="module")
def precomputed(tmp_path_factory):
    """Tiny SD 1.5-shaped bundles precomputed with euler_a (a negative prompt,
    guidance_rescale 0.7) and heun, 3 steps at 16 x 16 px on the CPU; served."""
    pytest.importorskip("diffusers", reason="needs the [precompute] extra")
    import io

    from precompute.prompts import single_prompt_set
    from precompute.run import Options, precompute
    from tests.tiny_sd import tiny_pipeline_path

    root = tmp_path_factory.mktemp("precomputed")
    base = {"model": str(tiny_pipeline_path("sd15")), "num_inference_steps": 3, "height": 16,
            "width": 16, "seeds": [1], "guidance_scales": [0, 5]}
    made = {}
    for name, extra in (("euler_a", {"negative_prompt": NEGATIVE, "guidance_rescale": 0.7}), ("heun", {})):
        precompute(single_prompt_set(*PROMPTS[:1], list(PROMPTS[1:])), root / name, {**base, "scheduler": name, **extra},
                   Options(device="cpu", projection="pca", progress=False, workers=0, log=io.StringIO()))
        made[name] = root / name
    with serve_bundle(made["euler_a"]) as euler_a, serve_bundle(made["heun"]) as heun:
        yield {"euler_a": euler_a, "heun": heun}


def table_row(page, key: str) -> list[float]:
    cells = page.locator(f"#pixel-table .row-{key} td").all_inner_texts()
    return [float(c.replace("\u2212", "-")) for c in cells]


@pytest.mark.slow
def test_a_precomputed_euler_a_step_adds_up_with_its_recorded_noise(page, precomputed):
    """Euler ancestral with noise prediction: x_{s+1} = x_s - w eps + sigma_up z, so the
    table's left-over row (stored next latent minus latent - w eps + noise) is only
    rounding: the float16 storage (2^-11 relative) of four terms and the 3 digits shown,
    within 1% of the latent's largest |value| (float16's ulp there is 2^-6 of 2^4..2^5).
    The first step's noise (sigma_up = 1.6 here) is ten times that: without the noise row
    the left-over would be the noise itself."""
    page.goto(f"{precomputed['euler_a']}?step=1&guidance=5&open=image")
    wait_ready(page, 60_000)
    page.locator("#pixel-table .row-leftover td").first.wait_for()
    before, after, noise = table_row(page, "latents"), table_row(page, "next"), table_row(page, "noise")
    leftover = max(map(abs, table_row(page, "leftover")))
    assert leftover < 0.01 * max(map(abs, before + after))
    assert max(map(abs, noise)) > 10 * leftover
    assert page.locator("#step-uncond + figcaption").inner_text().startswith(f"Noise predicted for the negative prompt: “{NEGATIVE}”")
    assert "$\\sigma_{\\uparrow}$ = " in prose(page, ".scheduler-numbers")


@pytest.mark.slow
def test_a_precomputed_heun_run_counts_its_real_calls(page, precomputed):
    page.goto(f"{precomputed['heun']}?step=4&guidance=5&open=image")
    wait_ready(page, 60_000)
    assert page.locator(".tc-step").inner_text() == "call 4 / 5 · step 2 / 3"  # 2 + 2 + 1 calls
    assert page.locator("#panel-image .call-note").inner_text().startswith(
        "UNet call 4 of 5 (scheduler step 2 of 3, its 2nd call of 2).")

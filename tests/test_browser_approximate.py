"""Frames made by a preview decoder (precompute --preview-decoder) are labelled in the app:
the in-between decoded frames carry an "≈ approximate" badge and say by how much that
decoder differed from the full VAE on the run's final image; the final image does not.
A bundle of the tiny model (tests/tiny_sd.py) with a tiny random AutoencoderTiny."""

from __future__ import annotations

import io
import os
import re

import pytest

from tests.browser_helpers import SKIP_REASON, browser_available, serve_bundle, wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not browser_available(), reason=SKIP_REASON)]
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STEPS = 3
WIDTHS = {"phone": (390, 844), "laptop": (1366, 768), "projector": (1920, 1080)}


@pytest.fixture(scope="module")
def approximate_url(tmp_path_factory):
    from precompute.prompts import single_prompt_set
    from precompute.run import Options, precompute
    from tests.test_pipeline_io import tiny_taesd
    from tests.tiny_sd import tiny_components, tiny_pipeline_path

    root = tmp_path_factory.mktemp("approx")
    tiny_taesd().save_pretrained(root / "taesd")
    settings = {"model": str(tiny_pipeline_path("sd15")), "scheduler": "lms",
                "num_inference_steps": STEPS, "height": 16, "width": 16, "seeds": [1],
                "guidance_scales": [0, 7]}
    precompute(single_prompt_set("a red circle", []), root / "b", settings,
               Options(device="cpu", projection="pca", progress=False, workers=0,
                       log=io.StringIO(), components=tiny_components(),
                       preview_decoder=str(root / "taesd")))
    with serve_bundle(root / "b") as url:
        yield url


@pytest.mark.slow
def test_approximate_frames_are_labelled_with_their_measured_difference(browser,
                                                                        approximate_url, shots):
    for name, (w, h) in WIDTHS.items():
        context = browser.new_context(viewport={"width": w, "height": h})
        page = context.new_page()
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"{approximate_url}?step=1")
        wait_ready(page)
        frame = page.locator("#decoded-frame")
        assert "is-approximate" in frame.get_attribute("class")
        title = frame.get_attribute("title")
        assert title.startswith("approximate: decoded by the preview decoder taesd")
        assert "differs from the full VAE by" in title and "of 255 levels" in title
        assert "approximate" in frame.get_attribute("aria-label")
        mean = float(re.search(r"by ([0-9.]+) of 255", title).group(1))
        assert frame.locator(".frame-approximate").inner_text() == f"≈ approximate ±{mean:.1f}/255"
        page.screenshot(path=str(shots / f"approximate-{name}.png"))
        page.goto(f"{approximate_url}?step={STEPS}")   # the final image: the full VAE's
        wait_ready(page)
        page.wait_for_function(f"() => document.querySelector('#decoded-frame').dataset.frame "
                               f"=== '{STEPS}'")
        assert "is-approximate" not in (frame.get_attribute("class") or "")
        assert frame.locator(".frame-approximate").count() == 0
        context.close()
        assert problems == []

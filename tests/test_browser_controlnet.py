"""The ControlNet level of the Architecture View and the comparison's lanes, in a real
browser (Playwright driving Debian's chromium).

The bundle is tests/synthetic_bundle.py's (5 steps, seed 1, guidance 0 and 7) plus
ControlNet runs of its first prompt at guidance 7 with two control images (the first,
"sketch", at conditioning scales 0.5, 1 and 2; the second, "square", at 1 and 2) written
through the real writer with a synthetic control record (random norms and maps in
docs/bundle-format.md's shapes; the window closes before the last call), so building it
needs no torch: well under a second. tests/test_controlnet.py makes real ones.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from tests.browser_helpers import SKIP_REASON, browser_available, wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not browser_available(), reason=SKIP_REASON)]

T = 5
SCALES = (0.5, 1.0, 2.0)
WINDOW = (0.0, 0.8)  # call 5 of 5 lies past 0.8: no residual there
BLOCKS = [("conv_in", 8, 32), ("down_blocks.0.resnets.0", 8, 32), ("down_blocks.0.resnets.1", 8, 32),
          ("down_blocks.0.downsamplers.0", 4, 32), ("down_blocks.1.resnets.0", 4, 64),
          ("down_blocks.1.resnets.1", 4, 64), ("mid_block", 4, 64)]


class _Controlled:
    """A writer that adds a ControlNet record to the one run synthetic_bundle writes."""

    def __init__(self, writer, run_id, record, arrays, images):
        self.writer, self.run_id, self.record = writer, run_id, record
        self.arrays, self.images = arrays, images

    def write_run(self, manifest, arrays, images):
        manifest = {**manifest, "run_id": self.run_id, "controlnet": self.record}
        return self.writer.write_run(manifest, {**arrays, **self.arrays}, {**images, **self.images})


SECOND = "square-9876fedc"  # the second control image's control_id (sorts after "sketch-...")


def add_control_runs(root, text, seed=1, guidance=7.0, scales=SCALES, cid="sketch-0123abcd", where=(2, 7),
                     rng_seed=17):
    """Controlled runs of `text` at each conditioning scale with control image `cid` (a
    filled square with its top left corner at `where`), with the bundle's run of the same
    prompt, seed and guidance as their run without control. Returns scale -> run id."""
    from precompute.writer import BundleWriter, format_guidance, prompt_id, read_config, run_id
    from tests.synthetic_bundle import _write_run

    writer = BundleWriter(root, read_config(root))
    rng = np.random.default_rng(rng_seed)
    pid = prompt_id(text)
    sketch = np.zeros((1, 16, 16, 3), np.uint8)
    sketch[0, where[0]:where[0] + 7, where[1]:where[1] + 7] = 255  # off centre: where the object goes
    keep = np.array([float(i / T >= WINDOW[0] and (i + 1) / T <= WINDOW[1]) for i in range(T)])
    base = rng.random((T, len(BLOCKS))) + 0.2
    ids = {}
    for c in scales:
        norms = base * c * keep[:, None]                                        # (T, B)
        maps = {f"controlnet_res{h}": (rng.random((T, 1, h, h)) * c * keep[:, None, None, None])
                .astype(np.float32) for h in (8, 4)}
        maps["controlnet_mid"] = (rng.random((T, 1, 4, 4)) * c * keep[:, None, None, None]).astype(np.float32)
        record = {"model": "synthetic/controlnet", "control_id": cid, "conditioning_scale": c,
                  "control_guidance_start": WINDOW[0], "control_guidance_end": WINDOW[1],
                  "uncontrolled_run_id": run_id(pid, seed, guidance),
                  "blocks": [{"name": n, "resolution": [h, h], "channels": ch} for n, h, ch in BLOCKS],
                  "residual_norms": norms.round(5).tolist(),
                  "maps": ["controlnet_res8", "controlnet_res4", "controlnet_mid"]}
        ids[c] = run_id(f"{pid}--ctl-{cid}-c{format_guidance(c)}", seed, guidance)
        _write_run(_Controlled(writer, ids[c], record, maps, {"control_image": (sketch, "png")}),
                   rng, text, seed, guidance, T, 4, 8, 16)
    runs = writer.rebuild_index()["runs"]  # the seed's map places the new runs too
    writer.write_trajectories(seed, "pca", {rid: rng.standard_normal((T + 1, 2))
                                            for rid, r in runs.items() if r["seed"] == seed})
    writer.rebuild_index()
    return ids


@pytest.fixture(scope="module")
def control_bundle(tmp_path_factory):
    from tests.synthetic_bundle import PROMPTS, make_bundle

    root = make_bundle(tmp_path_factory.mktemp("controlnet") / "b", seeds=(1,), guidance_scales=(0, 7))
    ids = add_control_runs(root, PROMPTS[0][0])
    return root, ids, add_control_runs(root, PROMPTS[0][0], scales=(1.0, 2.0), cid=SECOND, where=(8, 1),
                                      rng_seed=18)


@pytest.fixture(scope="module")
def cn_url(control_bundle):
    from tests.browser_helpers import serve_bundle
    with serve_bundle(control_bundle[0]) as url:
        yield url


def prompt_ids():
    from precompute.writer import prompt_id
    from tests.synthetic_bundle import PROMPTS
    return prompt_id(PROMPTS[0][0]), prompt_id(PROMPTS[0][1])


def plain_run(pid, seed=1, guidance=7.0) -> str:
    from precompute.writer import run_id
    return run_id(pid, seed, guidance)


def query(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def bar_values(page) -> list[float]:
    return page.evaluate("""() => [...document.querySelectorAll('#controlnet-norms .cn-bar')]
        .map((b) => Number(b.dataset.value))""")


def recorded_norms(bundle, run_id) -> list[list[float]]:
    return json.loads((bundle / "runs" / run_id / "run.json").read_text())["controlnet"]["residual_norms"]


def test_what_opening_js_imports_reads_no_d3():
    """js/opening.js runs `async`, maybe before d3's deferred script: a module of its import
    graph that imported js/lib.js would fix lib.js's `d3` as undefined for the whole app.
    Since it reads the address bar with js/state.js, state.js and its imports stay d3-free."""
    import re
    from pathlib import Path

    js = Path(__file__).resolve().parent.parent / "frontend" / "js"
    seen, todo = set(), [js / "opening.js"]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in re.findall(r'^import[^;]*?from "(\./[^"]+)";', f.read_text(), re.M | re.S):
            todo.append((f.parent / name).resolve())
    assert js / "state.js" in seen and js / "lib.js" not in seen, sorted(p.name for p in seen)


def test_the_level_opens_scrubbing_updates_its_chart_and_maps_and_escape_closes_it(page, cn_url, control_bundle, shots):
    bundle, ids, second = control_bundle
    main, _ = prompt_ids()
    page.goto(f"{cn_url}?prompt={main}&seed=1&guidance=7&step=2")
    wait_ready(page)
    opener = page.locator("#controlnet-open")
    assert opener.is_visible() and "off" in opener.inner_text()
    opener.click()
    panel = page.locator("#panel-controlnet")
    panel.wait_for(state="visible")
    # opening with control off turns it on at scale 1: the app shows the controlled run
    assert query(page)["open"] == "controlnet" and query(page)["control"] == "1"
    page.wait_for_selector(f"#viz[data-run='{ids[1.0]}'][aria-busy=false]")
    page.wait_for_function("() => document.querySelectorAll('#controlnet-maps .cn-map-frame[data-max]').length === 3")
    # the row of every scale's image at this step: 0 (without control) and the three scales
    sweep = page.locator("#controlnet-sweep .sweep-item")
    assert sweep.all_inner_texts() == ["0: without control", "scale 0.5", "scale 1", "scale 2"]
    assert page.locator("#controlnet-sweep .is-selected figcaption").inner_text() == "scale 1"
    norms = recorded_norms(bundle, ids[1.0])
    # step 2 shows call 1's residuals; float16-free JSON numbers, so equal to print precision
    assert bar_values(page) == pytest.approx(norms[1], rel=1e-6)
    page.keyboard.press("ArrowRight")  # step 3: call 2
    page.wait_for_function("() => document.querySelector('#panel-controlnet .cn-step').textContent === '3'")
    assert bar_values(page) == pytest.approx(norms[2], rel=1e-6)
    assert page.locator("#controlnet-with").get_attribute("data-frame") == "3"
    assert page.locator("#controlnet-note-closed").is_hidden()
    page.keyboard.press("End")  # step 5: call 4 lies past control_guidance_end
    page.wait_for_function("() => document.querySelector('#panel-controlnet .cn-step').textContent === '5'")
    assert bar_values(page) == [0] * len(BLOCKS)
    assert page.locator("#controlnet-note-closed").is_visible()
    page.keyboard.press("ArrowLeft")  # step 4: call 3
    # the prompt has two control images: a row of their thumbnails, the shown one marked;
    # Enter on the second shows its runs, and the URL says which (control=<scale>:<control_id>)
    thumbs = page.locator("#panel-controlnet .cn-images .cn-thumb")
    assert thumbs.count() == 2 and thumbs.nth(1).get_attribute("aria-label").endswith("2 of 2: square")
    assert [t.get_attribute("aria-pressed") for t in thumbs.all()] == ["true", "false"]
    thumbs.nth(1).focus()
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('control') === '1:{SECOND}'")
    page.wait_for_selector(f"#viz[data-run='{second[1.0]}'][aria-busy=false]")
    page.wait_for_selector(f"#controlnet-image[data-src*='runs/{second[1.0]}/']")
    assert [t.get_attribute("aria-pressed") for t in thumbs.all()] == ["false", "true"]
    assert sweep.all_inner_texts() == ["0: without control", "scale 1", "scale 2"]  # its own scales
    assert bar_values(page) == pytest.approx(recorded_norms(bundle, second[1.0])[3], rel=1e-6)
    for name, size in (("laptop", {"width": 1366, "height": 768}), ("phone", {"width": 390, "height": 844}),
                       ("projector", {"width": 1920, "height": 1080})):
        page.set_viewport_size(size)
        panel.evaluate("(el) => el.scrollIntoView()")
        page.screenshot(path=str(shots / f"controlnet-level-{name}.png"))
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), name
    page.set_viewport_size({"width": 1366, "height": 768})
    page.keyboard.press("Escape")
    panel.wait_for(state="hidden")
    assert "open" not in query(page) and query(page)["control"] == f"1:{SECOND}"
    page.locator("#image-open").click()  # the refiner's level says its UNet calls get the residuals
    page.locator("#image-note-control").wait_for(state="visible")
    assert "conditioning scale 1:" in page.locator("#image-note-control").inner_text()


def test_the_scale_slider_previews_on_hover_and_commits_on_click_and_release(page, cn_url, control_bundle):
    bundle, ids, second = control_bundle
    main, _ = prompt_ids()
    page.goto(f"{cn_url}?prompt={main}&seed=1&guidance=7&step=3&open=controlnet&control=1")
    wait_ready(page)
    with_ = page.locator("#controlnet-with")
    page.wait_for_function("() => document.querySelector('#controlnet-with[data-src]')")
    src = {c: f"runs/{rid}/" for c, rid in ids.items()}
    assert src[1.0] in with_.get_attribute("data-src")
    stops = page.locator("#controlnet-slider .gs-stop")
    assert stops.all_inner_texts() == ["0", "0.5", "1", "2"]
    page.get_by_role("button", name="Conditioning scale 2", exact=True).hover()  # preview: not committed
    page.wait_for_function(f"() => document.querySelector('#controlnet-with').dataset.src.includes('{src[2.0]}')")
    assert query(page)["control"] == "1"
    assert bar_values(page) == pytest.approx(recorded_norms(bundle, ids[2.0])[2], rel=1e-6)
    page.mouse.move(5, 5)  # leaving ends the preview
    page.wait_for_function(f"() => document.querySelector('#controlnet-with').dataset.src.includes('{src[1.0]}')")
    page.get_by_role("button", name="Conditioning scale 0.5", exact=True).click()
    page.wait_for_function("() => new URLSearchParams(location.search).get('control') === '0.5'")
    # hovering the second control image (run at scales 1 and 2 only) previews what a click
    # would choose: that image at a scale it has, not its run without control
    page.locator("#panel-controlnet .cn-images .cn-thumb").nth(1).hover()
    page.wait_for_function(f"() => document.querySelector('#controlnet-with').dataset.src.includes('runs/{second[1.0]}/')")
    assert query(page)["control"] == "0.5"
    page.mouse.move(5, 5)
    page.wait_for_function(f"() => document.querySelector('#controlnet-with').dataset.src.includes('{src[0.5]}')")
    # the range: dragging (input) previews the nearest scale, releasing (change) commits it
    page.evaluate("""() => { const r = document.querySelector('#controlnet-slider .gs-range');
        r.value = '1.9'; r.dispatchEvent(new Event('input', {bubbles: true})); }""")
    page.wait_for_function(f"() => document.querySelector('#controlnet-with').dataset.src.includes('{src[2.0]}')")
    assert query(page)["control"] == "0.5"
    page.evaluate("""() => document.querySelector('#controlnet-slider .gs-range')
        .dispatchEvent(new Event('change', {bubbles: true}))""")
    page.wait_for_function("() => new URLSearchParams(location.search).get('control') === '2'")
    # the guidance level's row (the same seed at every guidance scale) shows the runs at the
    # chosen control image and scale where the bundle has them, and says in one line where
    # not (guidance 0 never has control)
    page.locator("#pipeline button[data-panel=guidance]").click()
    row = page.locator("#guidance-sweep")
    page.wait_for_selector(f"#guidance-sweep .sweep-item.is-selected .frame[data-src*='runs/{ids[2.0]}/']")
    assert row.locator("figcaption").all_inner_texts() == ["g = 0, no control", "g = 7"]
    assert row.locator(".sweep-control-note").inner_text() == (
        "No run at conditioning scale 2 with control image sketch for g = 0: that picture is without control.")
    # scale 0 is the run without control: both pictures show it, and the note says why
    page.get_by_role("button", name="Conditioning scale 0", exact=True).click()
    page.locator("#controlnet-note-off").wait_for(state="visible")
    assert "control" not in query(page)
    assert with_.get_attribute("data-src") == page.locator("#controlnet-without").get_attribute("data-src")
    page.wait_for_selector(f"#guidance-sweep .sweep-item.is-selected .frame[data-src*='runs/{plain_run(main)}/']")
    assert row.locator(".sweep-control-note").count() == 0


def test_the_level_is_absent_without_control_and_the_lanes_show_control_where_a_run_has_it(page, cn_url, control_bundle):
    _, ids, second = control_bundle
    main, variant = prompt_ids()
    # the variant has no control image: no opener, and a link that opens the level shows none
    page.goto(f"{cn_url}?prompt={variant}&seed=1&guidance=7&step=2&open=controlnet&control=1")
    wait_ready(page)
    assert page.locator("#controlnet-open").is_hidden() and page.locator("#panel-controlnet").is_hidden()
    page.keyboard.press("Escape")  # nothing to close on screen: the level stays for a prompt with control
    assert query(page)["open"] == "controlnet"
    page.goto(f"{cn_url}?prompt={main}&seed=1&guidance=0&step=2")  # guidance 0: never control
    wait_ready(page)
    assert page.locator("#controlnet-open").is_hidden()
    # the state's control image: an old link's `control=2` means the first; a control_id the
    # bundle lacks is dropped, the scale kept
    urls = page.evaluate("""async () => {
      const { normalize, toSearch, fromSearch } = await import('./js/state.js');
      const index = await (await fetch('api/index.json')).json();
      const read = (q) => normalize(index, fromSearch(q));
      return [read('?control=2'), read('?control=2:nope'), read(`?control=2:${'%s'}`)]
        .map((s) => [s.control, s.controlImage, new URLSearchParams(toSearch(index, s)).get('control')]);
    }""" % SECOND)
    assert urls == [[2, None, "2"], [2, None, "2"], [2, SECOND, f"2:{SECOND}"]]
    # a link to a controlled run: js/opening.js asks for that run (not the one without
    # control) and its step's sprites before the app has loaded
    requests, held = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.route("**/js/main.js", lambda route: held.append(route))
    with page.expect_request(lambda r: f"runs/{second[2.0]}/" in r.url and "/decoded." in r.url, timeout=5000):
        page.goto(f"{cn_url}?prompt={main}&seed=1&guidance=7&step=2&compare={variant}&control=2:{SECOND}",
                  wait_until="commit")
    assert held, "js/main.js was not asked for"
    runs = [u.split("/api/runs/")[1] for u in requests if "/api/runs/" in u and u.endswith(".json")]
    assert runs == [f"{second[2.0]}.json"], requests
    held[0].continue_()
    page.unroute("**/js/main.js")
    # the comparison: lane 1's run has control (the chosen image, its place among the
    # prompt's control images and its scale), lane 2's has none
    page.wait_for_selector(".lane-1 .lane-control-image[data-frame='0']")
    assert page.locator(".lane-1 .lane-control-text").inner_text() == (
        "ControlNet: control image 2 of 2 (square), conditioning scale 2")
    assert f"runs/{second[2.0]}/" in page.locator(".lane-1 .lane-decoded").get_attribute("data-src")
    assert page.locator(".lane-2 .lane-control-text").inner_text().startswith("No control image")

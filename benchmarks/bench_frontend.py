"""Front-end benchmark: Playwright driving Debian's chromium against a served bundle.

Measures, on loopback:
  1. time from navigation to the first full render (every level-1 picture drawn),
     cold cache and warm cache;
  2. per-step update time while scrubbing the slider through every step: the app's own
     render time (performance measure "noisepath:render") and input -> next painted frame,
     with only level 1 open, with the refiner, guidance and attention views open, and in
     the comparison view (two lanes, the Trajectory Map with every guidance scale's path,
     the what-differs charts and the difference image);
  3. requests and bytes to show one run, and then to play it through.

    .venv/bin/python benchmarks/bench_frontend.py                 # synthetic bundle, 50 steps
    .venv/bin/python benchmarks/bench_frontend.py --bundle static/demo-bundle
    .venv/bin/python benchmarks/bench_frontend.py --mode compare       # only the comparison scrub

The synthetic bundle's frames are random noise, which compresses far worse than real
images, so its byte counts are an upper bound for the same sizes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.browser_helpers import browser_available, launch_chromium, serve_bundle, wait_ready  # noqa: E402

SCRUB_JS = """async () => {
  const slider = document.querySelector('.tc-slider');
  const T = Number(slider.max);
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  const render = [], toFrame = [];
  for (const s of [...Array(T + 1).keys(), ...Array(T + 1).keys()].reverse()) {
    await frame();
    performance.clearMeasures('noisepath:render');
    const t0 = performance.now();
    slider.value = String(s);
    slider.dispatchEvent(new Event('input', { bubbles: true }));
    await frame();                     // the app draws in this frame
    await frame();                     // ... and the browser has painted it
    const m = performance.getEntriesByName('noisepath:render');
    render.push(m.length ? m[0].duration : NaN);
    toFrame.push(performance.now() - t0);
  }
  return { render, toFrame };
}"""


def percentile(values, q):
    values = sorted(v for v in values if v == v)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class Traffic:
    """Counts requests and response bytes (body + headers) a page makes."""

    def __init__(self, page):
        self.rows = []
        page.on("requestfinished", self._done)

    def _done(self, request):
        sizes = request.sizes()
        self.rows.append((request.url, sizes["responseBodySize"] + sizes["responseHeadersSize"]))

    def mark(self):
        return len(self.rows)

    def since(self, mark, data_only=False):
        rows = self.rows[mark:]
        if data_only:
            rows = [r for r in rows if "/api/" in r[0] or "/bundle/" in r[0]]
        return len(rows), sum(b for _, b in rows)


def first_render_ms(page) -> float:
    return page.evaluate("performance.getEntriesByName('noisepath:first-full-render')[0].startTime")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="a bundle folder (default: a synthetic one)")
    parser.add_argument("--steps", type=int, default=50, help="steps of the synthetic bundle")
    parser.add_argument("--latent", type=int, default=16, help="latent side of the synthetic bundle (SD 1.5: 64)")
    parser.add_argument("--image-size", type=int, default=64, help="frame side of the synthetic bundle's sprites")
    parser.add_argument("--repeat", type=int, default=5, help="page loads per first-render figure")
    parser.add_argument("--mode", choices=("all", "compare"), default="all",
                        help="compare: only the per-step update while scrubbing in the comparison view")
    args = parser.parse_args()
    if not browser_available():
        print("needs Debian's chromium (apt-get install chromium) and Playwright", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            from tests.synthetic_bundle import make_bundle
            bundle = make_bundle(Path(tmp) / "bundle", steps=args.steps, latent=args.latent,
                                 image_size=args.image_size, seeds=(1,), guidance_scales=(0, 1, 7))
            label = (f"synthetic bundle ({args.steps} steps, {args.latent}x{args.latent} latents, "
                     f"{args.image_size}x{args.image_size} frames of random noise)")
        else:
            label = f"bundle {bundle}"
        with serve_bundle(bundle) as base, launch_chromium() as browser:
            report = run_compare(browser, base) if args.mode == "compare" else run(browser, base, args.repeat)
    print(f"# Front-end benchmark: {label}\n")
    for line in report:
        print(line)
    return 0


def compare_search(page, base: str) -> str:
    """A comparison of the bundle's first group (main prompt and variant), every guidance path shown."""
    page.goto(f"{base}api/index.json")
    index = page.evaluate("() => JSON.parse(document.body.innerText)")
    groups = [g for g in index["groups"] if len(g["prompts"]) >= 2]
    a, b = groups[0]["prompts"][:2] if groups else [p for p in index["prompts"] if p != "empty"][:2]
    return f"prompt={a}&compare={b}&step=0&paths=all"


def scrub_rows(page, base: str, name: str, search: str, ready_selector: str | None = None) -> list[str]:
    page.goto(f"{base}?{search}")
    wait_ready(page)
    if ready_selector:
        page.wait_for_selector(ready_selector)
    page.wait_for_load_state("networkidle")
    page.evaluate(SCRUB_JS)          # first pass warms the caches (step numbers, maps, difference images)
    page.wait_for_load_state("networkidle")
    result = page.evaluate(SCRUB_JS)
    r, f = result["render"], result["toFrame"]
    return [f"| scrub, {name}: app render per step p50 / p95 / max | "
            f"{percentile(r, .5):.2f} / {percentile(r, .95):.2f} / {max(r):.2f} ms |",
            f"| scrub, {name}: input -> painted frame p50 / p95 | "
            f"{percentile(f, .5):.1f} / {percentile(f, .95):.1f} ms |"]


COMPARE_READY = "#difference-chart .dc-images .dc-line[d]"


def run_compare(browser, base: str) -> list[str]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    out = ["| measure | value |", "|---|---|"]
    out += scrub_rows(page, base, "comparison view", compare_search(page, base), COMPARE_READY)
    context.close()
    return out


def run(browser, base: str, repeat: int) -> list[str]:
    out = []
    # 1. first full render, cold (fresh context) and warm (same context, reload)
    cold, warm = [], []
    for _ in range(repeat):
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.goto(f"{base}?step=25")
        wait_ready(page)
        cold.append(first_render_ms(page))
        page.reload()
        wait_ready(page)
        warm.append(first_render_ms(page))
        context.close()
    out.append("| measure | value |")
    out.append("|---|---|")
    out.append(f"| navigation -> first full render, cold cache (median of {repeat}) | "
               f"{statistics.median(cold):.0f} ms (min {min(cold):.0f}, max {max(cold):.0f}) |")
    out.append(f"| navigation -> first full render, warm cache (median of {repeat}) | "
               f"{statistics.median(warm):.0f} ms |")

    # 3 (first half). requests and bytes to show one run, then to play it through
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    traffic = Traffic(page)
    page.goto(f"{base}?step=0")
    wait_ready(page)
    page.wait_for_load_state("networkidle")
    all_n, all_b = traffic.since(0)
    data_n, data_b = traffic.since(0, data_only=True)
    mark = traffic.mark()
    page.locator(".tc-play").click()
    page.locator(".tc-speed-select").select_option("20")
    T = int(page.locator(".tc-slider").get_attribute("max"))
    page.wait_for_function(f"() => document.querySelector('.tc-slider').value === '{T}'", timeout=60_000)
    play_n, play_b = traffic.since(mark)
    out.append(f"| show one run: all requests (app code, fonts, data) | {all_n} requests, {all_b / 1024:.0f} KiB |")
    out.append(f"| show one run: data requests (api/, bundle/) | {data_n} requests, {data_b / 1024:.0f} KiB |")
    out.append(f"| then play all {T} steps (level 1) | {play_n} more requests, {play_b / 1024:.1f} KiB |")

    # with the refiner's step open, each step's numbers are one small JSON request
    page.locator(".tc-play").click() if page.locator(".tc-play").get_attribute("aria-label") == "Pause" else None
    page.goto(f"{base}?step=0&open=image,guidance&token=2")
    wait_ready(page)
    page.wait_for_load_state("networkidle")
    mark = traffic.mark()
    page.locator(".tc-play").click()
    page.wait_for_function(f"() => document.querySelector('.tc-slider').value === '{T}'", timeout=60_000)
    page.wait_for_load_state("networkidle")
    open_n, open_b = traffic.since(mark)
    out.append(f"| play all {T} steps with the refiner, guidance and attention views open | "
               f"{open_n} requests, {open_b / 1024:.1f} KiB |")

    # 2. per-step update while scrubbing
    for name, search in (("level 1", "step=0"),
                         ("refiner + guidance + attention open", "step=0&open=image,guidance&token=2")):
        out += scrub_rows(page, base, name, search)
    out += scrub_rows(page, base, "comparison view", compare_search(page, base), COMPARE_READY)
    context.close()
    return out


if __name__ == "__main__":
    sys.exit(main())

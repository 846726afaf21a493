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
    .venv/bin/python benchmarks/bench_frontend.py --sd-size /tmp/sd-front  # SD-sized stand-in

The synthetic bundle's frames are random noise, which compresses far worse than real
images, so its byte counts are an upper bound for the same sizes.

--sd-size DIR measures one Stable Diffusion-sized run (512 px, 64x64 latents, 50 DDIM
steps, 256 px WebP frames, attention above 32x32 stored 2x2-averaged) on the realistic
stand-in of benchmarks/sd_stand_in.py (real photographs noised along SD's schedule;
needs scikit-image), written into DIR/bundle by the real writer in compact storage the
first time and reused after. It is served two ways: by `noisepath serve` (waitress, a
subprocess) and as a `noisepath export` site (DIR/site) behind a plain static server
(no compression). For each: the cold first render of a first visit (fresh browser
context), the bytes that arrived before it (Resource Timing's transferSize of every
response that ended before the `noisepath:first-full-render` mark), and the bytes to
show the run and play it through (all responses until the network is idle after the
last step), the same with a word selected at step 25. --after CHECKOUT measures another
checkout in place of the working tree (with --before: two commits side by side). A cold
load waits for the first full render by listening for its mark (--wait mark), not with
Playwright's wait_for_selector, whose injected script runs in the page while it loads.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.browser_helpers import (  # noqa: E402
    browser_available, launch_chromium, serve_bundle, serve_folder, wait_ready)

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
    parser.add_argument("--sd-size", type=Path, metavar="DIR",
                        help="measure an SD-sized stand-in run (written into DIR the first time; "
                             "needs scikit-image), served by `noisepath serve` and as an export")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="with --sd-size: measure this other checkout's front end too (e.g. "
                             "`git archive` of an older commit), cold loads taken in turn with ours")
    parser.add_argument("--after", type=Path, metavar="CHECKOUT",
                        help="with --sd-size: measure this checkout's front end and server in place of "
                             "the working tree's (e.g. `git archive` of a commit, so that the two "
                             "columns differ by that commit alone)")
    parser.add_argument("--wait", choices=("mark", "selector"), default="mark",
                        help="with --sd-size: how a cold load waits for the first full render: "
                             "'mark' (default) listens for it from an init script, putting nothing "
                             "into the page before it; 'selector' polls with Playwright's "
                             "wait_for_selector, whose injected script (50-250 ms of main thread "
                             "on this machine) runs while the page is still loading")
    parser.add_argument("--before-bundle", type=Path, metavar="DIR",
                        help="with --before: the stand-in that checkout serves, DIR/bundle (e.g. "
                             "one its writer wrote; default: the same as ours)")
    args = parser.parse_args()
    if not browser_available():
        print("needs Debian's chromium (apt-get install chromium) and Playwright", file=sys.stderr)
        return 2
    if args.sd_size:
        return sd_size(args.sd_size, args.repeat, args.before, args.before_bundle, args.after, args.wait)

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


# ------------------------------------------------------------- SD-sized stand-in

# Resource Timing keeps 250 entries by default; a played run with views open makes more.
BIG_TIMING_BUFFER = "performance.setResourceTimingBufferSize(5000)"

BYTES_BEFORE_FIRST_RENDER_JS = """() => {
  const mark = performance.getEntriesByName('noisepath:first-full-render')[0];
  const data = (e) => /\\/(api|bundle)\\//.test(new URL(e.name).pathname);
  const before = performance.getEntriesByType('resource').filter((e) => e.responseEnd <= mark.startTime);
  const sum = (es) => es.reduce((a, e) => a + e.transferSize, 0);
  const painted = performance.getEntriesByName('bench:first-full-render-painted')[0];
  return { ms: mark.startTime, painted: painted ? painted.startTime : null,
           all: sum(before), data: sum(before.filter(data)),
           n: before.length, dataN: before.filter(data).length,
           urls: before.filter(data).map((e) => [new URL(e.name).pathname, e.transferSize]) };
}"""


def stand_in_bundle(out: Path) -> Path:
    """out/bundle: the SD-sized stand-in (one prompt, seed 1, guidance 0, 1, 7, 20), written
    by benchmarks/sd_stand_in.py in compact storage unless it is already there."""
    bundle = out / "bundle"
    if not (bundle / "bundle.json").is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import sd_stand_in

        print(f"writing the SD-sized stand-in into {bundle} (a few minutes) ...", file=sys.stderr)
        sd_stand_in.write_bundle(bundle, "compact")
    return bundle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _noisepath(checkout: Path | None) -> tuple[list[str], Path | None]:
    """The command that runs `noisepath` (the installed script), or `python -m backend.cli`
    in another checkout (e.g. `git archive` of the commit before a change), and its cwd."""
    script = Path(sys.executable).parent / "noisepath"
    if checkout is None and script.is_file():
        return [str(script)], None
    return [sys.executable, "-m", "backend.cli"], checkout


@contextlib.contextmanager
def noisepath_serve(bundle: Path, checkout: Path | None = None):
    """`noisepath serve --bundle BUNDLE` (the command users run: waitress) on a free port;
    yields its base URL once api/index.json answers."""
    port = _free_port()
    cmd, cwd = _noisepath(checkout)
    proc = subprocess.Popen(cmd + ["serve", "--bundle", str(bundle.resolve()), "--port", str(port)],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"noisepath serve exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(base + "api/index.json", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def exported_site(bundle: Path, site: Path, checkout: Path | None = None) -> Path:
    """`noisepath export` of the bundle into site, written again each time (the front end
    it copies is the checkout's)."""
    cmd, cwd = _noisepath(checkout)
    subprocess.run(cmd + ["export", str(site.resolve()), "--bundle", str(bundle.resolve()), "--force"],
                   cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return site


def _fresh_page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.add_init_script(BIG_TIMING_BUFFER)
    return context, context.new_page()


# Says on the console when the first full render has been painted, so that a cold load can
# be waited for without running anything of Playwright's in the page before it: at the first
# animation frame after the `noisepath:first-full-render` mark, that is after the browser
# painted the frame the mark was set in. A canvas that draws an image not yet decoded for
# it decodes it then, on the main thread (an <img>'s pixels, even after img.decode()), so
# the mark alone can come before the pictures are on screen; "painted" is when they are.
MARK_TO_CONSOLE = """new PerformanceObserver((list) => {
  if (!list.getEntriesByName('noisepath:first-full-render').length) return;
  requestAnimationFrame(() => {
    performance.mark('bench:first-full-render-painted');
    console.debug('noisepath:first-full-render painted');
  });
}).observe({ type: 'mark' });"""


def cold_first_render(browser, base: str, wait: str = "mark") -> dict:
    """A first visit in a fresh context (cold browser cache): the first full render's time
    and what arrived before it (BYTES_BEFORE_FIRST_RENDER_JS). wait: see --wait."""
    context, page = _fresh_page(browser)
    try:
        if wait == "mark":
            context.add_init_script(MARK_TO_CONSOLE)
            with page.expect_console_message(lambda m: m.text == "noisepath:first-full-render painted",
                                             timeout=60_000):
                page.goto(base)
        else:
            page.goto(base)
            wait_ready(page)
        return page.evaluate(BYTES_BEFORE_FIRST_RENDER_JS)
    finally:
        context.close()


def show_and_play(browser, base: str, search: str) -> tuple[int, int, int]:
    """Open base + search in a fresh context, play the run from step 0 to its last step at 20
    steps a second, wait for the network to go quiet: (T, data requests, data bytes)."""
    context, page = _fresh_page(browser)
    try:
        traffic = Traffic(page)
        page.goto(base + search)
        wait_ready(page)
        if search:  # back to step 0 as a reader would, with the slider
            page.evaluate("""() => { const s = document.querySelector('.tc-slider'); s.value = '0';
                                     s.dispatchEvent(new Event('input', { bubbles: true })); }""")
        page.locator(".tc-speed-select").select_option("20")
        if page.locator(".tc-play").get_attribute("aria-label") == "Play":  # a first visit plays by itself
            page.locator(".tc-play").click()
        T = int(page.locator(".tc-slider").get_attribute("max"))
        page.wait_for_function(f"() => document.querySelector('.tc-slider').value === '{T}'", timeout=60_000)
        page.wait_for_load_state("networkidle")
        n, b = traffic.since(0, data_only=True)
        return T, n, b
    finally:
        context.close()


WORD_SELECTED = "?step=25&token=2"


def sd_measure(browser, bases: list[str], repeat: int, wait: str = "mark") -> list[dict]:
    """Every measure for each base URL (one per front end), the cold loads taken in turn
    (A B A B ...) so that a change in the machine's load hits both alike."""
    results = [{"firsts": []} for _ in bases]
    for _ in range(repeat):
        for r, base in zip(results, bases):
            r["firsts"].append(cold_first_render(browser, base, wait))
    for r, base in zip(results, bases):
        r["play"] = show_and_play(browser, base, "")
        r["word"] = show_and_play(browser, base, WORD_SELECTED)
    return results


def sd_rows(name: str, results: list[dict], labels: list[str]) -> list[str]:
    """Table rows for one way of serving, one column per front end."""
    def cells(fn):
        return " | ".join(fn(r) for r in results)

    def first_ms(r, key="ms"):
        ms = [f[key] for f in r["firsts"]]
        return f"{statistics.median(ms):.0f} ms ({min(ms):.0f}-{max(ms):.0f})"

    def painted_ms(r):
        return first_ms(r, "painted") if all(f["painted"] is not None for f in r["firsts"]) else "-"

    def last(r):
        return r["firsts"][-1]  # bytes do not vary between loads

    def before_data(r):
        return f"{last(r)['dataN']} requests, {last(r)['data'] / 1024:.0f} KiB"

    def before_all(r):
        return f"{last(r)['n']} requests, {last(r)['all'] / 1024:.0f} KiB"

    def played(key):
        return lambda r: f"{r[key][1]} requests, {r[key][2] / 1024:.0f} KiB"

    first_n = len(results[0]["firsts"])
    out = [f"| {name}: first full render, cold, median of {first_n} (range) | {cells(first_ms)} |",
           f"| {name}: ... painted (the next animation frame), median (range) | {cells(painted_ms)} |",
           f"| {name}: arrived before it, data (api/, bundle/) | {cells(before_data)} |",
           f"| {name}: arrived before it, all (app code too) | {cells(before_all)} |",
           f"| {name}: show one run and play its {results[0]['play'][0]} steps, data | {cells(played('play'))} |",
           f"| {name}: the same with a word selected ({WORD_SELECTED}), data | {cells(played('word'))} |"]
    for label, r in zip(labels, results):
        detail = ", ".join(f"{u.split('/')[-1].split('?')[0]} {b / 1024:.0f}" for u, b in last(r)["urls"])
        out.append(f"| {name}, {label}: data before the first render, KiB each | {detail} |")
    return out


def sd_size(out: Path, repeat: int, before: Path | None, before_out: Path | None = None,
            after: Path | None = None, wait: str = "mark") -> int:
    """--sd-size: the stand-in served by `noisepath serve` and as an export, measured with
    this checkout's front end (or --after's) and, given --before CHECKOUT, that one's, side
    by side."""
    bundle = stand_in_bundle(out)
    checkouts = [after] + ([before] if before else [])
    bundles = [bundle] + ([stand_in_bundle(before_out) if before_out else bundle] if before else [])
    labels = [f"{after}" if after else "this checkout"] + ([f"{before}"] if before else [])
    sites = [exported_site(b, out / f"site-{k}", c)
             for k, (b, c) in enumerate(zip(bundles, checkouts))]
    rows = ["| measure | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    with launch_chromium() as browser:
        with contextlib.ExitStack() as stack:
            bases = [stack.enter_context(noisepath_serve(b, c)) for b, c in zip(bundles, checkouts)]
            rows += sd_rows("`noisepath serve`", sd_measure(browser, bases, repeat, wait), labels)
        with contextlib.ExitStack() as stack:
            bases = [stack.enter_context(serve_folder(site)) for site in sites]
            rows += sd_rows("export", sd_measure(browser, bases, repeat, wait), labels)
    print(f"# Front-end benchmark: SD-sized stand-in ({bundle}; cold loads wait for the mark "
          f"by {wait})\n")
    for line in rows:
        print(line)
    return 0

if __name__ == "__main__":
    sys.exit(main())

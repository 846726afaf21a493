"""Helpers for the browser tests and the front-end benchmark: serve the app over a
bundle on a real loopback server, and drive Debian's chromium through Playwright.

Chromium is not downloaded by Playwright here: the tests use /usr/bin/chromium
(`apt-get install chromium`) and skip with that advice when it is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
SKIP_REASON = ("browser tests need Debian's chromium at /usr/bin/chromium "
               "(apt-get install chromium) and Python Playwright (pip install playwright)")


def chromium_path() -> str | None:
    """The chromium executable to drive, or None when there is none."""
    env = os.environ.get("NOISEPATH_CHROMIUM")
    for candidate in ((env,) if env else ()) + CHROMIUM_CANDIDATES:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("chromium")
    return found


def browser_available() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return chromium_path() is not None


@contextlib.contextmanager
def serve_bundle(bundle_dir: str | Path):
    """Serve create_app over bundle_dir on 127.0.0.1 (a free port); yields the base URL."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    from backend import create_app

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args, **kwargs):  # one line per request would drown test output
            pass

    app = create_app({"BUNDLE_DIR": Path(bundle_dir)})
    with _serving(make_server("127.0.0.1", 0, app, threaded=True,
                              request_handler=QuietHandler)) as url:
        yield url


@contextlib.contextmanager
def serve_folder(root: str | Path):
    """A plain static file server (what a static host is) on a loopback port, serving
    root; yields its base URL (ending in /). For `noisepath export`'s sites."""
    import functools
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    with _serving(http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))) as url:
        yield url


@contextlib.contextmanager
def _serving(server):
    """Run an http.server-style server (werkzeug's too) on a daemon thread; yields its
    base URL and shuts it down after."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def launch_chromium():
    """A headless chromium driven by Playwright; yields the Browser."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=LAUNCH_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def watch_errors(page) -> list[str]:
    """Collect the page's console errors and uncaught exceptions into a list."""
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    return problems


def wait_ready(page, timeout: float = 15_000) -> None:
    """Wait until the pictures of the current run are drawn (#viz stops being aria-busy)."""
    page.wait_for_selector("#viz[aria-busy=false]", timeout=timeout)

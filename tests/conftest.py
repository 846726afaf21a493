"""Shared fixtures. Nothing in the test suite may download: the hub is switched off."""

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

from tests.synthetic_bundle import make_bundle  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_bundle_ro(tmp_path_factory):
    """A valid synthetic bundle shared by tests that only read it."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture(scope="session")
def compact_bundle_ro(tmp_path_factory):
    """The same synthetic bundle written with storage = "compact" (docs/bundle-format.md)."""
    return make_bundle(tmp_path_factory.mktemp("compact") / "b", storage="compact")


@pytest.fixture
def synthetic_bundle(tmp_path, synthetic_bundle_ro):
    """A private copy that a test may corrupt."""
    dst = tmp_path / "bundle"
    shutil.copytree(synthetic_bundle_ro, dst)
    return dst


@pytest.fixture(scope="module")
def synthetic_app(synthetic_bundle_ro, tmp_path_factory):
    """The app over the synthetic bundle with a one-page front end, for request-level tests."""
    from backend import create_app
    frontend = tmp_path_factory.mktemp("frontend")
    (frontend / "index.html").write_text("<!doctype html><title>app</title>")
    app = create_app({"BUNDLE_DIR": synthetic_bundle_ro, "FRONTEND_DIR": frontend})
    app.logger.disabled = True
    return app


@pytest.fixture
def asked_for(request):
    """Big fuzz volumes run only when slow tests are selected: `pytest -m slow <file>`."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("a large fuzz volume (minutes): run with -m slow")


# -- browser tests (tests/test_browser_*.py): one server and one chromium for the session

@pytest.fixture(scope="session")
def base_url(synthetic_bundle_ro):
    """The app over the synthetic bundle on a real loopback server."""
    from tests.browser_helpers import serve_bundle
    with serve_bundle(synthetic_bundle_ro) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium driven by Playwright (the tests skip when it is missing)."""
    from tests.browser_helpers import launch_chromium
    with launch_chromium() as b:
        yield b


@pytest.fixture(scope="session")
def shots(tmp_path_factory):
    """Where screenshots go: $NOISEPATH_SCREENSHOT_DIR, or a temporary folder."""
    from pathlib import Path
    folder = os.environ.get("NOISEPATH_SCREENSHOT_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def context(browser, request):
    """One browser context (so one HTTP cache) per test module, at the module's VIEWPORT
    (a laptop's 1366 x 768 when it names none); every test gets a fresh page in it."""
    viewport = getattr(request.module, "VIEWPORT", {"width": 1366, "height": 768})
    context = browser.new_context(viewport=viewport)
    yield context
    context.close()


@pytest.fixture
def page(context):
    """A fresh page in the module's `context`; the test fails if it logged any error."""
    from tests.browser_helpers import watch_errors
    page = context.new_page()
    problems = watch_errors(page)
    yield page
    page.close()
    assert problems == [], "the page logged errors:\n" + "\n".join(problems)

"""Noisepath's web app: `create_app(test_config=None)` serves the front end, the JSON
API (docs/api.md) and the files of one bundle, read-only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = REPO / "static" / "demo-bundle"
FRONTEND = REPO / "frontend"

# media-src blob:: the spoken examples' player plays its clip from a fetched blob, which
# seeks where the server answers no Range requests (frontend/js/views/speech-input.js)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "media-src 'self' blob:; "
                               "style-src 'self'; script-src 'self'; object-src 'none'; "
                               "base-uri 'self'; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "SAMEORIGIN",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def create_app(test_config: dict | None = None) -> Flask:
    """The app over one bundle. Raises backend.bundle.BundleError if the bundle is bad.

    Config: BUNDLE_DIR (default static/demo-bundle), FRONTEND_DIR (default frontend/),
    CHECKSUMS (verify every file's SHA-256 at startup), SKIP_INVALID (serve the valid
    runs of a bundle with bad ones), CACHE_BYTES (memory for bodies built on request),
    FAST_PATH (answer API documents without Flask's request machinery; same responses),
    ALLOWED_HOSTS (the Host names answered, with any port; others get 400 JSON against
    DNS rebinding; default the loopback names, "*" answers any; see backend/hosts.py),
    LIVE (a backend.live.LiveService: typed prompts, `noisepath serve --live`; default None),
    SPEECH (with LIVE: a backend.speech.SpeechService, spoken prompts; default None) and
    SPEECH_UNAVAILABLE (without it: the one line the page shows, e.g. what to install).
    """
    from flask import Flask  # here, so that `noisepath` starts (and takes Ctrl+C) quickly

    from backend import api, errors, fewstep_examples, hosts, speech_examples, static, store

    app = Flask(__name__, static_folder=None)
    app.config.from_mapping(BUNDLE_DIR=DEFAULT_BUNDLE, FRONTEND_DIR=FRONTEND,
                            CHECKSUMS=False, SKIP_INVALID=False, CACHE_BYTES=256 << 20,
                            FAST_PATH=True, ALLOWED_HOSTS=hosts.LOOPBACK_HOSTS)
    if test_config:
        app.config.update(test_config)
    store.init_app(app)
    errors.init_app(app)
    app.register_blueprint(api.bp)
    speech_examples.init_app(app)  # api/speech/: the bundle's spoken examples
    fewstep_examples.init_app(app)  # api/fewstep/: the few-step comparison (fewstep/)
    app.register_blueprint(static.bp)

    @app.after_request
    def security_headers(resp):
        resp.headers.update(SECURITY_HEADERS)
        if "ETag" not in resp.headers and not resp.is_streamed:  # errors, OPTIONS
            resp.add_etag()
        return resp

    if app.config["FAST_PATH"]:
        from backend.fastpath import FastPath
        app.wsgi_app = FastPath(app.wsgi_app, store.get_store_of(app), SECURITY_HEADERS)
    if app.config.get("LIVE") is not None:  # `serve --live`: the queue and live/ (backend/live.py)
        from backend import live
        live.init_app(app)
    app.wsgi_app = hosts.HostCheck(app.wsgi_app, app.config["ALLOWED_HOSTS"])
    return app

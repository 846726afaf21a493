"""A WSGI front that answers the hottest requests without Flask: an API document.

A class scrubbing through a run asks for per-step JSON hundreds of times a second.
Every such answer is a `Resource` the store builds once and keeps, so this front looks
the path up and writes the same status, headers and body the Flask view would,
at a fraction of the cost. Anything it is not sure about (another method, a query
string, If-None-Match, q-values in Accept-Encoding, an unknown or odd path) goes to
Flask unchanged; tests/test_api.py checks the two give identical responses. So does a
document whose first build fails (a damaged run file): Flask's view builds it again
and its error handler answers with the JSON error.
"""

from __future__ import annotations

import re

from backend.resource import REVALIDATE, Resource

_STEP = re.compile(r"/api/runs/([^/]+)/steps/(0|[1-9][0-9]{0,17})\.json")
_DOC = re.compile(r"/api/(prompts|runs|trajectories)/([^/]+)\.json")
_SWEEP = re.compile(r"/api/sweeps/([^/]+)/([^/]+)\.json")


class FastPath:
    def __init__(self, wsgi_app, store, headers: dict[str, str]):
        self.wsgi_app, self.store = wsgi_app, store
        self.headers = list(headers.items())

    def document(self, path: str) -> Resource | None:
        store = self.store
        if path == "/api/index.json":
            return store.index
        m = _STEP.fullmatch(path)
        if m:
            rid, i = m.group(1), int(m.group(2))
            return store.step(rid, i) if rid in store.runs and i < store.steps else None
        m = _DOC.fullmatch(path)
        if m:
            table = {"prompts": store.prompts, "runs": store.runs,
                     "trajectories": store.trajectories}[m.group(1)]
            return table.get(m.group(2))
        m = _SWEEP.fullmatch(path)
        return store.sweeps.get((m.group(1), m.group(2))) if m else None

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD")
        path = environ.get("PATH_INFO", "")
        encodings = environ.get("HTTP_ACCEPT_ENCODING", "")
        if (method not in ("GET", "HEAD") or environ.get("QUERY_STRING")
                or "HTTP_IF_NONE_MATCH" in environ or ";" in encodings
                or not path.isascii() or not path.startswith("/api/")):
            return self.wsgi_app(environ, start_response)
        try:
            res = self.document(path)
        except Exception:  # Flask builds it again; its error handlers answer
            res = None
        if res is None:
            return self.wsgi_app(environ, start_response)
        tokens = {t.strip().lower() for t in encodings.split(",")}
        use_gz = res.gz is not None and ("gzip" in tokens or "*" in tokens)
        body = res.gz if use_gz else res.body
        headers = [("Content-Type", res.mimetype), ("Content-Length", str(len(body))),
                   ("ETag", f'"{res.etag}-gz"' if use_gz else f'"{res.etag}"'),
                   ("Cache-Control", REVALIDATE)]
        if use_gz:
            headers.append(("Content-Encoding", "gzip"))
        if res.gz is not None:
            headers.append(("Vary", "Accept-Encoding"))
        start_response("200 OK", headers + self.headers)
        return [b""] if method == "HEAD" else [body]

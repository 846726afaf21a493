"""The front end at the app root and the bundle's files under bundle/.

Only files inside `frontend/` (no dot-files) and files that the bundle's manifests
reference are served; anything else is a JSON 404.
"""

from __future__ import annotations

from flask import Blueprint, request

from backend.errors import not_found
from backend.payloads import VERSION_CHARS
from backend.resource import IMMUTABLE, REVALIDATE, send
from backend.store import get_store

bp = Blueprint("frontend", __name__)


@bp.get("/")
def root():
    res = get_store().frontend_file("index.html")
    if res is None:
        not_found("the front end is missing (frontend/index.html); the API is at "
                  "api/index.json")
    return send(res)


@bp.get("/bundle/<path:path>")
def bundle_file(path: str):
    store = get_store()
    res = store.bundle_file(path)
    if res is None:
        not_found(f"no bundle file {path[:80]!r}; the run and prompt documents give the URLs")
    sha = store.files[path]
    fresh = bool(sha) and request.args.get("v") == sha[:VERSION_CHARS]
    return send(res, IMMUTABLE if fresh else REVALIDATE)


@bp.get("/<path:rel>")
def frontend_file(rel: str):
    res = None
    if not rel.startswith(("api/", "bundle/")):
        res = get_store().frontend_file(rel)
    if res is None:
        not_found(f"nothing at {'/' + rel[:80]!r}: the API is described in docs/api.md "
                  "(api/index.json lists every prompt and run)")
    return send(res)

"""Every error is JSON `{"error", "message", "status"}`; no traceback reaches a client.

`not_found(...)` and `bad_request(...)` are the lookups' one way to fail; the
handlers turn any HTTP error, and any unexpected exception, into that JSON.
`plain_error(...)` builds the same JSON, with the app's security headers, for the
code that answers outside Flask (the Host check, the server's own 400/431 answers).
The one exception: a browser asking for a page that does not exist (a path outside
api/ and bundle/, with text/html preferred in Accept) gets a small HTML 404 page.
"""

from __future__ import annotations

import hashlib
import html
import json
from typing import NoReturn

from flask import Flask, Response, abort, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed

from backend.format import ArrayReadError


def not_found(message: str) -> NoReturn:
    abort(404, message)


def bad_request(message: str) -> NoReturn:
    abort(400, message)


def plain_error(status: int, name: str, message: str) -> tuple[bytes, list[tuple[str, str]]]:
    """The error's JSON body and its WSGI headers (security headers, no-store, ETag),
    for code that answers without Flask."""
    from backend import SECURITY_HEADERS

    body = (json.dumps({"error": name, "message": message, "status": status}) + "\n").encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store"), ("ETag", f'"{hashlib.sha1(body).hexdigest()}"')]
    return body, headers + list(SECURITY_HEADERS.items())


NOT_FOUND_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Page not found - Noisepath</title></head>
<body><h1>Page not found</h1>
<p>There is no page at <code>{path}</code>.</p>
<p><a href="{root}">Open Noisepath</a></p></body></html>
"""


def wants_page() -> bool:
    """A browser navigating to a page (not the API, not a bundle file): Accept prefers
    text/html to JSON. fetch() and curl send */*, and get JSON."""
    path = request.path
    if path in ("/api", "/bundle") or path.startswith(("/api/", "/bundle/")):
        return False
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def not_found_page() -> Response:
    root = (request.script_root or "") + "/"
    body = NOT_FOUND_PAGE.format(path=html.escape(request.path[:200]), root=html.escape(root))
    resp = Response(body, status=404, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def error_response(status: int, name: str, message: str):
    resp = jsonify(error=name, message=message, status=status)
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _http_error(e: HTTPException):
    status = e.code or 500
    if status >= 500:
        return _unexpected(e)
    if status == 404 and request.method in ("GET", "HEAD") and wants_page():
        return not_found_page()
    message = e.description if isinstance(e.description, str) else e.name
    if status == 404 and e.description == type(e).description:  # routing found nothing
        message = (f"nothing at {request.path!r}: the API is described in docs/api.md "
                   "(api/index.json lists every prompt and run)")
    if isinstance(e, MethodNotAllowed):
        message = f"{request.method} is not allowed here; use GET or HEAD"
    resp = error_response(status, e.name.lower().replace(" ", "_"), message)
    if isinstance(e, MethodNotAllowed) and e.valid_methods:
        resp.headers["Allow"] = ", ".join(e.valid_methods)
    return resp


def _unexpected(e: Exception):
    """Details go to the server log, never to the client."""
    current_app.logger.error("unexpected error on %s %s", request.method, request.path,
                             exc_info=e)
    return error_response(500, "internal_server_error",
                          "the server hit an unexpected problem; it has been logged")


def _unreadable(e: ArrayReadError):
    """A bundle file that broke after start-up: the client learns which, the log too."""
    current_app.logger.error("unreadable bundle file on %s: %s", request.path, e.problem)
    return error_response(500, "bundle_file_unreadable", f"{e.problem.file}: {e.problem.field}: "
                          f"{e.problem.message}")


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(InternalServerError, _unexpected)
    app.register_error_handler(ArrayReadError, _unreadable)
    app.register_error_handler(Exception, _unexpected)

"""Every error is JSON `{"error", "message", "status"}`; no traceback reaches a client.

`not_found(...)` and `bad_request(...)` are the lookups' one way to fail; the
handlers turn any HTTP error, and any unexpected exception, into that JSON.
"""

from __future__ import annotations

from typing import NoReturn

from flask import Flask, abort, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed

from backend.format import ArrayReadError


def not_found(message: str) -> NoReturn:
    abort(404, message)


def bad_request(message: str) -> NoReturn:
    abort(400, message)


def error_response(status: int, name: str, message: str):
    resp = jsonify(error=name, message=message, status=status)
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _http_error(e: HTTPException):
    status = e.code or 500
    if status >= 500:
        return _unexpected(e)
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

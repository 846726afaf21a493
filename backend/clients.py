"""Who is asking the live API (backend/live.py's job queue, backend/speech.py's spoken
prompts): a browser at a network address.

A class behind one router (a school NAT) shares one address, so a client is a
browser, known by an unguessable id the server gives it in an HttpOnly,
SameSite=Strict cookie on its first live request. Stateless: any well-formed id is a
browser; a missing or malformed one gets a new id, never an error. Ids cost nothing
to make, so the limits that use them also cap each address. The address is the
socket's: X-Forwarded-For is never read.
"""

from __future__ import annotations

import re
import secrets

from flask import request
from werkzeug.http import dump_cookie, parse_cookie

BROWSER_COOKIE = "noisepath_live"  # the browser's id for the queue, its jobs and clips
BROWSER_ID = re.compile(r"[A-Za-z0-9_-]{32}")  # secrets.token_urlsafe(24): 192 random bits


def browser_of(environ) -> tuple[str, bool]:
    """(the browser's id, whether it is new): its cookie's when well-formed, else a new
    random one. Kept in the environ, so one request is one browser."""
    if "noisepath.browser" not in environ:
        sent = parse_cookie(environ).get(BROWSER_COOKIE, "")
        fresh = BROWSER_ID.fullmatch(sent) is None
        environ["noisepath.browser"] = (secrets.token_urlsafe(24) if fresh else sent, fresh)
    return environ["noisepath.browser"]


def browser_cookie(environ) -> str | None:
    """The Set-Cookie value that gives a new browser its id, or None."""
    bid, fresh = browser_of(environ)
    if not fresh:
        return None
    return dump_cookie(BROWSER_COOKIE, bid, path=environ.get("SCRIPT_NAME", "") + "/",
                       httponly=True, samesite="Strict")


def browser() -> str:
    """The id of the browser making this request."""
    return browser_of(request.environ)[0]


def address() -> str:
    """The client's address: the socket's (waitress drops proxy headers; this never
    reads X-Forwarded-For)."""
    return request.remote_addr or "?"


def give_browser_its_id(resp):
    """after_request of a blueprint: a new browser's answer carries its id's cookie."""
    cookie = browser_cookie(request.environ)
    if cookie is not None:
        resp.headers.add("Set-Cookie", cookie)
    return resp

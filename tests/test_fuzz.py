"""Thousands of random and hostile requests: never a 5xx, never a traceback.

Requests come from the OpenAPI paths filled with valid and hostile values (path
traversal, encoded slashes, NUL bytes, huge and negative numbers, unicode), from
arbitrary raw paths (any bytes, as a WSGI server hands them over), with any method
and odd headers: about 3,500 per run; 40,000 more with `pytest -m slow tests/test_fuzz.py`.
"""

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder, run_wsgi_app

from backend import SECURITY_HEADERS
from tests.test_api import SPEC

FAST = settings(max_examples=1500, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=20000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

HOSTILE = [
    "..", ".", "...", "%2e%2e", "%2E%2E%2F", "..%2f..%2f", "%2f", "%5c", "\\", "..\\..",
    "%00", "%00.json", "a%00b", "%ff", "%c0%ae%c0%ae", "%25", "%", "~", "//", "/etc/passwd",
    "-1", "-0", "0", "00", "1", "4", "8", "16", "99", "1e3", "0x10", "1.5", "NaN", "inf",
    "9" * 30, "9" * 5000, "-" + "9" * 30, "\u0663", "\uff11", "\u00e9t\u00e9", "\U0001f600",
    "\u202e", "<script>", "'\"", " ", "combined", "index", "runs", "bundle.json",
    ".work", ".tmp", "empty", "empty--s1-g0", "empty--s9-g0", "run.json", "latents.npy",
]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND",
           "CONNECT", "get", "BREW"]


@pytest.fixture(scope="module")
def app(synthetic_app):
    return synthetic_app


@pytest.fixture(scope="module")
def valid(app):
    """Real ids and file names, so the fuzzer reaches the views behind the lookups."""
    store = app.extensions["noisepath.store"]
    return sorted(set(store.runs) | set(store.prompts) | {"1", "2", "combined", "4", "8", "0"}
                  | {"/".join(f.split("/")[-2:]) for f in store.files})


def segment(valid):
    return st.one_of(st.sampled_from(HOSTILE), st.sampled_from(valid),
                     st.text(max_size=12), st.integers(-10**30, 10**30).map(str))


def filled_spec_path(valid):
    def fill(template, values):
        it = iter(values)
        return re.sub(r"\{\w+\}", lambda m: next(it), template)
    return st.builds(fill, st.sampled_from(sorted(SPEC["paths"])),
                     st.lists(segment(valid), min_size=3, max_size=3))


def check(method: str, resp_status: int, headers, body: bytes, path: str = ""):
    assert resp_status < 500, body[:300]
    assert b"Traceback" not in body
    if headers.get("Content-Type", "").startswith("text/html") and resp_status >= 400:
        # a browser's unknown page: the HTML 404 (never for the API or bundle files)
        assert resp_status == 404 and not path.startswith(("/api/", "/bundle/"))
    elif resp_status >= 400 and method != "HEAD":
        err = json.loads(body)
        assert err["status"] == resp_status and err["message"]
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value


def request(app, method, path, headers):
    client = app.test_client()
    try:
        r = client.open(path, method=method, headers=headers)
    except (ValueError, UnicodeError):  # the client refused to build it; the server never sees it
        return
    check(method, r.status_code, r.headers, r.data, r.request.path)


headers_st = st.dictionaries(
    st.sampled_from(["If-None-Match", "Accept-Encoding", "Range", "If-Modified-Since",
                     "Accept", "X-Forwarded-For"]),
    st.one_of(st.sampled_from(['*', '"x"', 'W/"x"', "gzip", "gzip;q=0", "br;q=1.5",
                               "bytes=0-1", "bytes=-1", "zzz", "text/html", "*/*"]),
              st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                      max_size=20)),
    max_size=3)


def _spec_paths_never_fail(app, valid, settings_):
    @settings_
    @given(path=filled_spec_path(valid), method=st.sampled_from(METHODS), headers=headers_st,
           query=st.sampled_from(["", "?v=0", "?v=" + "a" * 5000, "?%00", "?x=%ff"]))
    def run(path, method, headers, query):
        request(app, method, path + query, headers)
    run()


def _raw_paths_never_fail(app, valid, settings_):
    """Any bytes as PATH_INFO, as waitress passes them (latin-1 decoded, unquoted)."""
    prefixes = st.sampled_from(["/", "/api/", "/api/runs/", "/api/runs/empty--s1-g0/",
                                "/api/runs/empty--s1-g0/attention/", "/bundle/",
                                "/bundle/runs/", "/api/sweeps/empty/", "/api/prompts/"])

    @settings_
    @given(prefix=prefixes, tail=st.binary(max_size=40), method=st.sampled_from(METHODS))
    def run(prefix, tail, method):
        environ = EnvironBuilder(method=method).get_environ()
        environ["PATH_INFO"] = prefix + tail.decode("latin-1")
        body_iter, status, headers = run_wsgi_app(app, environ, buffered=True)
        check(method, int(status.split()[0]), headers, b"".join(body_iter), environ["PATH_INFO"])
    run()


def test_spec_paths_with_hostile_values_never_fail(app, valid):
    _spec_paths_never_fail(app, valid, FAST)


def test_raw_paths_never_fail(app, valid):
    _raw_paths_never_fail(app, valid, FAST)


@pytest.mark.parametrize("segment_", HOSTILE)
def test_every_hostile_segment_in_every_position_is_4xx(app, segment_):
    for template in SPEC["paths"]:
        request(app, "GET", template.replace("{", "").replace("}", "")
                .replace("run_id", "empty--s1-g0").replace("prompt_id", "empty")
                .replace("res", "combined").replace("seed", segment_)
                .replace("step", segment_).replace("token", segment_)
                .replace("path", segment_), {})


@pytest.mark.slow
def test_spec_paths_never_fail_many(app, valid, asked_for):
    _spec_paths_never_fail(app, valid, SLOW)


@pytest.mark.slow
def test_raw_paths_never_fail_many(app, valid, asked_for):
    _raw_paths_never_fail(app, valid, SLOW)


HOST_PARTS = ["localhost", "127.0.0.1", "[::1]", "::1", "LOCALHOST.", "evil.example",
              "localhost.evil.example", "127.0.0.1.nip.io", "0.0.0.0", "[::2]", "", " ", "\t",
              "@", "localhost@evil.example", "%6cocalhost", "[", "]", ":", ":80", ":99999",
              ":-1", "\u0131ocalhost", "localhost\x00", "a" * 300]


@settings(max_examples=400, deadline=None, database=None)
@given(host=st.one_of(
    st.lists(st.sampled_from(HOST_PARTS), min_size=1, max_size=3).map("".join),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=30)),
    path=st.sampled_from(["/api/index.json", "/", "/nope", "/bundle/x.npy",
                          "/api/runs/empty--s1-g0.json"]))
def test_hostile_host_headers_are_answered_or_refused_as_400_json(app, host, path):
    """A Host is answered only when its name is one of the loopback names (with any port);
    anything else is 400 host_not_allowed JSON with the security headers (DNS rebinding)."""
    from backend.hosts import LOOPBACK_HOSTS, host_name
    environ = EnvironBuilder(path=path).get_environ()
    environ["HTTP_HOST"] = host
    body_iter, status, headers = run_wsgi_app(app, environ, buffered=True)
    body, code = b"".join(body_iter), int(status.split()[0])
    check("GET", code, headers, body, path)
    if host_name(host) in LOOPBACK_HOSTS:
        assert code != 400 or json.loads(body)["error"] != "host_not_allowed"
    else:
        assert code == 400 and json.loads(body)["error"] == "host_not_allowed"

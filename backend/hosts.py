"""Which Host headers the app answers: the defence against DNS rebinding.

A page on another site can make a browser resolve its own name (evil.example) to
127.0.0.1 and then read whatever a local server answers, since to the browser it is
the same origin. Such requests still say `Host: evil.example`, so `HostCheck` answers
only the names the server was started for (`allowed_hosts(...)`: the loopback names,
the address it listens on, the LAN addresses it prints, and `--allowed-host NAME`),
with or without a port, and a 400 JSON error otherwise. A request without a Host
header (HTTP/1.0 tools) is answered: no browser sends one.
"""

from __future__ import annotations

import re

from backend.errors import plain_error

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ANY_HOST = "*"
_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]]+))(?::[0-9]{1,5})?")


def host_name(header: str) -> str | None:
    """The name of a Host header value without its port, lower case and without a
    trailing dot ("LocalHost.:8000" -> "localhost", "[::1]:80" -> "::1"); None when
    it is not of the form name[:port] or [ipv6][:port]."""
    m = _HOST.fullmatch(header.strip())
    if m is None:
        return None
    return normalize(m.group("v6") or m.group("name"))


def normalize(name: str) -> str:
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name[:-1] if name.endswith(".") and len(name) > 1 else name


def allowed_hosts(listen_host: str, lan: list[str], extra: list[str]) -> list[str]:
    """The names a server listening on listen_host answers to."""
    names = list(LOOPBACK_HOSTS) + list(lan) + list(extra)
    if listen_host:
        names.append(listen_host)
    return sorted({host_name(n) or normalize(n) for n in names})


class HostCheck:
    """WSGI middleware: a request whose Host is not allowed gets 400 JSON."""

    def __init__(self, app, allowed):
        self.app = app
        self.allowed = {host_name(h) or normalize(h) for h in allowed}

    def __call__(self, environ, start_response):
        header = environ.get("HTTP_HOST")
        if header is None or ANY_HOST in self.allowed or host_name(header) in self.allowed:
            return self.app(environ, start_response)
        shown = header[:80]
        body, headers = plain_error(
            400, "host_not_allowed",
            f"this server answers only for the addresses it printed at start-up, not for "
            f"the host {shown!r} (a page of another site may be trying to read it); to "
            f"allow that name, start it with --allowed-host {host_name(header) or 'NAME'}")
        start_response("400 Bad Request", headers)
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

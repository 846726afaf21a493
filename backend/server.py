"""The waitress server `noisepath serve` runs: `make_server(app, sock, ...)`.

Plain waitress stops accepting at `connection_limit` open connections, so 1,000
sockets that send a byte every few seconds lock every other client out, for as long
as they stay. This server keeps room for new clients:

- a connection must deliver a whole request within `request_timeout` seconds of its
  first byte, and one that sends nothing is closed `idle_timeout` seconds after its
  last answer (trickled bytes and blank lines do not count as progress);
- one client address holds at most `per_client_limit` connections: another one from
  it closes that address's stalest waiting connection (the one longest without an
  answer), so a crowd from one machine never fills the server;
- at `connection_limit`, a new client gets in by closing the stalest waiting
  connection of the address that holds the most;
- a connection whose request is being answered is never closed for these reasons;
  a response the client stops reading is closed after `idle_timeout` seconds without
  progress.

waitress's own answers to requests it cannot parse (400 bad request line, 431
oversized headers, 413, 501) are the app's JSON errors with its security headers
(backend/errors.py, docs/api.md "What the server guarantees").
"""

from __future__ import annotations

import logging
import re
import socket
import time

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher

from backend.errors import plain_error

CONNECTION_LIMIT = 1000      # a class of 200 browsers with a few connections each
PER_CLIENT_LIMIT = 250       # a quarter: one machine (or a NAT, a proxy) never fills the server
REQUEST_TIMEOUT = 20         # seconds from a request's first byte to its end
IDLE_TIMEOUT = 30            # seconds a connection may wait without a request
CLEANUP_INTERVAL = 1         # seconds between checks of the timeouts
MAX_HEADER_BYTES = 64 << 10  # browsers send a few KiB
MAX_BODY_BYTES = 2 << 20     # a spoken clip (backend/speech.py's MAX_UPLOAD); JSON bodies
                             # are limited by the app (backend/live.py)
log = logging.getLogger("noisepath.server")

_HINTS = {
    400: "the request could not be read as HTTP/1.1",
    413: "the app reads request bodies of at most 2 MB",
    431: "the request's headers are too large",
}


class JsonErrorTask(ErrorTask):
    """waitress's answer to a request it could not parse, as the app's JSON error."""

    def execute(self):
        e = self.request.error
        detail = re.sub(r"\s+", " ", str(e.body)).strip()[:200]
        message = f"{_HINTS.get(e.code, e.reason.lower())} ({detail})" if detail else \
            _HINTS.get(e.code, e.reason.lower())
        body, headers = plain_error(e.code, e.reason.lower().replace(" ", "_"), message)
        self.status = f"{e.code} {e.reason}"
        self.response_headers.extend(h for h in headers if h[0] != "Content-Length")
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class GuardedChannel(HTTPChannel):
    """One client connection, with the times the server's limits are measured from."""

    error_task_class = JsonErrorTask

    def __init__(self, server, sock, addr, adj, map=None):
        self.waiting_since = time.monotonic()  # connected, or answered its last request
        self.partial_since = None              # the first byte of the request awaited
        self.client = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        super().__init__(server, sock, addr, adj, map=map)
        server.joined(self)

    def received(self, data):
        if data and self.partial_since is None and not self.requests:
            self.partial_since = time.monotonic()
        return super().received(data)

    def service(self):
        """Runs in a worker thread; the answer restarts the wait for the next request."""
        self.waiting_since, self.partial_since = time.monotonic(), None
        try:
            super().service()
        finally:
            self.waiting_since = time.monotonic()

    def del_channel(self, map=None):
        super().del_channel(map)
        self.server.left(self)

    @property
    def busy(self) -> bool:
        """A request of this connection is queued or being answered."""
        return bool(self.requests)

    def stalled_for(self, clock: float, wall: float) -> float:
        """Seconds without progress: since the last answer, or, while a response is
        still being sent, since the client last took some of it."""
        if self.total_outbufs_len:
            return wall - self.last_activity
        return clock - self.waiting_since

    def timed_out(self, clock: float, wall: float, server) -> bool:
        if self.busy or self.will_close:
            return False
        if self.total_outbufs_len:
            return wall - self.last_activity > server.idle_timeout
        if self.partial_since is not None:
            return clock - self.partial_since > server.request_timeout
        return clock - self.waiting_since > server.idle_timeout


class GuardedServer(TcpWSGIServer):
    channel_class = GuardedChannel

    def __init__(self, *args, request_timeout: float, idle_timeout: float,
                 per_client_limit: int, **kw):
        self.request_timeout, self.idle_timeout = request_timeout, idle_timeout
        self.per_client_limit = per_client_limit
        self.clients: dict[str, set[GuardedChannel]] = {}
        self.evicted = 0
        super().__init__(*args, **kw)

    # -- per-client accounting
    def joined(self, channel: GuardedChannel) -> None:
        peers = self.clients.setdefault(channel.client, set())
        peers.add(channel)
        if _open(peers) > self.per_client_limit:
            victim = _stalest(peers, exclude=channel)
            self._evict(victim or channel)

    def left(self, channel: GuardedChannel) -> None:
        peers = self.clients.get(channel.client)
        if peers is not None:
            peers.discard(channel)
            if not peers:
                del self.clients[channel.client]

    def _evict(self, channel: GuardedChannel) -> None:
        channel.will_close = True  # closed by the loop, before anything else is accepted
        self.evicted += 1

    def _make_room(self) -> None:
        """At the connection limit: close the stalest waiting connection of the client
        that holds the most, unless a closing one will already make room."""
        if any(c.will_close for c in self.active_channels.values()):
            return
        for peers in sorted(self.clients.values(), key=_open, reverse=True):
            victim = _stalest(peers)
            if victim is not None:
                self._evict(victim)
                return

    # -- waitress hooks
    def readable(self):
        wall = time.time()
        if wall >= self.next_channel_cleanup:
            self.next_channel_cleanup = wall + self.adj.cleanup_interval
            self.maintenance(wall)
        if not self.accepting:
            return False
        if len(self._map) >= self.adj.connection_limit:
            if not self.in_connection_overflow:
                log.warning("%d connections open: closing the stalest to let new clients in",
                            len(self._map))
            self.in_connection_overflow = True
            self._make_room()
            return False
        self.in_connection_overflow = False
        return True

    def maintenance(self, now):
        clock = time.monotonic()
        for channel in list(self.active_channels.values()):
            if channel.timed_out(clock, now, self):
                channel.will_close = True


def _open(peers) -> int:
    return sum(1 for c in peers if not c.will_close)


def _stalest(peers, exclude=None) -> GuardedChannel | None:
    clock, wall = time.monotonic(), time.time()
    waiting = [c for c in peers if c is not exclude and not c.busy and not c.will_close]
    return max(waiting, key=lambda c: c.stalled_for(clock, wall), default=None)


def make_server(app, sock: socket.socket, threads: int, *,
                connection_limit: int = CONNECTION_LIMIT,
                per_client_limit: int = PER_CLIENT_LIMIT,
                request_timeout: float = REQUEST_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT,
                cleanup_interval: int = CLEANUP_INTERVAL) -> GuardedServer:
    """A waitress server for app on the listening socket sock (what
    waitress.create_server builds for one socket, with the guarded classes)."""
    adj = Adjustments(
        sockets=[sock], threads=threads, connection_limit=connection_limit,
        asyncore_use_poll=True,  # poll: no 1024-descriptor limit
        backlog=2048, ident="",  # no Server header
        cleanup_interval=cleanup_interval,  # maintenance() applies the timeouts
        max_request_header_size=MAX_HEADER_BYTES, max_request_body_size=MAX_BODY_BYTES,
        clear_untrusted_proxy_headers=True)
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    return GuardedServer(
        app, map={}, _sock=sock, dispatcher=dispatcher, adj=adj, bind_socket=False,
        sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()),
        request_timeout=request_timeout, idle_timeout=idle_timeout,
        per_client_limit=per_client_limit)

"""Serving the proxy: uvicorn with the connection limits a public gateway needs.

uvicorn's fast HTTP parser (httptools) has no bound on header size and no deadline for a client
to finish its headers, and its concurrency limit counts idle connections: 2,000 slow-header
connections made every other client get 503, and 20 unfinished 10 MB headers grew memory by
200 MB. :class:`GuardedProtocol` adds what is missing, at the connection:

- headers larger than ``max_header_bytes`` are answered 431 and the connection closed, before
  the bytes reach the parser;
- a connection that has not finished its request headers within ``header_timeout_s`` (from
  connect, or from the end of its previous response) is answered 408 and closed;
- at most ``max_pending`` connections may be waiting for their headers (new connections, and
  kept-alive ones that have begun a request); beyond that a new connection evicts the oldest
  waiting connection of its own client address when that address holds more than its fair
  share of the waiting list, else the oldest waiting connection overall (a well-behaved client
  sends its headers in one packet, so under a slowloris flood it is the attacker's stalled
  connections that go, and a flooding address pushes out its own first). An idle kept-alive connection between requests is
  not waiting: uvicorn's keep-alive timeout closes it, and no flood can evict it;
- malformed HTTP gets an OpenAI-shaped 400.

:class:`InFlightLimit` bounds requests being served at once (``max_in_flight``) and answers
the excess with an OpenAI-shaped 503 with ``Retry-After``, instead of uvicorn's plain text.
Everything a client can see from the gateway is in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    max_pending: int = 512
    max_in_flight: int = 1024
    keep_alive_s: float = 5.0


def error_body(message: str, kind: str, code: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def _raw_response(status: int, message: str, code: str) -> bytes:
    body = error_body(message, "invalid_request_error", code)
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header size and time limits (see the module docstring).

    Use :func:`guarded_protocol` to get a subclass bound to one server's limits.
    """

    limits: ClassVar[ServerLimits] = ServerLimits()
    #: Connections waiting for request headers, oldest first (one registry per server).
    waiting: ClassVar[OrderedDict[GuardedProtocol, float]] = OrderedDict()
    waiting_by_peer: ClassVar[dict[str, OrderedDict[GuardedProtocol, float]]] = {}
    counters: ClassVar[dict[str, int]] = {}
    #: However many addresses are waiting, each may hold this many before it evicts its own.
    MIN_FAIR_SHARE = 8

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._tail = b""
        self._idle = False
        self._wait_for_headers()

    def _wait_for_headers(self) -> None:
        """Start the deadline and the waiting-list entry for the next request's headers."""
        self._header_bytes, self._tail = 0, b""
        self._in_headers = True
        now = self.loop.time()
        self.waiting[self] = now
        peer = self.client[0] if self.client else ""
        mine = self.waiting_by_peer.setdefault(peer, OrderedDict())
        mine[self] = now
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._too_slow)
        while len(self.waiting) > self.limits.max_pending:
            share = max(self.MIN_FAIR_SHARE, self.limits.max_pending // len(self.waiting_by_peer))
            victim = next(iter(mine)) if len(mine) > share else next(iter(self.waiting))
            self._count("evicted")
            victim._refuse(408, "Too many connections waiting to send request headers.", "request_timeout")  # fmt: skip

    def _headers_done(self) -> None:
        self._in_headers = False
        if self.waiting.pop(self, None) is not None:
            peer = self.client[0] if self.client else ""
            mine = self.waiting_by_peer.get(peer)
            if mine is not None:
                mine.pop(self, None)
                if not mine:
                    del self.waiting_by_peer[peer]
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def _too_slow(self) -> None:
        self._header_timer = None
        if self._in_headers:
            self._count("header_timeout")
            self._refuse(408, "Timed out reading the request headers.", "request_timeout")

    def _refuse(self, status: int, message: str, code: str) -> None:
        self._headers_done()
        if not self.transport.is_closing():
            self.transport.write(_raw_response(status, message, code))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._idle:
            self._idle = False
            self._wait_for_headers()  # a kept-alive connection begins its next request
        if self._in_headers:
            # Count header bytes up to the blank line that ends them; body bytes in the same
            # chunk do not count. Checked before the parser sees (and buffers) the data.
            seen = self._tail + data
            end = seen.find(b"\r\n\r\n")
            size = self._header_bytes + (len(data) if end < 0 else end + 4 - len(self._tail))
            if size > self.limits.max_header_bytes:
                self._count("header_too_large")
                self._refuse(431, "Request headers too large.", "request_header_fields_too_large")
                return
            self._header_bytes, self._tail = size, seen[-3:]
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._headers_done()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._idle = True  # between requests: the keep-alive timeout's business

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._count("bad_http")
        self._refuse(400, f"Malformed HTTP request: {msg}", "bad_http_request")


def guarded_protocol(limits: ServerLimits) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` subclass with its own limits and waiting-connection registry."""
    return type(
        "BoundGuardedProtocol",
        (GuardedProtocol,),
        {"limits": limits, "waiting": OrderedDict(), "waiting_by_peer": {}, "counters": {}},
    )


class InFlightLimit:
    """ASGI middleware: at most ``limit`` HTTP requests served at once; the rest get 503."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0
        self.refused = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.refused += 1
            body = error_body(
                "The gateway is at capacity; retry shortly.", "server_error", "overloaded"
            )
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"retry-after", b"1"),
                (b"content-length", str(len(body)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit to the hard limit (each connection is a file)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _DropClientNoise(logging.Filter):
    """uvicorn logs a warning for every malformed request: a client could fill the disk with
    them. They are counted in /metrics (``distillwatch_connections_refused``) instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Invalid HTTP request")


def serve(app: Any, host: str, port: int, protocol: type[GuardedProtocol]) -> None:
    """Run ``app`` with uvicorn behind ``protocol``'s guards, until SIGINT/SIGTERM."""
    import uvicorn

    limits = protocol.limits
    raise_open_file_limit()
    logging.getLogger("uvicorn.error").addFilter(_DropClientNoise())
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", http=protocol,
        timeout_keep_alive=int(limits.keep_alive_s), limit_concurrency=None,
        timeout_graceful_shutdown=15,
    )  # fmt: skip
    uvicorn.Server(config).run()

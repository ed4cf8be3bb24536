"""The OpenAI-compatible enforcing reverse proxy (Starlette + aiohttp's client, served by uvicorn).

Per request: authenticate (bearer key -> account), read a bounded body, check the request's shape
(:mod:`distillwatch.openai_api`; malformed messages are refused with 400, unusual ones are served
and flagged), gather facts (batch verdict, standing decision, chain-of-thought elicitation, links
from a new account to a flagged cluster), decide, then refuse (403/429), shape (cap the output
tokens, strip reasoning from JSON and from event streams) or pass the request through; journal
the exchange (Contract 1) and every non-allow decision before the response completes.

Routes: ``/v1/chat/completions``, ``/v1/responses``, ``/v1/completions``, ``/v1/embeddings`` (all
enforced), ``/v1/models``, ``/healthz``, ``/metrics`` and the token-protected ``/admin/*``.
State-backend failures follow the policy's fail_open choice (see :mod:`.enforcer`); upstream
failures become OpenAI-shaped 502/504 errors; every response a client sees, 404s and the
server's own 400/408/431/503 included, is in OpenAI's error shape; nothing a client sends
produces a 500 (a bug would, and is counted in ``/metrics``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from distillwatch.enforce.decide import Decision
from distillwatch.enforce.enforcer import Enforcer
from distillwatch.enforce.policy import Policy
from distillwatch.enforce.server import InFlightLimit, ServerLimits, guarded_protocol
from distillwatch.enforce.signals import key_account
from distillwatch.enforce.sink import FLUSH_SECONDS
from distillwatch.errors import RecordError, StateError
from distillwatch.openai_api import (
    EventSplitter,
    Messages,
    ResponseSummary,
    StreamAppender,
    StreamCapper,
    StreamReader,
    StreamShaper,
    cap_answer,
    encode_event,
    event_name,
    parse_event,
    request_messages,
    strip_reasoning,
    summarise_response,
)
from distillwatch.provenance.watermark import REQUEST_HEADER as WATERMARK_HEADER
from distillwatch.schema import DEFAULT_MAX_TEXT_CHARS, parse_ts
from distillwatch.sharing.keys import SharingKey

ENFORCED_ROUTES = ("/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/embeddings")
MAX_LOGGED_TEXT = DEFAULT_MAX_TEXT_CHARS
#: Request fields the proxy reads or rewrites: they must have the type the API documents.
TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
#: Streams whose answer text response hooks may extend.
STREAM_TEXT_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
MAX_ADMIN_TTL_SECONDS = 366 * 86400
#: Accounts one /admin/extend call may set (a campaign action from the workspace, in chunks).
MAX_ADMIN_BATCH = 5_000
log = logging.getLogger("distillwatch.proxy")

ResponseHook = Callable[[dict[str, Any], Decision, dict[str, Any]], dict[str, Any]]


@dataclass
class ProxyConfig:
    upstream: str
    policy: Policy
    store: Path | None = None
    verdicts: Path | None = None
    redis_url: str | None = None
    shadow: bool = False
    keys: dict[str, str] = field(default_factory=dict)  # sha256(api key) -> account id
    payments: dict[str, str] = field(default_factory=dict)  # account id -> payment fingerprint
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    tls_header: str = "x-ja4"
    replay_time_header: str | None = None
    admin_token: str | None = None
    max_body_bytes: int = 2 * 1024 * 1024
    body_timeout_s: float = 15.0
    upstream_timeout_s: float = 120.0
    #: Seconds an idle pooled upstream connection is reused for; keep it below the upstream's own
    #: keep-alive timeout (uvicorn, which vLLM and many servers run on, closes after 5 s).
    upstream_keepalive_s: float = 4.0
    limits: ServerLimits = field(default_factory=ServerLimits)
    spool_fsync: str = "interval"
    #: Run micro-batch detection on the gateway's own log this often (seconds; replayed time
    #: when a replay-time header is set, else wall time). None: only on POST /admin/detect.
    detect_every_s: float | None = None
    #: STIX indicator bundles to link fresh accounts from (hot-reloaded), and the sharing
    #: group's key their private values are hashed with.
    indicators: list[Path] = field(default_factory=list)
    sharing_key: SharingKey | None = None
    #: Signer name -> public keys (``--trust-keys``): only bundles they signed apply.
    trusted_keys: dict[str, list[Any]] | None = None
    #: Seconds the store writer gathers journaled exchanges before one transaction folds them.
    store_fold_seconds: float = FLUSH_SECONDS
    #: Streaming evidence on every request (per-account counters and sketches, scored with the
    #: batch rule table); ``accounts_file`` gives it the sign-up records.
    stream: bool = False
    accounts_file: Path | None = None
    #: Extension point for provenance: called on every shaped JSON response (canaries, marks).
    response_hooks: list[ResponseHook] = field(default_factory=list)


def openai_error(status: int, message: str, kind: str, code: str | None = None,
                 headers: dict[str, str] | None = None, param: str | None = None) -> JSONResponse:  # fmt: skip
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status_code=status,
        headers=headers,
    )


def _bound(text: str) -> str:
    # One character over the store's cap: validation then cuts it and marks the row truncated.
    return text[: MAX_LOGGED_TEXT + 1]


class Metrics:
    def __init__(self, proxy: Proxy) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "distillwatch_requests",
            "Requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "distillwatch_decisions",
            "Decisions by action (shadow included)",
            ["action", "shadow"],
            registry=self.registry,
        )
        self.internal_errors = Counter(
            "distillwatch_internal_errors", "Requests that failed inside the proxy (bugs)",
            ["route"], registry=self.registry,
        )  # fmt: skip
        self.upstream_retries = Counter(
            "distillwatch_upstream_retries",
            "Requests resent once because a pooled upstream connection was closed under them",
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "distillwatch_upstream_latency_seconds", "Upstream latency", registry=self.registry
        )
        self.decision_latency = Histogram(
            "distillwatch_decision_latency_seconds", "Time to decide", registry=self.registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
        )  # fmt: skip
        self.registry.register(_LiveCollector(proxy))


class _LiveCollector:
    """Figures read at scrape time: the exchange log's sink and the connection guards."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def collect(self):  # type: ignore[no-untyped-def]
        sink = self.proxy.enforcer.sink
        logged = CounterMetricFamily(
            "distillwatch_log_exchanges", "Exchanges journaled and folded into the store, by outcome",
            labels=["outcome"],
        )  # fmt: skip
        for outcome in ("written", "rejected", "flagged", "recovered"):
            logged.add_metric([outcome], getattr(sink, outcome) if sink else 0)
        yield logged
        backlog = GaugeMetricFamily(
            "distillwatch_log_backlog_bytes", "Journaled bytes not yet folded into the store"
        )
        backlog.add_metric([], sink.backlog_bytes() if sink else 0)
        yield backlog
        guards = CounterMetricFamily(
            "distillwatch_connections_refused", "Connections closed by the gateway's guards",
            labels=["reason"],
        )  # fmt: skip
        counters = dict(self.proxy.protocol.counters)
        counters["over_capacity"] = self.proxy.asgi.refused
        for reason in (
            "header_timeout",
            "header_too_large",
            "evicted",
            "bad_http",
            "over_capacity",
        ):
            guards.add_metric([reason], counters.get(reason, 0))
        yield guards
        waiting = GaugeMetricFamily(
            "distillwatch_connections_waiting_for_headers", "Connections still sending headers"
        )
        waiting.add_metric([], len(self.proxy.protocol.waiting))
        yield waiting


@dataclass(slots=True)
class _Call:
    """One enforced request on its way through the proxy."""

    route: str
    account: str
    key_hash: str
    body: dict[str, Any]
    raw: bytes
    messages: Messages
    ip: str | None
    tls: str | None
    user_agent: str | None
    when: datetime
    decision: Decision = field(default_factory=lambda: Decision("allow"))
    enforce: bool = True  # False in shadow mode: decide and log, change nothing
    modified: bool = False
    started: float = 0.0

    @property
    def shaping(self) -> bool:
        return self.enforce and self.decision.action == "shape"


class Proxy:
    """Holds the proxy's state; ``asgi`` is the application to serve (``app`` without the
    in-flight limit), ``protocol`` the uvicorn protocol class with the connection guards."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.enforcer = Enforcer(config.policy, config.verdicts, config.store, config.redis_url,
                                 config.shadow, config.payments, config.spool_fsync,
                                 config.store_fold_seconds, config.indicators,
                                 config.sharing_key, stream=config.stream,
                                 accounts_file=config.accounts_file,
                                 trusted_keys=config.trusted_keys)  # fmt: skip
        self.state = self.enforcer.state
        self.verdicts = self.enforcer.verdicts
        self.recent = self.enforcer.recent
        self.client: aiohttp.ClientSession | None = None
        self.upstream_base = config.upstream.rstrip("/")
        self.upstream_error: str | None = None
        self.protocol = guarded_protocol(config.limits)
        #: Micro-batch detection (POST /admin/detect, --detect-every): one at a time.
        self.latest_replayed: datetime | None = None
        self._detect_lock = asyncio.Lock()
        self._next_detect: datetime | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.detect_error: str | None = None
        self.last_detect: dict[str, Any] | None = None
        self.metrics = Metrics(self)
        routes = [
            *(
                Route(path, self._guard(self.enforced), methods=["POST"])
                for path in ENFORCED_ROUTES
            ),
            Route("/v1/models", self._guard(self.models), methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            Route("/admin/decisions", self._guard(self.admin_decisions), methods=["GET"]),
            Route("/admin/detect", self._guard(self.admin_detect), methods=["POST"]),
            Route("/admin/lift", self._guard(self.admin_lift), methods=["POST"]),
            Route("/admin/extend", self._guard(self.admin_extend), methods=["POST"]),
            Route(
                "/admin/allowlist",
                self._guard(self.admin_allowlist),
                methods=["GET", "POST", "DELETE"],
            ),
        ]
        self.app = Starlette(
            routes=routes,
            lifespan=self._lifespan,
            exception_handlers={HTTPException: self._http_error, Exception: self._crash},
        )
        self.asgi = InFlightLimit(self.app, config.limits.max_in_flight)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette):  # type: ignore[no-untyped-def]
        # aiohttp's client, not httpx: its C HTTP parser and lighter request path take about
        # 0.4 ms off every proxied request on this hardware (benchmarks/proxy_overhead.py).
        self.client = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.upstream_timeout_s, connect=5.0),
            connector=aiohttp.TCPConnector(
                limit=512, keepalive_timeout=self.config.upstream_keepalive_s
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        self.enforcer.start()
        ticker = None
        if self.config.detect_every_s and not self.config.replay_time_header and self.enforcer.sink:
            ticker = asyncio.get_running_loop().create_task(self._detect_ticker())
        try:
            yield
        finally:
            if ticker is not None:
                ticker.cancel()
            for task in list(self._background):
                task.cancel()
            await self.client.close()
            await self.enforcer.close()

    async def _detect_ticker(self) -> None:
        """--detect-every in wall time. A failing micro-batch is reported, never fatal."""
        while True:
            await asyncio.sleep(self.config.detect_every_s or 60)
            try:
                await self._micro_batch()
            except Exception as exc:
                self.detect_error = f"{type(exc).__name__}: {str(exc)[:200]}"

    # -- errors -------------------------------------------------------------------------------
    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = {404: f"Unknown path {request.url.path[:200]!r}.",
                   405: f"Method {request.method[:10]} not allowed on {request.url.path[:200]!r}."}.get(status, "Request refused.")  # fmt: skip
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(status)
        return self._count(request.url.path if status != 404 else "<unknown>",
                           openai_error(status, message, "invalid_request_error", code))  # fmt: skip

    async def _crash(self, request: Request, exc: Exception) -> Response:
        self.metrics.internal_errors.labels(request.url.path[:64]).inc()
        log.error("internal error on %s", request.url.path[:64], exc_info=exc)
        return openai_error(500, "Internal error in the gateway.", "server_error", "internal_error")

    def _guard(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:  # fmt: skip
        """A handler that answers an OpenAI-shaped 500 (counted) instead of raising."""

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception:
                log.exception("internal error on %s", request.url.path[:200])
                self.metrics.internal_errors.labels(request.url.path[:64]).inc()
                return self._count(request.url.path, openai_error(
                    500, "Internal error in the gateway.", "server_error", "internal_error"))  # fmt: skip

        return guarded

    # -- identity and input ---------------------------------------------------------------------
    def _account(self, request: Request) -> tuple[str, str] | JSONResponse:
        key = _bearer(request.headers.get("authorization", ""))
        if key is None:
            return openai_error(
                401, "Missing bearer API key.", "invalid_request_error", "missing_api_key"
            )
        if len(key) > 512 or not key.isprintable():
            return openai_error(401, "Invalid API key.", "invalid_request_error", "invalid_api_key")
        digest = hashlib.sha256(key.encode()).hexdigest()
        if self.config.keys:
            account = self.config.keys.get(digest)
            if account is None:
                return openai_error(
                    401, "Invalid API key.", "invalid_request_error", "invalid_api_key"
                )
        else:
            account = key_account(key)
        return account, "kh-" + digest[:16]

    def _client_ip(self, request: Request) -> str | None:
        peer = request.client.host if request.client else None
        if not peer or not self.config.trusted_proxies:
            return peer
        try:
            peer_ip = ipaddress.ip_address(peer)
        except ValueError:
            return peer
        if not any(peer_ip in net for net in self.config.trusted_proxies):
            return peer
        # Walk X-Forwarded-For from the right: the first hop we do not trust is the client.
        hops = [
            h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()
        ]
        for hop in reversed(hops[-32:]):
            try:
                hop_ip = ipaddress.ip_address(hop)
            except ValueError:
                return peer
            if not any(hop_ip in net for net in self.config.trusted_proxies):
                return str(hop_ip)
        return peer

    def _now(self, request: Request) -> datetime | JSONResponse:
        name = self.config.replay_time_header
        if name and name.lower() in request.headers:
            try:
                when = parse_ts(request.headers[name.lower()], name)
            except RecordError as exc:
                return openai_error(400, f"{name}: {exc.reason}", "invalid_request_error")
            if self.latest_replayed is None or when > self.latest_replayed:
                self.latest_replayed = when
            self._maybe_detect(when)
            return when
        return datetime.now(UTC).replace(tzinfo=None)

    async def _read(self, request: Request) -> bytes | JSONResponse:
        length = request.headers.get("content-length")
        limit = self.config.max_body_bytes
        too_big = openai_error(413, f"Request body over {limit} bytes.", "invalid_request_error",
                               "request_too_large")  # fmt: skip
        if length and length.isdigit() and int(length) > limit:
            return too_big
        chunks: list[bytes] = []
        size = 0

        async def read() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise OverflowError
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), timeout=self.config.body_timeout_s)
        except OverflowError:
            return too_big
        except TimeoutError:
            return openai_error(408, "Timed out reading the request body.", "invalid_request_error",
                                "request_timeout")  # fmt: skip
        return b"".join(chunks)

    async def _body(self, request: Request) -> tuple[dict[str, Any], bytes] | JSONResponse:
        raw = await self._read(request)
        if isinstance(raw, JSONResponse):
            return raw
        try:
            body = orjson.loads(raw or b"null")
        except orjson.JSONDecodeError:
            return openai_error(400, "Request body is not valid JSON.", "invalid_request_error")
        if not isinstance(body, dict):
            return openai_error(400, "Request body must be a JSON object.", "invalid_request_error")
        return body, raw

    # -- the enforced routes --------------------------------------------------------------------
    async def enforced(self, request: Request) -> Response:
        route = request.url.path
        identity = self._account(request)
        if isinstance(identity, JSONResponse):
            return self._count(route, identity)
        parsed = await self._body(request)
        if isinstance(parsed, JSONResponse):
            return self._count(route, parsed)
        body, raw = parsed
        when = self._now(request)
        if isinstance(when, JSONResponse):
            return self._count(route, when)
        try:
            messages = _check_request(route, body)
        except RecordError as exc:
            return self._count(route, openai_error(
                400, f"Invalid request: {exc}", "invalid_request_error", "invalid_value", param=exc.field))  # fmt: skip
        user_agent = request.headers.get("user-agent")
        call = _Call(route, *identity, body, raw, messages, self._client_ip(request),
                     request.headers.get(self.config.tls_header.lower()),
                     user_agent[:512] if user_agent else None, when)  # fmt: skip

        started = time.perf_counter()
        call.decision, refusal = await self.enforcer.evaluate(
            call.account,
            call.ip,
            call.tls,
            messages.prompt[:8000],
            when,
            call.user_agent,
            # As batch detection counts it (several messages, or a conversation the request
            # continues: the Responses API's previous response or conversation).
            multi_turn=len(messages.messages) > 1
            or bool(body.get("previous_response_id") or body.get("conversation")),
            model=body["model"][:128] if isinstance(body.get("model"), str) else None,
        )
        self.metrics.decision_latency.observe(time.perf_counter() - started)
        self.metrics.decisions.labels(call.decision.action, str(self.config.shadow).lower()).inc()
        if refusal is not None:
            headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else None
            return self._count(
                route,
                openai_error(refusal.status, refusal.message, refusal.kind, refusal.code, headers),
            )
        call.enforce = not self.config.shadow
        if call.shaping and call.decision.max_tokens and not call.decision.cap_answer:
            _cap_tokens(route, body, call.decision.max_tokens)
            call.modified = True
        return await self._forward(request, call)

    async def _post(self, url: str, data: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        assert self.client is not None
        try:
            return await self.client.post(url, data=data, headers=headers)
        except aiohttp.ServerDisconnectedError:
            # A pooled connection the upstream closed just as we reused it (servers close after
            # an error response or their keep-alive timeout): it sent no response, so send the
            # request once more on a new connection.
            self.metrics.upstream_retries.inc()
            return await self.client.post(url, data=data, headers=headers)

    async def _forward(self, request: Request, call: _Call) -> Response:
        route = call.route
        headers = {"content-type": "application/json"}
        if "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        if call.shaping and call.decision.watermark:
            headers[WATERMARK_HEADER] = "on"  # clients' own headers never reach the upstream
        try:
            data = orjson.dumps(call.body) if call.modified else call.raw
        except orjson.JSONEncodeError:
            return self._count(route, openai_error(
                400, "Request body is nested too deeply.", "invalid_request_error", "invalid_value"))  # fmt: skip
        call.started = time.perf_counter()
        stream = call.body.get("stream") is True and route != "/v1/embeddings"
        try:
            upstream = await self._post(self.upstream_base + route, data, headers)
        except TimeoutError:
            self.upstream_error = "timeout"
            return self._count(
                route, openai_error(504, "Upstream timed out.", "server_error", "upstream_timeout")
            )
        except aiohttp.ClientError as exc:
            self.upstream_error = type(exc).__name__
            return self._count(
                route,
                openai_error(502, "Upstream unavailable.", "server_error", "upstream_unavailable"),
            )
        self.upstream_error = None
        content_type = upstream.headers.get("content-type", "")
        if stream and upstream.status < 400 and content_type.startswith("text/event-stream"):
            return self._count(route, StreamingResponse(
                self._relay(upstream, call), status_code=upstream.status, media_type=content_type))  # fmt: skip
        try:
            content = await upstream.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.upstream_error = type(exc).__name__
            return self._count(route, openai_error(
                502, "Upstream failed mid-response.", "server_error", "upstream_unavailable"))  # fmt: skip
        finally:
            upstream.release()
        self.metrics.upstream_latency.observe(time.perf_counter() - call.started)
        payload: Any = None
        if content_type.startswith("application/json"):
            try:
                payload = orjson.loads(content)
            except orjson.JSONDecodeError:
                payload = None
        if upstream.status >= 400 and not (isinstance(payload, dict) and "error" in payload):
            # The upstream's own error page (plain text, HTML): the client gets OpenAI's shape.
            text = content[:300].decode("utf-8", errors="replace").strip()
            kind = "server_error" if upstream.status >= 500 else "invalid_request_error"
            payload = {"error": {"message": f"Upstream error {upstream.status}: {text}",
                                 "type": kind, "param": None, "code": "upstream_error"}}  # fmt: skip
            content, content_type = orjson.dumps(payload), "application/json"
        elif call.shaping and isinstance(payload, dict):
            if call.decision.strip_reasoning:
                payload = strip_reasoning(payload)
            if call.decision.cap_answer and call.decision.max_tokens:
                payload = cap_answer(payload, call.decision.max_tokens)
            for hook in self.config.response_hooks:
                payload = hook(payload, call.decision, call.body)
            content = orjson.dumps(payload)
        await self._log(call, summarise_response(payload, _bound), upstream.status)
        return self._count(route, Response(content, status_code=upstream.status,
                                           media_type=content_type or None))  # fmt: skip

    async def _relay(self, upstream: aiohttp.ClientResponse, call: _Call) -> AsyncIterator[bytes]:
        reader = StreamReader(_bound, MAX_LOGGED_TEXT + 1)
        shaper = StreamShaper() if call.shaping and call.decision.strip_reasoning else None
        splitter = EventSplitter()
        # Text response hooks add to a shaped stream (a canary): at the end of the answer.
        tail = "".join(t for t in self._stream_tails(call) if t)
        appender = StreamAppender(tail) if tail else None
        capper = (
            StreamCapper(call.decision.max_tokens)
            if call.shaping and call.decision.cap_answer and call.decision.max_tokens
            else None
        )
        rewrite = shaper is not None or appender is not None or capper is not None
        stages = [stage.apply for stage in (capper, appender) if stage is not None]

        def events(blocks: list[bytes]) -> bytes:
            out: list[bytes] = []
            for block in blocks:
                event, data = parse_event(block)
                if data is None:
                    out.append(block)
                    continue
                name = event.name if event else None
                sent = shaper.shape(data) if shaper else [data]
                for stage in stages:  # cap the answer, then add to it (a canary is never cut)
                    sent = [after for before in sent for after in stage(before)]
                for one in sent:
                    reader.observe(one)
                    out.append(encode_event(event_name(name, one), one) if rewrite else block)
            return b"".join(out)

        try:
            async for chunk in upstream.content.iter_any():
                if not rewrite:
                    yield chunk
                    events(list(splitter.feed(chunk)))
                else:
                    shaped = events(list(splitter.feed(chunk)))
                    if shaped:
                        yield shaped
            rest = splitter.rest()
            if rest and rewrite:
                yield events([rest])
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Headers are already sent: end the stream; the client sees it cut short.
            self.upstream_error = type(exc).__name__
        finally:
            upstream.release()
            self.metrics.upstream_latency.observe(time.perf_counter() - call.started)
            await self._log(call, reader.summary(), upstream.status)

    def _stream_tails(self, call: _Call) -> list[str]:
        """What response hooks with a ``stream_text`` add to a shaped stream (chat completions,
        completions and Responses)."""
        if not call.shaping or call.route not in STREAM_TEXT_ROUTES:
            return []
        return [hook.stream_text(call.decision) or "" for hook in self.config.response_hooks
                if hasattr(hook, "stream_text")]  # fmt: skip

    async def _log(self, call: _Call, response: ResponseSummary, status: int) -> None:
        """Journal the exchange (before the response completes), then count its output tokens."""
        if self.enforcer.sink is not None:
            self.enforcer.log_exchange(self._record(call, response, status))
        await self.enforcer.record_usage(call.account, call.decision, call.when,
                                         response.completion_tokens)  # fmt: skip

    def _record(self, call: _Call, response: ResponseSummary, status: int) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": "px-" + uuid.uuid4().hex,
            "ts": call.when.isoformat() + "Z",
            "account_id": call.account,
            "model": _model(call.body),
            "messages": call.messages.messages,
            "response": response.text,
            "response_tool_calls": response.tool_calls or None,
            "api_key_id": call.key_hash,
            "ip": call.ip,
            "user_agent": call.user_agent,
            "tls_fingerprint": call.tls,
            "endpoint": call.route,
            "prompt_tokens": response.prompt_tokens,
            "completion_tokens": response.completion_tokens,
            "status": status,
            "latency_ms": int((time.perf_counter() - call.started) * 1000),
            "proxy_decision": call.decision.action,
            "flags": call.messages.flags or None,
        }
        tools = call.body.get("tools")
        if isinstance(tools, list) and tools:
            record["request_tools"] = _tool_names(tools)
        if call.body.get("stream") is True:
            record["stream"] = True
        if isinstance(call.body.get("previous_response_id"), str):
            record["previous_response_id"] = call.body["previous_response_id"][:200]
        return record

    # -- pass-through and operations ------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        identity = self._account(request)
        if isinstance(identity, JSONResponse):
            return self._count("/v1/models", identity)
        assert self.client is not None
        try:
            async with self.client.get(
                self.upstream_base + "/v1/models",
                headers={"authorization": request.headers["authorization"]},
            ) as upstream:
                content = await upstream.read()
                status, content_type = upstream.status, upstream.headers.get("content-type", "")
        except (TimeoutError, aiohttp.ClientError):
            return self._count(
                "/v1/models",
                openai_error(502, "Upstream unavailable.", "server_error", "upstream_unavailable"),
            )
        if not content_type.startswith("application/json"):
            return self._count("/v1/models", openai_error(
                502, f"Upstream answered {status} without JSON.", "server_error", "upstream_error"))  # fmt: skip
        return self._count("/v1/models", Response(content, status, media_type=content_type))

    async def healthz(self, request: Request) -> Response:
        redis_ok = await self.state.ping()
        index = self.verdicts.index
        shared = self.enforcer.indicators.reload_if_changed()
        sink = self.enforcer.sink
        degraded = (
            not redis_ok or self.verdicts.error or self.upstream_error or self.enforcer.state_error
            or self.enforcer.indicators.errors
            or (sink is not None and sink.error)
        )  # fmt: skip
        store: dict[str, Any] = {"path": str(self.config.store) if self.config.store else None}
        if sink is not None:
            store.update(
                exchanges_logged=sink.written, rejected=sink.rejected, flagged=sink.flagged,
                recovered_after_restart=sink.recovered, backlog_bytes=sink.backlog_bytes(),
                quarantine=str(sink.quarantine.path) if sink.quarantine.count else None,
                spool=str(sink.spool.directory), fsync=sink.spool.fsync, error=sink.error,
            )  # fmt: skip
        streaming = None
        if self.enforcer.streaming is not None:
            try:
                tracked = await self.enforcer.streaming.store.accounts()
            except StateError:
                tracked = None
            streaming = {"backend": "redis" if self.config.redis_url else "memory",
                         "accounts": tracked,
                         "median_output": self.enforcer.streaming.median_output_,
                         "sign_up_records": self.config.accounts_file is not None}  # fmt: skip
        return JSONResponse({
            "status": "degraded" if degraded else "ok",
            "state": {"backend": "redis" if self.config.redis_url else "memory", "ok": redis_ok,
                      "error": self.enforcer.state_error},
            "fail_open": self.config.policy.fail_open,
            "shadow": self.config.shadow,
            "upstream": {"url": self.config.upstream, "last_error": self.upstream_error},
            "verdicts": {"path": index.loaded_from, "accounts": len(index.accounts),
                         "linking_artefacts": len(index.artefacts), "error": self.verdicts.error},
            "indicators": {"bundles": shared.bundles, "indicators": len(shared.links),
                           "campaigns": len(shared.campaigns), "expired": shared.expired,
                           "sharing_key": self.enforcer.sharing_key.key_id
                           if self.enforcer.sharing_key else None,
                           "bundle_key_ids": sorted(shared.key_ids),
                           "errors": self.enforcer.indicators.errors},
            "store": store,
            "micro_batch": {"every_s": self.config.detect_every_s, "last": self.last_detect,
                            "error": self.detect_error},
            "streaming": streaming,
        })  # fmt: skip

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _admin_denied(self, request: Request) -> JSONResponse | None:
        token = self.config.admin_token
        given = _bearer(request.headers.get("authorization", ""))
        if not token or given is None or not hmac.compare_digest(given.encode(), token.encode()):
            return openai_error(401, "Admin token required.", "invalid_request_error", "admin_auth")
        return None

    async def _admin_json(
        self, request: Request, many: bool = False
    ) -> dict[str, Any] | JSONResponse:
        """The admin request's JSON: ``account_id`` (a string), or with ``many`` either that or
        ``account_ids`` (1 to MAX_ADMIN_BATCH strings), normalised into ``account_ids``."""
        parsed = await self._body(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        body = parsed[0]
        if many and "account_ids" in body:
            accounts = body["account_ids"]
            valid = (
                isinstance(accounts, list)
                and 0 < len(accounts) <= MAX_ADMIN_BATCH
                and all(isinstance(a, str) and a and len(a) <= 256 for a in accounts)
            )
            if not valid:
                return openai_error(400, f"account_ids: 1 to {MAX_ADMIN_BATCH} non-empty strings",
                                    "invalid_request_error")  # fmt: skip
            body["account_id"] = accounts[0]
            return body
        account = body.get("account_id")
        if not isinstance(account, str) or not account or len(account) > 256:
            return openai_error(400, "account_id: required string", "invalid_request_error")
        if many:
            body["account_ids"] = [account]
        if "allowlist" in body and not isinstance(body["allowlist"], bool):
            return openai_error(400, "allowlist: expected true or false", "invalid_request_error")
        return body

    async def admin_decisions(self, request: Request) -> Response:
        if denied := self._admin_denied(request):
            return denied
        try:
            standing = await self.state.decisions()
        except StateError as exc:
            return openai_error(503, str(exc), "server_error", "state_unavailable")
        return JSONResponse({"standing": standing, "recent": list(self.recent)[-200:]})

    async def admin_detect(self, request: Request) -> Response:
        """Run one micro-batch over what the gateway has logged; answer once its verdicts and
        indicators are live. In replay mode it detects up to the latest replayed time seen."""
        if denied := self._admin_denied(request):
            return denied
        if self.enforcer.sink is None:
            return openai_error(
                409, "Micro-batch detection needs --store.", "invalid_request_error"
            )
        return JSONResponse(await self._micro_batch())

    async def _micro_batch(self) -> dict[str, Any]:
        async with self._detect_lock:
            until = self.latest_replayed if self.config.replay_time_header else None
            result = await asyncio.to_thread(self.enforcer.micro_batch, until)
        self.last_detect, self.detect_error = result, None
        if self.enforcer.sink is not None:
            self.enforcer.sink.audit("proxy", "detect.micro_batch", result)
        return result

    def _maybe_detect(self, when: datetime) -> None:
        """--detect-every in replayed time: start a micro-batch when a boundary is crossed."""
        every = self.config.detect_every_s
        if not every or self.enforcer.sink is None:
            return
        if self._next_detect is None:
            self._next_detect = when + timedelta(seconds=every)
        elif when >= self._next_detect and not self._detect_lock.locked():
            self._next_detect = when + timedelta(seconds=every)
            task = asyncio.get_running_loop().create_task(self._micro_batch())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def admin_lift(self, request: Request) -> Response:
        if denied := self._admin_denied(request):
            return denied
        body = await self._admin_json(request)
        if isinstance(body, JSONResponse):
            return body
        allow = body.get("allowlist", True)
        try:
            lifted = await self.state.delete_decision(body["account_id"])
            if allow:
                # A lifted account would be re-flagged by the same stale verdict; keep it
                # allowed until the allowlist entry is removed.
                await self.state.allow(body["account_id"], True)
        except StateError as exc:
            return openai_error(503, str(exc), "server_error", "state_unavailable")
        await self.enforcer.local.delete_decision(body["account_id"])
        self._admin_audit("admin.lift", body)
        return JSONResponse(
            {"account_id": body["account_id"], "lifted": lifted, "allowlisted": allow}
        )

    async def admin_extend(self, request: Request) -> Response:
        if denied := self._admin_denied(request):
            return denied
        body = await self._admin_json(request, many=True)
        if isinstance(body, JSONResponse):
            return body
        ttl = body.get("ttl_seconds")
        action = body.get("action", "challenge")
        valid_ttl = (
            isinstance(ttl, int) and not isinstance(ttl, bool) and 0 < ttl <= MAX_ADMIN_TTL_SECONDS
        )
        params = _standing_params(action, body)
        if not valid_ttl or params is None:
            return openai_error(
                400,
                f"ttl_seconds: integer from 1 to {MAX_ADMIN_TTL_SECONDS}; action: challenge, "
                "block, throttle (requests_per_minute 1-100000) or shape (max_tokens 1-100000, "
                "strip_reasoning and cap_answer true/false)",
                "invalid_request_error",
            )
        try:
            for account in body["account_ids"]:
                current = await self.state.get_decision(account) or {
                    "action": action,
                    "rule": "admin",
                }
                for stale in ("requests_per_minute", "max_tokens", "strip_reasoning", "cap_answer"):
                    current.pop(stale, None)
                current.update(params)
                current["action"] = action
                current["reasons"] = [
                    *current.get("reasons", [])[-5:],
                    f"set by admin: {str(body.get('reason', ''))[:200]}",
                ]
                await self.state.set_decision(account, current, ttl)
        except StateError as exc:
            return openai_error(503, str(exc), "server_error", "state_unavailable")
        self._admin_audit("admin.extend", body)
        return JSONResponse(
            {"account_id": body["account_id"], "accounts": len(body["account_ids"]),
             "decision": current, "ttl_seconds": ttl}
        )  # fmt: skip

    async def admin_allowlist(self, request: Request) -> Response:
        if denied := self._admin_denied(request):
            return denied
        try:
            if request.method == "GET":
                members = await self.state.allowlist() | self.config.policy.allow_accounts
                return JSONResponse({"allowlist": sorted(members)})
            body = await self._admin_json(request)
            if isinstance(body, JSONResponse):
                return body
            await self.state.allow(body["account_id"], request.method == "POST")
        except StateError as exc:
            return openai_error(503, str(exc), "server_error", "state_unavailable")
        self._admin_audit(
            "admin.allowlist." + ("add" if request.method == "POST" else "remove"), body
        )
        return JSONResponse(
            {"account_id": body["account_id"], "allowlisted": request.method == "POST"}
        )

    def _admin_audit(self, event: str, body: dict[str, Any]) -> None:
        entry = {"account_id": body["account_id"], "reason": str(body.get("reason", ""))[:500]}
        if len(body.get("account_ids") or ()) > 1:
            entry["accounts"] = len(body["account_ids"])
        self.recent.append({"ts": datetime.now(UTC).isoformat(), "event": event, **entry})
        if self.enforcer.sink is not None:
            self.enforcer.sink.audit("admin", event, entry)

    def _count(self, route: str, response: Response) -> Response:
        self.metrics.requests.labels(route, str(response.status_code)).inc()
        return response


def _standing_params(action: Any, body: dict[str, Any]) -> dict[str, Any] | None:
    """The fields a standing decision set by an admin carries, or None if they are invalid."""

    def bounded(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 100_000

    if action in ("challenge", "block"):
        return {}
    if action == "throttle" and bounded(body.get("requests_per_minute")):
        return {"requests_per_minute": body["requests_per_minute"]}
    if action == "shape" and bounded(body.get("max_tokens")):
        strip, after = body.get("strip_reasoning", True), body.get("cap_answer", False)
        if isinstance(strip, bool) and isinstance(after, bool):
            return {"max_tokens": body["max_tokens"], "strip_reasoning": strip, "cap_answer": after}
    return None


def _bearer(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750), else None."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def _check_request(route: str, body: dict[str, Any]) -> Messages:
    """The request's messages, or :class:`RecordError` for what the API would refuse."""
    for name in TOKEN_LIMIT_FIELDS:
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise RecordError(name, "expected a non-negative integer")
    if body.get("stream") not in (None, True, False):
        raise RecordError("stream", "expected a boolean")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RecordError("model", "expected a string")
    return request_messages(route, body, _bound)


def _cap_tokens(route: str, body: dict[str, Any], cap: int) -> None:
    """Cap the request's output tokens at ``cap`` (the field each endpoint reads)."""
    fields = (
        ("max_output_tokens",)
        if route == "/v1/responses"
        else ("max_tokens", "max_completion_tokens")
    )
    present = [name for name in fields if body.get(name) is not None]
    for name in present or fields[:1]:
        body[name] = min(body.get(name) or cap, cap)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    return model.strip()[:200] or "unknown" if isinstance(model, str) else "unknown"


def _tool_names(tools: list[Any]) -> list[str]:
    names = []
    for tool in tools[:64]:
        if isinstance(tool, dict):
            function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
            name = function.get("name") or tool.get("type")
            if isinstance(name, str):
                names.append(name[:200])
    return names

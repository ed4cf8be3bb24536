"""The OpenAI-compatible enforcing reverse proxy (Starlette + aiohttp's client, served by uvicorn).

Per request: authenticate (bearer key -> account), read a bounded body, gather facts (batch
verdict, standing decision, chain-of-thought elicitation, links from a new account to a flagged
cluster), decide, then refuse (403/429), shape (cap max_tokens, strip reasoning) or pass the
request through; log the exchange (Contract 1) and every non-allow decision (audit log).
Failures of the state backend follow the policy's fail_open choice; upstream failures become
OpenAI-shaped 502/504 errors; nothing a client sends produces a 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import re
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from distillwatch.enforce.decide import Decision
from distillwatch.enforce.enforcer import Enforcer
from distillwatch.enforce.policy import Policy
from distillwatch.enforce.signals import (
    key_account,
)
from distillwatch.enforce.state import StateError
from distillwatch.schema import RecordError, parse_ts

ENFORCED_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_THINK = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>\s*", re.DOTALL | re.IGNORECASE)
MAX_LOGGED_TEXT = 32_768

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
    #: Extension point for provenance: called on every shaped JSON response (canaries, marks).
    response_hooks: list[ResponseHook] = field(default_factory=list)


def openai_error(status: int, message: str, kind: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": code}},
        status_code=status,
        headers=headers,
    )


def strip_reasoning(payload: dict[str, Any]) -> dict[str, Any]:
    """Remove reasoning a harvester wants: <think> sections and reasoning fields."""
    for choice in payload.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            message.pop("reasoning_content", None)
            message.pop("reasoning", None)
            if isinstance(message.get("content"), str):
                message["content"] = _THINK.sub("", message["content"])
        if isinstance(choice, dict) and isinstance(choice.get("text"), str):
            choice["text"] = _THINK.sub("", choice["text"])
    return payload


class Metrics:
    def __init__(self) -> None:
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
        self.upstream_latency = Histogram(
            "distillwatch_upstream_latency_seconds", "Upstream latency", registry=self.registry
        )
        self.decision_latency = Histogram(
            "distillwatch_decision_latency_seconds", "Time to decide", registry=self.registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
        )  # fmt: skip


class Proxy:
    """Holds the proxy's state; ``app`` is the ASGI application."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.enforcer = Enforcer(config.policy, config.verdicts, config.store, config.redis_url,
                                 config.shadow, config.payments)  # fmt: skip
        self.state = self.enforcer.state
        self.verdicts = self.enforcer.verdicts
        self.recent = self.enforcer.recent
        self.client: aiohttp.ClientSession | None = None
        self.upstream_base = config.upstream.rstrip("/")
        self.upstream_error: str | None = None
        routes = [
            Route("/v1/chat/completions", self.enforced, methods=["POST"]),
            Route("/v1/completions", self.enforced, methods=["POST"]),
            Route("/v1/embeddings", self.enforced, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            Route("/admin/decisions", self.admin_decisions, methods=["GET"]),
            Route("/admin/lift", self.admin_lift, methods=["POST"]),
            Route("/admin/extend", self.admin_extend, methods=["POST"]),
            Route("/admin/allowlist", self.admin_allowlist, methods=["GET", "POST", "DELETE"]),
        ]
        self.app = Starlette(routes=routes, lifespan=self._lifespan)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette):  # type: ignore[no-untyped-def]
        # aiohttp's client, not httpx: its C HTTP parser and lighter request path take about
        # 0.4 ms off every proxied request on this hardware (benchmarks/proxy_overhead.py).
        self.client = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.upstream_timeout_s, connect=5.0),
            connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=30),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        self.enforcer.start()
        try:
            yield
        finally:
            await self.client.close()
            await self.enforcer.close()

    # -- identity and input ---------------------------------------------------------------------
    def _account(self, request: Request) -> tuple[str, str] | JSONResponse:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            return openai_error(
                401, "Missing bearer API key.", "invalid_request_error", "missing_api_key"
            )
        key = header[7:].strip()
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
        for hop in reversed(hops):
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
                return parse_ts(request.headers[name.lower()], name)
            except RecordError as exc:
                return openai_error(400, f"{name}: {exc.reason}", "invalid_request_error")
        return datetime.now(UTC).replace(tzinfo=None)

    async def _body(self, request: Request) -> dict[str, Any] | JSONResponse:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.config.max_body_bytes:
            return openai_error(
                413,
                f"Request body over {self.config.max_body_bytes} bytes.",
                "invalid_request_error",
            )
        chunks, size = [], 0

        async def read() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.config.max_body_bytes:
                    raise OverflowError
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), timeout=self.config.body_timeout_s)
        except OverflowError:
            return openai_error(
                413,
                f"Request body over {self.config.max_body_bytes} bytes.",
                "invalid_request_error",
            )
        except TimeoutError:
            return openai_error(408, "Timed out reading the request body.", "invalid_request_error")
        try:
            body = orjson.loads(b"".join(chunks) or b"null")
        except orjson.JSONDecodeError:
            return openai_error(400, "Request body is not valid JSON.", "invalid_request_error")
        if not isinstance(body, dict):
            return openai_error(400, "Request body must be a JSON object.", "invalid_request_error")
        return body

    # -- the enforced routes --------------------------------------------------------------------
    async def enforced(self, request: Request) -> Response:
        route = request.url.path
        identity = self._account(request)
        if isinstance(identity, JSONResponse):
            return self._count(route, identity)
        account, key_hash = identity
        body = await self._body(request)
        if isinstance(body, JSONResponse):
            return self._count(route, body)
        when = self._now(request)
        if isinstance(when, JSONResponse):
            return self._count(route, when)
        ip = self._client_ip(request)
        tls = request.headers.get(self.config.tls_header.lower())
        prompt = _prompt_text(body)

        started = time.perf_counter()
        decision, refusal = await self.enforcer.evaluate(account, ip, tls, prompt, when)
        self.metrics.decision_latency.observe(time.perf_counter() - started)
        self.metrics.decisions.labels(decision.action, str(self.config.shadow).lower()).inc()
        if refusal is not None:
            headers = {"Retry-After": "60"} if refusal.status == 429 else None
            return self._count(
                route,
                openai_error(refusal.status, refusal.message, refusal.kind, refusal.code, headers),
            )
        enforce = not self.config.shadow
        if enforce and decision.action == "shape" and decision.max_tokens:
            for key in ("max_tokens", "max_completion_tokens"):
                if key in body or key == "max_tokens":
                    body[key] = min(int(body.get(key) or decision.max_tokens), decision.max_tokens)
        return await self._forward(
            request, route, body, account, key_hash, ip, tls, when, decision, enforce
        )

    async def _forward(self, request: Request, route: str, body: dict[str, Any], account: str, key_hash: str,
                       ip: str | None, tls: str | None, when: datetime, decision: Decision, enforce: bool) -> Response:  # fmt: skip
        assert self.client is not None
        headers = {"content-type": "application/json"}
        if "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        started = time.perf_counter()
        stream = bool(body.get("stream")) and route != "/v1/embeddings"
        try:
            upstream = await self.client.post(
                self.upstream_base + route, data=orjson.dumps(body), headers=headers
            )
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
        if stream:
            return self._count(route, StreamingResponse(
                self._relay(upstream, body, account, key_hash, ip, tls, when, route, decision, started),
                status_code=upstream.status,
                media_type=upstream.headers.get("content-type", "text/event-stream"),
            ))  # fmt: skip
        try:
            content = await upstream.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.upstream_error = type(exc).__name__
            return self._count(
                route,
                openai_error(
                    502, "Upstream failed mid-response.", "server_error", "upstream_unavailable"
                ),
            )
        finally:
            upstream.release()
        self.metrics.upstream_latency.observe(time.perf_counter() - started)
        payload: dict[str, Any] | None = None
        if upstream.headers.get("content-type", "").startswith("application/json"):
            try:
                payload = orjson.loads(content)
            except ValueError:
                payload = None
        if enforce and decision.action == "shape" and isinstance(payload, dict):
            if decision.strip_reasoning:
                payload = strip_reasoning(payload)
            for hook in self.config.response_hooks:
                payload = hook(payload, decision, body)
            content = orjson.dumps(payload)
        usage = (payload or {}).get("usage") or {}
        await self._after(account, key_hash, ip, tls, when, route, body, _response_text(payload),
                          upstream.status, usage, started, decision)  # fmt: skip
        return self._count(route, Response(content, status_code=upstream.status,
                                           media_type=upstream.headers.get("content-type")))  # fmt: skip

    async def _relay(self, upstream: aiohttp.ClientResponse, body: dict[str, Any], account: str, key_hash: str,
                     ip: str | None, tls: str | None, when: datetime, route: str, decision: Decision, started: float):  # type: ignore[no-untyped-def]  # fmt: skip
        text: list[str] = []
        usage: dict[str, Any] = {}
        buffer = b""
        try:
            async for chunk in upstream.content.iter_any():
                yield chunk
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.startswith(b"data: ") and line[6:].strip() not in (b"", b"[DONE]"):
                        try:
                            event = json.loads(line[6:])
                        except ValueError:
                            continue
                        for choice in event.get("choices") or []:
                            piece = (choice.get("delta") or {}).get("content") or choice.get("text")
                            if isinstance(piece, str) and sum(map(len, text)) < MAX_LOGGED_TEXT:
                                text.append(piece)
                        usage = event.get("usage") or usage
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Headers are already sent: end the stream; the client sees it cut short.
            self.upstream_error = type(exc).__name__
        finally:
            upstream.release()
            self.metrics.upstream_latency.observe(time.perf_counter() - started)
            await self._after(account, key_hash, ip, tls, when, route, body, "".join(text),
                              upstream.status, usage, started, decision)  # fmt: skip

    async def _after(self, account: str, key_hash: str, ip: str | None, tls: str | None, when: datetime,
                     route: str, body: dict[str, Any], response_text: str | None, status: int,
                     usage: dict[str, Any], started: float, decision: Decision) -> None:  # fmt: skip
        completion = (
            usage.get("completion_tokens")
            if isinstance(usage.get("completion_tokens"), int)
            else None
        )
        await self.enforcer.record_usage(account, decision, when, completion)
        if self.enforcer.sink is None:
            return
        messages = body.get("messages")
        if not isinstance(messages, list):
            prompt = body.get("prompt") if route == "/v1/completions" else body.get("input")
            messages = [
                {
                    "role": "user",
                    "content": prompt
                    if isinstance(prompt, str)
                    else json.dumps(prompt)[:MAX_LOGGED_TEXT],
                }
            ]
        record = {
            "id": "px-" + uuid.uuid4().hex,
            "ts": when.isoformat() + "Z",
            "account_id": account,
            "model": str(body.get("model") or "unknown")[:200],
            "messages": messages,
            "response": (response_text or "")[:MAX_LOGGED_TEXT] or None,
            "api_key_id": key_hash,
            "ip": ip,
            "user_agent": None,
            "tls_fingerprint": tls,
            "endpoint": route,
            "prompt_tokens": usage.get("prompt_tokens")
            if isinstance(usage.get("prompt_tokens"), int)
            else None,
            "completion_tokens": completion,
            "status": status,
            "latency_ms": int((time.perf_counter() - started) * 1000),
            "proxy_decision": decision.action,
        }
        self.enforcer.log_exchange(record)

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
        except (TimeoutError, aiohttp.ClientError):
            return self._count(
                "/v1/models",
                openai_error(502, "Upstream unavailable.", "server_error", "upstream_unavailable"),
            )
        return self._count("/v1/models", Response(content, upstream.status,
                                                  media_type=upstream.headers.get("content-type")))  # fmt: skip

    async def healthz(self, request: Request) -> Response:
        redis_ok = await self.state.ping()
        index = self.verdicts.index
        degraded = (
            not redis_ok or self.verdicts.error or self.upstream_error or self.enforcer.state_error
        )
        return JSONResponse({
            "status": "degraded" if degraded else "ok",
            "state": {"backend": "redis" if self.config.redis_url else "memory", "ok": redis_ok},
            "fail_open": self.config.policy.fail_open,
            "shadow": self.config.shadow,
            "upstream": {"url": self.config.upstream, "last_error": self.upstream_error},
            "verdicts": {"path": index.loaded_from, "accounts": len(index.accounts),
                         "linking_artefacts": len(index.artefacts), "error": self.verdicts.error},
            "store": {"path": str(self.config.store) if self.config.store else None,
                      "exchanges_logged": self.enforcer.sink.written if self.enforcer.sink else 0},
        })  # fmt: skip

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _admin_denied(self, request: Request) -> JSONResponse | None:
        token = self.config.admin_token
        given = request.headers.get("authorization", "")[7:]
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            return openai_error(401, "Admin token required.", "invalid_request_error", "admin_auth")
        return None

    async def _admin_json(self, request: Request) -> dict[str, Any] | JSONResponse:
        body = await self._body(request)
        if isinstance(body, JSONResponse):
            return body
        account = body.get("account_id")
        if not isinstance(account, str) or not account or len(account) > 256:
            return openai_error(400, "account_id: required string", "invalid_request_error")
        return body

    async def admin_decisions(self, request: Request) -> Response:
        if denied := self._admin_denied(request):
            return denied
        try:
            standing = await self.state.decisions()
        except StateError as exc:
            return openai_error(503, str(exc), "server_error")
        return JSONResponse({"standing": standing, "recent": list(self.recent)[-200:]})

    async def admin_lift(self, request: Request) -> Response:
        if denied := self._admin_denied(request):
            return denied
        body = await self._admin_json(request)
        if isinstance(body, JSONResponse):
            return body
        lifted = await self.state.delete_decision(body["account_id"])
        if body.get("allowlist", True):
            # A lifted account would be re-flagged by the same stale verdict; keep it allowed
            # until the allowlist entry is removed.
            await self.state.allow(body["account_id"], True)
        self._admin_audit("admin.lift", body)
        return JSONResponse(
            {
                "account_id": body["account_id"],
                "lifted": lifted,
                "allowlisted": body.get("allowlist", True),
            }
        )

    async def admin_extend(self, request: Request) -> Response:
        if denied := self._admin_denied(request):
            return denied
        body = await self._admin_json(request)
        if isinstance(body, JSONResponse):
            return body
        ttl = body.get("ttl_seconds")
        action = body.get("action", "challenge")
        if not isinstance(ttl, int) or ttl <= 0 or action not in ("challenge", "block"):
            return openai_error(
                400,
                "ttl_seconds: positive integer; action: challenge or block",
                "invalid_request_error",
            )
        current = await self.state.get_decision(body["account_id"]) or {
            "action": action,
            "rule": "admin",
        }
        current["action"] = action
        current["reasons"] = [
            *current.get("reasons", []),
            f"set by admin: {str(body.get('reason', ''))[:200]}",
        ]
        await self.state.set_decision(body["account_id"], current, ttl)
        self._admin_audit("admin.extend", body)
        return JSONResponse(
            {"account_id": body["account_id"], "decision": current, "ttl_seconds": ttl}
        )

    async def admin_allowlist(self, request: Request) -> Response:
        if denied := self._admin_denied(request):
            return denied
        if request.method == "GET":
            return JSONResponse(
                {
                    "allowlist": sorted(
                        await self.state.allowlist() | self.config.policy.allow_accounts
                    )
                }
            )
        body = await self._admin_json(request)
        if isinstance(body, JSONResponse):
            return body
        await self.state.allow(body["account_id"], request.method == "POST")
        self._admin_audit(
            "admin.allowlist." + ("add" if request.method == "POST" else "remove"), body
        )
        return JSONResponse(
            {"account_id": body["account_id"], "allowlisted": request.method == "POST"}
        )

    def _admin_audit(self, event: str, body: dict[str, Any]) -> None:
        entry = {"account_id": body["account_id"], "reason": str(body.get("reason", ""))[:500]}
        self.recent.append({"ts": datetime.now(UTC).isoformat(), "event": event, **entry})
        if self.enforcer.sink is not None:
            self.enforcer.sink.audit("admin", event, entry)

    def _count(self, route: str, response: Response) -> Response:
        self.metrics.requests.labels(route, str(response.status_code)).inc()
        return response


def _prompt_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content[:8000]
                if isinstance(content, list):
                    return " ".join(p.get("text", "") for p in content if isinstance(p, dict))[
                        :8000
                    ]
    prompt = body.get("prompt")
    return prompt[:8000] if isinstance(prompt, str) else ""


def _response_text(payload: dict[str, Any] | None) -> str | None:
    if not isinstance(payload, dict):
        return None
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return message["content"]
        if isinstance(choices[0].get("text"), str):
            return choices[0]["text"]
    return None

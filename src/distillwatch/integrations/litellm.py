"""distillwatch as a LiteLLM proxy guard (``CustomLogger``): decide, shape and log in LiteLLM.

Install the extra (``pip install 'distillwatch[litellm]'``; it pins a LiteLLM range that skips
the malicious 1.82.7 and 1.82.8 releases). Next to your LiteLLM ``config.yaml`` put a module,
say ``distillwatch_guard.py``::

    from distillwatch.integrations.litellm import DistillwatchGuard
    guard = DistillwatchGuard.from_env()

and reference it::

    litellm_settings:
      callbacks: distillwatch_guard.guard

Settings come from the environment: ``DISTILLWATCH_VERDICTS`` (Contract-2 file, hot-reloaded),
``DISTILLWATCH_STORE`` (DuckDB store: exchange log, audit log, cluster artefacts),
``DISTILLWATCH_POLICY`` (YAML; default: the shipped policy), ``DISTILLWATCH_REDIS``,
``DISTILLWATCH_SHADOW=1``, ``DISTILLWATCH_ACCOUNT_FROM`` (``key``: the LiteLLM key's user, team
or key hash, the default; ``user``: the request's ``user`` field, for platforms whose customers
are end users), ``DISTILLWATCH_TLS_HEADER`` (default ``x-ja4``), ``DISTILLWATCH_INDICATORS`` (STIX bundles,
``os.pathsep``-separated, hot-reloaded), ``DISTILLWATCH_SHARING_KEY`` (their group key file),
``DISTILLWATCH_STREAM=1`` (streaming evidence, in ``DISTILLWATCH_REDIS`` when set),
``DISTILLWATCH_ACCOUNTS`` (account records: sign-up evidence and cards for it) and
``DISTILLWATCH_CANARY_KEYS`` (a watermark keyring, as ``proxy --canary-keys``: shaped answers
of a rule with ``canary: true`` end with the account's cluster's canary).

Hooks, on LiteLLM's chat completions and Responses API routes alike: ``async_pre_call_hook``
checks the request's shape (400 for malformed messages or Responses ``input``), decides and
refuses (LiteLLM answers with the status and an OpenAI-shaped error) or caps ``max_tokens``
(``max_output_tokens`` on the Responses route);
``async_post_call_success_hook`` strips reasoning from shaped responses and
``async_post_call_streaming_iterator_hook`` from shaped streams (``<think>`` tags split across
chunks included, see :class:`~distillwatch.openai_api.ThinkFilter`), and both append the
cluster's canary where the decision asks for one (in a stream, to each choice's finishing
chunk); a Responses object or event stream is shaped by the gateway's own functions
(:func:`~distillwatch.openai_api.strip_reasoning`, ``cap_answer``, ``append_text`` and their
stream forms) on its dict form; ``async_log_success_event`` journals the exchange in
Contract-1 form, tool calls included.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

from distillwatch.enforce.decide import Decision
from distillwatch.enforce.enforcer import Enforcer
from distillwatch.enforce.policy import load_policy
from distillwatch.enforce.signals import key_account
from distillwatch.errors import RecordError
from distillwatch.openai_api import (
    CHARS_PER_TOKEN,
    REASONING_FIELDS,
    Messages,
    StreamAppender,
    StreamCapper,
    StreamShaper,
    ThinkFilter,
    append_text,
    cap_answer,
    normalise_messages,
    responses_messages,
    strip_reasoning,
    strip_think,
    summarise_response,
)
from distillwatch.provenance.canary import canary_for
from distillwatch.provenance.watermark import Keyring, WatermarkKey
from distillwatch.sharing.keys import ENV_KEY_FILE, SharingKey

MAX_LOGGED_TEXT = 32_768


def _bound(text: str) -> str:
    return text[:MAX_LOGGED_TEXT]


def _is_responses(data: dict[str, Any], call_type: Any = None) -> bool:
    """Whether a request is for LiteLLM's Responses API route (``/v1/responses``)."""
    if call_type is not None and "responses" in str(call_type):
        return True
    return data.get("messages") is None and "input" in data


def _messages(data: dict[str, Any], call_type: Any = None) -> Messages:
    if _is_responses(data, call_type):
        return responses_messages(data, _bound)
    if data.get("messages") is None and isinstance(data.get("prompt"), str):
        return normalise_messages([{"role": "user", "content": data["prompt"]}], _bound)
    return normalise_messages(data.get("messages"), _bound)


def _shape_responses_object(response: Any, decision: dict[str, Any], suffix: str) -> Any:
    """A Responses API object shaped as the gateway shapes one (the same functions of
    :mod:`distillwatch.openai_api` on its dict form), written back onto LiteLLM's object."""
    payload = response.model_dump() if hasattr(response, "model_dump") else dict(response)
    if decision.get("strip_reasoning"):
        strip_reasoning(payload)
    if decision.get("cap_answer") and decision.get("max_tokens"):
        cap_answer(payload, int(decision["max_tokens"]))
    if suffix:
        append_text(payload, suffix)
    if isinstance(response, dict):
        response.update(payload)
        return response
    for name in ("output", "status", "incomplete_details", "output_text"):
        if name in payload and hasattr(response, name):
            setattr(response, name, payload[name])
    return response


def _strip_message(message: Any, field: str = "content") -> None:
    """Remove reasoning from a LiteLLM message or delta object, in place."""
    if message is None:
        return
    for name in (*REASONING_FIELDS, "thinking_blocks"):
        if getattr(message, name, None):
            setattr(message, name, None)
    content = getattr(message, field, None)
    if isinstance(content, str) and "<" in content:
        setattr(message, field, strip_think(content))


def _metadata(data: dict[str, Any]) -> dict[str, Any]:
    """LiteLLM's own metadata of a request, where the guard keeps its decision: ``metadata`` on
    the chat route, ``litellm_metadata`` on routes (the Responses API among them) where
    ``metadata`` is the client's own field, sent on to the upstream (which must never see our
    decision, and whose API accepts only short strings there)."""
    name = "litellm_metadata" if isinstance(data.get("litellm_metadata"), dict) else "metadata"
    found = data.get(name)
    if not isinstance(found, dict):
        found = data[name] = {}
    return found


def _shape(data: dict[str, Any], shadow: bool) -> dict[str, Any]:
    """The shape decision the pre-call hook stored with the request ({} when not shaping)."""
    decision = (_metadata(data).get("distillwatch") or {}).get("decision") or {}
    return decision if not shadow and decision.get("action") == "shape" else {}


def _answer_budget(decision: dict[str, Any]) -> int | None:
    """Characters of answer a ``cap_answer`` shape decision leaves (None: no such cap)."""
    if decision.get("cap_answer") and decision.get("max_tokens"):
        return int(decision["max_tokens"]) * CHARS_PER_TOKEN
    return None


def _is_responses_event(chunk: Any) -> bool:
    kind = chunk.get("type") if isinstance(chunk, dict) else getattr(chunk, "type", None)
    return isinstance(kind, str) and kind.startswith("response.")


class _ResponsesEvents:
    """A shaped Responses event stream: the gateway's own event shapers (strip, cap, canary, in
    that order, :mod:`distillwatch.openai_api`) over each event's dict form. Events go out as
    JSON text, which LiteLLM's stream writer frames as ``data:`` lines unchanged."""

    def __init__(self, decision: dict[str, Any], suffix: str) -> None:
        self.steps: list[Any] = []
        if decision.get("strip_reasoning"):
            self.steps.append(StreamShaper().shape)
        if decision.get("cap_answer") and decision.get("max_tokens"):
            self.steps.append(StreamCapper(int(decision["max_tokens"])).apply)
        if suffix:
            self.steps.append(StreamAppender(suffix).apply)

    def apply(self, chunk: Any) -> list[str]:
        if isinstance(chunk, dict):
            event = chunk
        elif hasattr(chunk, "model_dump_json"):
            event = orjson.loads(chunk.model_dump_json(exclude_none=True, exclude_unset=True))
        else:
            return [chunk]
        events = [event]
        for step in self.steps:
            events = [out for e in events for out in step(e)]
        return [orjson.dumps(e).decode() for e in events]


class DistillwatchGuard(CustomLogger):
    def __init__(
        self,
        enforcer: Enforcer,
        account_from: str = "key",
        tls_header: str = "x-ja4",
        canary_key: WatermarkKey | None = None,
    ) -> None:
        super().__init__()
        self.enforcer = enforcer
        self.canary_key = canary_key
        self.account_from = account_from
        self.tls_header = tls_header.lower()
        self._started = False

    @classmethod
    def from_env(cls) -> DistillwatchGuard:
        env = os.environ
        policy = load_policy(
            Path(env["DISTILLWATCH_POLICY"]) if env.get("DISTILLWATCH_POLICY") else None
        )
        enforcer = Enforcer(
            policy,
            verdicts=Path(env["DISTILLWATCH_VERDICTS"])
            if env.get("DISTILLWATCH_VERDICTS")
            else None,
            store=Path(env["DISTILLWATCH_STORE"]) if env.get("DISTILLWATCH_STORE") else None,
            redis_url=env.get("DISTILLWATCH_REDIS") or None,
            shadow=env.get("DISTILLWATCH_SHADOW", "") in ("1", "true", "yes"),
            indicators=[
                Path(p) for p in env.get("DISTILLWATCH_INDICATORS", "").split(os.pathsep) if p
            ],
            sharing_key=SharingKey.read(Path(env[ENV_KEY_FILE])) if env.get(ENV_KEY_FILE) else None,
            stream=env.get("DISTILLWATCH_STREAM", "") in ("1", "true", "yes"),
            accounts_file=Path(env["DISTILLWATCH_ACCOUNTS"])
            if env.get("DISTILLWATCH_ACCOUNTS")
            else None,
        )
        return cls(
            enforcer,
            env.get("DISTILLWATCH_ACCOUNT_FROM", "key"),
            env.get("DISTILLWATCH_TLS_HEADER", "x-ja4"),
            Keyring.read(Path(env["DISTILLWATCH_CANARY_KEYS"])).active
            if env.get("DISTILLWATCH_CANARY_KEYS")
            else None,
        )

    def _canary_suffix(self, decision: dict[str, Any]) -> str:
        """The canary text a shape decision asks for ("" when none, or no keyring)."""
        if self.canary_key is None or not decision.get("canary") or not decision.get("cluster_id"):
            return ""
        return canary_for(self.canary_key, str(decision["cluster_id"])).suffix

    def _account(self, user_api_key_dict: Any, data: dict[str, Any]) -> str:
        if self.account_from == "user" and isinstance(data.get("user"), str) and data["user"]:
            return data["user"][:256]
        for attr in ("user_id", "team_id"):
            value = getattr(user_api_key_dict, attr, None)
            if isinstance(value, str) and value:
                return value
        token = (
            getattr(user_api_key_dict, "api_key", None)
            or getattr(user_api_key_dict, "token", None)
            or "anonymous"
        )
        return key_account(str(token))

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any
    ) -> dict:
        if not self._started:
            self.enforcer.start()
            self._started = True
        account = self._account(user_api_key_dict, data)
        metadata = _metadata(data)
        request = data.get("proxy_server_request") or {}
        headers = {str(k).lower(): v for k, v in (request.get("headers") or {}).items()}
        ip = metadata.get("requester_ip_address") or None
        when = datetime.now(UTC).replace(tzinfo=None)
        try:
            messages = _messages(data, call_type)
            prompt = messages.prompt[:8000]
        except RecordError as exc:
            raise HTTPException(status_code=400, detail={"error": {
                "message": f"Invalid request: {exc}", "type": "invalid_request_error",
                "param": exc.field, "code": "invalid_value"}}) from None  # fmt: skip
        agent = headers.get("user-agent") or metadata.get("user_agent")
        decision, refusal = await self.enforcer.evaluate(
            account,
            ip,
            headers.get(self.tls_header),
            prompt,
            when,
            str(agent)[:512] if agent else None,
            multi_turn=len(messages.messages) > 1,
            model=data["model"][:128] if isinstance(data.get("model"), str) else None,
        )
        if refusal is not None:
            raise HTTPException(status_code=refusal.status, detail={"error": {
                "message": refusal.message, "type": refusal.kind, "code": refusal.code}})  # fmt: skip
        metadata["distillwatch"] = {
            "account": account,
            "decision": decision.as_dict(),
            "ts": when.isoformat(),
        }
        if (
            not self.enforcer.shadow
            and decision.action == "shape"
            and decision.max_tokens
            and not decision.cap_answer
        ):
            field = "max_output_tokens" if _is_responses(data, call_type) else "max_tokens"
            data[field] = min(int(data.get(field) or decision.max_tokens), decision.max_tokens)
        return data

    async def async_post_call_success_hook(
        self, data: dict, user_api_key_dict: Any, response: Any
    ) -> Any:
        decision = _shape(data, self.enforcer.shadow)
        if not decision:
            return response
        suffix = self._canary_suffix(decision)
        if getattr(response, "object", None) == "response" or (
            isinstance(response, dict) and response.get("object") == "response"
        ):
            return _shape_responses_object(response, decision, suffix)
        budget = _answer_budget(decision)
        for choice in getattr(response, "choices", None) or []:
            message = getattr(choice, "message", None)
            if decision.get("strip_reasoning"):
                _strip_message(message)
            content = getattr(message, "content", None)
            if budget is not None and isinstance(content, str) and len(content) > budget:
                message.content = content[:budget]
                choice.finish_reason = "length"
            if suffix and isinstance(getattr(message, "content", None), str):
                message.content = message.content.rstrip() + suffix
        return response

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict
    ) -> Any:
        decision = _shape(request_data, self.enforcer.shadow)
        strip, suffix = bool(decision.get("strip_reasoning")), self._canary_suffix(decision)
        budget = _answer_budget(decision)
        if not strip and not suffix and budget is None:
            async for chunk in response:
                yield chunk
            return
        filters: dict[int, ThinkFilter] = {}
        used: dict[int, int] = {}
        cut: set[int] = set()
        events: _ResponsesEvents | None = None
        async for chunk in response:
            if events is not None or _is_responses_event(chunk):
                # LiteLLM's Responses route streams event objects, not chat chunks.
                events = events or _ResponsesEvents(decision, suffix)
                for shaped in events.apply(chunk):
                    yield shaped
                continue
            for choice in getattr(chunk, "choices", None) or []:
                delta = getattr(choice, "delta", None)
                if delta is None:
                    continue
                content = getattr(delta, "content", None)
                shown = content if isinstance(content, str) else None
                index = getattr(choice, "index", 0) or 0
                if strip:
                    for name in (*REASONING_FIELDS, "thinking_blocks"):
                        if getattr(delta, name, None):
                            setattr(delta, name, None)
                    thinker = filters.setdefault(index, ThinkFilter())
                    shown = thinker.feed(content) if isinstance(content, str) else None
                    if getattr(choice, "finish_reason", None):
                        shown = (shown or "") + thinker.flush()
                if budget is not None and shown is not None:
                    kept = shown[: max(0, budget - used.get(index, 0))]
                    used[index] = used.get(index, 0) + len(kept)
                    if len(kept) < len(shown):
                        cut.add(index)
                    shown = kept
                if index in cut and getattr(choice, "finish_reason", None):
                    choice.finish_reason = "length"
                if suffix and getattr(choice, "finish_reason", None):
                    shown = (shown or "") + suffix  # each choice finishes once
                if shown is not None:
                    delta.content = shown
            yield chunk

    async def async_log_success_event(
        self, kwargs: dict, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        params = kwargs.get("litellm_params") or {}
        info = {}
        for metadata in (
            params.get("litellm_metadata"),
            params.get("metadata"),
            kwargs.get("litellm_metadata"),
            kwargs.get("metadata"),
            (kwargs.get("standard_logging_object") or {}).get("metadata"),
        ):
            if isinstance(metadata, dict) and metadata.get("distillwatch"):
                info = metadata["distillwatch"]
                break
        account = info.get("account")
        if not account:
            return
        usage = getattr(response_obj, "usage", None)
        completion = getattr(usage, "completion_tokens", None)
        when = (
            datetime.fromisoformat(info["ts"])
            if info.get("ts")
            else datetime.now(UTC).replace(tzinfo=None)
        )
        decision = Decision(**{k: v for k, v in (info.get("decision") or {"action": "allow"}).items()
                               if k in Decision.__dataclass_fields__})  # fmt: skip
        await self.enforcer.record_usage(
            account, decision, when, completion if isinstance(completion, int) else None
        )
        try:
            payload = response_obj.model_dump() if hasattr(response_obj, "model_dump") else {}
        except Exception:  # a third-party object we cannot read: log the request, not the answer
            payload = {}
        summary = summarise_response(payload, _bound)
        self.enforcer.log_exchange({
            "id": "ll-" + str(kwargs.get("litellm_call_id") or getattr(response_obj, "id", "") or "unknown")[:200],
            "ts": when.isoformat() + "Z",
            "account_id": account,
            "model": str(kwargs.get("model") or "unknown")[:200],
            "messages": kwargs.get("messages") or [{"role": "user", "content": ""}],
            "response": summary.text,
            "response_tool_calls": summary.tool_calls or None,
            "endpoint": "/v1/responses" if _is_responses(kwargs, kwargs.get("call_type"))
            else "/v1/chat/completions",
            "completion_tokens": completion if isinstance(completion, int) else None,
            "prompt_tokens": getattr(usage, "prompt_tokens", None),
            "status": 200,
            "proxy_decision": (info.get("decision") or {}).get("action", "allow"),
        })  # fmt: skip

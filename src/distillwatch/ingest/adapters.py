"""Adapters from log formats users already have into Contract 1 records.

Each adapter maps one decoded source record to a Contract 1 dict (then validated like any other
record) or raises :class:`~distillwatch.schema.RecordError` naming the source field at fault.

- ``litellm``: rows exported from LiteLLM's ``LiteLLM_SpendLogs`` table (JSONL or Parquet).
- ``openai``: OpenAI-style request/response pairs, one object per line:
  ``{"request": {<chat completion request body>}, "response": {<chat completion object>},
  "account_id"?, "timestamp"?, "ip"?, "headers"?}``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from distillwatch.schema import RecordError, parse_ts

Adapter = Callable[[dict[str, Any]], dict[str, Any]]


def detect_format(record: Any) -> str:
    """Guess a file's format from its first record: 'litellm', 'openai' or 'contract'."""
    if isinstance(record, dict):
        if "request_id" in record and ("startTime" in record or "start_time" in record):
            return "litellm"
        if (
            isinstance(record.get("request"), dict)
            and "response" in record
            and "messages" not in record
        ):
            return "openai"
    return "contract"


def _maybe_json(value: Any, field: str) -> Any:
    """LiteLLM exports JSON columns either as objects or as JSON text, depending on the tool."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            raise RecordError(field, "invalid embedded JSON") from None
    return value


def _response_text(response: Any, field: str) -> str | None:
    """Assistant text from a chat-completion object, a completion object or plain text."""
    if response is None or response == {}:
        return None
    if isinstance(response, str):
        return response
    if not isinstance(response, dict):
        raise RecordError(field, "expected a response object or text")
    choices = response.get("choices")
    if isinstance(choices, list) and choices:
        choice = choices[0]
        if isinstance(choice, dict):
            message = choice.get("message")
            if isinstance(message, dict):
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if content is None:
                    return ""
            if isinstance(choice.get("text"), str):
                return choice["text"]
    if "error" in response:
        return None
    raise RecordError(field, "no choices[0].message.content in response")


def _usage(response: Any) -> tuple[int | None, int | None]:
    if isinstance(response, dict) and isinstance(response.get("usage"), dict):
        usage = response["usage"]
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return (
            prompt if isinstance(prompt, int) else None,
            completion if isinstance(completion, int) else None,
        )
    return None, None


def _header(headers: Any, name: str) -> str | None:
    if not isinstance(headers, dict):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return None


def from_litellm(row: dict[str, Any]) -> dict[str, Any]:
    """Map a ``LiteLLM_SpendLogs`` row. The account is the key owner (``user``), then the team."""
    request_id = row.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise RecordError("request_id", "missing or not a string")
    start = row.get("startTime", row.get("start_time"))
    if start is None:
        raise RecordError("startTime", "missing required field")
    started = parse_ts(start, "startTime")
    metadata = _maybe_json(row.get("metadata"), "metadata") or {}
    if not isinstance(metadata, dict):
        metadata = {}
    messages = _maybe_json(row.get("messages"), "messages")
    if not messages:
        request = _maybe_json(row.get("proxy_server_request"), "proxy_server_request")
        if isinstance(request, dict):
            messages = request.get("messages") or (
                [{"role": "user", "content": request["prompt"]}]
                if isinstance(request.get("prompt"), str)
                else None
            )
    if not messages:
        raise RecordError(
            "messages", "LiteLLM row has no stored prompt (enable store_prompts_in_spend_logs)"
        )
    if isinstance(messages, dict):
        messages = messages.get("messages", [messages])
    api_key = row.get("api_key") if isinstance(row.get("api_key"), str) else None
    account = (
        row.get("user")
        or metadata.get("user_api_key_user_id")
        or row.get("team_id")
        or metadata.get("user_api_key_team_id")
        or (f"key-{api_key[:16]}" if api_key else None)
    )
    if not isinstance(account, str) or not account:
        raise RecordError("user", "no account: none of user, team_id or api_key is set")
    response = _maybe_json(row.get("response"), "response")
    record: dict[str, Any] = {
        "id": request_id,
        "ts": started.isoformat() + "Z",
        "account_id": account,
        "model": row.get("model_group") or row.get("model") or "",
        "messages": messages,
        "response": _response_text(response, "response"),
        "api_key_id": api_key,
        "org_id": metadata.get("user_api_key_org_id") or row.get("team_id"),
        "ip": row.get("requester_ip_address") or metadata.get("requester_ip_address") or None,
        "user_agent": _header(metadata.get("headers"), "user-agent"),
        "conversation_id": row.get("session_id") or None,
        "endpoint": _litellm_endpoint(row.get("call_type")),
        "prompt_tokens": row.get("prompt_tokens"),
        "completion_tokens": row.get("completion_tokens"),
    }
    status = row.get("status")
    if isinstance(status, str):
        record["status"] = 200 if status == "success" else 500
    end = row.get("endTime", row.get("end_time"))
    if end is not None:
        try:
            elapsed = parse_ts(end, "endTime") - started
            record["latency_ms"] = max(int(elapsed.total_seconds() * 1000), 0)
        except RecordError:
            pass
    if row.get("end_user"):
        record["litellm_end_user"] = row["end_user"]
    if row.get("spend") is not None:
        record["litellm_spend"] = row["spend"]
    return {key: value for key, value in record.items() if value is not None}


def _litellm_endpoint(call_type: Any) -> str | None:
    return (
        {
            "acompletion": "/v1/chat/completions",
            "completion": "/v1/chat/completions",
            "atext_completion": "/v1/completions",
            "text_completion": "/v1/completions",
            "aembedding": "/v1/embeddings",
            "embedding": "/v1/embeddings",
        }.get(call_type)
        if isinstance(call_type, str)
        else None
    )


def from_openai_pair(pair: dict[str, Any]) -> dict[str, Any]:
    """Map an OpenAI-style ``{"request": ..., "response": ...}`` pair."""
    request = pair.get("request")
    if not isinstance(request, dict):
        raise RecordError("request", "expected the request body object")
    response = pair.get("response")
    if isinstance(response, dict) and isinstance(response.get("body"), dict):
        response = response["body"]  # Batch API output lines wrap the body
    messages = request.get("messages")
    if messages is None and isinstance(request.get("prompt"), str):
        messages = [{"role": "user", "content": request["prompt"]}]
    if messages is None:
        raise RecordError("request.messages", "missing required field")
    headers = pair.get("headers")
    ident = pair.get("id") or (response.get("id") if isinstance(response, dict) else None)
    if not isinstance(ident, str) or not ident:
        raise RecordError("id", "no id and no response.id")
    account = (
        pair.get("account_id")
        or pair.get("user")
        or request.get("user")
        or (pair.get("api_key_id") and f"key-{pair['api_key_id']}")
    )
    if not isinstance(account, str) or not account:
        raise RecordError("account_id", "no account_id, user or request.user")
    when = pair.get("timestamp") or pair.get("ts")
    if when is None and isinstance(response, dict) and isinstance(response.get("created"), int):
        when = datetime.fromtimestamp(response["created"], UTC).isoformat()
    if when is None:
        raise RecordError("timestamp", "no timestamp and no response.created")
    prompt_tokens, completion_tokens = _usage(response)
    record = {
        "id": ident,
        "ts": when,
        "account_id": account,
        "model": request.get("model") or (response or {}).get("model"),
        "messages": messages,
        "response": _response_text(response, "response"),
        "ip": pair.get("ip"),
        "user_agent": pair.get("user_agent") or _header(headers, "user-agent"),
        "tls_fingerprint": pair.get("tls_fingerprint") or _header(headers, "x-ja4"),
        "api_key_id": pair.get("api_key_id"),
        "endpoint": pair.get("endpoint") or pair.get("url") or "/v1/chat/completions",
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "status": pair.get("status") or pair.get("status_code"),
        "latency_ms": pair.get("latency_ms"),
    }
    if isinstance(request.get("max_tokens"), int):
        record["request_max_tokens"] = request["max_tokens"]
    return {key: value for key, value in record.items() if value is not None}


def identity(record: dict[str, Any]) -> dict[str, Any]:
    return record


ADAPTERS: dict[str, Adapter] = {
    "contract": identity,
    "litellm": from_litellm,
    "openai": from_openai_pair,
}

"""Adapters from log formats users already have into Contract 1 records.

Each adapter maps one decoded source record to a Contract 1 dict (then validated like any other
record) or raises :class:`~distillwatch.schema.RecordError` naming the source field at fault.
Request and response bodies are read by :mod:`distillwatch.openai_api`, the same code the
gateway uses, so a request logged by LiteLLM, by OpenAI's Batch API or by our own proxy is
stored the same way (tool calls, tool results and the Responses API included).

- ``litellm``: rows of LiteLLM's ``LiteLLM_SpendLogs`` table, as ``psql`` exports them: JSONL
  (``row_to_json``), CSV (``\\copy ... csv header``, JSON columns as text) or Parquet.
- ``openai``: request/response pairs, one object per line:
  ``{"request": {<chat completion or Responses request>}, "response": {<its response object>},
  "account_id"?, "timestamp"?, "ip"?, "headers"?, ...}``.
- ``openai_batch_input`` + ``openai_batch_output``: the two files of an OpenAI Batch job, joined
  by ``custom_id`` (:class:`BatchJoin`); each file alone cannot make an exchange.
- ``openai_response_object``: a bare Responses API object. It holds the answer but neither the
  request nor the account, so each one is quarantined with a reason saying what to log instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from distillwatch.errors import RecordError, type_name
from distillwatch.openai_api import (
    Messages,
    normalise_messages,
    responses_messages,
    summarise_response,
)
from distillwatch.schema import OPTIONAL_INTS, parse_ts

Adapter = Callable[[dict[str, Any]], dict[str, Any]]
BATCH_FORMATS = ("openai_batch_input", "openai_batch_output")


def detect_format(record: Any) -> str:
    """Guess a file's format from its first record."""
    if isinstance(record, dict):
        if "request_id" in record and ("startTime" in record or "start_time" in record):
            return "litellm"
        if "custom_id" in record and isinstance(record.get("body"), dict):
            return "openai_batch_input"
        if "custom_id" in record and ("response" in record or "error" in record):
            return "openai_batch_output"
        if (
            isinstance(record.get("request"), dict)
            and "response" in record
            and "messages" not in record
        ):
            return "openai"
        if record.get("object") == "response" and "output" in record:
            return "openai_response_object"
    return "contract"


def _maybe_json(value: Any, field: str) -> Any:
    """LiteLLM exports JSON columns either as objects or as JSON text, depending on the tool."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            raise RecordError(field, "invalid embedded JSON") from None
    return value


def _text(value: Any) -> str | None:
    """A non-empty string, else None (exports write "" where the database had nothing)."""
    return value if isinstance(value, str) and value.strip() else None


def _int(value: Any) -> Any:
    """Integers exported as text (CSV) become integers; anything else is left to validation."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def _header(headers: Any, name: str) -> str | None:
    if not isinstance(headers, dict):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return None


def _tool_names(tools: Any) -> list[str] | None:
    if not isinstance(tools, list):
        return None
    names = []
    for tool in tools[:64]:
        if isinstance(tool, dict):
            function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
            name = function.get("name") or tool.get("type")
            if isinstance(name, str):
                names.append(name[:200])
    return names or None


def _request_messages(request: dict[str, Any], where: str) -> Messages:
    """Messages of a chat, Responses or completion request body (raises RecordError)."""
    if "messages" in request:
        return normalise_messages(request["messages"], where=f"{where}.messages")
    if "input" in request or "instructions" in request:
        return responses_messages(request)
    if isinstance(request.get("prompt"), str):
        return normalise_messages([{"role": "user", "content": request["prompt"]}])
    raise RecordError(f"{where}.messages", "missing required field (no messages, input or prompt)")


# -- LiteLLM ----------------------------------------------------------------------------------
def from_litellm(row: dict[str, Any]) -> dict[str, Any]:
    """Map a ``LiteLLM_SpendLogs`` row. The account is the key owner (``user``), then the team,
    then the key; the end user LiteLLM saw (``end_user``) is kept as ``litellm_end_user``."""
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
    request = _maybe_json(row.get("proxy_server_request"), "proxy_server_request")
    request = request if isinstance(request, dict) else {}
    messages = _maybe_json(row.get("messages"), "messages")
    if isinstance(messages, dict):
        messages = messages.get("messages") or None  # LiteLLM writes {} when it kept none
    flags: list[str] = []
    if not messages:
        if not request:
            raise RecordError(
                "messages", "LiteLLM row has no stored prompt (enable store_prompts_in_spend_logs)"
            )
        normalised = _request_messages(request, "proxy_server_request")
        messages, flags = normalised.messages, normalised.flags
    api_key = _text(row.get("api_key"))
    account = (
        _text(row.get("user"))
        or _text(metadata.get("user_api_key_user_id"))
        or _text(row.get("team_id"))
        or _text(metadata.get("user_api_key_team_id"))
        or (f"key-{api_key[:16]}" if api_key else None)
    )
    if account is None:
        raise RecordError("user", "no account: none of user, team_id or api_key is set")
    response = summarise_response(_maybe_json(row.get("response"), "response"))
    request_headers = (
        (request.get("metadata") or {}).get("headers")
        if isinstance(request.get("metadata"), dict)
        else None
    )
    record: dict[str, Any] = {
        "id": request_id,
        "ts": started.isoformat() + "Z",
        "account_id": account,
        "model": _text(row.get("model_group")) or _text(row.get("model")) or "",
        "messages": messages,
        "response": response.text,
        "response_tool_calls": response.tool_calls or None,
        "api_key_id": api_key,
        "org_id": _text(metadata.get("user_api_key_org_id")) or _text(row.get("organization_id")),
        "ip": _text(row.get("requester_ip_address")) or _text(metadata.get("requester_ip_address")),
        "user_agent": _text(metadata.get("user_agent"))
        or _header(metadata.get("headers"), "user-agent")
        or _header(request_headers, "user-agent"),
        "conversation_id": _text(row.get("session_id")),
        "endpoint": _litellm_endpoint(row.get("call_type")),
        "prompt_tokens": _int(row.get("prompt_tokens")),
        "completion_tokens": _int(row.get("completion_tokens")),
        "status": _litellm_status(row.get("status"), metadata),
        "flags": flags or None,
    }
    end = row.get("endTime", row.get("end_time"))
    if end is not None:
        try:
            elapsed = parse_ts(end, "endTime") - started
            record["latency_ms"] = max(int(elapsed.total_seconds() * 1000), 0)
        except RecordError:
            pass
    extras = {
        "litellm_end_user": _text(row.get("end_user")),
        "litellm_team_id": _text(row.get("team_id")),
        "litellm_key_alias": _text(metadata.get("user_api_key_alias")),
        "litellm_spend": row.get("spend"),
        "request_tools": _tool_names(request.get("tools")),
    }
    error = metadata.get("error_information")
    if isinstance(error, dict) and error.get("error_class"):
        extras["error_class"] = str(error["error_class"])[:200]
    record.update({k: v for k, v in extras.items() if v is not None})
    return {key: value for key, value in record.items() if value is not None}


def _litellm_status(status: Any, metadata: dict[str, Any]) -> int | None:
    """LiteLLM writes "success"/"failure"; a failure's HTTP status is in its error information."""
    if status == "success":
        return 200
    if status == "failure":
        error = metadata.get("error_information")
        code = error.get("error_code") if isinstance(error, dict) else None
        return int(code) if isinstance(code, str | int) and str(code).isdigit() else 500
    return None


def _litellm_endpoint(call_type: Any) -> str | None:
    return (
        {
            "acompletion": "/v1/chat/completions",
            "completion": "/v1/chat/completions",
            "atext_completion": "/v1/completions",
            "text_completion": "/v1/completions",
            "aembedding": "/v1/embeddings",
            "embedding": "/v1/embeddings",
            "aresponses": "/v1/responses",
            "responses": "/v1/responses",
        }.get(call_type)
        if isinstance(call_type, str)
        else None
    )


# -- OpenAI request/response pairs -------------------------------------------------------------
def _created(response: Any) -> str | None:
    if isinstance(response, dict):
        stamp = response.get("created", response.get("created_at"))
        if isinstance(stamp, int) and not isinstance(stamp, bool) and stamp > 0:
            return datetime.fromtimestamp(stamp, UTC).isoformat()
    return None


def from_openai_pair(pair: dict[str, Any]) -> dict[str, Any]:
    """Map an OpenAI-style ``{"request": ..., "response": ...}`` pair (chat, Responses, or
    completions; a Batch API output line's ``{"status_code", "body"}`` wrapper is unwrapped)."""
    request = pair.get("request")
    if not isinstance(request, dict):
        raise RecordError("request", f"expected the request body object, got {type_name(request)}")
    response = pair.get("response")
    status = pair.get("status") or pair.get("status_code")
    if isinstance(response, dict) and isinstance(response.get("body"), dict):
        status = status or response.get("status_code")
        response = response["body"]  # Batch API output lines wrap the body
    messages = _request_messages(request, "request")
    headers = pair.get("headers")
    ident = pair.get("id") or (response.get("id") if isinstance(response, dict) else None)
    if not isinstance(ident, str) or not ident:
        raise RecordError("id", "no id and no response.id")
    account = (
        _text(pair.get("account_id"))
        or _text(pair.get("user"))
        or _text(request.get("user"))
        or _text(request.get("safety_identifier"))  # what OpenAI asks for instead of `user`
        or (_text(pair.get("api_key_id")) and f"key-{pair['api_key_id']}")
    )
    if not account:
        raise RecordError(
            "account_id", "no account_id, user, request.user or request.safety_identifier"
        )
    when = pair.get("timestamp") or pair.get("ts") or _created(response)
    if when is None:
        raise RecordError("timestamp", "no timestamp and no response.created")
    summary = summarise_response(response)
    if status is None and summary.text is not None and not summary.error:
        status = 200  # a completed response object: the call succeeded
    responses_api = "input" in request or (
        isinstance(response, dict) and response.get("object") == "response"
    )
    record = {
        "id": ident,
        "ts": when,
        "account_id": account,
        "model": request.get("model") or (response or {}).get("model"),
        "messages": messages.messages,
        "flags": messages.flags or None,
        "response": summary.text,
        "response_tool_calls": summary.tool_calls or None,
        "ip": pair.get("ip"),
        "user_agent": pair.get("user_agent") or _header(headers, "user-agent"),
        "tls_fingerprint": pair.get("tls_fingerprint") or _header(headers, "x-ja4"),
        "api_key_id": pair.get("api_key_id"),
        "endpoint": pair.get("endpoint")
        or pair.get("url")
        or ("/v1/responses" if responses_api else "/v1/chat/completions"),
        "prompt_tokens": summary.prompt_tokens,
        "completion_tokens": summary.completion_tokens,
        "status": status,
        "latency_ms": pair.get("latency_ms"),
        "request_tools": _tool_names(request.get("tools")),
    }
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if isinstance(request.get(key), int):
            record[f"request_{key}"] = request[key]
    if summary.error:
        record["response_error"] = summary.error
    return {key: value for key, value in record.items() if value is not None}


def response_object_only(record: dict[str, Any]) -> dict[str, Any]:
    raise RecordError(
        "<record>",
        "a bare Responses API object: it holds the answer but not the request (input) or the "
        'account. Log the request with it: {"request": ..., "response": ..., "account_id": ...}',
    )


# -- OpenAI Batch API --------------------------------------------------------------------------
class BatchJoin:
    """The adapter for a Batch job's *input* file, joined to its *output* file by ``custom_id``.

    The output file is indexed (custom_id -> byte offset) without being held in memory. A
    request's time is its response's ``created``; failed and expired requests have none, so they
    take the earliest response time of the batch (flagged), or the output file's modification
    time when no request succeeded. Failed and expired requests are kept: what an account asked
    for is evidence even when it was not answered.
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        self.offsets: dict[str, int] = {}
        self.bad_output_lines: list[tuple[int, str]] = []
        earliest: str | None = None
        with open(output, "rb") as handle:
            offset, number = 0, 0
            for line in handle:
                number += 1
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    self.bad_output_lines.append((number, "invalid JSON"))
                    offset += len(line)
                    continue
                custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
                if isinstance(custom_id, str):
                    self.offsets.setdefault(custom_id, offset)
                    body = (
                        (entry.get("response") or {}).get("body")
                        if isinstance(entry.get("response"), dict)
                        else None
                    )
                    created = _created(body)
                    if created and (earliest is None or created < earliest):
                        earliest = created
                elif line.strip():
                    self.bad_output_lines.append((number, "no custom_id"))
                offset += len(line)
        self.fallback_ts = earliest
        self.fallback_reason = "the earliest response time in the batch output"
        if earliest is None:
            self.fallback_ts = datetime.fromtimestamp(os.stat(output).st_mtime, UTC).isoformat()
            self.fallback_reason = "the batch output file's modification time"
        self.used: set[str] = set()

    def _result(self, custom_id: str) -> dict[str, Any]:
        with open(self.output, "rb") as handle:
            handle.seek(self.offsets[custom_id])
            return orjson.loads(handle.readline())

    def __call__(self, line: dict[str, Any]) -> dict[str, Any]:
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise RecordError("custom_id", "missing or not a string")
        if custom_id not in self.offsets:
            raise RecordError(
                "custom_id",
                f"no result for {custom_id[:80]!r} in {self.output.name} (still running, or another batch's output)",
            )
        body = line.get("body")
        if not isinstance(body, dict):
            raise RecordError("body", f"expected the request body object, got {type_name(body)}")
        self.used.add(custom_id)
        result = self._result(custom_id)
        wrapper = result.get("response") if isinstance(result.get("response"), dict) else {}
        response_body = wrapper.get("body")
        error = result.get("error") if isinstance(result.get("error"), dict) else None
        flags = []
        when = _created(response_body)
        if when is None:
            when = self.fallback_ts
            flags.append(
                f"ts: no response time (a failed or expired request); {self.fallback_reason} is used"
            )
        pair = {
            "id": _text(result.get("id")) or f"batch-{custom_id}",
            "request": body,
            "response": response_body if isinstance(response_body, dict) else None,
            "status": wrapper.get("status_code"),
            "url": line.get("url"),
            "timestamp": when,
        }
        record = from_openai_pair(pair)
        record["flags"] = [*(record.get("flags") or []), *flags] or None
        record["batch_custom_id"] = custom_id
        if _text(wrapper.get("request_id")):
            record["batch_request_id"] = wrapper["request_id"]
        if error:
            record["batch_error"] = {
                "code": error.get("code"),
                "message": str(error.get("message"))[:500],
            }
        return record

    def unused(self) -> list[str]:
        return [c for c in self.offsets if c not in self.used]


def batch_alone(kind: str) -> Adapter:
    """The adapter for one file of a Batch job given without the other: nothing can be joined."""

    def reject(line: dict[str, Any]) -> dict[str, Any]:
        if kind == "openai_batch_input":
            raise RecordError(
                "<record>",
                "a Batch API input line without its output file: ingest both files of the batch (or their folder) together",
            )
        raise RecordError(
            "<record>",
            "a Batch API output line without its input file (the prompt is only there): ingest both files of the batch together",
        )

    return reject


def _contract(record: dict[str, Any]) -> dict[str, Any]:
    return record


def from_csv(adapt: Adapter) -> Adapter:
    """Wrap an adapter for records read from CSV, where every value is text."""

    def adapted(record: dict[str, Any]) -> dict[str, Any]:
        record = {k: v for k, v in record.items() if v is not None}
        for name in ("messages", "response_tool_calls", "flags"):
            if isinstance(record.get(name), str) and record[name][:1] == "[":
                record[name] = _maybe_json(record[name], name)
        for name in OPTIONAL_INTS:
            record[name] = _int(record.get(name))
        return adapt({k: v for k, v in record.items() if v is not None})

    return adapted


ADAPTERS: dict[str, Adapter] = {
    "contract": _contract,
    "litellm": from_litellm,
    "openai": from_openai_pair,
    "openai_response_object": response_object_only,
    "openai_batch_input": batch_alone("openai_batch_input"),
    "openai_batch_output": batch_alone("openai_batch_output"),
}

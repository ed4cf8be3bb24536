"""Contract 1 (exchange log record): validation and normalisation.

One function, :func:`validate_exchange`, turns an untrusted decoded JSON object into a
:class:`Exchange` row or raises :class:`RecordError` naming the field and the reason. Every reader
and adapter funnels through it, so the rules live in exactly one place.

Everything in a log line is attacker-controlled (prompts, headers, ids), so every text field is
size-bounded here: oversized values are truncated and the row is flagged, never rejected and never
allowed to grow memory without bound.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

#: Fields the contract names. Anything else is kept verbatim in ``extra``.
KNOWN_FIELDS = (
    "id",
    "ts",
    "account_id",
    "model",
    "messages",
    "response",
    "org_id",
    "api_key_id",
    "ip",
    "user_agent",
    "tls_fingerprint",
    "payment_fingerprint",
    "endpoint",
    "conversation_id",
    "prompt_tokens",
    "completion_tokens",
    "status",
    "latency_ms",
)
_KNOWN = frozenset(KNOWN_FIELDS)
OPTIONAL_STRINGS = (
    "org_id",
    "api_key_id",
    "user_agent",
    "tls_fingerprint",
    "payment_fingerprint",
    "endpoint",
    "conversation_id",
)
OPTIONAL_INTS = ("prompt_tokens", "completion_tokens", "status", "latency_ms")
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

#: Identifiers are keys, not text: anything longer than this is almost certainly garbage or abuse.
MAX_ID_CHARS = 256
#: Default cap on any single text value (a message, the response, a header). Configurable per run.
DEFAULT_MAX_TEXT_CHARS = 32_768
MAX_MESSAGES = 512
MAX_INT = 2**62


class RecordError(ValueError):
    """A record that breaks Contract 1. ``field`` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(slots=True)
class Exchange:
    """One validated exchange, in the column order of the store's ``exchanges`` table."""

    id: str
    ts: datetime
    account_id: str
    model: str
    # JSON text of the (bounded) message list, or None when the request was exactly one user
    # message: then ``prompt`` holds all of it and storing it twice would double the store.
    messages: str | None
    prompt: str  # text of the last user message: what the features look at first
    system_prompt: str | None
    n_messages: int
    response: str | None
    org_id: str | None
    api_key_id: str | None
    ip: str | None
    user_agent: str | None
    tls_fingerprint: str | None
    payment_fingerprint: str | None
    endpoint: str | None
    conversation_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    status: int | None
    latency_ms: int | None
    truncated: bool
    extra: str | None  # JSON text of unknown fields, kept rather than rejected


EXCHANGE_COLUMNS = tuple(Exchange.__dataclass_fields__)


class _Bound:
    """Truncates text to a cap and remembers whether it had to."""

    __slots__ = ("cap", "hit")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.hit = False

    def __call__(self, text: str) -> str:
        if len(text) > self.cap:
            self.hit = True
            return text[: self.cap]
        return text


def parse_ts(value: Any, field: str = "ts") -> datetime:
    """Parse an RFC 3339 timestamp into a naive UTC datetime (UTC assumed when no offset).

    Parquet inputs carry real timestamp columns, so datetimes are accepted as they are.
    """
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value
    if not isinstance(value, str):
        raise RecordError(field, f"expected an RFC 3339 string, got {_type_name(value)}")
    text = value.strip()
    if not text or len(text) > 64:
        raise RecordError(field, "expected an RFC 3339 timestamp")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise RecordError(field, f"not an RFC 3339 timestamp: {text[:40]!r}") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def content_text(content: Any, where: str) -> str:
    """Flatten OpenAI message content (a string or a list of parts) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces: list[str] = []
        for part in content:
            if isinstance(part, str):
                pieces.append(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind in ("text", "input_text", "output_text") and isinstance(
                    part.get("text"), str
                ):
                    pieces.append(part["text"])
                elif kind in ("image_url", "input_image", "image"):
                    pieces.append("[image]")
                elif kind in ("input_audio", "audio"):
                    pieces.append("[audio]")
                elif kind in ("file", "input_file"):
                    pieces.append("[file]")
                else:
                    raise RecordError(where, f"unsupported content part type {str(kind)[:40]!r}")
            else:
                raise RecordError(where, f"content part must be an object, got {_type_name(part)}")
        return "\n".join(pieces)
    raise RecordError(
        where, f"content must be a string or a list of parts, got {_type_name(content)}"
    )


def validate_exchange(raw: Any, max_text: int = DEFAULT_MAX_TEXT_CHARS) -> Exchange:
    """Validate one decoded record against Contract 1 and return the row to store."""
    if not isinstance(raw, dict):
        raise RecordError("<record>", f"expected a JSON object, got {_type_name(raw)}")
    bound = _Bound(max_text)

    ident = _required_id(raw, "id")
    ts = parse_ts(raw.get("ts")) if "ts" in raw else _missing("ts")
    account_id = _required_id(raw, "account_id")
    model = _required_id(raw, "model")

    messages_raw = raw.get("messages")
    if messages_raw is None:
        raise RecordError("messages", "missing required field")
    if not isinstance(messages_raw, list):
        raise RecordError(
            "messages", f"expected a list of messages, got {_type_name(messages_raw)}"
        )
    if not messages_raw:
        raise RecordError("messages", "must contain at least one message")
    if len(messages_raw) > MAX_MESSAGES:
        # Keep the newest turns: the last user message is what the model answered.
        messages_raw = messages_raw[-MAX_MESSAGES:]
        bound.hit = True
    messages: list[dict[str, str]] = []
    prompt = ""
    system_prompt: str | None = None
    for i, message in enumerate(messages_raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RecordError(where, f"expected an object, got {_type_name(message)}")
        role = message.get("role")
        if not isinstance(role, str) or role not in MESSAGE_ROLES:
            raise RecordError(f"{where}.role", f"unknown role {str(role)[:40]!r}")
        if message.get("content") is None and role != "assistant":
            # Only an assistant turn (one that made tool calls) may come without content.
            raise RecordError(f"{where}.content", "missing")
        text = bound(content_text(message.get("content"), f"{where}.content"))
        messages.append({"role": role, "content": text})
        if role == "user":
            prompt = text
        elif role in ("system", "developer") and system_prompt is None:
            system_prompt = text

    response = raw.get("response")
    if response is not None:
        if not isinstance(response, str):
            raise RecordError("response", f"expected a string, got {_type_name(response)}")
        response = bound(response)

    optional: dict[str, Any] = {}
    for name in OPTIONAL_STRINGS:
        value = raw.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise RecordError(name, f"expected a string, got {_type_name(value)}")
            value = bound(value)
        optional[name] = value
    for name in OPTIONAL_INTS:
        value = raw.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise RecordError(name, f"expected an integer, got {_type_name(value)}")
            if value < 0 or value > MAX_INT:
                raise RecordError(name, f"out of range: {value}")
        optional[name] = value

    ip = raw.get("ip")
    if ip is not None:
        ip = _normalise_ip(ip)

    extra_keys = [key for key in raw if key not in _KNOWN]
    extra: str | None = None
    if extra_keys:
        extra_text = orjson.dumps({key: raw[key] for key in extra_keys}).decode()
        extra = bound(extra_text) if len(extra_text) <= max_text else None
        if extra is None:
            bound.hit = True
            extra = orjson.dumps({"_truncated_fields": extra_keys[:64]}).decode()

    return Exchange(
        id=ident,
        ts=ts,
        account_id=account_id,
        model=model,
        messages=None
        if len(messages) == 1 and messages[0]["role"] == "user"
        else orjson.dumps(messages).decode(),
        prompt=prompt,
        system_prompt=system_prompt,
        n_messages=len(messages),
        response=response,
        ip=ip,
        truncated=bound.hit,
        extra=extra,
        **optional,
    )


def _required_id(raw: dict[str, Any], field: str) -> str:
    value = raw.get(field)
    if value is None:
        raise RecordError(field, "missing required field")
    if not isinstance(value, str):
        raise RecordError(field, f"expected a string, got {_type_name(value)}")
    value = value.strip()
    if not value:
        raise RecordError(field, "must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise RecordError(field, f"longer than {MAX_ID_CHARS} characters")
    return value


def _missing(field: str) -> Any:
    raise RecordError(field, "missing required field")


def _normalise_ip(value: Any) -> str:
    if not isinstance(value, str):
        raise RecordError("ip", f"expected a string, got {_type_name(value)}")
    normalised = _canonical_ip(value.strip()[:64])
    if normalised is None:
        raise RecordError("ip", f"not an IPv4/IPv6 address: {value[:40]!r}")
    return normalised


@lru_cache(maxsize=65_536)
def _canonical_ip(text: str) -> str | None:
    # Logs repeat the same addresses many times; parsing each once keeps ingest fast.
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)


def parse_account(raw: Any, max_text: int = 1024) -> dict[str, Any]:
    """Validate one account-metadata record (the optional ``--accounts`` file)."""
    if not isinstance(raw, dict):
        raise RecordError("<record>", f"expected a JSON object, got {_type_name(raw)}")
    row: dict[str, Any] = {"account_id": _required_id(raw, "account_id")}
    created = raw.get("created_at")
    row["created_at"] = parse_ts(created, "created_at") if created is not None else None
    for name in ("email_domain", "country", "payment_fingerprint"):
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            raise RecordError(name, f"expected a string, got {_type_name(value)}")
        row[name] = value[:max_text] if isinstance(value, str) else None
    signup_ip = raw.get("signup_ip")
    row["signup_ip"] = None
    if signup_ip is not None:
        try:
            row["signup_ip"] = _normalise_ip(signup_ip)
        except RecordError:
            raise RecordError(
                "signup_ip", f"not an IPv4/IPv6 address: {str(signup_ip)[:40]!r}"
            ) from None
    extra = {k: v for k, v in raw.items() if k not in row}
    row["extra"] = orjson.dumps(extra).decode()[: max_text * 4] if extra else None
    return row

"""Contract 1 (exchange log record): validation and normalisation.

One function, :func:`validate_exchange`, turns an untrusted decoded JSON object into a
:class:`Exchange` row or raises :class:`RecordError` naming the field and the reason. Every reader
and adapter funnels through it, so the rules live in exactly one place.

Only what makes a record unusable costs the record: a missing or malformed ``id``, ``ts``,
``account_id``, ``model`` or ``messages`` (see :func:`distillwatch.openai_api.normalise_messages`
for what messages may hold). A malformed *optional* field (an IP that is not an address, a
string where a number belongs) is set to null and named in the row's ``flags``; so is anything
unusual that was kept (an unknown role, an unknown content part type). A record is never lost
for a field detection can live without.

Everything in a log line is attacker-controlled (prompts, headers, ids), so every text field is
size-bounded here: oversized values are truncated and the row is flagged, never rejected and never
allowed to grow memory without bound.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson

from distillwatch.errors import RecordError, type_name
from distillwatch.openai_api import MESSAGE_ROLES, _tool_calls, normalise_messages

__all__ = [
    "EXCHANGE_COLUMNS", "KNOWN_FIELDS", "MESSAGE_ROLES", "Exchange", "RecordError",
    "parse_account", "parse_ts", "validate_exchange",
]  # fmt: skip

#: Fields the contract names. Anything else is kept verbatim in ``extra``.
KNOWN_FIELDS = (
    "id",
    "ts",
    "account_id",
    "model",
    "messages",
    "response",
    "response_tool_calls",
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
    "flags",
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

#: Identifiers are keys, not text: anything longer than this is almost certainly garbage or abuse.
MAX_ID_CHARS = 256
#: Default cap on any single text value (a message, the response, a header). Configurable per run.
DEFAULT_MAX_TEXT_CHARS = 32_768
MAX_MESSAGES = 512
MAX_INT = 2**62
#: At most this many flags per record, each at most this long.
MAX_FLAGS = 32
MAX_FLAG_CHARS = 200


@dataclass(slots=True)
class Exchange:
    """One validated exchange, in the column order of the store's ``exchanges`` table."""

    id: str
    ts: datetime
    account_id: str
    model: str
    # JSON text of the (bounded) message list, or None when the request was exactly one plain
    # user message: then ``prompt`` holds all of it and storing it twice would double the store.
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
    #: JSON text of the tools the response called: ``[{"id", "name", "arguments"}]``.
    response_tool_calls: str | None = None
    #: What was unusual or repaired in this record (field: reason), or None.
    flags: list[str] | None = None


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


_LEAP_SECOND = re.compile(r"(T\d{2}:\d{2}):60(?=[.,]\d+|Z|[+-]\d{2}:?\d{2}|$)")


def parse_ts(value: Any, field: str = "ts") -> datetime:
    """Parse an RFC 3339 timestamp into a naive UTC datetime (UTC assumed when no offset).

    RFC 3339 allows lowercase ``t`` and ``z`` and a leap second (``23:59:60Z``); a leap second
    is read as the first instant of the following second, as POSIX clocks count it. Parquet
    inputs carry real timestamp columns, so datetimes are accepted as they are.
    """
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value
    if not isinstance(value, str):
        raise RecordError(field, f"expected an RFC 3339 string, got {type_name(value)}")
    text = value.strip()
    if not text or len(text) > 64:
        raise RecordError(field, "expected an RFC 3339 timestamp")
    text = text.replace("t", "T").replace("z", "Z")
    leap = _LEAP_SECOND.search(text)
    if leap:
        text = _LEAP_SECOND.sub(r"\1:59", text, count=1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise RecordError(field, f"not an RFC 3339 timestamp: {value.strip()[:40]!r}") from None
    if leap:  # (a leap second falls at 23:59:60 UTC, which local offsets move: not checked)
        parsed = parsed.replace(microsecond=0) + timedelta(seconds=1)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


class _Flags(list):
    """A record's flags, bounded in count and length."""

    def add(self, field: str, reason: str) -> None:
        self.note(f"{field}: {reason}")

    def note(self, text: str) -> None:
        text = text[:MAX_FLAG_CHARS]
        if len(self) < MAX_FLAGS and text not in self:
            self.append(text)


def validate_exchange(raw: Any, max_text: int = DEFAULT_MAX_TEXT_CHARS) -> Exchange:
    """Validate one decoded record against Contract 1 and return the row to store."""
    if not isinstance(raw, dict):
        raise RecordError("<record>", f"expected a JSON object, got {type_name(raw)}")
    bound = _Bound(max_text)
    flags = _Flags()

    ident = _required_id(raw, "id")
    ts = parse_ts(raw.get("ts")) if "ts" in raw else _missing("ts")
    account_id = _required_id(raw, "account_id")
    model = _required_id(raw, "model")

    given = raw.get("flags")  # what an earlier stage (the gateway) found unusual
    if isinstance(given, list):
        for note in given:
            if isinstance(note, str):
                flags.note(note)
    elif given is not None:
        flags.add("flags", f"expected a list of strings, got {type_name(given)}")
    normalised = normalise_messages(raw.get("messages"), bound, MAX_MESSAGES)
    for note in normalised.flags:
        flags.note(note)
    if len(raw["messages"]) > MAX_MESSAGES:
        bound.hit = True
    messages = normalised.messages

    response = raw.get("response")
    if response is not None:
        if isinstance(response, str):
            response = bound(response)
        else:
            flags.add("response", f"expected a string, got {type_name(response)}; dropped")
            response = None
    tool_calls: str | None = None
    calls_raw = raw.get("response_tool_calls")
    if calls_raw is not None:
        if isinstance(calls_raw, list):
            notes: list[str] = []
            calls = _tool_calls(calls_raw, "response_tool_calls", notes, bound)
            for note in notes:
                flags.note(note)
            tool_calls = orjson.dumps(calls).decode() if calls else None
        else:
            flags.add("response_tool_calls", f"expected a list, got {type_name(calls_raw)}")

    optional: dict[str, Any] = {}
    for name in OPTIONAL_STRINGS:
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            flags.add(name, f"expected a string, got {type_name(value)}; dropped")
            value = None
        optional[name] = bound(value) if value is not None else None
    for name in OPTIONAL_INTS:
        optional[name] = _optional_int(raw.get(name), name, flags)

    ip, chain = _client_ip(raw.get("ip"), flags)

    extra_keys = [key for key in raw if key not in _KNOWN]
    extra_fields = {key: raw[key] for key in extra_keys}
    if chain:
        extra_fields["ip_chain"] = chain
    extra: str | None = None
    if extra_fields:
        try:
            extra_text = orjson.dumps(extra_fields).decode()
        except orjson.JSONEncodeError as exc:
            flags.add("<extra>", f"unknown fields not serialisable ({exc}); names kept")
            extra_text = orjson.dumps({"_unserialisable_fields": extra_keys[:64]}).decode()
        if len(extra_text) > max_text:
            bound.hit = True
            extra_text = orjson.dumps({"_truncated_fields": extra_keys[:64]}).decode()
        extra = extra_text

    plain = len(messages) == 1 and messages[0].keys() == {"role", "content"}
    return Exchange(
        id=ident,
        ts=ts,
        account_id=account_id,
        model=model,
        messages=None
        if plain and messages[0]["role"] == "user"
        else orjson.dumps(messages).decode(),
        prompt=normalised.prompt,
        system_prompt=normalised.system_prompt,
        n_messages=len(messages),
        response=response,
        ip=ip,
        truncated=bound.hit,
        extra=extra,
        response_tool_calls=tool_calls,
        flags=list(flags) or None,
        **optional,
    )


def _optional_int(value: Any, name: str, flags: _Flags) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        flags.add(name, f"expected an integer, got {type_name(value)}; dropped")
        return None
    if value < 0 or value > MAX_INT:
        flags.add(name, f"out of range: {value}; dropped")
        return None
    return value


def _client_ip(value: Any, flags: _Flags) -> tuple[str | None, list[str] | None]:
    """The client address, and the whole forwarded-for chain when one was given.

    ``"198.51.100.23, 10.0.0.5"`` (what a proxy that trusts X-Forwarded-For records) gives the
    first valid address; an address that is not one is dropped with a flag, never the record.
    """
    if value is None:
        return None, None
    if not isinstance(value, str):
        flags.add("ip", f"expected a string, got {type_name(value)}; dropped")
        return None, None
    if "," not in value:
        canonical = _canonical_ip(value.strip()[:64])
        if canonical is None:
            flags.add("ip", f"not an IPv4/IPv6 address: {value[:40]!r}; dropped")
        return canonical, None
    chain = [hop.strip()[:64] for hop in value[:1024].split(",")][:32]
    for position, hop in enumerate(chain):
        canonical = _canonical_ip(hop)
        if canonical is not None:
            if position:
                flags.add(
                    "ip",
                    f"forwarded-for chain starts with {chain[0][:40]!r}; used entry {position + 1}",
                )
            return canonical, chain
    flags.add("ip", f"no IPv4/IPv6 address in forwarded-for chain {value[:60]!r}; dropped")
    return None, chain


def _required_id(raw: dict[str, Any], field: str) -> str:
    value = raw.get(field)
    if value is None:
        raise RecordError(field, "missing required field")
    if not isinstance(value, str):
        raise RecordError(field, f"expected a string, got {type_name(value)}")
    value = value.strip()
    if not value:
        raise RecordError(field, "must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise RecordError(field, f"longer than {MAX_ID_CHARS} characters")
    return value


def _missing(field: str) -> Any:
    raise RecordError(field, "missing required field")


def _normalise_ip(value: Any, field: str = "ip") -> str:
    if not isinstance(value, str):
        raise RecordError(field, f"expected a string, got {type_name(value)}")
    normalised = _canonical_ip(value.strip()[:64])
    if normalised is None:
        raise RecordError(field, f"not an IPv4/IPv6 address: {value[:40]!r}")
    return normalised


@lru_cache(maxsize=65_536)
def canonical_ip(text: str) -> str | None:
    """The address as ``ipaddress`` writes it (IPv6 compressed, lower case), None if not one."""
    # Logs repeat the same addresses many times; parsing each once keeps ingest fast.
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


_canonical_ip = canonical_ip


def parse_account(raw: Any, max_text: int = 1024) -> dict[str, Any]:
    """Validate one account-metadata record (the optional ``--accounts`` file)."""
    if not isinstance(raw, dict):
        raise RecordError("<record>", f"expected a JSON object, got {type_name(raw)}")
    row: dict[str, Any] = {"account_id": _required_id(raw, "account_id")}
    created = raw.get("created_at")
    row["created_at"] = parse_ts(created, "created_at") if created is not None else None
    for name in ("email_domain", "country", "payment_fingerprint"):
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            raise RecordError(name, f"expected a string, got {type_name(value)}")
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

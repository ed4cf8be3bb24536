"""Unit tests for Contract-1 validation: every field, its accepted forms and its errors."""

from __future__ import annotations

from datetime import datetime

import orjson
import pytest

from distillwatch.schema import RecordError, parse_account, validate_exchange


def record(**overrides):
    base = {
        "id": "ex-1",
        "ts": "2026-03-01T10:00:00Z",
        "account_id": "acct_1",
        "model": "model-a",
        "messages": [{"role": "user", "content": "What is 2+2?"}],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def error_of(raw) -> RecordError:
    with pytest.raises(RecordError) as info:
        validate_exchange(raw)
    return info.value


def test_minimal_record_is_valid():
    row = validate_exchange(record())
    assert row.id == "ex-1"
    assert row.prompt == "What is 2+2?"
    assert row.messages is None  # a lone user message is stored once, in `prompt`
    assert row.n_messages == 1
    assert row.truncated is False
    assert row.extra is None


@pytest.mark.parametrize("field", ["id", "ts", "account_id", "model", "messages"])
def test_required_fields_missing(field):
    err = error_of(record(**{field: ...}))
    assert err.field == field
    assert "missing" in err.reason


@pytest.mark.parametrize("field", ["id", "account_id", "model"])
@pytest.mark.parametrize("value", [123, ["x"], {"a": 1}, True])
def test_identifier_fields_must_be_strings(field, value):
    err = error_of(record(**{field: value}))
    assert err.field == field
    assert "expected a string" in err.reason


@pytest.mark.parametrize("field", ["id", "account_id", "model"])
def test_identifier_fields_reject_empty_and_huge(field):
    assert error_of(record(**{field: "   "})).field == field
    assert "longer than" in error_of(record(**{field: "x" * 1000})).reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, 0, 0)),
        ("2026-03-01T12:00:00+02:00", datetime(2026, 3, 1, 10, 0, 0)),
        ("2026-03-01T10:00:00", datetime(2026, 3, 1, 10, 0, 0)),  # no offset: UTC
        ("2026-03-01T10:00:00.123456Z", datetime(2026, 3, 1, 10, 0, 0, 123456)),
        ("2026-03-01 10:00:00Z", datetime(2026, 3, 1, 10, 0, 0)),
    ],
)
def test_ts_forms(text, expected):
    assert validate_exchange(record(ts=text)).ts == expected


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00:00Z", "", 1700000000, None])
def test_ts_rejects(value):
    err = error_of(record(ts=value))
    assert err.field == "ts"


def test_messages_must_be_a_non_empty_list_of_objects():
    assert error_of(record(messages="hi")).field == "messages"
    assert "at least one" in error_of(record(messages=[])).reason
    assert error_of(record(messages=["hi"])).field == "messages[0]"


def test_malformed_message_structure_is_refused():
    err = error_of(record(messages=[{"content": "x"}]))
    assert err.field == "messages[0].role"
    err = error_of(record(messages=[{"role": "user", "content": 5}]))
    assert err.field == "messages[0].content"
    err = error_of(record(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]))
    assert err.field == "messages[0].content[0].text" and "got integer" in err.reason
    err = error_of(record(messages=[{"role": "user", "content": [7]}]))
    assert err.field == "messages[0].content[0]"


def test_unusual_messages_are_kept_and_flagged():
    # What a client can send and an upstream may serve must never make an exchange invisible.
    row = validate_exchange(
        record(
            messages=[
                {"role": "wizard", "content": "x"},
                {"role": "system", "content": None},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
                {"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "hologram"}]},
            ]
        )
    )
    assert row.prompt == "q\n[hologram]"
    assert row.flags == [
        "messages[0].role: unknown role 'wizard'",
        "messages[1].content: null",
        "messages[3].content[1].type: unsupported content part type 'hologram'",
    ]
    assert [m["content"] for m in orjson.loads(row.messages)] == ["x", "", "no", "q\n[hologram]"]


def test_tool_calls_are_kept():
    row = validate_exchange(
        record(
            messages=[
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "57F"},
            ],
            response_tool_calls=[{"id": "c2", "type": "function",
                                  "function": {"name": "book", "arguments": {"a": 1}}}],
        )
    )  # fmt: skip
    stored = orjson.loads(row.messages)
    assert stored[1]["tool_calls"] == [{"name": "get_weather", "arguments": "{}", "id": "c1"}]
    assert stored[2]["tool_call_id"] == "c1" and row.flags is None
    assert orjson.loads(row.response_tool_calls) == [
        {"name": "book", "arguments": '{"a":1}', "id": "c2"}
    ]


def test_malformed_optional_fields_cost_the_field_not_the_record():
    row = validate_exchange(
        record(ip="999.1.1.1", status="500", user_agent=["x"], latency_ms=-3, response={"a": 1})
    )
    assert (row.ip, row.status, row.user_agent, row.latency_ms, row.response) == (None,) * 5
    assert [f.split(":")[0] for f in row.flags] == [
        "response", "user_agent", "status", "latency_ms", "ip",
    ]  # fmt: skip


def test_forwarded_for_chain_gives_the_client_and_keeps_the_chain():
    row = validate_exchange(record(ip="198.51.100.23, 10.0.0.5"))
    assert row.ip == "198.51.100.23" and row.flags is None
    assert orjson.loads(row.extra)["ip_chain"] == ["198.51.100.23", "10.0.0.5"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01t10:00:00z", datetime(2026, 3, 1, 10, 0, 0)),
        ("2016-12-31T23:59:60Z", datetime(2017, 1, 1, 0, 0, 0)),
        ("2016-12-31T23:59:60.5Z", datetime(2017, 1, 1, 0, 0, 0)),
        ("2017-01-01T05:29:60+05:30", datetime(2017, 1, 1, 0, 0, 0)),
    ],
)
def test_rfc3339_lowercase_and_leap_second(text, expected):
    assert validate_exchange(record(ts=text)).ts == expected


def test_content_parts_and_multi_turn():
    row = validate_exchange(
        record(
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": None, "tool_calls": []},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "describe"},
                        {"type": "image_url", "image_url": {"url": "data:..."}},
                    ],
                },
            ]
        )
    )
    assert row.prompt == "describe\n[image]"
    assert row.system_prompt == "You are terse."
    assert row.n_messages == 4
    stored = orjson.loads(row.messages)
    assert [m["role"] for m in stored] == ["system", "user", "assistant", "user"]


def test_optional_strings_and_ints():
    row = validate_exchange(
        record(
            response="4",
            org_id="org",
            api_key_id="key",
            user_agent="curl/8",
            tls_fingerprint="t13d",
            payment_fingerprint="pm_1",
            endpoint="/v1/chat/completions",
            conversation_id="c1",
            prompt_tokens=10,
            completion_tokens=2.0,
            status=200,
            latency_ms=35,
        )
    )
    assert row.response == "4"
    assert row.completion_tokens == 2 and isinstance(row.completion_tokens, int)
    assert row.status == 200

    def dropped(name, value):
        row = validate_exchange(record(**{name: value}))
        return getattr(row, name) is None and row.flags[0].startswith(f"{name}: ")

    for name in ("org_id", "user_agent", "endpoint", "response"):
        assert dropped(name, 7)
    for name in ("prompt_tokens", "completion_tokens", "status", "latency_ms"):
        assert all(dropped(name, value) for value in ("7", -1, True, 1.5))


def test_ip_is_validated_and_canonicalised():
    assert validate_exchange(record(ip="2001:DB8::0:1")).ip == "2001:db8::1"
    assert validate_exchange(record(ip=" 10.0.0.1 ")).ip == "10.0.0.1"
    for bad in ("10.0.0.300", 17):
        row = validate_exchange(record(ip=bad))
        assert row.ip is None and row.flags[0].startswith("ip: ")


def test_unknown_fields_are_kept():
    row = validate_exchange(record(region="eu", tags=["a", "b"]))
    assert orjson.loads(row.extra) == {"region": "eu", "tags": ["a", "b"]}


def test_oversized_text_is_truncated_and_flagged():
    row = validate_exchange(
        record(messages=[{"role": "user", "content": "x" * 100_000}], response="y" * 50_000),
        max_text=1_000,
    )
    assert row.truncated is True
    assert len(row.prompt) == 1_000
    assert len(row.response) == 1_000


def test_non_object_record():
    assert error_of([1, 2]).field == "<record>"


def test_parse_account():
    row = parse_account(
        {
            "account_id": "a1",
            "created_at": "2026-01-01T00:00:00Z",
            "email_domain": "example.com",
            "country": "DE",
            "signup_ip": "192.0.2.1",
            "payment_fingerprint": "pm_9",
            "plan": "pro",
        }
    )
    assert row["created_at"] == datetime(2026, 1, 1)
    assert orjson.loads(row["extra"]) == {"plan": "pro"}
    with pytest.raises(RecordError) as info:
        parse_account({"account_id": "a1", "signup_ip": "nope"})
    assert info.value.field == "signup_ip"
    with pytest.raises(RecordError) as info:
        parse_account({"account_id": "a1", "created_at": "soon"})
    assert info.value.field == "created_at"

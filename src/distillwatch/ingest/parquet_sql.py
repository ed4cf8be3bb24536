"""Vectorised ingest of Contract-1 Parquet: DuckDB reads the file in place and validates in SQL.

Parquet already carries types, so the per-record Python work of the generic path (decode,
validate, rebuild Arrow) is pure overhead there: at simulator scale (16M rows) it would take
longer than detection itself. When a file's column types match the contract this module applies
the same rules as :func:`distillwatch.schema.validate_exchange`, as SQL over the whole file, and
quarantines failing rows with their row number, field and reason. Files whose types do not match
(content given as a list of parts, say) take the generic path instead, so nothing is rejected
here that the Python path would accept.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from distillwatch.errors import SqlPathUnavailable
from distillwatch.schema import (
    MAX_FLAGS,
    MAX_ID_CHARS,
    MAX_INT,
    MAX_MESSAGES,
    MESSAGE_ROLES,
    _client_ip,
    _Flags,
)
from distillwatch.store import Store

TEXT = "VARCHAR"
INTEGER_TYPES = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"}
)
TIMESTAMP_TYPES = frozenset(
    {
        "VARCHAR",
        "TIMESTAMP",
        "TIMESTAMP WITH TIME ZONE",
        "TIMESTAMP_NS",
        "TIMESTAMP_MS",
        "TIMESTAMP_S",
    }
)
OPTIONAL_TEXT = (
    "response", "org_id", "api_key_id", "user_agent", "tls_fingerprint", "payment_fingerprint",
    "endpoint", "conversation_id",
)  # fmt: skip
OPTIONAL_INT = ("prompt_tokens", "completion_tokens", "status", "latency_ms")
REQUIRED_IDS = ("id", "account_id", "model")
MAX_EXTRA_COLUMNS = 200

Quarantine = Callable[[Path, int, str, str, Any], None]


def _quote(name: str) -> str:
    # Column names come from the file, i.e. from whoever wrote it.
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _message_type_ok(type_name: str) -> bool:
    # Exactly {role, content} as text: messages with more (tool calls, names, content parts)
    # take the Python path, which keeps those fields.
    compact = type_name.replace('"', "").replace(" ", "").upper()
    return compact in (
        "STRUCT(ROLEVARCHAR,CONTENTVARCHAR)[]",
        "STRUCT(CONTENTVARCHAR,ROLEVARCHAR)[]",
    )


def _repr_sql(expr: str) -> str:
    """SQL giving Python's ``repr()`` of a plain string (no backslashes or control characters):
    single-quoted, or double-quoted when the text holds a single quote, as repr does."""
    return (
        f"CASE WHEN contains({expr}, chr(39)) THEN chr(34) || {expr} || chr(34) "
        f"ELSE chr(39) || {expr} || chr(39) END"
    )


def sql_compatible(store: Store, path: Path) -> bool:
    """True when every contract column present in ``path`` has a type the SQL path handles."""
    types = _column_types(store, path)
    if any(name not in types for name in ("id", "ts", "account_id", "model", "messages")):
        return False
    if "response_tool_calls" in types or "flags" in types:
        return False
    if any(types[name] != TEXT for name in REQUIRED_IDS):
        return False
    if types["ts"] not in TIMESTAMP_TYPES or not _message_type_ok(types["messages"]):
        return False
    if any(types.get(name, TEXT) != TEXT for name in (*OPTIONAL_TEXT, "ip")):
        return False
    if any(types.get(name, "BIGINT") not in INTEGER_TYPES for name in OPTIONAL_INT):
        return False
    return len(types) <= len(OPTIONAL_TEXT) + len(OPTIONAL_INT) + 6 + MAX_EXTRA_COLUMNS


def _column_types(store: Store, path: Path) -> dict[str, str]:
    rows = store.run(f"DESCRIBE SELECT * FROM read_parquet({_literal(str(path))})")
    return {name: type_name for name, type_name, *_ in rows}


def _id_check(column: str) -> tuple[str, str]:
    col = _quote(column)
    return (
        f"""CASE WHEN {col} IS NULL THEN 'missing required field'
                 WHEN trim({col}) = '' THEN 'must not be empty'
                 WHEN length(trim({col})) > {MAX_ID_CHARS}
                      THEN 'longer than {MAX_ID_CHARS} characters' END""",
        _literal(column),
    )


def ingest_parquet_sql(
    store: Store, path: Path, quarantine: Quarantine, max_text: int
) -> dict[str, int]:
    """Validate and load one Contract-1 Parquet file in SQL. Returns the ingest counts."""
    types = _column_types(store, path)
    source = str(path)
    src = f"read_parquet({_literal(source)}, file_row_number = true)"
    known = {"id", "ts", "messages", "ip", *REQUIRED_IDS, *OPTIONAL_TEXT, *OPTIONAL_INT}
    extras = [name for name in types if name not in known and name != "file_row_number"]

    # Addresses repeat: each distinct value is read once, by the Python path's own rule (a
    # forwarded-for chain gives its first address; a non-address is dropped with a flag).
    ips = store.run(f"SELECT DISTINCT ip FROM {src} WHERE ip IS NOT NULL") if "ip" in types else []
    canon, chains, ip_flags = [], [], []
    for (raw_ip,) in ips:
        notes = _Flags()
        address, chain = _client_ip(raw_ip, notes)
        canon.append(address)
        chains.append(chain)
        ip_flags.append(notes[0] if notes else None)
    store.con.register(
        "_ip_map",
        pa.table(
            {
                "raw": pa.array([row[0] for row in ips], pa.string()),
                "canon": pa.array(canon, pa.string()),
                "chain": pa.array(chains, pa.list_(pa.string())),
                "flag": pa.array(ip_flags, pa.string()),
            }
        ),
    )

    roles = ", ".join(_literal(role) for role in sorted(MESSAGE_ROLES))
    ts = _quote("ts")
    # RFC 3339 allows lowercase t/z and a leap second, as schema.parse_ts reads them.
    leap = rf"regexp_matches({ts}, '[Tt]\d\d:\d\d:60')"
    ts_text = rf"regexp_replace(upper(trim({ts})), 'T(\d\d):(\d\d):60', 'T\1:\2:59')"
    ts_value = (
        f"(try_cast({ts_text} AS TIMESTAMPTZ)::TIMESTAMP + CASE WHEN {leap} THEN INTERVAL 1 SECOND ELSE INTERVAL 0 SECOND END)"
        if types["ts"] == TEXT
        else f"{ts}::TIMESTAMPTZ::TIMESTAMP" if types["ts"] == "TIMESTAMP WITH TIME ZONE"
        else f"{ts}::TIMESTAMP"
    )  # fmt: skip
    if types["ts"] == TEXT:
        ts_value = f"CASE WHEN {leap} THEN date_trunc('second', {ts_value}) ELSE {ts_value} END"
    msgs = f"list_slice(p.messages, -{MAX_MESSAGES}, -1)"
    offset = f"greatest(len(p.messages) - {MAX_MESSAGES}, 0)"
    no_role = f"list_position(list_transform({msgs}, lambda m: m.role IS NOT NULL), false)"
    checks: list[tuple[str, str]] = [_id_check("id")]
    checks.append(
        (
            f"CASE WHEN {ts} IS NULL THEN 'missing required field' "
            f"WHEN {ts_value} IS NULL "
            f"THEN 'not an RFC 3339 timestamp: ' || {_repr_sql(f'trim({ts}::VARCHAR)')} END",
            _literal("ts"),
        )
    )
    checks += [_id_check("account_id"), _id_check("model")]
    checks.append(
        (
            "CASE WHEN p.messages IS NULL THEN 'missing required field' "
            "WHEN len(p.messages) = 0 THEN 'must contain at least one message' END",
            _literal("messages"),
        )
    )
    checks.append(
        (
            f"CASE WHEN {no_role} > 0 THEN 'expected a string, got null' END",
            f"'messages[' || ({no_role} - 1 + {offset}) || '].role'",
        )
    )
    reason = "coalesce(" + ", ".join(expr for expr, _ in checks) + ")"
    field = (
        "CASE "
        + " ".join(f"WHEN ({expr}) IS NOT NULL THEN {name}" for expr, name in checks)
        + " END"
    )

    # What the Python path keeps but flags, in the order it flags them.
    message_flags = (
        f"flatten(list_transform({msgs}, lambda m, i: list_filter(["
        f"CASE WHEN NOT m.role IN ({roles}) THEN 'messages[' || (i - 1 + {offset}) || "
        f"'].role: unknown role ' || {_repr_sql('left(m.role, 40)')} END, "
        f"CASE WHEN m.content IS NULL THEN 'messages[' || (i - 1 + {offset}) || '].content: null' END"
        "], lambda f: f IS NOT NULL)))"
    )
    field_flags = [
        f"CASE WHEN len(p.messages) > {MAX_MESSAGES} THEN 'messages: ' || len(p.messages) || "
        f"' messages, kept the last {MAX_MESSAGES}' END"
    ]
    for name in OPTIONAL_INT:
        if name in types:
            col = _quote(name)
            field_flags.append(
                f"CASE WHEN {col} < 0 OR {col} > {MAX_INT} "
                f"THEN '{name}: out of range: ' || {col} || '; dropped' END"
            )
    if "ip" in types:
        field_flags.append("_ip_map.flag")
    all_flags = (
        f"list_slice(list_concat({message_flags}, list_filter([{', '.join(field_flags)}], "
        f"lambda f: f IS NOT NULL)), 1, {MAX_FLAGS})"
    )

    def text(column: str) -> str:
        return f"left({_quote(column)}, {max_text})" if column in types else "NULL::VARCHAR"

    def integer(column: str) -> str:
        if column not in types:
            return "NULL::BIGINT"
        col = _quote(column)
        return f"CASE WHEN {col} < 0 OR {col} > {MAX_INT} THEN NULL ELSE {col}::BIGINT END"

    user_msgs = f"list_filter({msgs}, lambda m: m.role = 'user')"
    system_msgs = (
        f"list_filter({msgs}, lambda m: m.role IN ('system', 'developer') "
        "AND coalesce(m.content, '') <> '')"
    )
    long_texts = " OR ".join(
        [f"length({_quote(c)}) > {max_text}" for c in OPTIONAL_TEXT if c in types]
        + [f"list_bool_or(list_transform(p.messages, lambda m: length(m.content) > {max_text}))",
           f"len(p.messages) > {MAX_MESSAGES}"]
    )  # fmt: skip
    members = [f"{_quote(c)} := p.{_quote(c)}" for c in extras]
    extra = (
        "to_json(struct_pack(" + ", ".join(members) + "))::VARCHAR" if members else "NULL::VARCHAR"
    )
    if "ip" in types:
        # A forwarded-for chain is kept next to the unknown fields, as the Python path does.
        chain = "json_object('ip_chain', _ip_map.chain)::VARCHAR"
        extra = (
            f"CASE WHEN _ip_map.chain IS NULL THEN {extra} "
            f"ELSE json_merge_patch(coalesce({extra}, '{{}}'), {chain})::VARCHAR END"
        )
    stored_msgs = (
        f"list_transform({msgs}, lambda m: {{'role': m.role, "
        f"'content': left(coalesce(m.content, ''), {max_text})}})"
    )
    join_ips = "LEFT JOIN _ip_map ON p.ip = _ip_map.raw" if "ip" in types else ""
    select_valid = f"""
        SELECT trim(p.id) AS id, {ts_value} AS ts, trim(p.account_id) AS account_id,
               trim(p.model) AS model,
               CASE WHEN len({msgs}) = 1 AND {msgs}[1].role = 'user' THEN NULL
                    ELSE to_json({stored_msgs})::VARCHAR END AS messages,
               coalesce(left({user_msgs}[-1].content, {max_text}), '') AS prompt,
               left({system_msgs}[1].content, {max_text}) AS system_prompt,
               len({msgs})::INTEGER AS n_messages,
               {text("response")} AS response, {text("org_id")} AS org_id,
               {text("api_key_id")} AS api_key_id,
               {"_ip_map.canon" if "ip" in types else "NULL::VARCHAR"} AS ip,
               {text("user_agent")} AS user_agent, {text("tls_fingerprint")} AS tls_fingerprint,
               {text("payment_fingerprint")} AS payment_fingerprint,
               {text("endpoint")} AS endpoint, {text("conversation_id")} AS conversation_id,
               {integer("prompt_tokens")} AS prompt_tokens,
               {integer("completion_tokens")} AS completion_tokens,
               {integer("status")} AS status, {integer("latency_ms")} AS latency_ms,
               coalesce({long_texts}, false) AS truncated, {extra} AS extra,
               {_literal(source)} AS source, NULL::VARCHAR AS response_tool_calls,
               CASE WHEN len({all_flags}) > 0 THEN {all_flags} END AS flags
        FROM {src} p {join_ips}
        WHERE {reason} IS NULL
    """
    try:
        records = store.run(f"SELECT count(*) FROM {src}")[0][0]
        # Load first, then look for bad rows only if some rows did not load: a clean file is
        # read once. If memory runs out, nothing half-done is left for the fallback to repeat:
        # the INSERT is atomic and the quarantine is only written after it.
        count_new = (
            "SELECT count(*), count(*) FILTER (WHERE truncated), "
            "count(*) FILTER (WHERE flags IS NOT NULL) FROM exchanges"
        )
        before, truncated_before, flagged_before = store.run(count_new)[0]
        store.run(
            f"""INSERT INTO exchanges BY NAME
                SELECT * FROM ({select_valid}) t
                WHERE t.id NOT IN (SELECT id FROM exchanges)
                QUALIFY row_number() OVER (PARTITION BY t.id) = 1"""
        )
        after, truncated_after, flagged_after = store.run(count_new)[0]
        loaded, truncated = after - before, truncated_after - truncated_before
        bad: list[tuple[int, str, str, str]] = []
        if loaded < records:
            bad = store.run(
                f"""SELECT p.file_row_number + 1, {field}, {reason},
                           left(to_json(p)::VARCHAR, 2048)
                    FROM {src} p {join_ips} WHERE {reason} IS NOT NULL ORDER BY 1"""
            )
    except duckdb.OutOfMemoryException as exc:
        raise SqlPathUnavailable(f"{path}: {str(exc).splitlines()[0]}") from None
    finally:
        store.con.unregister("_ip_map")
    for row_no, field_name, why, raw in bad:
        quarantine(path, row_no, field_name, why, raw.encode())
    quarantined = len(bad)
    return {
        "records": records,
        "loaded": loaded,
        "duplicates": records - quarantined - loaded,
        "quarantined": quarantined,
        "truncated": truncated,
        "flagged": flagged_after - flagged_before,
    }

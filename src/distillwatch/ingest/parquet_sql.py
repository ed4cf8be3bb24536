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

from distillwatch.schema import MAX_ID_CHARS, MAX_INT, MAX_MESSAGES, MESSAGE_ROLES, _canonical_ip
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


class SqlPathUnavailable(RuntimeError):
    """DuckDB could not run the SQL path within its memory limit; use the Python path."""


def _quote(name: str) -> str:
    # Column names come from the file, i.e. from whoever wrote it.
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _message_type_ok(type_name: str) -> bool:
    compact = type_name.replace('"', "").replace(" ", "").upper()
    return (
        compact.startswith("STRUCT(")
        and compact.endswith(")[]")
        and ("ROLEVARCHAR" in compact and "CONTENTVARCHAR" in compact)
    )


def sql_compatible(store: Store, path: Path) -> bool:
    """True when every contract column present in ``path`` has a type the SQL path handles."""
    types = _column_types(store, path)
    if any(name not in types for name in ("id", "ts", "account_id", "model", "messages")):
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

    ips = store.run(f"SELECT DISTINCT ip FROM {src} WHERE ip IS NOT NULL") if "ip" in types else []
    store.con.register(
        "_ip_map",
        pa.table(
            {
                "raw": pa.array([row[0] for row in ips], pa.string()),
                "canon": pa.array([_canonical_ip(row[0].strip()[:64]) for row in ips], pa.string()),
            }
        ),
    )

    roles = ", ".join(_literal(role) for role in sorted(MESSAGE_ROLES))
    ts = _quote("ts")
    ts_value = (
        f"try_cast({ts} AS TIMESTAMPTZ)::TIMESTAMP" if types["ts"] == TEXT
        else f"{ts}::TIMESTAMPTZ::TIMESTAMP" if types["ts"] == "TIMESTAMP WITH TIME ZONE"
        else f"{ts}::TIMESTAMP"
    )  # fmt: skip
    msgs = f"list_slice(p.messages, -{MAX_MESSAGES}, -1)"
    bad_role = f"list_position(list_transform({msgs}, lambda m: coalesce(m.role IN ({roles}), false)), false)"
    no_content = (
        f"list_position(list_transform({msgs}, lambda m: m.content IS NOT NULL "
        f"OR m.role = 'assistant'), false)"
    )
    checks: list[tuple[str, str]] = [_id_check("id")]
    checks.append(
        (
            f"""CASE WHEN {ts} IS NULL THEN 'missing required field'
                     WHEN {ts_value} IS NULL
                     THEN 'not an RFC 3339 timestamp: ''' || left({ts}::VARCHAR, 40) || '''' END""",
            _literal("ts"),
        )
    )
    checks += [_id_check("account_id"), _id_check("model")]
    checks.append(
        (
            """CASE WHEN p.messages IS NULL THEN 'missing required field'
                    WHEN len(p.messages) = 0 THEN 'must contain at least one message' END""",
            _literal("messages"),
        )
    )
    checks.append(
        (
            f"CASE WHEN {bad_role} > 0 THEN 'unknown role ''' || "
            f"coalesce(left({msgs}[{bad_role}].role, 40), 'None') || '''' END",
            f"'messages[' || ({bad_role} - 1) || '].role'",
        )
    )
    checks.append(
        (
            f"CASE WHEN {no_content} > 0 THEN 'missing' END",
            f"'messages[' || ({no_content} - 1) || '].content'",
        )
    )
    for name in OPTIONAL_INT:
        if name in types:
            col = _quote(name)
            checks.append(
                (f"CASE WHEN {col} < 0 OR {col} > {MAX_INT} THEN 'out of range: ' || {col} END",
                 _literal(name))
            )  # fmt: skip
    if "ip" in types:
        checks.append(
            (
                "CASE WHEN p.ip IS NOT NULL AND _ip_map.canon IS NULL "
                "THEN 'not an IPv4/IPv6 address: ''' || left(p.ip, 40) || '''' END",
                _literal("ip"),
            )
        )
    reason = "coalesce(" + ", ".join(expr for expr, _ in checks) + ")"
    field = (
        "CASE "
        + " ".join(f"WHEN ({expr}) IS NOT NULL THEN {name}" for expr, name in checks)
        + " END"
    )

    def text(column: str) -> str:
        return f"left({_quote(column)}, {max_text})" if column in types else "NULL::VARCHAR"

    def integer(column: str) -> str:
        return f"{_quote(column)}::BIGINT" if column in types else "NULL::BIGINT"

    user_msgs = f"list_filter({msgs}, lambda m: m.role = 'user')"
    system_msgs = f"list_filter({msgs}, lambda m: m.role IN ('system', 'developer'))"
    long_texts = " OR ".join(
        [f"length({_quote(c)}) > {max_text}" for c in OPTIONAL_TEXT if c in types]
        + [f"list_bool_or(list_transform(p.messages, lambda m: length(m.content) > {max_text}))",
           f"len(p.messages) > {MAX_MESSAGES}"]
    )  # fmt: skip
    extra = (
        "to_json(struct_pack(" + ", ".join(f"{_quote(c)} := p.{_quote(c)}" for c in extras) + "))"
        if extras
        else "NULL::VARCHAR"
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
               {_literal(source)} AS source
        FROM {src} p {join_ips}
        WHERE {reason} IS NULL
    """
    try:
        records = store.run(f"SELECT count(*) FROM {src}")[0][0]
        # Load first, then look for bad rows only if some rows did not load: a clean file is
        # read once. If memory runs out, nothing half-done is left for the fallback to repeat:
        # the INSERT is atomic and the quarantine is only written after it.
        count_new = "SELECT count(*), count(*) FILTER (WHERE truncated) FROM exchanges"
        before, truncated_before = store.run(count_new)[0]
        store.run(
            f"""INSERT INTO exchanges
                SELECT * FROM ({select_valid}) t
                WHERE t.id NOT IN (SELECT id FROM exchanges)
                QUALIFY row_number() OVER (PARTITION BY t.id) = 1"""
        )
        after, truncated_after = store.run(count_new)[0]
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
    }

"""The vectorised Parquet path stores exactly what the per-record Python path stores."""

from __future__ import annotations

import json

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from distillwatch.ingest import ingest_paths
from distillwatch.ingest.parquet_sql import sql_compatible
from distillwatch.store import Store

COLUMNS = (
    "id, ts, account_id, model, messages, prompt, system_prompt, n_messages, response, ip, "
    "user_agent, completion_tokens, truncated, flags, extra"
)


def records():
    good = {
        "ts": "2026-03-01T10:00:00Z",
        "account_id": "acct_1",
        "model": "m",
        "messages": [{"role": "user", "content": "hello"}],
        "response": "hi",
        "ip": "2001:DB8::1",
        "user_agent": "ua",
        "completion_tokens": 2,
        "region": "eu",
    }
    rows = [
        {**good, "id": "ok-1"},
        {**good, "id": " ok-2 ", "ts": "2026-03-01T12:30:00+02:00", "ip": "10.0.0.1"},
        {
            **good,
            "id": "ok-3",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": None},
                {"role": "user", "content": "q2"},
            ],
        },
        {**good, "id": "ok-4", "response": "r" * 5000, "ip": None},
        {**good, "id": "ok-1"},  # duplicate id
        {**good, "id": None},
        {**good, "id": "bad-ts", "ts": "tomorrow"},
        {
            **good,
            "id": "flag-role",
            "messages": [{"role": "user", "content": "a"}, {"role": "x", "content": "b"}],
        },
        {**good, "id": "flag-content", "messages": [{"role": "user", "content": None}]},
        {**good, "id": "bad-empty", "messages": []},
        {**good, "id": "bad-no-role", "messages": [{"role": None, "content": "b"}]},
        {**good, "id": "flag-ip", "ip": "300.1.1.1"},
        {**good, "id": "flag-int", "completion_tokens": -5},
        {**good, "id": "chain", "ip": "198.51.100.23, 10.0.0.5"},
        {**good, "id": "chain-junk-first", "ip": "unknown, 198.51.100.9"},
        {**good, "id": "lower-tz", "ts": "2026-03-01t10:00:00.5z"},
        {**good, "id": "leap", "ts": "2016-12-31T23:59:60Z"},
        {**good, "id": "  "},
    ]
    return rows


def load(tmp_path, name, path):
    quarantine = tmp_path / f"{name}.q.jsonl"
    with Store(tmp_path / f"{name}.duckdb") as store:
        report = ingest_paths([path], store, quarantine=quarantine, max_text=1000, workers=1)
        rows = store.run(f"SELECT {COLUMNS} FROM exchanges ORDER BY id")
        sql_ok = sql_compatible(store, path) if path.suffix == ".parquet" else None
    lines = quarantine.read_text().splitlines() if quarantine.exists() else []
    bad = [json.loads(line) for line in lines]
    return report, rows, [(b["record"], b["field"], b["reason"]) for b in bad], sql_ok


def test_parquet_sql_path_matches_python_path(tmp_path):
    data = records()
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in data))
    parquet = tmp_path / "log.parquet"
    pq.write_table(pa.Table.from_pylist(data), parquet)

    py_report, py_rows, py_bad, _ = load(tmp_path, "py", jsonl)
    sql_report, sql_rows, sql_bad, sql_ok = load(tmp_path, "sql", parquet)

    assert sql_ok is True  # this file really took the SQL path
    loaded = ["chain", "chain-junk-first", "flag-content", "flag-int", "flag-ip", "flag-role",
              "leap", "lower-tz", "ok-1", "ok-2", "ok-3", "ok-4"]  # fmt: skip
    assert [r[0] for r in sql_rows] == loaded
    flags = {r[0]: r[-2] for r in sql_rows}
    assert flags["flag-ip"] == ["ip: not an IPv4/IPv6 address: '300.1.1.1'; dropped"]
    assert flags["flag-role"] == ["messages[1].role: unknown role 'x'"]
    assert flags["chain"] is None and flags["ok-1"] is None
    by_id = {r[0]: r for r in sql_rows}
    assert by_id["chain"][9] == "198.51.100.23" and by_id["chain-junk-first"][9] == "198.51.100.9"
    assert json.loads(by_id["chain"][-1])["ip_chain"] == ["198.51.100.23", "10.0.0.5"]
    assert str(by_id["leap"][1]) == "2017-01-01 00:00:00"
    assert str(by_id["lower-tz"][1]) == "2026-03-01 10:00:00.500000"
    for py_row, sql_row in zip(py_rows, sql_rows, strict=True):
        # extra: JSON text may differ in spacing; compare parsed.
        assert py_row[:-1] == sql_row[:-1]
        assert json.loads(py_row[-1]) == json.loads(sql_row[-1])
    assert py_bad == sql_bad
    for key in ("records", "loaded", "duplicates", "quarantined", "truncated"):
        assert getattr(py_report, key) == getattr(sql_report, key), key


def test_parquet_with_content_parts_falls_back_to_python(tmp_path):
    data = [
        {
            "id": "p1",
            "ts": "2026-03-01T10:00:00Z",
            "account_id": "a",
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        }
    ]
    parquet = tmp_path / "parts.parquet"
    pq.write_table(pa.Table.from_pylist(data), parquet)
    report, rows, bad, sql_ok = load(tmp_path, "parts", parquet)
    assert sql_ok is False
    assert report.loaded == 1 and rows[0][5] == "hi" and not bad

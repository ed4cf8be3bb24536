"""End-to-end: the real `distillwatch ingest` / `stats` CLI on real files, real DuckDB."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillwatch.store import SCHEMA_VERSION, Store

pytestmark = pytest.mark.e2e


def make_records(n: int, prompts: list[str] | None = None, start: int = 0) -> list[dict]:
    prompts = prompts or [f"Question number {i}: what is {i} squared?" for i in range(n)]
    return [
        {
            "id": f"ex-{start + i}",
            "ts": f"2026-03-0{1 + i % 3}T{i % 24:02d}:00:00Z",
            "account_id": f"acct_{i % 7}",
            "model": "model-a" if i % 2 else "model-b",
            "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
            "response": "An answer.",
            "ip": f"198.51.100.{i % 200}",
            "completion_tokens": 3,
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, records: list, opener=open) -> Path:
    with opener(path, "wb") as handle:
        for rec in records:
            handle.write(rec if isinstance(rec, bytes) else orjson.dumps(rec) + b"\n")
    return path


def stored(store: Path, sql: str):
    con = duckdb.connect(str(store), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def ingest_json(cli, *args):
    result = cli("ingest", *args, "--json", "--no-progress")
    return result, (json.loads(result.stdout) if result.stdout.strip().startswith("{") else None)


def test_good_file_with_real_prompts(tmp_path, cli, shared_data):
    prompts = [
        json.loads(line)["prompt"]
        for line in (shared_data / "koala_test_set" / "koala_test_set.jsonl")
        .read_text()
        .splitlines()
    ]
    log = write_jsonl(tmp_path / "good.jsonl", make_records(120, prompts))
    store = tmp_path / "s.duckdb"
    result, report = ingest_json(cli, log, "--store", store)
    assert result.returncode == 0, result.stderr
    assert report["loaded"] == 120 and report["quarantined"] == 0
    assert report["quarantine_path"] is None
    assert stored(store, "SELECT count(*) FROM exchanges")[0][0] == 120
    assert stored(store, "SELECT prompt FROM exchanges WHERE id = 'ex-0'")[0][0] == prompts[0]


def test_mixed_good_and_bad_records_quarantined_with_reasons(tmp_path, cli):
    good = make_records(5)
    lines = [
        good[0],
        b"{not json\n",
        {**good[1], "ts": "last tuesday"},
        good[2],
        {k: v for k, v in good[3].items() if k != "account_id"},
        {**good[4], "ip": "999.1.1.1"},
        b"[1, 2, 3]\n",
        b"\n",
    ]
    log = write_jsonl(tmp_path / "mixed.jsonl", lines)
    store = tmp_path / "s.duckdb"
    quarantine = tmp_path / "bad.jsonl"
    result, report = ingest_json(cli, log, "--store", store, "--quarantine", quarantine)
    assert result.returncode == 3
    # A bad optional field (the IP) costs the field, not the record: loaded, flagged.
    assert report["loaded"] == 3 and report["quarantined"] == 4 and report["flagged"] == 1
    entries = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [(e["record"], e["field"]) for e in entries] == [
        (2, "<json>"),
        (3, "ts"),
        (5, "account_id"),
        (7, "<record>"),
    ]
    assert stored(store, "SELECT ip, flags FROM exchanges WHERE id = 'ex-4'")[0] == (
        None, ["ip: not an IPv4/IPv6 address: '999.1.1.1'; dropped"])  # fmt: skip
    assert all(e["file"] == str(log) and e["reason"] for e in entries)
    assert "last tuesday" in entries[1]["raw"]
    human = cli("ingest", log, "--store", tmp_path / "t.duckdb", "--no-progress")
    assert human.returncode == 3
    assert "quarantined" in human.stdout and "4" in human.stdout and "flagged" in human.stdout


def test_gzip_parquet_and_folder(tmp_path, cli):
    folder = tmp_path / "logs"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl.gz", make_records(30), opener=gzip.open)
    records = make_records(20, start=100)
    pq.write_table(pa.Table.from_pylist(records), folder / "b.parquet")
    (folder / "notes.txt").write_text("not a log")
    store = tmp_path / "s.duckdb"
    result, report = ingest_json(cli, folder, "--store", store)
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["files"] == 2 and report["loaded"] == 50
    assert stored(store, "SELECT count(DISTINCT source) FROM exchanges")[0][0] == 2


def test_duplicate_ids_stored_once(tmp_path, cli):
    records = make_records(10)
    log = write_jsonl(tmp_path / "dup.jsonl", records + records[:4])
    store = tmp_path / "s.duckdb"
    _, first = ingest_json(cli, log, "--store", store)
    assert first["loaded"] == 10 and first["duplicates"] == 4
    _, second = ingest_json(cli, log, "--store", store)
    assert second["loaded"] == 0 and second["duplicates"] == 14
    assert stored(store, "SELECT count(*), count(DISTINCT id) FROM exchanges")[0] == (10, 10)


def test_truncated_gzip_keeps_good_rows_and_names_the_file(tmp_path, cli):
    whole = tmp_path / "whole.jsonl.gz"
    write_jsonl(whole, make_records(3000), opener=gzip.open)
    cut = tmp_path / "cut.jsonl.gz"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    store = tmp_path / "s.duckdb"
    result = cli("ingest", cut, "--store", store, "--no-progress")
    assert result.returncode == 4
    assert "Traceback" not in result.stdout + result.stderr
    assert "cut.jsonl.gz" in result.stdout and "truncated gzip" in result.stdout
    loaded = stored(store, "SELECT count(*) FROM exchanges")[0][0]
    assert 0 < loaded < 3000
    errors = stored(store, "SELECT error FROM ingest_runs")
    assert "truncated gzip" in errors[0][0]


def test_binary_file_gets_one_line_error(tmp_path, cli):
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(bytes(range(256)) * 64)
    result = cli("ingest", junk, "--store", tmp_path / "s.duckdb", "--no-progress")
    assert result.returncode == 4
    assert "junk.jsonl: binary content" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_parquet_with_wrong_columns(tmp_path, cli):
    bad = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"id": ["a"], "when": ["2026-01-01"]}), bad)
    result = cli("ingest", bad, "--store", tmp_path / "s.duckdb", "--no-progress", "-f", "contract")
    assert result.returncode == 4
    assert "lacks required columns: ts, account_id, model, messages" in result.stdout
    fake = tmp_path / "fake.parquet"
    fake.write_text("PAR? nope")
    result = cli("ingest", fake, "--store", tmp_path / "s.duckdb", "--no-progress")
    assert result.returncode == 4 and "not a readable Parquet file" in result.stdout


def test_huge_field_truncated_with_flag(tmp_path, cli):
    huge = make_records(2)
    huge[0]["messages"][0]["content"] = "A" * (50 * 1024 * 1024)
    log = write_jsonl(tmp_path / "huge.jsonl", huge)
    store = tmp_path / "s.duckdb"
    _, report = ingest_json(cli, log, "--store", store, "--max-field-chars", "4096")
    assert report["loaded"] == 2 and report["truncated"] == 1
    rows = stored(store, "SELECT id, length(prompt), truncated FROM exchanges ORDER BY id")
    assert rows == [("ex-0", 4096, True), ("ex-1", len(huge[1]["messages"][0]["content"]), False)]


def test_litellm_spend_log_rows(tmp_path, cli):
    rows = [
        {
            "request_id": "chatcmpl-1",
            "call_type": "acompletion",
            "api_key": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
            "spend": 0.0012,
            "total_tokens": 30,
            "prompt_tokens": 20,
            "completion_tokens": 10,
            "startTime": "2026-03-01 10:00:00.123",
            "endTime": "2026-03-01 10:00:01.623",
            "model": "gpt-4o",
            "model_group": "gpt-4o",
            "user": "user-42",
            "metadata": json.dumps({"headers": {"User-Agent": "OpenAI/Python 1.40"}}),
            "requester_ip_address": "203.0.113.9",
            "messages": json.dumps([{"role": "user", "content": "Hi there"}]),
            "response": json.dumps({"choices": [{"message": {"content": "Hello!"}}]}),
            "session_id": "sess-1",
            "status": "success",
            "end_user": "customer-7",
        },
        {
            "request_id": "chatcmpl-2",
            "startTime": "2026-03-01T10:05:00Z",
            "model": "gpt-4o",
            "api_key": "abc123",
            "messages": {},
            "response": {},
        },
    ]
    log = write_jsonl(tmp_path / "spend.jsonl", rows)
    store = tmp_path / "s.duckdb"
    quarantine = tmp_path / "q.jsonl"
    _, report = ingest_json(cli, log, "--store", store, "--quarantine", quarantine)
    assert report["formats"] == {str(log): "litellm"}
    assert report["loaded"] == 1 and report["quarantined"] == 1
    row = stored(
        store,
        "SELECT account_id, prompt, response, ip, user_agent, latency_ms, conversation_id, "
        "extra FROM exchanges",
    )[0]
    assert row[:7] == (
        "user-42",
        "Hi there",
        "Hello!",
        "203.0.113.9",
        "OpenAI/Python 1.40",
        1500,
        "sess-1",
    )
    assert json.loads(row[7])["litellm_end_user"] == "customer-7"
    assert "store_prompts_in_spend_logs" in quarantine.read_text()


def test_openai_request_response_pairs(tmp_path, cli):
    pairs = [
        {
            "request": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "Name a prime"}],
                "user": "acct-openai",
                "max_tokens": 50,
            },
            "response": {
                "id": "chatcmpl-xyz",
                "created": 1772359200,
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "7"}}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 1},
            },
            "headers": {"user-agent": "OpenAI/Python 1.51", "x-ja4": "t13d1516h2_8daaf6152771"},
            "ip": "192.0.2.33",
        },
        {"request": {"model": "gpt-4o-mini", "messages": []}, "response": {"id": "chatcmpl-2"}},
    ]
    log = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    store = tmp_path / "s.duckdb"
    _, report = ingest_json(cli, log, "--store", store, "--quarantine", tmp_path / "q.jsonl")
    assert report["formats"] == {str(log): "openai"}
    assert report["loaded"] == 1 and report["quarantined"] == 1
    row = stored(
        store,
        "SELECT id, account_id, ts, prompt, response, tls_fingerprint, completion_tokens "
        "FROM exchanges",
    )[0]
    assert row[0] == "chatcmpl-xyz" and row[1] == "acct-openai"
    assert row[2].isoformat() == "2026-03-01T10:00:00"
    assert row[3:] == ("Name a prime", "7", "t13d1516h2_8daaf6152771", 1)


def test_accounts_file(tmp_path, cli):
    log = write_jsonl(tmp_path / "log.jsonl", make_records(7))
    accounts = write_jsonl(
        tmp_path / "accounts.jsonl",
        [
            {"account_id": "acct_1", "created_at": "2026-02-01T00:00:00Z", "email_domain": "x.io"},
            {"account_id": "acct_2", "signup_ip": "not-an-ip"},
        ],
    )
    store = tmp_path / "s.duckdb"
    result, report = ingest_json(
        cli, log, "--store", store, "--accounts", accounts, "--quarantine", tmp_path / "q.jsonl"
    )
    assert result.returncode == 3
    assert report["accounts"] == 1 and report["accounts_quarantined"] == 1
    assert stored(store, "SELECT account_id, email_domain FROM accounts") == [("acct_1", "x.io")]


def test_stats_table_and_json(tmp_path, cli):
    log = write_jsonl(tmp_path / "log.jsonl", [*make_records(40), b"oops\n"])
    store = tmp_path / "s.duckdb"
    cli("ingest", log, "--store", store, "--no-progress", "--quarantine", tmp_path / "q.jsonl")
    result = cli("stats", "--store", store, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["totals"]["exchanges"] == 40
    assert data["totals"]["accounts"] == 7
    assert {m["model"]: m["exchanges"] for m in data["per_model"]} == {"model-a": 20, "model-b": 20}
    assert sum(d["exchanges"] for d in data["per_day"]) == 40
    assert data["top_accounts"][0]["exchanges"] == 6
    assert data["ingest"]["quarantined"] == 1
    table = cli("stats", "--store", store)
    assert table.returncode == 0
    assert (
        "Per model" in table.stdout and "acct_0" in table.stdout and "1 quarantined" in table.stdout
    )


def test_store_from_newer_version_is_refused(tmp_path, cli):
    store = tmp_path / "s.duckdb"
    with Store(store) as db:
        db.run("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    result = cli("stats", "--store", store)
    assert result.returncode == 2
    assert "newer distillwatch" in result.stderr and "Traceback" not in result.stderr


def test_store_from_older_version_is_migrated(tmp_path):
    store = tmp_path / "s.duckdb"
    with Store(store) as db:
        db.run("DROP TABLE account_features")
        db.run("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with Store(store) as db:
        assert db.schema_version() == SCHEMA_VERSION
        assert db.run("SELECT count(*) FROM account_features") == [(0,)]


def test_foreign_duckdb_file_is_refused(tmp_path, cli):
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE t (x INT)").fetchall()
    con.close()
    result = cli("ingest", tmp_path, "--store", other)
    assert result.returncode == 2 and "not a distillwatch store" in result.stderr
    garbage = tmp_path / "garbage.duckdb"
    garbage.write_text("hello")
    result = cli("stats", "--store", garbage)
    assert result.returncode == 2 and "cannot open" in result.stderr


def test_audit_log_is_hash_chained(tmp_path):
    with Store(tmp_path / "s.duckdb") as db:
        for i in range(3):
            db.audit("test", "event", {"i": i})
        assert db.verify_audit_chain()
        db.run("UPDATE audit_log SET payload = '{\"i\": 9}' WHERE seq = 2")
        assert not db.verify_audit_chain()


def test_help_and_version(cli):
    result = cli("--help")
    assert result.returncode == 0 and "ingest" in result.stdout and "stats" in result.stdout
    result = cli("ingest", "--help")
    assert "--quarantine" in result.stdout and "--max-field-chars" in result.stdout
    assert cli("--version").stdout.startswith("distillwatch ")

"""The embedded store: one DuckDB file holding exchanges, accounts and everything derived from them.

The schema is versioned in ``meta``. A store written by an older version is migrated in place by
the steps in :data:`MIGRATIONS`; one written by a newer version is refused with a clear message
rather than silently misread.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from distillwatch import __version__
from distillwatch.errors import StoreError

SCHEMA_VERSION = 5
DEFAULT_STORE = "distillwatch.duckdb"
#: DuckDB's buffer-pool cap. Override with DISTILLWATCH_MEMORY_LIMIT (e.g. "8GB") for big jobs.
DEFAULT_MEMORY_LIMIT = os.environ.get("DISTILLWATCH_MEMORY_LIMIT", "1GB")


EXCHANGE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("ts", pa.timestamp("us")),
        ("account_id", pa.string()),
        ("model", pa.string()),
        ("messages", pa.string()),
        ("prompt", pa.string()),
        ("system_prompt", pa.string()),
        ("n_messages", pa.int32()),
        ("response", pa.string()),
        ("org_id", pa.string()),
        ("api_key_id", pa.string()),
        ("ip", pa.string()),
        ("user_agent", pa.string()),
        ("tls_fingerprint", pa.string()),
        ("payment_fingerprint", pa.string()),
        ("endpoint", pa.string()),
        ("conversation_id", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("status", pa.int64()),
        ("latency_ms", pa.int64()),
        ("truncated", pa.bool_()),
        ("extra", pa.string()),
        ("source", pa.string()),
        ("response_tool_calls", pa.string()),
        ("flags", pa.list_(pa.string())),
    ]
)
#: Column names of ``exchanges`` in table order (inserts go BY NAME, so order is for reading).
EXCHANGE_COLUMN_NAMES = tuple(EXCHANGE_SCHEMA.names)

_TABLES_V1 = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS exchanges (
    id VARCHAR NOT NULL,
    ts TIMESTAMP NOT NULL,
    account_id VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    messages VARCHAR,
    prompt VARCHAR,
    system_prompt VARCHAR,
    n_messages INTEGER,
    response VARCHAR,
    org_id VARCHAR,
    api_key_id VARCHAR,
    ip VARCHAR,
    user_agent VARCHAR,
    tls_fingerprint VARCHAR,
    payment_fingerprint VARCHAR,
    endpoint VARCHAR,
    conversation_id VARCHAR,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    status BIGINT,
    latency_ms BIGINT,
    truncated BOOLEAN,
    extra VARCHAR,
    source VARCHAR
);
CREATE TABLE IF NOT EXISTS accounts (
    account_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMP,
    email_domain VARCHAR,
    country VARCHAR,
    signup_ip VARCHAR,
    payment_fingerprint VARCHAR,
    extra VARCHAR
);
CREATE TABLE IF NOT EXISTS ingest_runs (
    run_id VARCHAR,
    source VARCHAR,
    format VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    records BIGINT,
    loaded BIGINT,
    duplicates BIGINT,
    quarantined BIGINT,
    truncated BIGINT,
    error VARCHAR
);
CREATE TABLE IF NOT EXISTS verdicts (
    run_id VARCHAR,
    generated_at TIMESTAMP,
    account_id VARCHAR,
    score DOUBLE,
    verdict VARCHAR,
    cluster_id VARCHAR,
    reasons VARCHAR
);
CREATE TABLE IF NOT EXISTS campaigns (
    run_id VARCHAR,
    campaign_id VARCHAR,
    score DOUBLE,
    accounts VARCHAR,
    exchanges BIGINT,
    first_seen TIMESTAMP,
    last_seen TIMESTAMP,
    evidence VARCHAR
);
CREATE TABLE IF NOT EXISTS actions (
    action_id VARCHAR,
    created_at TIMESTAMP,
    subject_kind VARCHAR,
    subject VARCHAR,
    action VARCHAR,
    expires_at TIMESTAMP,
    reasons VARCHAR,
    actor VARCHAR,
    lifted_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS audit_log (
    seq BIGINT PRIMARY KEY,
    ts TIMESTAMP NOT NULL,
    actor VARCHAR NOT NULL,
    event VARCHAR NOT NULL,
    payload VARCHAR,
    prev_hash VARCHAR NOT NULL,
    hash VARCHAR NOT NULL
);
"""


def _migrate_1_to_2(con: duckdb.DuckDBPyConnection) -> None:
    # v2 adds per-account feature snapshots so detection can run incrementally.
    con.execute(
        """CREATE TABLE IF NOT EXISTS account_features (
            run_id VARCHAR, account_id VARCHAR, computed_at TIMESTAMP, features VARCHAR)"""
    ).fetchall()


def _migrate_2_to_3(con: duckdb.DuckDBPyConnection) -> None:
    # v3 keeps what v2 threw away: the tools a response called, and per-record flags naming
    # what was unusual or repaired at ingest (an unknown role, an address that was not one).
    con.execute("ALTER TABLE exchanges ADD COLUMN IF NOT EXISTS response_tool_calls VARCHAR")
    con.execute("ALTER TABLE exchanges ADD COLUMN IF NOT EXISTS flags VARCHAR[]")
    con.execute("ALTER TABLE ingest_runs ADD COLUMN IF NOT EXISTS flagged BIGINT")


def _migrate_3_to_4(con: duckdb.DuckDBPyConnection) -> None:
    # v4 adds the analyst workspace (``distillwatch serve``): users and their sessions, cases with
    # notes, and analysts' labels (a false positive marked in review feeds back into detection).
    con.execute(
        """CREATE TABLE IF NOT EXISTS ws_users (
            username VARCHAR PRIMARY KEY, password_hash VARCHAR NOT NULL, role VARCHAR NOT NULL,
            created_at TIMESTAMP, disabled BOOLEAN DEFAULT false)"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS ws_sessions (
            token_hash VARCHAR PRIMARY KEY, username VARCHAR NOT NULL, csrf VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL, expires_at TIMESTAMP NOT NULL)"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS ws_cases (
            case_id VARCHAR PRIMARY KEY, subject_kind VARCHAR NOT NULL, subject VARCHAR NOT NULL,
            title VARCHAR, status VARCHAR NOT NULL, assignee VARCHAR, opened_at TIMESTAMP,
            updated_at TIMESTAMP)"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS ws_notes (
            case_id VARCHAR NOT NULL, ts TIMESTAMP NOT NULL, author VARCHAR NOT NULL,
            body VARCHAR NOT NULL)"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS labels (
            account_id VARCHAR NOT NULL, label VARCHAR NOT NULL, reason VARCHAR,
            actor VARCHAR NOT NULL, ts TIMESTAMP NOT NULL)"""
    )


def _migrate_4_to_5(con: duckdb.DuckDBPyConnection) -> None:
    # v5 closes the loop with partners: which shared indicators each account matched in a
    # detection run, and the false-positive reports owed to their sources once an analyst
    # finds such an account innocent (``share outbox`` sends them).
    con.execute(
        """CREATE TABLE IF NOT EXISTS partner_matches (
            run_id VARCHAR NOT NULL, account_id VARCHAR NOT NULL, source VARCHAR NOT NULL,
            campaign VARCHAR NOT NULL, indicators VARCHAR NOT NULL)"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS share_outbox (
            account_id VARCHAR NOT NULL, source VARCHAR NOT NULL, indicator VARCHAR NOT NULL,
            queued_at TIMESTAMP NOT NULL, sent_at TIMESTAMP)"""
    )


#: ``MIGRATIONS[n]`` upgrades a store from schema ``n`` to ``n + 1``.
MIGRATIONS: dict[int, Callable[[duckdb.DuckDBPyConnection], None]] = {
    1: _migrate_1_to_2,
    2: _migrate_2_to_3,
    3: _migrate_3_to_4,
    4: _migrate_4_to_5,
}


class Store:
    """A DuckDB-backed exchange store. Use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        path: str | Path = DEFAULT_STORE,
        read_only: bool = False,
        memory_limit: str | None = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        self.path = Path(path)
        if read_only and not self.path.exists():
            raise StoreError(f"{self.path}: no such store (run `distillwatch ingest` first)")
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreError(f"{self.path}: cannot open as a DuckDB store ({first_line})") from None
        # DuckDB draws its own progress bar on stdout for long queries; ours are Rich's.
        self.run("SET enable_progress_bar = false")
        # Stored timestamps are naive UTC; casts from TIMESTAMPTZ must not use the host's zone.
        self.run("SET TimeZone = 'UTC'")
        # Lets DuckDB write a streamed INSERT with all threads (about 10% faster on 1M rows).
        # Nothing relies on physical row order: every read says ORDER BY.
        self.run("SET preserve_insertion_order = false")
        if memory_limit:
            # Without a cap DuckDB buffers a whole streamed INSERT in memory (6 GB RSS for a
            # 5.7 GB file); with one it writes row groups out as it goes.
            self.run("SET memory_limit = ?", [memory_limit])
        try:
            self._ensure_schema(read_only)
        except Exception:
            self.con.close()
            raise

    # -- schema -------------------------------------------------------------------------------
    def _ensure_schema(self, read_only: bool) -> None:
        tables = {
            row[0] for row in self.con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
        if "meta" not in tables:
            if tables:
                raise StoreError(
                    f"{self.path}: a DuckDB file, but not a distillwatch store "
                    f"(tables: {', '.join(sorted(tables)[:5])})"
                )
            if read_only:
                raise StoreError(f"{self.path}: empty store")
            self.run(_TABLES_V1)
            for step in sorted(MIGRATIONS):
                MIGRATIONS[step](self.con)
            self._set_meta("schema_version", str(SCHEMA_VERSION))
            self._set_meta("created_by", __version__)
            return
        found = self.schema_version()
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: written by a newer distillwatch (schema {found}); this is "
                f"distillwatch {__version__}, which reads schema <= {SCHEMA_VERSION}. Upgrade."
            )
        if found < SCHEMA_VERSION:
            if read_only:
                raise StoreError(
                    f"{self.path}: schema {found} needs migrating to {SCHEMA_VERSION}; "
                    "open it once without read-only (e.g. `distillwatch ingest`)"
                )
            for step in range(found, SCHEMA_VERSION):
                if step not in MIGRATIONS:
                    raise StoreError(f"{self.path}: no migration from schema {step}")
                MIGRATIONS[step](self.con)
                self._set_meta("schema_version", str(step + 1))

    def schema_version(self) -> int:
        rows = self.run("SELECT value FROM meta WHERE key = 'schema_version'")
        row = rows[0] if rows else None
        if row is None:
            raise StoreError(f"{self.path}: store has no schema version")
        return int(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self.run("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    # -- writes -------------------------------------------------------------------------------
    def insert_exchanges(self, batch: pa.Table) -> int:
        """Insert a table of exchanges, skipping ids already stored or repeated in the table.

        Returns how many rows were new. (Deduplication is an anti-join rather than a PRIMARY
        KEY: DuckDB's index made bulk loads several times slower and cost gigabytes.)
        """
        before = self.count("exchanges")
        self.con.register("_incoming", batch)
        try:
            self.run(
                """INSERT INTO exchanges BY NAME
                   SELECT * FROM _incoming WHERE id NOT IN (SELECT id FROM exchanges)
                   QUALIFY row_number() OVER (PARTITION BY id) = 1"""
            )
        finally:
            self.con.unregister("_incoming")
        return self.count("exchanges") - before

    def append_exchanges(self, batch: pa.Table) -> int:
        """Append exchanges whose ids are known to be new (the gateway's journal: fresh ids,
        folded exactly once), without the anti-join against every stored id."""
        self.con.register("_append", batch)
        try:
            self.run("INSERT INTO exchanges BY NAME SELECT * FROM _append")
        finally:
            self.con.unregister("_append")
        return batch.num_rows

    def insert_exchange_stream(self, reader: pa.RecordBatchReader, source: str) -> int:
        """Insert a stream of batches that all carry ``source``; returns how many rows were new.

        DuckDB pulls the reader inside one ``INSERT``, so parsing (Python, in the reader)
        overlaps DuckDB's parallel bulk write and memory stays at a batch or two.
        """
        before = self.count("exchanges")
        self.con.register("_stream", reader)
        try:
            self.run(
                """INSERT INTO exchanges BY NAME
                   SELECT * FROM _stream WHERE id NOT IN (SELECT id FROM exchanges)"""
            )
        finally:
            self.con.unregister("_stream")
        if self.count("exchanges") > before:
            # Rows of this source that were stored before were skipped by the anti-join, so an
            # id repeated under this source came twice in this stream: keep one of them.
            self.run(
                """DELETE FROM exchanges WHERE rowid IN (
                       SELECT rowid FROM (
                           SELECT rowid, row_number() OVER (PARTITION BY id ORDER BY rowid) AS n
                           FROM exchanges WHERE source = ?)
                       WHERE n > 1)""",
                [source],
            )
        return self.count("exchanges") - before

    def upsert_accounts(self, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        table = pa.Table.from_pylist(
            rows,
            schema=pa.schema(
                [
                    ("account_id", pa.string()),
                    ("created_at", pa.timestamp("us")),
                    ("email_domain", pa.string()),
                    ("country", pa.string()),
                    ("signup_ip", pa.string()),
                    ("payment_fingerprint", pa.string()),
                    ("extra", pa.string()),
                ]
            ),
        )
        self.con.register("_accounts", table)
        try:
            self.run("INSERT OR REPLACE INTO accounts SELECT * FROM _accounts")
        finally:
            self.con.unregister("_accounts")
        return len(rows)

    def record_ingest_run(self, **row: Any) -> None:
        columns = [
            "run_id", "source", "format", "started_at", "finished_at", "records", "loaded",
            "duplicates", "quarantined", "truncated", "error", "flagged",
        ]  # fmt: skip
        placeholders = ", ".join("?" * len(columns))
        self.run(
            f"INSERT INTO ingest_runs ({', '.join(columns)}) VALUES ({placeholders})",
            [row.get(c) for c in columns],
        )

    def audit(self, actor: str, event: str, payload: dict[str, Any] | None = None) -> int:
        """Append to the audit log. Each row chains the previous row's hash (tamper-evident)."""
        rows = self.run("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        last = rows[0] if rows else None
        seq, prev_hash = (last[0] + 1, last[1]) if last else (1, "0" * 64)
        ts = datetime.now(UTC).replace(tzinfo=None)
        body = orjson.dumps(payload or {}, option=orjson.OPT_SORT_KEYS).decode()
        digest = hashlib.sha256(
            f"{prev_hash}|{seq}|{ts.isoformat()}|{actor}|{event}|{body}".encode()
        ).hexdigest()
        self.run(
            "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?)",
            [seq, ts, actor, event, body, prev_hash, digest],
        )
        return seq

    def verify_audit_chain(self) -> bool:
        prev = "0" * 64
        rows = self.run(
            "SELECT seq, ts, actor, event, payload, prev_hash, hash FROM audit_log ORDER BY seq"
        )
        for seq, ts, actor, event, body, prev_hash, digest in rows:
            expected = hashlib.sha256(
                f"{prev}|{seq}|{ts.isoformat()}|{actor}|{event}|{body}".encode()
            ).hexdigest()
            if prev_hash != prev or digest != expected:
                return False
            prev = digest
        return True

    # -- reads --------------------------------------------------------------------------------
    def count(self, table: str) -> int:
        if table not in {
            "exchanges",
            "accounts",
            "ingest_runs",
            "verdicts",
            "audit_log",
            "actions",
            "labels",
            "ws_cases",
            "partner_matches",
            "share_outbox",
        }:
            raise ValueError(f"unknown table {table}")
        return int(self.run(f"SELECT count(*) FROM {table}")[0][0])

    def run(self, sql: str, params: Iterable[Any] | None = None) -> list[tuple[Any, ...]]:
        """Execute and fetch everything (DuckDB >= 2 refuses new work while a result is open)."""
        return self.con.execute(sql, list(params or [])).fetchall()

    def close(self) -> None:
        with suppress(Exception):
            self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

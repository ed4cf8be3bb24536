"""Detection state: mergeable per-account aggregates kept in the store between runs.

Raw exchanges are read once. Each run folds the exchanges newer than the previous run into
these tables, and every feature is computed from them, so an incremental run costs the new
exchanges plus a pass over per-account aggregates, never a re-scan of history, and gives the
same numbers a full run gives:

- ``dw_acct``: one row per account: counts, first/last time, sums (gaps as integer
  microseconds in HUGEINT, so sums of squares are exact and merge order cannot matter);
- ``dw_kv``: (account, kind, value, uses) for IPs, prefixes, user agents, TLS fingerprints,
  models, capability tags, wrapper grams and system prompts;
- ``dw_content``: (account, prompt hash, model, uses, hash of the prompt with its numbers
  masked, whether it asks for step-by-step reasoning, hashes of its opening and closing wrapper
  grams: all functions of the prompt text, so one row per account and prompt); ``dw_near``: (account, MinHash band
  signature, uses); ``dw_sem``: (account, embedding LSH band signature, prompt hash, uses), when the
  embedding model is installed (:mod:`.embedding`), over a hash-chosen sample of prompts
  (``DISTILLWATCH_SEMANTIC_RATE``, default all), so that any split into folds samples the same
  prompts;
- ``dw_hours``: (account, hour, uses): rhythm, active days, traffic after a model launch;
- ``dw_slots``: (account, 10-minute slot, uses): lockstep co-activity between accounts;
- ``dw_models``: when each model was first seen.

The kv/content/near/hours tables are append-only: readers sum ``uses`` per key, so folding is an
insert. The state is a cache: it is versioned, and rebuilt from the exchanges whenever it cannot
be trusted (another layout version, exchanges that arrived late behind the last run's
watermark, or a ``--until`` earlier than the last run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa

from distillwatch.detection.features import build_exchange_features
from distillwatch.detection.text import normalise_sql
from distillwatch.store import Store

STATE_VERSION = "6"
#: Distinct prompts embedded per fetch (bounded memory) when folding semantic signatures.
SEMANTIC_BATCH = 20_000
SLOT_MINUTES = 10
_TABLES = (
    "dw_state", "dw_acct", "dw_kv", "dw_content", "dw_near", "dw_hours", "dw_slots", "dw_models",
    "dw_sem",
)  # fmt: skip

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dw_state (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS dw_acct (
    account_id VARCHAR, n BIGINT, first_ts TIMESTAMP, last_ts TIMESTAMP, cot BIGINT,
    multi_turn BIGINT, output_sum BIGINT, gap_n BIGINT, gap_sum HUGEINT, gap_sq HUGEINT);
CREATE TABLE IF NOT EXISTS dw_kv (account_id VARCHAR, kind VARCHAR, value VARCHAR, uses BIGINT);
CREATE TABLE IF NOT EXISTS dw_content (account_id VARCHAR, h UBIGINT, model VARCHAR, uses BIGINT,
    shape UBIGINT, cot BOOLEAN, pre UBIGINT, suf UBIGINT);
CREATE TABLE IF NOT EXISTS dw_near (account_id VARCHAR, sig UBIGINT, uses BIGINT);
CREATE TABLE IF NOT EXISTS dw_hours (account_id VARCHAR, hour TIMESTAMP, uses BIGINT);
CREATE TABLE IF NOT EXISTS dw_slots (account_id VARCHAR, slot TIMESTAMP, uses BIGINT);
CREATE TABLE IF NOT EXISTS dw_models (model VARCHAR, first_seen TIMESTAMP);
CREATE TABLE IF NOT EXISTS dw_sem (account_id VARCHAR, sig UBIGINT, h UBIGINT, uses BIGINT);
"""


@dataclass
class FoldReport:
    """What one update did: ``mode`` is ``full`` or ``incremental``; ``why`` explains a rebuild."""

    mode: str
    folded: int
    total: int
    watermark: datetime | None
    why: str = ""
    #: "on" when prompts are embedded for semantic evidence, "off" without the model.
    semantic: str = "off"


def _get(store: Store, key: str) -> str | None:
    rows = store.run("SELECT value FROM dw_state WHERE key = ?", [key])
    return rows[0][0] if rows else None


def _set(store: Store, key: str, value: str | None) -> None:
    store.run("INSERT OR REPLACE INTO dw_state VALUES (?, ?)", [key, value])


def reset(store: Store) -> None:
    for table in _TABLES:
        store.run(f"DROP TABLE IF EXISTS {table}")
    store.run(_SCHEMA)
    _set(store, "version", STATE_VERSION)
    _set(store, "folded", "0")


def _why_rebuild(store: Store, until: datetime | None) -> str:
    """Empty when the stored state can be extended to ``until``; otherwise the reason not."""
    tables = {r[0] for r in store.run("SELECT table_name FROM duckdb_tables()")}
    if not set(_TABLES) <= tables:
        return "no detection state in this store yet"
    if _get(store, "version") != STATE_VERSION:
        return "detection state from another version"
    watermark = _get(store, "watermark")
    if watermark is None:
        return "detection state is empty"
    mark = datetime.fromisoformat(watermark)
    if until is not None and until < mark:
        return f"--until is before the last run's watermark ({watermark})"
    behind = store.run("SELECT count(*) FROM exchanges WHERE ts <= ?", [mark])[0][0]
    if behind != int(_get(store, "folded") or 0):
        return f"{behind - int(_get(store, 'folded') or 0):+,} exchanges at or before the last run's watermark changed since it ran"
    return ""


def update(store: Store, until: datetime | None = None, incremental: bool = True) -> FoldReport:
    """Bring the state up to ``until`` (or everything stored): fold new exchanges, or rebuild."""
    store.run("BEGIN TRANSACTION")
    try:
        report = _update(store, until, incremental)
    except BaseException:
        store.run("ROLLBACK")
        raise
    store.run("COMMIT")
    return report


def _update(store: Store, until: datetime | None, incremental: bool) -> FoldReport:
    why = _why_rebuild(store, until) if incremental else "full run requested"
    after: datetime | None = None
    if why:
        reset(store)
    else:
        after = datetime.fromisoformat(_get(store, "watermark") or "")
    build_exchange_features(store, until, after)
    folded = fold(store)
    if folded:
        semantic = fold_semantic(store, until, after)
        _set(store, "semantic", "on" if semantic is not None else "off")
    if folded:
        mark = store.run("SELECT max(ts) FROM ex")[0][0]
        _set(store, "watermark", mark.isoformat())
    total = int(_get(store, "folded") or 0) + folded
    _set(store, "folded", str(total))
    watermark = _get(store, "watermark")
    return FoldReport(
        mode="full" if why else "incremental",
        folded=folded,
        total=total,
        watermark=datetime.fromisoformat(watermark) if watermark else None,
        why=why,
        semantic=_get(store, "semantic") or "off",
    )


def fold(store: Store) -> int:
    """Merge the exchanges in temp table ``ex`` into the state; returns how many there were."""
    count = store.run("SELECT count(*) FROM ex")[0][0]
    if not count:
        return 0
    store.run(
        """
        CREATE OR REPLACE TEMP TABLE batch_acct AS
        WITH g AS (
            SELECT *, epoch_us(ts) - epoch_us(lag(ts) OVER (PARTITION BY account_id ORDER BY ts))
                   AS gap
            FROM ex
        )
        SELECT account_id, count(*) AS n, min(ts) AS first_ts, max(ts) AS last_ts,
               count(*) FILTER (WHERE cot) AS cot,
               count(*) FILTER (WHERE multi_turn) AS multi_turn,
               sum(completion_tokens) AS output_sum,
               count(gap) AS gap_n,
               coalesce(sum(gap::HUGEINT), 0) AS gap_sum,
               coalesce(sum(gap::HUGEINT * gap::HUGEINT), 0) AS gap_sq
        FROM g GROUP BY account_id
        """
    )
    # Batches never overlap in time (everything folded is at or before the watermark, every
    # new exchange after it), so the one gap between them is new.first_ts - old.last_ts.
    store.run(
        """
        CREATE OR REPLACE TABLE dw_acct AS
        SELECT coalesce(o.account_id, b.account_id) AS account_id,
               coalesce(o.n, 0) + coalesce(b.n, 0) AS n,
               least(o.first_ts, b.first_ts) AS first_ts,
               greatest(o.last_ts, b.last_ts) AS last_ts,
               coalesce(o.cot, 0) + coalesce(b.cot, 0) AS cot,
               coalesce(o.multi_turn, 0) + coalesce(b.multi_turn, 0) AS multi_turn,
               coalesce(o.output_sum, 0) + coalesce(b.output_sum, 0) AS output_sum,
               coalesce(o.gap_n, 0) + coalesce(b.gap_n, 0)
                   + (o.account_id IS NOT NULL AND b.account_id IS NOT NULL)::INTEGER AS gap_n,
               coalesce(o.gap_sum, 0) + coalesce(b.gap_sum, 0)
                   + coalesce(epoch_us(b.first_ts) - epoch_us(o.last_ts), 0) AS gap_sum,
               coalesce(o.gap_sq, 0) + coalesce(b.gap_sq, 0)
                   + coalesce((epoch_us(b.first_ts) - epoch_us(o.last_ts))::HUGEINT
                              * (epoch_us(b.first_ts) - epoch_us(o.last_ts))::HUGEINT, 0)
                   AS gap_sq
        FROM dw_acct o FULL OUTER JOIN batch_acct b USING (account_id)
        """
    )
    store.run(
        """
        INSERT INTO dw_kv
        SELECT account_id, kind, value, count(*) FROM (
            SELECT account_id, 'ip' AS kind, ip AS value FROM ex WHERE ip IS NOT NULL
            UNION ALL SELECT account_id, 'net', ip_prefix FROM ex WHERE ip_prefix IS NOT NULL
            UNION ALL SELECT account_id, 'ua', user_agent FROM ex WHERE user_agent IS NOT NULL
            UNION ALL SELECT account_id, 'tls', tls_fingerprint FROM ex
                      WHERE tls_fingerprint IS NOT NULL
            UNION ALL SELECT account_id, 'model', model FROM ex
            UNION ALL SELECT account_id, 'tag', unnest(tags) FROM ex
            UNION ALL SELECT account_id, 'pre', prefix_gram FROM ex WHERE prefix_gram IS NOT NULL
            UNION ALL SELECT account_id, 'suf', suffix_gram FROM ex WHERE suffix_gram IS NOT NULL
            UNION ALL SELECT account_id, 'sys', system_hash::VARCHAR FROM ex
                      WHERE system_hash IS NOT NULL
        ) GROUP BY ALL
        """
    )
    store.run(
        "INSERT INTO dw_content SELECT account_id, content_hash, model, count(*), shape_hash, cot, "
        "CASE WHEN prefix_gram IS NOT NULL THEN hash(prefix_gram) END, "
        "CASE WHEN suffix_gram IS NOT NULL THEN hash(suffix_gram) END FROM ex GROUP BY ALL"
    )
    store.run(
        """INSERT INTO dw_near
           SELECT account_id, sig, count(*) FROM (
               SELECT account_id, unnest(near) AS sig FROM ex WHERE near IS NOT NULL)
           GROUP BY ALL"""
    )
    store.run(
        "INSERT INTO dw_hours "
        "SELECT account_id, date_trunc('hour', ts), count(*) FROM ex GROUP BY ALL"
    )
    store.run(
        f"INSERT INTO dw_slots SELECT account_id, time_bucket(INTERVAL {SLOT_MINUTES} MINUTES, ts), "
        "count(*) FROM ex GROUP BY ALL"
    )
    store.run(
        """CREATE OR REPLACE TABLE dw_models AS
           SELECT model, min(first_seen) AS first_seen FROM (
               SELECT * FROM dw_models UNION ALL SELECT model, min(ts) FROM ex GROUP BY model)
           GROUP BY model"""
    )
    return int(count)


def semantic_rate() -> float:
    try:
        return min(1.0, max(0.0, float(os.environ.get("DISTILLWATCH_SEMANTIC_RATE", "1"))))
    except ValueError:
        return 1.0


def fold_semantic(store: Store, until: datetime | None, after: datetime | None) -> int | None:
    """Embed the window's sampled distinct prompts and fold their LSH band signatures into
    ``dw_sem``; returns how many prompts were embedded (None: no embedding model installed)."""
    from distillwatch.detection.embedding import default_embedder, lsh_bands

    if semantic_rate() <= 0:
        return None  # switched off (DISTILLWATCH_SEMANTIC_RATE=0)
    embedder = default_embedder()
    if embedder is None:
        return None
    keep = int(semantic_rate() * 2**32)
    norm = normalise_sql("prompt")
    # A second cursor reads while the state's own connection (in its transaction) inserts.
    reader = store.con.cursor()
    result = reader.execute(
        f"""
        SELECT account_id, h, count(*) AS uses, any_value(text) AS text FROM (
            SELECT account_id, hash({norm}) AS h, left({norm}, 2000) AS text
            FROM exchanges
            WHERE (?::TIMESTAMP IS NULL OR ts <= ?) AND (?::TIMESTAMP IS NULL OR ts > ?)
        )
        WHERE length(text) > 0 AND (h % 4294967296) < {keep}
        GROUP BY account_id, h
        """,
        [until, until, after, after],
    )
    embedded = 0
    while True:
        batch = result.fetchmany(SEMANTIC_BATCH)
        if not batch:
            break
        accounts, hashes, uses, texts = zip(*batch, strict=True)
        unique, index = np.unique(np.array(hashes, dtype=np.uint64), return_inverse=True)
        first = {h: i for i, h in reversed(list(enumerate(hashes)))}
        vectors = embedder.encode([texts[first[h]] for h in unique.tolist()])
        bands = lsh_bands(vectors)[index]  # (rows, bands)
        table = pa.table({
            "account_id": pa.array(np.repeat(np.array(accounts, dtype=object), bands.shape[1]), pa.string()),
            "sig": pa.array(bands.reshape(-1), pa.uint64()),
            "h": pa.array(np.repeat(np.array(hashes, dtype=np.uint64), bands.shape[1]), pa.uint64()),
            "uses": pa.array(np.repeat(np.array(uses, dtype=np.int64), bands.shape[1]), pa.int64()),
        })  # fmt: skip
        store.con.register("_sem", table)
        try:
            store.run(
                "INSERT INTO dw_sem SELECT account_id, sig, h, sum(uses) FROM _sem WHERE sig > 0 GROUP BY ALL"
            )
        finally:
            store.con.unregister("_sem")
        embedded += len(unique)
    reader.close()
    return embedded

"""Volume summaries over the store: per model, per day, per account, and ingest health."""

from __future__ import annotations

from typing import Any

from distillwatch.store import Store


def _rows(store: Store, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cursor = store.con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def store_stats(store: Store, top: int = 10) -> dict[str, Any]:
    """Everything ``distillwatch stats`` shows, as plain data (JSON-friendly after isoformat)."""
    totals = _rows(
        store,
        """SELECT count(*) AS exchanges, count(DISTINCT account_id) AS accounts,
                  count(DISTINCT model) AS models, min(ts) AS first_ts, max(ts) AS last_ts,
                  coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
                  coalesce(sum(completion_tokens), 0) AS completion_tokens,
                  count(*) FILTER (WHERE truncated) AS truncated
           FROM exchanges""",
    )[0]
    per_model = _rows(
        store,
        """SELECT model, count(*) AS exchanges, count(DISTINCT account_id) AS accounts,
                  coalesce(sum(completion_tokens), 0) AS completion_tokens
           FROM exchanges GROUP BY model ORDER BY exchanges DESC, model""",
    )
    per_day = _rows(
        store,
        """SELECT CAST(date_trunc('day', ts) AS DATE) AS day, count(*) AS exchanges,
                  count(DISTINCT account_id) AS accounts
           FROM exchanges GROUP BY day ORDER BY day""",
    )
    top_accounts = _rows(
        store,
        """SELECT account_id, count(*) AS exchanges, count(DISTINCT model) AS models,
                  min(ts) AS first_ts, max(ts) AS last_ts,
                  coalesce(sum(completion_tokens), 0) AS completion_tokens,
                  count(DISTINCT ip) AS ips
           FROM exchanges GROUP BY account_id ORDER BY exchanges DESC, account_id LIMIT ?""",
        [top],
    )
    distribution = _rows(
        store,
        """WITH per AS (SELECT account_id, count(*) AS n FROM exchanges GROUP BY account_id)
           SELECT coalesce(min(n), 0) AS min, coalesce(quantile_cont(n, 0.5), 0) AS median,
                  coalesce(quantile_cont(n, 0.9), 0) AS p90,
                  coalesce(quantile_cont(n, 0.99), 0) AS p99, coalesce(max(n), 0) AS max
           FROM per""",
    )[0]
    ingest = _rows(
        store,
        """SELECT count(*) AS files, coalesce(sum(records), 0) AS records,
                  coalesce(sum(loaded), 0) AS loaded, coalesce(sum(duplicates), 0) AS duplicates,
                  coalesce(sum(quarantined), 0) AS quarantined,
                  coalesce(sum(flagged), 0) AS flagged,
                  count(*) FILTER (WHERE error IS NOT NULL) AS file_errors
           FROM ingest_runs""",
    )[0]
    bad_files = _rows(
        store,
        """SELECT source, sum(quarantined) AS quarantined, max(error) AS error
           FROM ingest_runs GROUP BY source
           HAVING sum(quarantined) > 0 OR max(error) IS NOT NULL
           ORDER BY quarantined DESC, source LIMIT ?""",
        [top],
    )
    return {
        "totals": totals,
        "per_model": per_model,
        "per_day": per_day,
        "exchanges_per_account": distribution,
        "top_accounts": top_accounts,
        "ingest": ingest,
        "bad_files": bad_files,
    }

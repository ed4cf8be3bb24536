"""The baseline every report compares against: flag the heaviest accounts by request volume.

This is what a provider without distillwatch typically has: a per-account rate percentile.
Score = the account's percentile rank of requests; ``distillation`` at the 99th percentile,
``suspicious`` at the 95th. It writes the same Contract 2 document as the real detector.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from distillwatch.store import Store

DISTILLATION_PERCENTILE = 0.99
SUSPICIOUS_PERCENTILE = 0.95


def detect_baseline(
    store: Store, until: datetime | None = None, incremental: bool = False
) -> dict[str, Any]:
    """``incremental`` is accepted for the harness's sake; a percentile needs the whole log."""
    rows = store.run(
        """SELECT account_id, n, percent_rank() OVER (ORDER BY n) AS pct
           FROM (SELECT account_id, count(*) AS n FROM exchanges
                 WHERE ? IS NULL OR ts <= ? GROUP BY account_id)
           ORDER BY account_id""",
        [until, until],
    )
    exchanges = sum(r[1] for r in rows)
    accounts = []
    for account_id, n, pct in rows:
        verdict = (
            "distillation" if pct >= DISTILLATION_PERCENTILE
            else "suspicious" if pct >= SUSPICIOUS_PERCENTILE
            else "benign"
        )  # fmt: skip
        accounts.append(
            {
                "account_id": account_id,
                "score": round(float(pct), 4),
                "verdict": verdict,
                "cluster_id": None,
                "reasons": [f"{n:,} requests: percentile {pct:.1%} of accounts by volume"],
            }
        )
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "exchanges": int(exchanges),
        "accounts": accounts,
        "campaigns": [],
        "detector": {"name": "baseline-rate-percentile"},
    }

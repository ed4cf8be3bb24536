"""Checks for Contract 2 (verdicts.json), the document every detector writes and tools read.

One checker, used by tests, the benchmark harness and anyone wiring an outside detector in, so
that "valid Contract 2" means the same thing everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

VERDICTS = ("distillation", "suspicious", "benign")


def _is_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def verdicts_problems(doc: Any, expected_accounts: Iterable[str] | None = None) -> list[str]:
    """Every way ``doc`` breaks Contract 2 (empty when it is valid).

    With ``expected_accounts``, also checks that each input account appears exactly once.
    """
    if not isinstance(doc, dict):
        return ["document is not a JSON object"]
    problems: list[str] = []
    if not _is_time(doc.get("generated_at")):
        problems.append("generated_at: not an RFC 3339 time")
    if not isinstance(doc.get("exchanges"), int) or doc["exchanges"] < 0:
        problems.append("exchanges: not a non-negative integer")
    accounts = doc.get("accounts")
    campaigns = doc.get("campaigns")
    if not isinstance(accounts, list):
        return [*problems, "accounts: not a list"]
    if not isinstance(campaigns, list):
        return [*problems, "campaigns: not a list"]
    seen: dict[str, int] = {}
    for i, account in enumerate(accounts):
        where = f"accounts[{i}]"
        if not isinstance(account, dict):
            problems.append(f"{where}: not an object")
            continue
        account_id = account.get("account_id")
        if not isinstance(account_id, str) or not account_id:
            problems.append(f"{where}.account_id: missing")
        else:
            seen[account_id] = seen.get(account_id, 0) + 1
        score = account.get("score")
        if (
            not isinstance(score, int | float)
            or isinstance(score, bool)
            or not math.isfinite(score)
            or not 0.0 <= score <= 1.0
        ):
            problems.append(f"{where}.score: not a number in [0, 1]")
        if account.get("verdict") not in VERDICTS:
            problems.append(f"{where}.verdict: not one of {', '.join(VERDICTS)}")
        cluster = account.get("cluster_id")
        if cluster is not None and not isinstance(cluster, str):
            problems.append(f"{where}.cluster_id: not a string or null")
        reasons = account.get("reasons")
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            problems.append(f"{where}.reasons: not a list of strings")
    problems += [f"account {a!r} appears {n} times" for a, n in seen.items() if n > 1]
    if expected_accounts is not None:
        expected = set(expected_accounts)
        missing = expected - seen.keys()
        extra = seen.keys() - expected
        if missing:
            problems.append(f"{len(missing)} input accounts missing, e.g. {sorted(missing)[:3]}")
        if extra:
            problems.append(f"{len(extra)} accounts not in the input, e.g. {sorted(extra)[:3]}")
    for i, campaign in enumerate(campaigns):
        where = f"campaigns[{i}]"
        if not isinstance(campaign, dict):
            problems.append(f"{where}: not an object")
            continue
        if not isinstance(campaign.get("campaign_id"), str):
            problems.append(f"{where}.campaign_id: not a string")
        score = campaign.get("score")
        if not isinstance(score, int | float) or not 0.0 <= score <= 1.0:
            problems.append(f"{where}.score: not a number in [0, 1]")
        members = campaign.get("accounts")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            problems.append(f"{where}.accounts: not a list of account ids")
        elif set(members) - seen.keys():
            problems.append(f"{where}.accounts: names accounts missing from `accounts`")
        if not isinstance(campaign.get("exchanges"), int):
            problems.append(f"{where}.exchanges: not an integer")
        for key in ("first_seen", "last_seen"):
            if not _is_time(campaign.get(key)):
                problems.append(f"{where}.{key}: not an RFC 3339 time")
        evidence = campaign.get("evidence")
        if not isinstance(evidence, list) or not all(isinstance(e, str) for e in evidence):
            problems.append(f"{where}.evidence: not a list of strings")
    return problems

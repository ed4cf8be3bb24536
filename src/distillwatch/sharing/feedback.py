"""False positives back to the partners whose indicators caused them.

An account that a partner's indicators linked (``partner_matches``, written by detection) and
that an analyst then found innocent (the workspace's *false positive*) leaves a report owed to
that partner in ``share_outbox``. :func:`send_reports` turns what is owed into one STIX bundle
per partner: an ``opinion`` (strongly-disagree) on exactly the indicators that matched, with a
fixed explanation that names no account, customer or prompt. A partner importing it stops
linking on those indicators (:meth:`~distillwatch.sharing.stix.IndicatorSet.without_disputed`),
and so does every deployment of ours that loads the partner's bundle next to the report.

Stage: reads and writes ``share_outbox``; writes bundle files.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from distillwatch.sharing.stix import false_positive_report
from distillwatch.store import Store

EXPLANATION = (
    "Our analysts reviewed {n} account(s) that these indicators linked to your campaign and "
    "found them legitimate."
)


@dataclass(frozen=True)
class Report:
    """One partner's report: where it was written, and what it disputes."""

    source: str
    path: Path | None
    indicators: int
    accounts: int


def pending(store: Store) -> dict[str, tuple[set[str], set[str]]]:
    """``{source: (indicator ids, accounts)}`` owed and not yet sent."""
    owed: dict[str, tuple[set[str], set[str]]] = {}
    for source, indicator, account in store.run(
        "SELECT source, indicator, account_id FROM share_outbox WHERE sent_at IS NULL"
    ):
        ids, accounts = owed.setdefault(str(source), (set(), set()))
        ids.add(str(indicator))
        accounts.add(str(account))
    return owed


def write_bundle_file(folder: Path, source: str, raw: bytes, prefix: str = "") -> Path:
    """Write ``raw`` into ``folder`` as ``<prefix><source>-<hash>.json``, atomically (gateways
    watching the folder never read half a file). The source's name is kept to lower-case
    letters and digits, so an attacker-chosen name cannot reach outside ``folder``."""
    slug = re.sub(r"[^a-z0-9]+", "-", source.lower()).strip("-")[:40] or "source"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{prefix}{slug}-{hashlib.sha256(raw).hexdigest()[:12]}.json"
    scratch = target.with_suffix(".tmp")
    scratch.write_bytes(raw)
    os.replace(scratch, target)
    return target


def send_reports(store: Store, out: Path, producer: str, tlp: str = "amber") -> list[Report]:
    """Write each partner's owed report into ``out`` (:func:`write_bundle_file`) and mark it
    sent; returns what was written."""
    reports = []
    now = datetime.now(UTC).replace(tzinfo=None)
    for source, (ids, accounts) in sorted(pending(store).items()):
        bundle = false_positive_report(
            sorted(ids), EXPLANATION.format(n=len(accounts)), producer, tlp
        )
        target = write_bundle_file(out, source, orjson.dumps(bundle, option=orjson.OPT_INDENT_2),
                                   prefix="false-positive-")  # fmt: skip
        store.run(
            "UPDATE share_outbox SET sent_at = ? WHERE source = ? AND sent_at IS NULL",
            [now, source],
        )
        store.audit("share", "share.report_sent", {"source": source, "indicators": len(ids),
                                                   "file": target.name})  # fmt: skip
        reports.append(Report(source, target, len(ids), len(accounts)))
    return reports

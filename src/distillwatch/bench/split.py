"""Split deployment: detection on one machine, a gateway on another with only the indicator bundle.

Detection runs over the days before the split (a model launch) and writes ``indicators.json``.
A gateway is started with that bundle and the sharing key, **no verdicts and no store**, and
the traffic after the split is replayed through it over loopback (each request with its original
time, client IP and TLS fingerprint): every request of the accounts that first appear after the
split, up to their first ``first_requests``, and a sample of everyone else's. The gateway also
gets the provider's account records (``--accounts``: the cards on file), as any gateway of that
provider would.

Reported: per flagged campaign, the share of its fresh accounts actioned (refused, challenged,
throttled or shaped) within their first ``first_requests`` requests; the share of benign requests
refused; per benign persona, the accounts and requests refused.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from distillwatch.detection.pipeline import detect_and_write
from distillwatch.enforce.processes import CLI, free_port, wait_http
from distillwatch.enforce.replay import _send
from distillwatch.ingest import ingest_paths
from distillwatch.sharing import SharingKey, write_indicators
from distillwatch.store import Store
from distillwatch.traffic import iter_records


def split_deployment(traffic: Path, out: Path, split_day: float = 4.5, first_requests: int = 10,
                     max_other: int = 15_000, concurrency: int = 32) -> dict[str, Any]:  # fmt: skip
    labels = json.loads((traffic / "labels.json").read_text())
    truth = labels["accounts"]
    start = datetime.fromisoformat(labels["time_start"].replace("Z", ""))
    cutoff = start + timedelta(days=split_day)
    out.mkdir(parents=True, exist_ok=True)
    store_path = out / "detect.duckdb"
    store_path.unlink(missing_ok=True)
    key = SharingKey.generate("split-bench")
    key.write(out / "sharing.key")
    with Store(store_path) as store:
        ingest_paths([traffic / "exchanges.jsonl"], store, accounts=traffic / "accounts.jsonl")
        doc = detect_and_write(store, out / "detect", until=cutoff)
        written = write_indicators(store, doc, out / "indicators.json", key, "lab-a")
    flagged_campaigns = Counter(
        truth[a]["campaign_id"] for c in doc["campaigns"] for a in c["accounts"]
        if truth.get(a, {}).get("campaign_id")
    )  # fmt: skip
    records = sorted((r for r in iter_records(traffic / "exchanges.jsonl")), key=lambda r: r["ts"])
    seen_before = {r["account_id"] for r in records if r["ts"][:19] <= cutoff.isoformat()}
    later = [r for r in records if r["ts"][:19] > cutoff.isoformat()]
    fresh_count: Counter[str] = Counter()
    fresh, other = [], []
    for r in later:
        account = r["account_id"]
        if account not in seen_before and truth[account]["label"] == "campaign":
            fresh_count[account] += 1
            if fresh_count[account] <= first_requests:
                fresh.append(r)
        else:
            other.append(r)
    step = max(1, len(other) // max_other)
    sample = sorted(fresh + other[::step], key=lambda r: r["ts"])
    keys = out / "keys.jsonl"
    keys.write_text("".join(json.dumps({"api_key": f"sk-{a}", "account_id": a}) + "\n"
                            for a in sorted({r["account_id"] for r in sample})))  # fmt: skip
    up, px = free_port(), free_port()
    upstream = subprocess.Popen([*CLI, "mock-upstream", "--listen", f"127.0.0.1:{up}"])
    proxy = subprocess.Popen(
        [*CLI, "proxy", "--upstream", f"http://127.0.0.1:{up}", "--listen", f"127.0.0.1:{px}",
         "--indicators", str(out / "indicators.json"), "--sharing-key", str(out / "sharing.key"),
         "--keys", str(keys), "--accounts", str(traffic / "accounts.jsonl"),
         "--trusted-proxy", "127.0.0.1/32", "--replay-time-header", "X-Replay-Time"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{up}/v1/models", upstream)
        wait_http(f"http://127.0.0.1:{px}/healthz", proxy)
        loaded = json.loads(_get(f"http://127.0.0.1:{px}/healthz"))["indicators"]
        outcomes = asyncio.run(
            _send(f"http://127.0.0.1:{px}", sample, concurrency, Counter(), None)
        )
    finally:
        for proc in (proxy, upstream):
            proc.terminate()
            proc.wait(timeout=20)
    return _tally(sample, outcomes, truth, seen_before, first_requests, flagged_campaigns,
                  written, loaded, cutoff)  # fmt: skip


def _get(url: str) -> str:
    import httpx

    return httpx.get(url, timeout=10).text


def _tally(sample: list[dict[str, Any]], outcomes: list[str], truth: dict[str, Any],
           seen_before: set[str], first_requests: int, flagged: Counter[str], written: Any,
           loaded: dict[str, Any], cutoff: datetime) -> dict[str, Any]:  # fmt: skip
    actioned: dict[str, bool] = {}
    campaign_of: dict[str, str] = {}
    benign: Counter[str] = Counter()
    refused_accounts: dict[str, set[str]] = defaultdict(set)
    persona_requests: Counter[str] = Counter()
    persona_refused: Counter[str] = Counter()
    persona_accounts: dict[str, set[str]] = defaultdict(set)
    for record, outcome in zip(sample, outcomes, strict=True):
        account = record["account_id"]
        label = truth[account]
        if label["label"] == "campaign" and account not in seen_before:
            campaign_of[account] = label["campaign_id"]
            actioned[account] = actioned.get(account, False) or outcome != "served"
        elif label["label"] == "benign":
            persona = label["persona"]
            benign[outcome] += 1
            persona_requests[persona] += 1
            persona_accounts[persona].add(account)
            if outcome in ("403", "429"):
                persona_refused[persona] += 1
                refused_accounts[persona].add(account)
    per_campaign = {}
    for campaign in sorted(set(campaign_of.values())):
        members = [a for a, c in campaign_of.items() if c == campaign]
        hit = sum(actioned[a] for a in members)
        per_campaign[campaign] = {
            "flagged_before_split": campaign in flagged, "fresh_accounts": len(members),
            "actioned_within_first": hit, "share": hit / len(members),
        }  # fmt: skip
    flagged_fresh = [a for a, c in campaign_of.items() if c in flagged]
    b_total = sum(benign.values())
    refused = sum(n for k, n in benign.items() if k in ("403", "429"))
    return {
        "split": cutoff.isoformat(),
        "first_requests": first_requests,
        "indicators": {"campaigns": len(written.campaigns), "objects": written.objects,
                       "artefacts": sum(len(c.artefacts) for c in written.campaigns),
                       "false_matches_on_population": sum(c.false_matches for c in written.campaigns),
                       "gateway_loaded": loaded},
        "fresh_accounts_of_flagged_campaigns": len(flagged_fresh),
        "actioned_share": sum(actioned[a] for a in flagged_fresh) / len(flagged_fresh)
        if flagged_fresh else None,
        "per_campaign": per_campaign,
        "benign_requests": b_total,
        "benign_refused": refused,
        "benign_refused_share": refused / b_total if b_total else None,
        "per_persona": {
            p: {"accounts": len(persona_accounts[p]), "accounts_refused": len(refused_accounts[p]),
                "requests": persona_requests[p], "requests_refused": persona_refused[p]}
            for p in sorted(persona_requests)
        },
    }  # fmt: skip

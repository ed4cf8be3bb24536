"""Detection within the hour, measured as a replay through the real gateway.

A simulated world is replayed from its first request through the proxy (and the mock upstream)
over loopback, in time order, with each request's original time (``X-Replay-Time``), client IP
(a trusted ``X-Forwarded-For``), TLS fingerprint and user agent. The gateway starts with an empty
log and only the provider's account records (sign-up time, e-mail domain, card); everything it
knows about traffic it learns from what passes through it:

- **micro-batch detection** over its own log every ``detect_every_hours`` of replayed time
  (``POST /admin/detect`` once every request before the boundary has been answered, so the
  result does not depend on the machine's speed);
- optionally **streaming evidence** (``proxy --stream``), updated on every request, which
  shapes or throttles an account before any batch run has flagged it.

Reported per campaign: its requests, the share served in full (neither shaped, throttled nor
refused: what it harvested as it wanted it), the share served in full before its first action,
the replayed hours from its first request to its first action and to half of its accounts
refused; per benign persona: the share of requests shaped, throttled and refused.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import statistics
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from distillwatch.enforce.processes import CLI, free_port, wait_http
from distillwatch.ingest import ingest_paths
from distillwatch.store import Store
from distillwatch.traffic import iter_records

ADMIN_TOKEN = "bench-hour-admin"
#: Outcomes of one request, as the client sees them.
SERVED, SHAPED, THROTTLED, REFUSED = "served", "shaped", "throttled", "refused"


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", ""))


def _sample_accounts(
    records: list[dict[str, Any]], share: float, seed: int
) -> list[dict[str, Any]]:
    """Every request of a random ``share`` of accounts (each account's behaviour intact)."""
    if share >= 1.0:
        return records
    rng = random.Random(seed)
    accounts = sorted({r["account_id"] for r in records})
    keep = {a for a in accounts if rng.random() < share}
    return [r for r in records if r["account_id"] in keep]


def replay_hour(
    traffic: Path,
    out: Path,
    detect_every_hours: float = 1.0,
    stream: bool = True,
    account_share: float = 1.0,
    concurrency: int = 24,
    redis_url: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    extra_args: list[str] | None = None,
    history: Path | None = None,
) -> dict[str, Any]:
    """Replay ``traffic`` (a simulator folder) through a fresh gateway; the tallies.

    ``history``: exchanges the gateway's log already holds when it starts (a deployment that
    has been running), ingested into its store first; ``traffic`` is what is replayed after."""
    labels = json.loads((traffic / "labels.json").read_text())
    records = sorted(iter_records(traffic / "exchanges.jsonl"), key=lambda r: r["ts"])
    records = _sample_accounts(records, account_share, 0)
    out.mkdir(parents=True, exist_ok=True)
    store_path = out / "gateway.duckdb"
    for path in (store_path, store_path.with_name(store_path.name + ".wal")):
        path.unlink(missing_ok=True)
    shutil.rmtree(store_path.with_name(store_path.name + ".spool"), ignore_errors=True)
    with Store(store_path) as store:  # the provider's account records (and history, if any)
        ingest_paths([history] if history else [], store, accounts=traffic / "accounts.jsonl")
    accounts = sorted({r["account_id"] for r in records})
    keys = out / "keys.jsonl"
    keys.write_text(
        "".join(json.dumps({"api_key": f"sk-{a}", "account_id": a}) + "\n" for a in accounts)
    )
    rounds = _rounds(records, detect_every_hours)
    up, px = free_port(), free_port()
    base = f"http://127.0.0.1:{px}"
    args = [*CLI, "proxy", "--upstream", f"http://127.0.0.1:{up}", "--listen", f"127.0.0.1:{px}",
            "--store", str(store_path), "--keys", str(keys),
            "--accounts", str(traffic / "accounts.jsonl"), "--trusted-proxy", "127.0.0.1/32",
            "--replay-time-header", "X-Replay-Time", "--admin-token", ADMIN_TOKEN,
            "--max-in-flight", "4096"]  # fmt: skip
    if stream:
        args.append("--stream")
    if redis_url:
        args += ["--redis", redis_url]
    args += extra_args or []
    upstream = subprocess.Popen([*CLI, "mock-upstream", "--listen", f"127.0.0.1:{up}"])
    proxy = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    outcomes: list[str] = []
    detects: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        wait_http(f"http://127.0.0.1:{up}/v1/models", upstream)
        wait_http(f"{base}/healthz", proxy)
        done = 0
        if history is not None:  # a running deployment has verdicts over its log already
            detects.append(_admin_detect(base))
        for chunk in rounds:
            outcomes += asyncio.run(_send(base, chunk, concurrency))
            done += len(chunk)
            detects.append(_admin_detect(base))
            if on_progress is not None:
                on_progress(done, len(records))
        health = httpx.get(f"{base}/healthz", timeout=10).json()
    finally:
        for proc in (proxy, upstream):
            proc.terminate()
            proc.wait(timeout=60)
    with (out / "outcomes.jsonl").open("w") as handle:  # for a closer look, request by request
        for record, outcome in zip(records, outcomes, strict=True):
            handle.write(json.dumps({"ts": record["ts"], "account_id": record["account_id"],
                                     "outcome": outcome}) + "\n")  # fmt: skip
    result = tally(records, outcomes, labels)
    result.update(
        stream=stream,
        detect_every_hours=detect_every_hours,
        account_share=account_share,
        micro_batches=len(detects),
        micro_batch_seconds_median=statistics.median(d["seconds"] for d in detects)
        if detects
        else None,
        micro_batch_seconds_max=max((d["seconds"] for d in detects), default=None),
        wall_seconds=round(time.perf_counter() - started, 1),
        streaming=health.get("streaming"),
    )
    return result


def _admin_detect(base: str) -> dict[str, Any]:
    """One micro-batch, answered once its verdicts and indicators are live."""
    response = httpx.post(f"{base}/admin/detect", timeout=3600,
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
    response.raise_for_status()
    return dict(response.json())


def _rounds(records: list[dict[str, Any]], hours: float) -> list[list[dict[str, Any]]]:
    """The time-ordered requests cut at every ``hours`` of replayed time from the first one."""
    if not records:
        return []
    step = timedelta(hours=hours)
    end = _parse(records[0]["ts"]) + step
    rounds: list[list[dict[str, Any]]] = [[]]
    for record in records:
        while _parse(record["ts"]) >= end:
            rounds.append([])
            end += step
        rounds[-1].append(record)
    return [r for r in rounds if r]


async def _send(base: str, chunk: list[dict[str, Any]], concurrency: int) -> list[str]:
    """Send ``chunk`` (``concurrency`` at a time, in order of start); one outcome per request."""
    outcomes = ["" for _ in chunk]
    position = iter(range(len(chunk)))
    async with httpx.AsyncClient(
        timeout=120, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def worker() -> None:
            for i in position:
                outcomes[i] = await _one(client, base, chunk[i])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


async def _one(client: httpx.AsyncClient, base: str, record: dict[str, Any]) -> str:
    headers = {"Authorization": f"Bearer sk-{record['account_id']}", "X-Replay-Time": record["ts"],
               "X-Forwarded-For": record.get("ip") or "127.0.0.1"}  # fmt: skip
    if record.get("tls_fingerprint"):
        headers["X-JA4"] = record["tls_fingerprint"]
    if record.get("user_agent"):
        headers["User-Agent"] = record["user_agent"]
    # The answer the customer got had this many tokens; ask the mock for as many, so the
    # gateway's log (and what its micro-batches learn from it) has the real output lengths.
    wanted = max(16, int(record.get("completion_tokens") or 64))
    body = {"model": record["model"], "messages": record["messages"], "max_tokens": wanted}
    for attempt in range(3):
        try:
            response = await client.post(f"{base}/v1/chat/completions", json=body, headers=headers)
            break
        except httpx.TransportError:
            if attempt == 2:
                raise
            await asyncio.sleep(0.5)
    if response.status_code == 200:
        text = response.json()["choices"][0]["message"].get("content") or ""
        capped = response.json().get("usage", {}).get("completion_tokens", wanted) < min(
            wanted, 4096
        )
        return SERVED if "<think>" in text and not capped else SHAPED
    if response.status_code == 429:
        return THROTTLED
    if response.status_code == 403:
        return REFUSED
    return str(response.status_code)


def tally(records: list[dict[str, Any]], outcomes: list[str], labels: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Per campaign and per benign persona, from each request's outcome and the ground truth."""
    truth = labels["accounts"]
    campaigns: dict[str, dict[str, Any]] = {}
    personas: dict[str, dict[str, Any]] = {}
    first_action: dict[str, datetime] = {}
    refused_at: dict[str, dict[str, datetime]] = defaultdict(dict)
    members: dict[str, set[str]] = defaultdict(set)
    first_seen: dict[str, datetime] = {}
    for record, outcome in zip(records, outcomes, strict=True):
        label = truth.get(record["account_id"], {})
        when = _parse(record["ts"])
        campaign = label.get("campaign_id")
        if campaign:
            row = campaigns.setdefault(campaign, {"requests": 0, **dict.fromkeys(
                (SERVED, SHAPED, THROTTLED, REFUSED, "other"), 0), "served_before_first_action": 0})  # fmt: skip
            first_seen.setdefault(campaign, when)
            members[campaign].add(record["account_id"])
            if outcome != SERVED:
                first_action.setdefault(campaign, when)
            elif campaign not in first_action:
                row["served_before_first_action"] += 1
            if outcome == REFUSED:
                refused_at[campaign].setdefault(record["account_id"], when)
        else:
            persona = label.get("persona") or "unknown"
            row = personas.setdefault(persona, {"requests": 0, "accounts": set(), **dict.fromkeys(
                (SERVED, SHAPED, THROTTLED, REFUSED, "other"), 0), "accounts_refused": set(),
                "accounts_shaped": set()})  # fmt: skip
            row["accounts"].add(record["account_id"])
            if outcome == REFUSED:
                row["accounts_refused"].add(record["account_id"])
            if outcome in (SHAPED, THROTTLED):
                row["accounts_shaped"].add(record["account_id"])
        row["requests"] += 1
        row[outcome if outcome in (SERVED, SHAPED, THROTTLED, REFUSED) else "other"] += 1
    for name, row in campaigns.items():
        n = row["requests"]
        row["accounts"] = len(members[name])
        row["served_in_full_share"] = row[SERVED] / n
        row["served_before_first_action_share"] = row["served_before_first_action"] / n
        start = first_seen[name]
        row["hours_to_first_action"] = (
            round((first_action[name] - start).total_seconds() / 3600, 2)
            if name in first_action else None
        )  # fmt: skip
        times = sorted(refused_at[name].values())
        half = (len(members[name]) + 1) // 2
        row["hours_to_half_refused"] = (
            round((times[half - 1] - start).total_seconds() / 3600, 2) if len(times) >= half else None
        )  # fmt: skip
    for row in personas.values():
        n = row["requests"]
        row["shaped_share"] = row[SHAPED] / n
        row["throttled_share"] = row[THROTTLED] / n
        row["refused_share"] = row[REFUSED] / n
        row["accounts"], row["accounts_refused"] = (
            len(row["accounts"]),
            len(row["accounts_refused"]),
        )
        row["accounts_shaped"] = len(row["accounts_shaped"])
    benign = sum(r["requests"] for r in personas.values())
    return {
        "requests": len(records),
        "per_campaign": dict(sorted(campaigns.items())),
        "per_persona": dict(sorted(personas.items())),
        "worst_campaign_served_in_full_share": max(
            (r["served_in_full_share"] for r in campaigns.values()), default=None
        ),
        "benign_requests": benign,
        "benign_refused_share": sum(r[REFUSED] for r in personas.values()) / benign if benign else None,
        "benign_shaped_share": sum(r[SHAPED] + r[THROTTLED] for r in personas.values()) / benign
        if benign else None,
    }  # fmt: skip

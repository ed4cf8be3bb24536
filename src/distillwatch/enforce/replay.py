"""Replay simulated traffic through the real proxy: the live enforcement demo and its benchmark.

Detection runs on the first days of a simulation; the proxy is started with those verdicts, and
the rest of the log is sent through it over loopback, in time order. Every ``redetect_hours`` of
simulated time detection runs again, incrementally, on the provider's full log up to that
moment (as a scheduled job would) and atomically replaces the verdicts file the proxy
hot-reloads, so campaigns that start or change after day 0 are caught too. Each request keeps
its original time (``--replay-time-header``), client IP (``X-Forwarded-For`` from a trusted
hop) and TLS fingerprint. Responses are tallied against the simulator's ground truth: how much of the
attackers' traffic after detection was refused or shaped, how much benign traffic was refused,
and how quickly accounts the verdicts had never seen were stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from distillwatch.detection.pipeline import detect, detect_and_write
from distillwatch.enforce.processes import CLI, free_port, wait_http
from distillwatch.ingest import ingest_paths
from distillwatch.store import Store
from distillwatch.traffic import iter_records


def replay(
    traffic: Path,
    out: Path,
    detect_days: float = 3.0,
    max_requests: int = 4000,
    concurrency: int = 32,
    on_progress: Callable[[Counter[str]], None] | None = None,
    redetect_hours: float = 6.0,
) -> dict[str, Any]:
    """Detect on the first ``detect_days``, then replay (a sample of) the rest through the proxy,
    re-running detection every ``redetect_hours`` of simulated time (0: never)."""
    labels = json.loads((traffic / "labels.json").read_text())
    start = datetime.fromisoformat(labels["time_start"].replace("Z", ""))
    cutoff = start + timedelta(days=detect_days)
    out.mkdir(parents=True, exist_ok=True)
    detect_path, store_path = out / "detect.duckdb", out / "enforce.duckdb"
    for stale in (detect_path, store_path):
        for path in (stale, stale.with_name(stale.name + ".wal")):
            path.unlink(missing_ok=True)
        # A journal left by an earlier replay's proxy would be folded into this one's store.
        shutil.rmtree(stale.with_name(stale.name + ".spool"), ignore_errors=True)
    with Store(detect_path) as store:
        ingest_paths([traffic / "exchanges.jsonl"], store, accounts=traffic / "accounts.jsonl")
        doc = detect_and_write(store, out / "verdicts-day-0", until=cutoff)
    # The proxy's own store starts with the history up to day 0 and logs the rest live; the
    # detection store stands for the provider's log pipeline, which sees all traffic.
    shutil.copyfile(detect_path, store_path)
    with Store(store_path) as store:
        store.run("DELETE FROM exchanges WHERE ts > ?", [cutoff])
    live_verdicts = out / "verdicts-live.json"
    shutil.copyfile(out / "verdicts-day-0" / "verdicts.json", live_verdicts)
    known = {a["account_id"] for a in doc["accounts"]}
    flagged_at = {
        a["account_id"]: cutoff for a in doc["accounts"] if a["verdict"] == "distillation"
    }
    later = [
        r for r in iter_records(traffic / "exchanges.jsonl") if r["ts"][:19] > cutoff.isoformat()
    ]
    later.sort(key=lambda r: r["ts"])
    step = max(1, len(later) // max_requests)
    sample = later[::step][:max_requests]
    accounts = sorted({r["account_id"] for r in sample} | known)
    keys = out / "keys.jsonl"
    keys.write_text(
        "".join(json.dumps({"api_key": f"sk-{a}", "account_id": a}) + "\n" for a in accounts)
    )
    rounds = _rounds(sample, cutoff, redetect_hours)

    cli = list(CLI)
    up, px = free_port(), free_port()
    upstream = subprocess.Popen([*cli, "mock-upstream", "--listen", f"127.0.0.1:{up}"])
    proxy = subprocess.Popen(
        [*cli, "proxy", "--upstream", f"http://127.0.0.1:{up}", "--listen", f"127.0.0.1:{px}",
         "--store", str(store_path), "--verdicts", str(live_verdicts),
         "--keys", str(keys), "--accounts", str(traffic / "accounts.jsonl"),
         "--trusted-proxy", "127.0.0.1/32", "--replay-time-header", "X-Replay-Time"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    outcomes: list[str] = []
    detect_seconds: list[float] = []
    live: Counter[str] = Counter()
    try:
        wait_http(f"http://127.0.0.1:{up}/v1/models", upstream)
        wait_http(f"http://127.0.0.1:{px}/healthz", proxy)
        with Store(detect_path) as store:
            for number, (chunk, until) in enumerate(rounds):
                outcomes += asyncio.run(
                    _send(f"http://127.0.0.1:{px}", chunk, concurrency, live, on_progress)
                )
                if until is None or number == len(rounds) - 1:
                    continue
                t0 = time.perf_counter()
                doc = detect(store, until)
                detect_seconds.append(time.perf_counter() - t0)
                for account in doc["accounts"]:
                    if account["verdict"] == "distillation":
                        flagged_at.setdefault(account["account_id"], until)
                staged = live_verdicts.with_suffix(".tmp")
                staged.write_text(json.dumps(doc))
                os.replace(staged, live_verdicts)  # atomic: the proxy never reads half a file
                time.sleep(1.1)  # the proxy checks the file's mtime at most once a second
    finally:
        for proc in (proxy, upstream):
            proc.terminate()
            proc.wait(timeout=20)
    result = _tally(sample, outcomes, labels, known, flagged_at, cutoff)
    result["redetect_hours"] = redetect_hours
    result["redetect_runs"] = len(detect_seconds)
    result["redetect_seconds_median"] = (
        round(statistics.median(detect_seconds), 2) if detect_seconds else None
    )
    return result


def _rounds(
    sample: list[dict[str, Any]], cutoff: datetime, hours: float
) -> list[tuple[list[dict[str, Any]], datetime | None]]:
    """Split the time-ordered sample into re-detection intervals: (requests, interval end)."""
    if hours <= 0:
        return [(sample, None)]
    rounds: list[tuple[list[dict[str, Any]], datetime | None]] = []
    end = cutoff + timedelta(hours=hours)
    chunk: list[dict[str, Any]] = []
    for record in sample:
        while record["ts"][:19] > end.isoformat():
            rounds.append((chunk, end))
            chunk, end = [], end + timedelta(hours=hours)
        chunk.append(record)
    rounds.append((chunk, end))
    return [(c, e) for c, e in rounds if c]


async def _send(base: str, sample: list[dict[str, Any]], concurrency: int, live: Counter[str],
                on_progress: Callable[[Counter[str]], None] | None) -> list[str]:  # fmt: skip
    outcomes = ["" for _ in sample]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(sample)):
        queue.put_nowait(i)
    async with httpx.AsyncClient(
        timeout=30, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                record = sample[i]
                headers = {"Authorization": f"Bearer sk-{record['account_id']}",
                           "X-Replay-Time": record["ts"], "X-Forwarded-For": record.get("ip") or "127.0.0.1"}  # fmt: skip
                if record.get("tls_fingerprint"):
                    headers["X-JA4"] = record["tls_fingerprint"]
                body = {
                    "model": record["model"],
                    "messages": record["messages"],
                    "max_tokens": 1024,
                }
                response = await client.post(
                    f"{base}/v1/chat/completions", json=body, headers=headers
                )
                outcome = str(response.status_code)
                if response.status_code == 200:
                    text = response.json()["choices"][0]["message"]["content"]
                    outcome = "shaped" if "<think>" not in text else "served"
                outcomes[i] = outcome
                live[outcome] += 1
                if on_progress is not None and sum(live.values()) % 100 == 0:
                    on_progress(live)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def _tally(sample: list[dict[str, Any]], outcomes: list[str], labels: dict[str, Any],
           known: set[str], flagged_at: dict[str, datetime], cutoff: datetime) -> dict[str, Any]:  # fmt: skip
    truth = labels["accounts"]
    by_group: dict[str, Counter[str]] = defaultdict(Counter)
    first_stop: dict[str, int | None] = {}
    seen: Counter[str] = Counter()
    for record, outcome in zip(sample, outcomes, strict=True):
        account = record["account_id"]
        label = truth[account]
        group = "attacker" if label["label"] == "campaign" else "benign"
        by_group[group][outcome] += 1
        flagged = flagged_at.get(account)
        if group == "attacker" and flagged is not None and record["ts"][:19] > flagged.isoformat():
            # Requests from attacker accounts that the verdicts in force had already flagged.
            by_group["attacker_detected"][outcome] += 1
        if group == "attacker" and account not in known:
            seen[account] += 1
            if outcome != "served" and first_stop.get(account) is None:
                first_stop[account] = seen[account]
            first_stop.setdefault(account, None)
    attacker, benign = by_group["attacker"], by_group["benign"]
    after_detection = by_group["attacker_detected"]
    d_total = sum(after_detection.values())
    a_total, b_total = sum(attacker.values()), sum(benign.values())
    refused_benign = sum(n for k, n in benign.items() if k in ("403", "429"))
    fresh = [n for n in first_stop.values() if n is not None]
    return {
        "requests": len(sample),
        "after": cutoff.isoformat(),
        "attacker_requests": a_total,
        "attacker_stopped_or_shaped_share": (a_total - attacker["served"]) / a_total
        if a_total
        else None,
        "attacker_requests_after_detection": d_total,
        "attacker_after_detection_stopped_or_shaped_share": (d_total - after_detection["served"])
        / d_total
        if d_total
        else None,
        "benign_requests": b_total,
        "benign_refused_share": refused_benign / b_total if b_total else None,
        "outcomes": {k: dict(v) for k, v in by_group.items()},
        "fresh_attacker_accounts": len(first_stop),
        "fresh_accounts_stopped": len(fresh),
        "fresh_requests_until_stopped_max": max(fresh) if fresh else None,
    }

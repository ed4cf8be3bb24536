"""Two labs: does lab A's bundle let lab B stop the same hydra sooner, at no cost to B's users?

One simulated world (preset ``two_labs``) is split into two providers' logs: the shared hydra's
accounts by when they start (those opened on day ``move_day`` and later work lab B, the others
lab A), the other campaigns whole (sweep at A, low-and-slow at B) and benign users by account
(alternately), so the labs share no account and no customer. Lab A detects over its log up to
``move_day`` and exports a bundle keyed with the group key.

Lab B is a deployment, measured as one: its gateway (the real proxy over loopback, with the mock
upstream) starts with lab B's log up to the hydra's first request at B already in its store,
runs micro-batch detection over its own log every ``step_hours`` of replayed time (and once
before the first request), with streaming evidence on, and serves lab B's next
``horizon_hours`` of traffic, each request with its original time, client IP, TLS fingerprint
and user agent. It runs twice on identical traffic: alone, and with lab A's bundle and the
group key (``proxy --indicators --sharing-key``), which both links accounts at request time
and is a prior in its micro-batches.

Reported for the shared campaign at lab B, from each request's outcome: hours from its first
request at B until half of its B accounts seen so far have been actioned (shaped, throttled or
refused), the requests it got served in full before that and over the whole horizon (its
harvest), and the accounts actioned at their very first request; for lab B's benign users, per
persona, accounts actioned with the import that were not without it.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from distillwatch.bench.hour import SERVED, _parse, replay_hour
from distillwatch.detection.pipeline import detect
from distillwatch.ingest import ingest_paths
from distillwatch.sharing import SharingKey, write_indicators
from distillwatch.sharing.stix import read_bundle
from distillwatch.store import Store
from distillwatch.traffic import iter_records

SHARED, ONLY_A, ONLY_B = "camp-hydra", ("camp-sweep",), ("camp-lowslow",)


def split_labs(traffic: Path, out: Path, move_day: float) -> tuple[Path, Path, dict[str, str]]:
    """Write ``out/lab-a`` and ``out/lab-b`` (exchanges + accounts); returns who went where."""
    labels = json.loads((traffic / "labels.json").read_text())
    truth = labels["accounts"]
    start = datetime.fromisoformat(labels["time_start"].replace("Z", ""))
    move = (start + timedelta(days=move_day)).isoformat()
    first: dict[str, str] = {}
    for r in iter_records(traffic / "exchanges.jsonl"):
        if r["account_id"] not in first or r["ts"] < first[r["account_id"]]:
            first[r["account_id"]] = r["ts"]
    lab: dict[str, str] = {}
    for n, (account, label) in enumerate(sorted(truth.items())):
        campaign = label.get("campaign_id")
        if campaign == SHARED:
            lab[account] = "b" if first.get(account, "")[:19] >= move else "a"
        elif campaign in ONLY_A:
            lab[account] = "a"
        elif campaign in ONLY_B:
            lab[account] = "b"
        else:
            lab[account] = "ab"[n % 2]
    dirs = {side: out / f"lab-{side}" for side in "ab"}
    handles = {}
    for side, folder in dirs.items():
        folder.mkdir(parents=True, exist_ok=True)
        handles[side] = (folder / "exchanges.jsonl").open("w")
    for r in iter_records(traffic / "exchanges.jsonl"):
        handles[lab[r["account_id"]]].write(json.dumps(r) + "\n")
    for handle in handles.values():
        handle.close()
    meta = {side: (folder / "accounts.jsonl").open("w") for side, folder in dirs.items()}
    for line in (traffic / "accounts.jsonl").read_text().splitlines():
        meta[lab[json.loads(line)["account_id"]]].write(line + "\n")
    for handle in meta.values():
        handle.close()
    return dirs["a"], dirs["b"], lab


def two_labs(traffic: Path, out: Path, move_day: float = 3.0, step_hours: float = 1 / 6,
             horizon_hours: float = 6.0, stream: bool = True) -> dict[str, Any]:  # fmt: skip
    labels = json.loads((traffic / "labels.json").read_text())
    truth = labels["accounts"]
    start = datetime.fromisoformat(labels["time_start"].replace("Z", ""))
    move = start + timedelta(days=move_day)
    lab_a, lab_b, lab = split_labs(traffic, out, move_day)
    key = SharingKey.generate("labs-a-b")
    key.write(out / "sharing.key")
    bundle = out / "lab-a-indicators.json"
    (out / "a.duckdb").unlink(missing_ok=True)
    with Store(out / "a.duckdb") as store:
        ingest_paths([lab_a / "exchanges.jsonl"], store, accounts=lab_a / "accounts.jsonl")
        doc_a = detect(store, move)
        write_indicators(store, doc_a, bundle, key, "lab-a")
    shared = read_bundle(bundle)
    b_records = sorted(iter_records(lab_b / "exchanges.jsonl"), key=lambda r: r["ts"])
    hydra_b = [r for r in b_records if truth[r["account_id"]].get("campaign_id") == SHARED]
    if not hydra_b:
        raise ValueError(f"no {SHARED} traffic at lab B: nothing to measure")
    first_b = _parse(hydra_b[0]["ts"])
    end = first_b + timedelta(hours=horizon_hours)
    history, live = out / "lab-b-history.jsonl", out / "lab-b-live"
    live.mkdir(exist_ok=True)
    with history.open("w") as before, (live / "exchanges.jsonl").open("w") as after:
        for r in b_records:
            when = _parse(r["ts"])
            if when < first_b:
                before.write(json.dumps(r) + "\n")
            elif when < end:
                after.write(json.dumps(r) + "\n")
    shutil.copyfile(lab_b / "accounts.jsonl", live / "accounts.jsonl")
    shutil.copyfile(traffic / "labels.json", live / "labels.json")
    runs: dict[str, dict[str, Any]] = {}
    for name, extra in (
        ("alone", []),
        ("with_a", ["--indicators", str(bundle), "--sharing-key", str(out / "sharing.key")]),
    ):
        replayed = replay_hour(live, out / f"b-{name}", detect_every_hours=step_hours,
                               stream=stream, extra_args=extra, history=history)  # fmt: skip
        outcomes = [json.loads(line) for line in (out / f"b-{name}" / "outcomes.jsonl").open()]
        runs[name] = _measure(outcomes, truth, first_b)
        runs[name]["micro_batches"] = replayed["micro_batches"]
        runs[name]["micro_batch_seconds_median"] = replayed["micro_batch_seconds_median"]
    alone, with_a = runs["alone"], runs["with_a"]
    only_with: dict[str, int] = {}
    for persona, accounts in with_a["benign_actioned"].items():
        extra_accounts = accounts - alone["benign_actioned"].get(persona, set())
        if extra_accounts:
            only_with[persona] = len(extra_accounts)
    hours = (alone["hours_to_half"], with_a["hours_to_half"])
    served = (alone["served_in_full"], with_a["served_in_full"])
    return {
        "move_day": move_day, "step_hours": step_hours, "horizon_hours": horizon_hours,
        "stream": stream, "first_request_at_b": first_b.isoformat() + "Z",
        "lab_a": {"campaigns": len(doc_a["campaigns"]), "indicators": len(shared.links)},
        "lab_b_replayed_requests": sum(1 for _ in (live / "exchanges.jsonl").open()),
        "alone": _public(alone), "with_a": _public(with_a),
        "speedup_hours": hours[0] / hours[1] if hours[0] is not None and hours[1] else None,
        "harvest_ratio": served[0] / served[1] if served[1] else None,
        "benign_actioned_only_with_import": sum(only_with.values()),
        "benign_actioned_only_with_import_by_persona": only_with,
        "accounts_by_lab": {side: sum(1 for v in lab.values() if v == side) for side in "ab"},
    }  # fmt: skip


def _public(run: dict[str, Any]) -> dict[str, Any]:
    """A run's figures with benign accounts as counts per persona (no account ids)."""
    return {k: v for k, v in run.items() if k != "benign_actioned"} | {
        "benign_actioned": {p: len(a) for p, a in sorted(run["benign_actioned"].items())}
    }


def _measure(outcomes: list[dict[str, Any]], truth: dict[str, Any], first_b: datetime) -> dict[str, Any]:  # fmt: skip
    """From each replayed request's outcome: when half of the shared campaign's B accounts seen
    so far had been actioned, what it was served in full before and overall, and which benign
    accounts were actioned (per persona)."""
    hydra = sorted(
        ((_parse(o["ts"]), o["account_id"], o["outcome"]) for o in outcomes
         if truth[o["account_id"]].get("campaign_id") == SHARED),
        key=lambda x: x[0],
    )  # fmt: skip
    seen: set[str] = set()
    actioned: set[str] = set()
    at_first = 0
    half_at: datetime | None = None
    for when, account, outcome in hydra:
        new = account not in seen
        seen.add(account)
        if outcome != SERVED and account not in actioned:
            actioned.add(account)
            at_first += new
        if half_at is None and len(actioned) * 2 >= len(seen):
            half_at = when
    served = [when for when, _, outcome in hydra if outcome == SERVED]
    benign: dict[str, set[str]] = {}
    benign_accounts: set[str] = set()
    benign_requests = 0
    for o in outcomes:
        label = truth[o["account_id"]]
        if label["label"] != "benign":
            continue
        benign_accounts.add(o["account_id"])
        benign_requests += 1
        if o["outcome"] != SERVED:
            benign.setdefault(label.get("persona") or "unknown", set()).add(o["account_id"])
    return {
        "requests": len(hydra),
        "accounts": len(seen),
        "actioned_accounts": len(actioned),
        "actioned_at_first_request": at_first,
        "hours_to_half": round((half_at - first_b).total_seconds() / 3600, 3) if half_at else None,
        "served_in_full": len(served),
        "served_in_full_share": len(served) / len(hydra) if hydra else None,
        "served_before_half": sum(1 for when in served if half_at is None or when < half_at),
        "benign_accounts": len(benign_accounts),
        "benign_requests": benign_requests,
        "benign_actioned": benign,
    }

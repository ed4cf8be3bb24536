"""Two labs: does lab A's bundle let lab B stop the same hydra sooner, at no cost to B's users?

One simulated world (preset ``two_labs``) is split into two providers' logs: the shared hydra's
accounts by when they start (those opened on day ``move_day`` and later work lab B, the others
lab A), the other campaigns whole (sweep at A, low-and-slow at B) and benign users by account
(alternately), so the labs share no account and no customer. Lab A detects over its log up to
``move_day`` and exports a bundle keyed with the group key. Lab B runs detection every
``step_hours`` from ``move_day`` on, once without the bundle and once with it imported
(``detect --indicators``), on identical logs.

Reported for the shared campaign at lab B: hours from its first request at B until half of its
B accounts seen so far are flagged, and the share of its B requests served before that; for
lab B's benign users: accounts flagged (in any window) with the import that were not without it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

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


def two_labs(traffic: Path, out: Path, move_day: float = 3.0, step_hours: float = 2.0,
             horizon_hours: float = 48.0) -> dict[str, Any]:  # fmt: skip
    labels = json.loads((traffic / "labels.json").read_text())
    truth = labels["accounts"]
    start = datetime.fromisoformat(labels["time_start"].replace("Z", ""))
    move = start + timedelta(days=move_day)
    lab_a, lab_b, lab = split_labs(traffic, out, move_day)
    key = SharingKey.generate("labs-a-b")
    for store_path in (out / "a.duckdb", out / "b-alone.duckdb", out / "b-with-a.duckdb"):
        store_path.unlink(missing_ok=True)
    with Store(out / "a.duckdb") as store:
        ingest_paths([lab_a / "exchanges.jsonl"], store, accounts=lab_a / "accounts.jsonl")
        doc_a = detect(store, move)
        write_indicators(store, doc_a, out / "lab-a-indicators.json", key, "lab-a")
    shared = read_bundle(out / "lab-a-indicators.json")
    b_records = sorted(iter_records(lab_b / "exchanges.jsonl"), key=lambda r: r["ts"])
    hydra_b = [r for r in b_records if truth[r["account_id"]].get("campaign_id") == SHARED]
    first_b = datetime.fromisoformat(hydra_b[0]["ts"].replace("Z", "")[:26]) if hydra_b else move
    runs: dict[str, dict[str, Any]] = {}
    for name, bundle in (("alone", None), ("with_a", shared)):
        store_path = out / f"b-{name.replace('_', '-')}.duckdb"
        flagged_at: dict[str, datetime] = {}
        with Store(store_path) as store:
            ingest_paths([lab_b / "exchanges.jsonl"], store, accounts=lab_b / "accounts.jsonl")
            steps = int(horizon_hours / step_hours)
            for k in range(1, steps + 1):
                until = first_b + timedelta(hours=step_hours * k)
                doc = detect(store, until, incremental=k > 1, shared=bundle, sharing_key=key)
                for a in doc["accounts"]:
                    if a["verdict"] == "distillation":
                        flagged_at.setdefault(a["account_id"], until)
        runs[name] = _measure(flagged_at, b_records, hydra_b, truth, first_b, step_hours, steps)
    alone, with_a = runs["alone"], runs["with_a"]
    new_fp = sorted(set(with_a["benign_flagged"]) - set(alone["benign_flagged"]))
    hours = (alone["hours_to_half"], with_a["hours_to_half"])
    harvest = (alone["harvest_before_share"], with_a["harvest_before_share"])
    return {
        "move_day": move_day, "step_hours": step_hours,
        "lab_a": {"campaigns": len(doc_a["campaigns"]), "indicators": len(shared.links)},
        "lab_b_shared_campaign": {"accounts": len({r["account_id"] for r in hydra_b}), "requests": len(hydra_b)},
        "alone": {k: v for k, v in alone.items() if k != "benign_flagged"} | {"benign_flagged": len(alone["benign_flagged"])},
        "with_a": {k: v for k, v in with_a.items() if k != "benign_flagged"} | {"benign_flagged": len(with_a["benign_flagged"])},
        "speedup_hours": hours[0] / hours[1] if hours[0] and hours[1] else None,
        "harvest_ratio": harvest[0] / harvest[1] if harvest[1] else None,
        "benign_flagged_only_with_import": len(new_fp),
        "accounts_by_lab": {side: sum(1 for v in lab.values() if v == side) for side in "ab"},
    }  # fmt: skip


def _measure(flagged_at: dict[str, datetime], b_records: list[dict[str, Any]],
             hydra_b: list[dict[str, Any]], truth: dict[str, Any], first_b: datetime,
             step_hours: float, steps: int) -> dict[str, Any]:  # fmt: skip
    """When half of the shared campaign's B accounts seen so far were flagged, and what it got."""
    seen_by: list[tuple[datetime, str]] = []
    seen: set[str] = set()
    for r in hydra_b:
        if r["account_id"] not in seen:
            seen.add(r["account_id"])
            seen_by.append((datetime.fromisoformat(r["ts"].replace("Z", "")[:26]), r["account_id"]))
    stopped_at = None
    for k in range(1, steps + 1):
        until = first_b + timedelta(hours=step_hours * k)
        active = [a for t, a in seen_by if t <= until]
        if (
            active
            and sum(1 for a in active if flagged_at.get(a, datetime.max) <= until)
            >= len(active) / 2
        ):
            stopped_at = until
            break
    before = [r for r in hydra_b if stopped_at is None or r["ts"][:19] < stopped_at.isoformat()]
    benign = [a for a in flagged_at if truth[a]["label"] == "benign"]
    return {
        "hours_to_half": (stopped_at - first_b).total_seconds() / 3600 if stopped_at else None,
        "harvest_before_share": len(before) / len(hydra_b) if hydra_b else None,
        "flagged_of_campaign": sum(
            1 for a in {r["account_id"] for r in hydra_b} if a in flagged_at
        ),
        "benign_flagged": benign,
    }

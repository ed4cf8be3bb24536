"""`bench detect`: simulate, ingest once, run detectors on the full log and on replay windows."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from distillwatch.detection.pipeline import detect
from distillwatch.evaluation.baseline import detect_baseline
from distillwatch.evaluation.metrics import account_metrics, first_caught
from distillwatch.ingest import ingest_paths
from distillwatch.store import Store
from distillwatch.traffic import simulate

DETECTORS: dict[str, Callable[[Store, datetime | None, bool], dict[str, Any]]] = {
    "distillwatch": detect,
    "baseline": detect_baseline,
}
#: Headline numbers reported as mean and worst over seeds (worst = min, or max for rates).
HEADLINE = {
    "auprc": min, "precision": min, "recall": min, "f1": min, "precision_at_recall_95": min,
    "benign_fpr": max, "max_hard_negative_fpr": max, "min_campaign_caught": min, "ari": min,
    "max_hours_to_detect": max, "max_harvest_before_detection_pct": max,
}  # fmt: skip


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).replace(tzinfo=None)


def run_seed(
    scenario: str,
    seed: int,
    workdir: Path,
    detectors: list[str],
    window_hours: float,
    scale: float = 1.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Everything for one seed: full-log metrics and replay timing for each detector."""
    traffic = workdir / f"seed-{seed}" / "traffic"
    started = time.perf_counter()
    simulate(scenario, traffic, seed=seed, scale=scale)
    labels = json.loads((traffic / "labels.json").read_text())
    store_path = workdir / f"seed-{seed}" / "store.duckdb"
    for stale in (store_path, store_path.with_name(store_path.name + ".wal")):
        stale.unlink(missing_ok=True)
    result: dict[str, Any] = {"seed": seed, "counts": labels["counts"], "detectors": {}}
    with Store(store_path) as store:
        ingest_paths([traffic / "exchanges.jsonl"], store, accounts=traffic / "accounts.jsonl")
        log(f"seed {seed}: simulated and ingested in {time.perf_counter() - started:.1f} s")
        first_ts = dict(
            store.run(
                "SELECT account_id, strftime(min(ts), '%Y-%m-%dT%H:%M:%S') FROM exchanges GROUP BY 1"
            )
        )
        campaign_ts: dict[str, list[str]] = {}
        for account, ts in store.run(
            "SELECT account_id, strftime(ts, '%Y-%m-%dT%H:%M:%S') FROM exchanges"
        ):
            campaign = labels["accounts"][account]["campaign_id"]
            if campaign:
                campaign_ts.setdefault(campaign, []).append(ts)
        start, end = _parse(labels["time_start"]), _parse(labels["time_end"])
        cutoffs = []
        t = start + timedelta(hours=window_hours)
        while t < end + timedelta(hours=window_hours):
            cutoffs.append(min(t, end))
            t += timedelta(hours=window_hours)
        for name in detectors:
            run = DETECTORS[name]
            t0 = time.perf_counter()
            doc = run(store, None, False)
            seconds = time.perf_counter() - t0
            metrics = account_metrics(doc, labels)
            metrics["detect_seconds"] = seconds
            # Replay windows in time order: each run folds only the window's new exchanges.
            snapshots = [(c.strftime("%Y-%m-%dT%H:%M:%S"), run(store, c, True)) for c in cutoffs]
            caught = first_caught(snapshots, labels, first_ts)
            timing = {}
            for campaign, when in caught.items():
                times = sorted(campaign_ts.get(campaign, []))
                if not times:
                    continue
                if when is None:
                    timing[campaign] = {"caught_at": None, "hours_to_detect": None,
                                        "harvest_before_detection": len(times),
                                        "harvest_before_detection_pct": 100.0}  # fmt: skip
                    continue
                harvested = sum(1 for ts in times if ts <= when)
                timing[campaign] = {
                    "caught_at": when,
                    "hours_to_detect": (_parse(when) - _parse(times[0])).total_seconds() / 3600,
                    "harvest_before_detection": harvested,
                    "harvest_before_detection_pct": 100.0 * harvested / len(times),
                    "first_exchange": times[0],
                    "last_exchange": times[-1],
                }
            metrics["campaign_timing"] = timing
            metrics.update(_headline(metrics))
            result["detectors"][name] = metrics
            log(f"seed {seed}: {name}: AUPRC {metrics.get('auprc', 0):.3f}, "
                f"FPR {metrics['benign_fpr']:.4f}, {len(cutoffs)} replay windows, "
                f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    return result


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    hard = [p["fpr"] for p in m["fpr_by_persona"].values() if p["hard_negative"]]
    caught = [c["share"] for c in m["caught_by_campaign"].values()]
    hours = [t["hours_to_detect"] for t in m["campaign_timing"].values()]
    harvest = [t["harvest_before_detection_pct"] for t in m["campaign_timing"].values()]
    return {
        "max_hard_negative_fpr": max(hard) if hard else 0.0,
        "min_campaign_caught": min(caught) if caught else 1.0,
        "max_hours_to_detect": None
        if any(h is None for h in hours)
        else (max(hours) if hours else 0.0),
        "max_harvest_before_detection_pct": max(harvest) if harvest else 0.0,
    }


def summarise(seeds: list[dict[str, Any]], detectors: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in detectors:
        rows = [s["detectors"][name] for s in seeds]
        summary[name] = {}
        for metric, worst in HEADLINE.items():
            values = [r.get(metric) for r in rows]
            if any(v is None for v in values):
                summary[name][metric] = {
                    "mean": None,
                    "worst": None,
                    "note": "a campaign was never caught",
                }
                continue
            summary[name][metric] = {"mean": statistics.fmean(values), "worst": worst(values)}
    return summary


def run_bench(
    scenario: str,
    seeds: list[int],
    workdir: Path,
    detectors: list[str],
    window_hours: float = 12.0,
    scale: float = 1.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    per_seed = [run_seed(scenario, s, workdir, detectors, window_hours, scale, log) for s in seeds]
    result = {
        "scenario": scenario,
        "seeds": seeds,
        "window_hours": window_hours,
        "summary": summarise(per_seed, detectors),
        "per_seed": per_seed,
    }
    (workdir / "results.json").write_text(json.dumps(result, indent=1, default=str))
    from distillwatch.evaluation.plots import plot_pr_curves, plot_timeline

    plot_pr_curves(workdir, seeds[0], detectors, workdir / "pr_curve.png")
    plot_timeline(per_seed[0], detectors[0], workdir / "timeline.png")
    return result

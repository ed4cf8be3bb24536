"""PNG figures for `bench detect`: PR curves and per-campaign detection timelines."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from sklearn.metrics import precision_recall_curve

from distillwatch.evaluation.harness import DETECTORS
from distillwatch.store import Store


def plot_pr_curves(workdir: Path, seed: int, detectors: list[str], path: Path) -> None:
    labels = json.loads((workdir / f"seed-{seed}" / "traffic" / "labels.json").read_text())
    truth = labels["accounts"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    with Store(workdir / f"seed-{seed}" / "store.duckdb") as store:
        for name in detectors:
            doc = DETECTORS[name](store, None)
            y = [truth[a["account_id"]]["label"] == "campaign" for a in doc["accounts"]]
            scores = [a["score"] for a in doc["accounts"]]
            precision, recall, _ = precision_recall_curve(y, scores)
            ax.plot(recall, precision, label=name, lw=2)
    ax.set_xlabel("recall (campaign accounts)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Account-level precision-recall, {labels['scenario']} seed {seed}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_timeline(seed_result: dict[str, Any], detector: str, path: Path) -> None:
    timing = seed_result["detectors"][detector]["campaign_timing"]
    fig, ax = plt.subplots(figsize=(8, 0.6 * max(len(timing), 1) + 1.5))
    for row, (_, t) in enumerate(sorted(timing.items())):
        if "first_exchange" not in t and t["caught_at"] is None:
            continue
        start = datetime.fromisoformat(t.get("first_exchange") or t["caught_at"])
        end = datetime.fromisoformat(t.get("last_exchange") or t["caught_at"])
        ax.barh(row, mdates.date2num(end) - mdates.date2num(start), left=mdates.date2num(start),
                color="#bbbbbb", label="campaign active" if row == 0 else None)  # fmt: skip
        if t["caught_at"]:
            caught = mdates.date2num(datetime.fromisoformat(t["caught_at"]))
            ax.plot(caught, row, "v", color="#c44e52", ms=12, label="caught" if row == 0 else None)
            ax.annotate(f"{t['harvest_before_detection_pct']:.1f}% harvested", (caught, row),
                        xytext=(6, 6), textcoords="offset points", fontsize=8)  # fmt: skip
    ax.set_yticks(range(len(timing)), sorted(timing))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %d %H:%M"))
    fig.autofmt_xdate()
    ax.set_title(
        f"Campaign timeline and time of detection ({detector}, seed {seed_result['seed']})"
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)

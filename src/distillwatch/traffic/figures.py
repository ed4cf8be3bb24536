"""The calibration figure in docs/simulator.md: simulated vs real per-account rate distributions.

``python -m distillwatch.traffic.figures OUT.png`` simulates the small preset and compares the
spread of per-account request rates with ServeGen's real per-client rates. Absolute rates differ
by design (ServeGen's clients are whole applications; ours are single accounts), so both are
shown relative to their own median: the figure is about the *shape*, the heavy tail.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from distillwatch.traffic import iter_records, simulate
from distillwatch.traffic.corpora import servegen_client_rates


def calibration_figure(path: Path, seed: int = 1) -> None:
    real = np.array([rate for rate, _ in servegen_client_rates()])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        simulate("small", out, seed=seed)
        labels = json.loads((out / "labels.json").read_text())["accounts"]
        counts = Counter(r["account_id"] for r in iter_records(out / "exchanges.jsonl"))
    benign = np.array([n for a, n in counts.items() if labels[a]["label"] == "benign"], dtype=float)
    attack = np.array(
        [n for a, n in counts.items() if labels[a]["label"] == "campaign"], dtype=float
    )
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for values, name, colour in ((real, f"ServeGen real clients (n={len(real)})", "#333333"),
                                 (benign, f"simulated benign accounts (n={len(benign)})", "#4c72b0"),
                                 (attack, f"simulated campaign accounts (n={len(attack)})", "#c44e52")):  # fmt: skip
        rel = np.sort(values / np.median(values))
        ax.plot(rel, 1 - np.arange(len(rel)) / len(rel), label=name, color=colour, lw=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("per-account request rate / median rate")
    ax.set_ylabel("share of accounts with a higher rate")
    ax.set_title("Per-account rate distribution: simulated (small preset) vs real (ServeGen)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    calibration_figure(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/rates_vs_servegen.png"))

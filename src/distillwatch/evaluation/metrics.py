"""Scoring a Contract-2 verdict document against simulator ground truth (labels.json).

Definitions (also in docs/simulator.md):
- Positives are accounts labelled ``campaign``; the ranking score is Contract 2's ``score``.
- ``precision_at_recall_95``: the best precision over score thresholds whose recall >= 0.95.
- ARI compares predicted campaigns with true ones over the accounts that are either in a true
  campaign or flagged ``distillation``; every other account is one "no campaign" group, so
  splitting or merging campaigns and flagging innocents all cost.
- A campaign is *caught* at the first replay cutoff at which >= 50% of its accounts active so
  far are flagged ``distillation``; time to detect counts from its first exchange.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score, average_precision_score, precision_recall_curve

CAUGHT_SHARE = 0.5


def account_metrics(doc: dict[str, Any], labels: dict[str, Any]) -> dict[str, Any]:
    truth = labels["accounts"]
    rows = [a for a in doc["accounts"] if a["account_id"] in truth]
    y = np.array([truth[a["account_id"]]["label"] == "campaign" for a in rows])
    scores = np.array([a["score"] for a in rows])
    flagged = np.array([a["verdict"] == "distillation" for a in rows])
    result: dict[str, Any] = {"accounts": len(rows), "positives": int(y.sum())}
    if y.any() and (~y).any():
        result["auprc"] = float(average_precision_score(y, scores))
        precision, recall, _ = precision_recall_curve(y, scores)
        ok = recall >= 0.95
        result["precision_at_recall_95"] = float(precision[ok].max()) if ok.any() else 0.0
    tp = int((flagged & y).sum())
    fp = int((flagged & ~y).sum())
    fn = int((~flagged & y).sum())
    result["precision"] = tp / (tp + fp) if tp + fp else 1.0
    result["recall"] = tp / (tp + fn) if tp + fn else 1.0
    p, r = result["precision"], result["recall"]
    result["f1"] = 2 * p * r / (p + r) if p + r else 0.0
    result["benign_fpr"] = fp / int((~y).sum()) if (~y).any() else 0.0

    per_persona: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_campaign: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for account, is_flagged in zip(rows, flagged, strict=True):
        label = truth[account["account_id"]]
        if label["label"] == "benign":
            per_persona[label["persona"]][0] += int(is_flagged)
            per_persona[label["persona"]][1] += 1
        else:
            per_campaign[label["campaign_id"]][0] += int(is_flagged)
            per_campaign[label["campaign_id"]][1] += 1
    hard = {name for name, info in labels.get("personas", {}).items() if info.get("hard_negative")}
    result["fpr_by_persona"] = {
        name: {"fpr": f / n, "flagged": f, "accounts": n, "hard_negative": name in hard}
        for name, (f, n) in sorted(per_persona.items())
    }
    result["caught_by_campaign"] = {
        name: {"share": c / n, "caught": c, "accounts": n}
        for name, (c, n) in sorted(per_campaign.items())
    }
    # ARI over accounts that matter: true campaign members and anything flagged.
    keep = y | flagged
    if keep.any():
        true_groups = [
            truth[a["account_id"]]["campaign_id"] or "none"
            for a, k in zip(rows, keep, strict=True)
            if k
        ]
        predicted = [
            (a["cluster_id"] or f"solo:{a['account_id']}")
            if a["verdict"] == "distillation"
            else "none"
            for a, k in zip(rows, keep, strict=True)
            if k
        ]
        result["ari"] = float(adjusted_rand_score(true_groups, predicted))
    return result


def first_caught(
    snapshots: list[tuple[str, dict[str, Any]]],
    labels: dict[str, Any],
    active_since: dict[str, str],
) -> dict[str, str | None]:
    """For each campaign, the first cutoff (ISO time) at which it counts as caught."""
    truth = labels["accounts"]
    caught: dict[str, str | None] = dict.fromkeys(labels["campaigns"])
    for cutoff, doc in snapshots:
        verdicts = {a["account_id"]: a["verdict"] for a in doc["accounts"]}
        for campaign in labels["campaigns"]:
            if caught[campaign] is not None:
                continue
            members = [
                a
                for a, info in truth.items()
                if info["campaign_id"] == campaign
                and a in active_since
                and active_since[a] <= cutoff
            ]
            if members and sum(
                verdicts.get(m) == "distillation" for m in members
            ) >= CAUGHT_SHARE * len(members):
                caught[campaign] = cutoff
    return caught

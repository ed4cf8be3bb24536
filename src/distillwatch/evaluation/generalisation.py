"""Leave-one-unit-out evaluation: how detection does on a tactic or persona it was not built on.

For each unit (a campaign tactic family or a hard-negative persona, see
:mod:`distillwatch.traffic.worlds`) and seed: simulate a world where the unit appears among
others, ingest it, fit whatever the detector learns on *training worlds that do not contain the
unit* (different seeds, other units only), detect, and score the unit:

- a campaign unit: the share of its accounts flagged ``distillation`` (recall), the AUPRC of
  its accounts against every benign account of the world, whether it was caught (>= 50% of its
  accounts flagged), and the world's benign false-positive rate;
- a persona unit: the share of its accounts flagged (its false-positive rate), and the world's.

With hand-set scoring nothing is fitted to data, so each unit is "left out" only in that sense
(the weights were set by people who knew every unit); with learned weights (``learned=True``)
the rule weights are fitted, for each unit, on a training pool of worlds that never contain it:
one world per *other* unit (and no companions), on training seeds disjoint from the
evaluation seeds.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.metrics import average_precision_score

from distillwatch.detection.pipeline import account_rows, detect
from distillwatch.detection.scoring import EvidenceScorer, RuleWeights
from distillwatch.detection.state import update
from distillwatch.errors import ResourceError
from distillwatch.evaluation.metrics import CAUGHT_SHARE, account_metrics
from distillwatch.ingest import ingest_paths
from distillwatch.paths import ENV_VAR, shared_data_dir
from distillwatch.store import Store
from distillwatch.traffic import simulate
from distillwatch.traffic.worlds import UNITS, world

Log = Callable[[str], None]


TRAINING_SEEDS = (9001, 9002)


def _world_store(unit: str, seed: int, workdir: Path, companions: int = 2) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    folder = workdir / (f"{unit}-{seed}" if companions == 2 else f"train-{unit}-{seed}")
    traffic = folder / "traffic"
    store_path = folder / "store.duckdb"
    if not (folder / "ready").exists():
        simulate(world(unit, seed, companions=companions), traffic, seed=seed)
        for stale in (store_path, store_path.with_name(store_path.name + ".wal")):
            stale.unlink(missing_ok=True)
        with Store(store_path) as store:
            ingest_paths([traffic / "exchanges.jsonl"], store, accounts=traffic / "accounts.jsonl")
        (folder / "ready").touch()
    return store_path, json.loads((traffic / "labels.json").read_text())


def unit_metrics(unit: str, doc: dict[str, Any], labels: dict[str, Any]) -> dict[str, Any]:
    """What a detector's verdicts say about one unit of a world."""
    truth = labels["accounts"]
    world_metrics = account_metrics(doc, labels)
    result: dict[str, Any] = {
        "world_auprc": world_metrics.get("auprc"),
        "world_benign_fpr": world_metrics["benign_fpr"],
        "world_recall": world_metrics["recall"],
        "fpr_by_persona": {k: v["fpr"] for k, v in world_metrics["fpr_by_persona"].items()},
    }
    kind = UNITS[unit].kind
    if kind == "persona":
        persona = world_metrics["fpr_by_persona"].get(unit, {"fpr": 0.0, "accounts": 0})
        result.update(persona_fpr=persona["fpr"], persona_accounts=persona["accounts"])
        return result
    campaign = next(c for c in labels["campaigns"] if c.endswith(_CAMPAIGN_SUFFIX[unit]))
    rows = [a for a in doc["accounts"] if a["account_id"] in truth]
    mine = [truth[a["account_id"]]["campaign_id"] == campaign for a in rows]
    benign = [truth[a["account_id"]]["label"] == "benign" for a in rows]
    keep = [m or b for m, b in zip(mine, benign, strict=True)]
    y = np.array([m for m, k in zip(mine, keep, strict=True) if k])
    scores = np.array([a["score"] for a, k in zip(rows, keep, strict=True) if k])
    caught = world_metrics["caught_by_campaign"].get(campaign, {"share": 0.0, "accounts": 0})
    result.update(
        campaign=campaign,
        accounts=caught["accounts"],
        recall=caught["share"],
        caught=caught["share"] >= CAUGHT_SHARE,
        auprc=float(average_precision_score(y, scores)) if y.any() and (~y).any() else None,
    )
    return result


_CAMPAIGN_SUFFIX = {
    "hydra_templated": "hydra", "capability_sweep": "sweep", "evol_rewrites": "evol",
    "paraphrased_seeds": "para", "instruction_dataset": "dataset", "low_and_slow": "lowslow",
    "adaptive": "adaptive", "launch_surge": "surge", "reseller_mix": "reseller",
    "chinese_cot": "zh", "scheduler_waves": "waves",
}  # fmt: skip


def training_pool(workdir: Path, log: Log = print) -> dict[str, list[tuple[dict[str, Any], int]]]:
    """Derived account rows and labels of one world per unit (no companions), per unit."""
    cache = workdir / "training_rows.json"
    if cache.exists():
        return {k: [(r, y) for r, y in v] for k, v in json.loads(cache.read_text()).items()}
    pool: dict[str, list[tuple[dict[str, Any], int]]] = {}
    for unit in UNITS:
        for seed in TRAINING_SEEDS:
            store_path, labels = _world_store(unit, seed, workdir, companions=0)
            with Store(store_path) as store:
                update(store, None, False)
                rows = account_rows(store)
            derived = EvidenceScorer().fit(rows).derived(rows)
            truth = labels["accounts"]
            pool.setdefault(unit, []).extend(
                ({k: v for k, v in r.items() if isinstance(v, int | float | bool | None)} | {"account_id": r["account_id"]},
                 int(truth[r["account_id"]]["label"] == "campaign"))
                for r in derived if r["account_id"] in truth
            )  # fmt: skip
        log(f"training world {unit}: {len(pool[unit])} accounts")
    cache.write_text(json.dumps(pool, default=str))
    return pool


def fitted_scorer(pool: dict[str, list[tuple[dict[str, Any], int]]], without: str) -> tuple[EvidenceScorer, dict[str, float]]:  # fmt: skip
    """An EvidenceScorer whose weights were fitted on every training world except ``without``'s."""
    rows = [r for unit, items in pool.items() if unit != without for r, _ in items]
    labels = [y for unit, items in pool.items() if unit != without for _, y in items]
    fitted = RuleWeights().fit(rows, labels)
    return EvidenceScorer(weights=fitted.weights_, prior=fitted.prior_), fitted.weights_


def leave_one_out(
    units: list[str],
    seeds: list[int],
    workdir: Path,
    log: Log = print,
    learned: bool = False,
) -> dict[str, Any]:
    """The per-unit table (and per seed results) for ``units`` over ``seeds``.

    Raises :class:`~distillwatch.errors.ResourceError` without the real corpora: worlds built
    from the shipped sample (no Chinese prompts, a few hundred items a pool) measure something
    else, and would be cached in ``workdir`` as if they were the real ones.
    """
    if shared_data_dir() is None:
        raise ResourceError(
            "leave-one-out worlds need the real corpora: put ../shared/data beside the "
            f"checkout or set ${ENV_VAR}; the shipped sample is too small to build them"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    pool = training_pool(workdir, log) if learned else {}
    per_unit: dict[str, list[dict[str, Any]]] = {}
    weights_by_unit: dict[str, dict[str, float]] = {}
    for unit in units:
        scorer: EvidenceScorer | None = None
        if learned:
            scorer, weights_by_unit[unit] = fitted_scorer(pool, unit)
        for seed in seeds:
            started = time.perf_counter()
            store_path, labels = _world_store(unit, seed, workdir)
            with Store(store_path) as store:
                doc = detect(store, None, False, scorer=None if scorer is None else clone(scorer))
            metrics = unit_metrics(unit, doc, labels)
            metrics["seed"] = seed
            metrics["seconds"] = round(time.perf_counter() - started, 1)
            per_unit.setdefault(unit, []).append(metrics)
            log(_line(unit, metrics))
    table = {unit: _summary(unit, rows) for unit, rows in per_unit.items()}
    result = {"seeds": seeds, "scoring": "learned" if learned else "hand-set", "units": table,
              "per_seed": per_unit, "fitted_weights": weights_by_unit}  # fmt: skip
    name = "leave_one_out_learned.json" if learned else "leave_one_out.json"
    (workdir / name).write_text(json.dumps(result, indent=1, default=str))
    return result


def _line(unit: str, m: dict[str, Any]) -> str:
    if UNITS[unit].kind == "persona":
        return f"{unit} seed {m['seed']}: persona FPR {m['persona_fpr']:.1%} of {m['persona_accounts']}, world FPR {m['world_benign_fpr']:.2%} ({m['seconds']} s)"
    return (f"{unit} seed {m['seed']}: recall {m['recall']:.2f} of {m['accounts']}, AUPRC "
            f"{m['auprc'] if m['auprc'] is None else round(m['auprc'], 3)}, world FPR "
            f"{m['world_benign_fpr']:.2%} ({m['seconds']} s)")  # fmt: skip


def _summary(unit: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    def worst(key: str, pick: Callable[[list[float]], float]) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return pick(values) if values else None

    summary: dict[str, Any] = {
        "kind": UNITS[unit].kind,
        "about": UNITS[unit].about,
        "world_benign_fpr": {"mean": mean("world_benign_fpr"), "worst": worst("world_benign_fpr", max)},
        "world_auprc": {"mean": mean("world_auprc"), "worst": worst("world_auprc", min)},
        # Every campaign of the unit's worlds, companions included: a unit's own recall can be
        # perfect while a companion campaign of its world is missed.
        "world_recall": {"mean": mean("world_recall"), "worst": worst("world_recall", min)},
    }  # fmt: skip
    if UNITS[unit].kind == "persona":
        summary["persona_fpr"] = {"mean": mean("persona_fpr"), "worst": worst("persona_fpr", max)}
    else:
        summary["recall"] = {"mean": mean("recall"), "worst": worst("recall", min)}
        summary["auprc"] = {"mean": mean("auprc"), "worst": worst("auprc", min)}
        summary["caught"] = f"{sum(bool(r['caught']) for r in rows)} of {len(rows)}"
    return summary

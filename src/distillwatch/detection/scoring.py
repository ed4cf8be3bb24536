"""Turning evidence into explained scores: per-account log-odds, then cluster uplift.

:class:`EvidenceScorer` is a scikit-learn estimator: its parameters are ``__init__`` keywords,
``fit`` learns population norms (the typical output length, an isolation forest), and
``score_samples`` returns log-odds of distillation, **higher meaning more likely**, each the
sum of the rule table's evidence (:mod:`.rules`) on top of a prior. ``explain`` says why.
:class:`RuleWeights` fits the table's weights instead of using the hand-set ones (logistic
regression over rule activations on labelled worlds); ``bench detect --leave-one-out`` compares
the two on tactics each was not fitted on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from distillwatch.detection.anomaly import AnomalyModel
from distillwatch.detection.rules import (
    ACCOUNT_RULES,
    CONTENT_RULES,
    MIN_CAMPAIGN_YIELD,
    MIN_YIELD_PER_ACCOUNT,
    YIELD_SHARE_OF_VOLUME,
    Evidence,
    Harvest,
    Rule,
    activation,
    coordination,
    derive,
    evaluate,
    pooled_row,
)

PRIOR_LOG_ODDS = -5.0  # distillation accounts are rare among API customers
MAX_CLUSTER_UPLIFT = 4.0
#: An account more unusual than this share of the population gets anomaly evidence.
ANOMALY_RANK = 0.995

__all__ = ["AccountScore", "ClusterScore", "Evidence", "EvidenceScorer", "RuleWeights",
           "logit", "score_clusters", "sigmoid"]  # fmt: skip


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@dataclass
class AccountScore:
    account_id: str
    log_odds: float
    evidence: list[Evidence] = field(default_factory=list)


class EvidenceScorer(BaseEstimator):
    """Scores accounts (rows of the ``acct``/``evid`` tables, as dicts) with the rule table.

    Parameters: ``rules`` (the table), ``prior`` (log-odds before any evidence),
    ``anomaly_rank`` (how unusual an account must be for anomaly evidence), ``weights``
    (rule name -> weight, overriding the table's; e.g. fitted by :class:`RuleWeights`).
    Fitted attributes: ``median_output_``, ``anomaly_``.
    """

    def __init__(self, rules: Sequence[Rule] = ACCOUNT_RULES, prior: float = PRIOR_LOG_ODDS,
                 anomaly_rank: float = ANOMALY_RANK, weights: Mapping[str, float] | None = None) -> None:  # fmt: skip
        self.rules = rules
        self.prior = prior
        self.anomaly_rank = anomaly_rank
        self.weights = weights

    def fit(self, X: list[dict[str, Any]], y: Any = None) -> EvidenceScorer:
        outputs = [r["mean_output"] for r in X if r["mean_output"] and r["n"] >= 5]
        self.median_output_ = float(np.median(outputs)) if outputs else 0.0
        self.anomaly_ = AnomalyModel().fit(X)
        return self

    def derived(self, X: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows with every feature the rule table reads."""
        check_is_fitted(self, "median_output_")
        ranks = self.anomaly_.score_samples(X)
        return [
            derive(row, self.median_output_, rank,
                   "; ".join(self.anomaly_.explain(row)) if rank is not None and rank >= self.anomaly_rank else "")
            for row, rank in zip(X, ranks, strict=True)
        ]  # fmt: skip

    def score_accounts(self, X: list[dict[str, Any]]) -> list[AccountScore]:
        return self.score_derived(self.derived(X))

    def score_derived(self, rows: list[dict[str, Any]]) -> list[AccountScore]:
        """Scores of rows already passed through :meth:`derived`."""
        rules = tuple(self.rules)
        scores = []
        for row in rows:
            evidence = evaluate(rules, row, self.weights)
            scores.append(
                AccountScore(
                    row["account_id"], self.prior + sum(e.points for e in evidence), evidence
                )
            )
        return scores

    def score_samples(self, X: list[dict[str, Any]]) -> np.ndarray:
        """Log-odds of distillation per row (higher = more likely)."""
        return np.array([s.log_odds for s in self.score_accounts(X)])

    def explain(self, X: list[dict[str, Any]]) -> list[list[str]]:
        return [[e.reason for e in s.evidence] for s in self.score_accounts(X)]


class RuleWeights(ClassifierMixin, BaseEstimator):
    """The rule table's weights fitted to labels: logistic regression over rule activations.

    ``fit(rows, y)`` takes derived rows (:meth:`EvidenceScorer.derived`) and 0/1 labels; the
    fitted ``weights_`` plug into ``EvidenceScorer(weights=...)`` and ``prior_`` into its
    ``prior``. ``C`` is the inverse regularisation strength; ``class_weight`` balances the rare
    positive class. Anomaly evidence stays hand-set (the forest is refitted per world).
    """

    def __init__(self, rules: Sequence[Rule] = ACCOUNT_RULES, C: float = 0.3,
                 class_weight: str | None = "balanced") -> None:  # fmt: skip
        self.rules = rules
        self.C = C
        self.class_weight = class_weight

    def _activations(self, rows: list[Mapping[str, Any]]) -> np.ndarray:
        return np.array(
            [[activation(rule, row) for rule in self.rules] for row in rows], dtype=float
        )

    def fit(self, X: list[Mapping[str, Any]], y: Sequence[int]) -> RuleWeights:
        matrix = self._activations(X)
        model = LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=2000)
        model.fit(matrix, np.asarray(y))
        self.model_ = model
        self.classes_ = model.classes_
        self.weights_ = {
            rule.name: float(w) for rule, w in zip(self.rules, model.coef_[0], strict=True)
        }
        # Balanced training moves the intercept; shift it back to the population prior.
        self.prior_ = float(model.intercept_[0]) + math.log(
            max(np.mean(y), 1e-6) / (1 - min(np.mean(y), 1 - 1e-6))
        )
        return self

    def decision_function(self, X: list[Mapping[str, Any]]) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.decision_function(self._activations(X))

    def predict(self, X: list[Mapping[str, Any]]) -> np.ndarray:
        return self.model_.predict(self._activations(X))


@dataclass
class ClusterScore:
    cluster: int
    members: list[str]
    log_odds: float
    evidence: list[str]
    density: float = 0.0  # of the cluster's densest block (``dense.py``)
    farm: bool = False  # has the shape of a content farm (``rules.coordination``)


def per_account_yield_needed(member_rows: list[dict[str, Any]]) -> float:
    """Novel prompts a cluster needs per member: MIN_YIELD_PER_ACCOUNT, or less while its
    members have sent little so far: YIELD_SHARE_OF_VOLUME of the median member's requests. A
    harvest seen early (eight requests per account, nearly all novel) is not held back, and a
    group whose members mostly send the same prompts (a class's homework) still is."""
    volume = float(np.median([r["n"] for r in member_rows])) if member_rows else 0.0
    return min(float(MIN_YIELD_PER_ACCOUNT), YIELD_SHARE_OF_VOLUME * volume)


def score_clusters(
    clusters: dict[int, list[str]],
    scores: dict[str, AccountScore],
    rows: dict[str, dict[str, Any]],
    yields: dict[int, Harvest] | None = None,
    weights: Mapping[str, float] | None = None,
) -> dict[int, ClusterScore]:
    """Cluster log-odds: the median member's, or its behaviour plus the content evidence of all
    members' prompts pooled, plus coordination seen only at cluster level.

    ``rows`` are the members' derived rows. Clusters that obtained answers to fewer than
    ``MIN_CAMPAIGN_YIELD`` distinct prompts, or fewer than ``MIN_YIELD_PER_ACCOUNT`` per member,
    get nothing (no uplift, no campaign): whatever they are, they are not harvesting.
    """
    result = {}
    for cluster, members in clusters.items():
        if len(members) < 3:
            continue
        harvest = yields.get(cluster, Harvest(0, 0)) if yields is not None else None
        distinct = harvest.prompts if harvest is not None else None
        member_rows = [rows[m] for m in members]
        if distinct is not None and (
            distinct < MIN_CAMPAIGN_YIELD
            or distinct < per_account_yield_needed(member_rows) * len(members)
        ):
            continue
        own = np.array([scores[m].log_odds for m in members])
        # The same members with their own (few-prompt, discounted) content evidence replaced by
        # the content evidence of all their prompts pooled.
        behaviour = [
            scores[m].log_odds - sum(e.points for e in scores[m].evidence if e.content)
            for m in members
        ]
        pooled = evaluate(CONTENT_RULES, pooled_row(member_rows), weights)
        log_odds = max(
            float(np.median(own)), float(np.median(behaviour)) + sum(e.points for e in pooled)
        )
        volume = sum(r["n"] for r in member_rows)
        yield_text = f" ({distinct:,} distinct prompts)" if distinct is not None else ""
        evidence = [f"{len(members)} linked accounts sent {volume:,} requests{yield_text}"]
        evidence += [f"pooled over members: {e.reason}" for e in pooled[:3]]
        prefixes = sum(r["prefixes"] for r in member_rows)
        evidence.append(f"traffic came from {prefixes:,} network prefixes (summed over accounts)")
        per_account = harvest.per_account(len(members)) if harvest is not None else None
        split = harvest is not None and harvest.split(len(members))
        own_share = harvest.own_share() if harvest is not None else None
        bonus, coordinated, farm = coordination(member_rows, per_account, split, own_share)
        if bonus:
            log_odds += bonus
            evidence.append(
                f"coordination across the cluster: {'; '.join(coordinated)} (+{bonus:.1f} log-odds)"
            )
        result[cluster] = ClusterScore(cluster, members, log_odds, evidence, farm=farm)
    return result

"""Unsupervised anomaly model: how unusual an account's behaviour is for this population.

Rules catch the tactics we know; an isolation forest over the same behaviour features catches
an account that is merely strange (a lone harvester with a tactic no rule names). It is one
piece of evidence among many, with a bounded weight, and it says which features made the
account unusual, measured against the population median in robust (MAD) units.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest
from sklearn.utils.validation import check_is_fitted

MIN_REQUESTS = 10  # below this an account's behaviour features are mostly noise
MIN_ACCOUNTS = 50  # a "population" smaller than this has no norm to depart from

#: (feature, how to read it from an account row, words for the reason)
FEATURES: list[tuple[str, Any, str]] = [
    ("volume", lambda r: math.log1p(r["n"]), "request volume"),
    ("rhythm", lambda r: r["hour_entropy"], "spread over the hours of the day"),
    ("diversity", lambda r: r["distinct_ratio"], "share of distinct prompts"),
    ("cot", lambda r: r["cot_rate"], "chain-of-thought requests"),
    ("multi_turn", lambda r: r["multi_turn"], "conversation share"),
    ("output", lambda r: math.log1p(r["mean_output"] or 0), "output length"),
    ("prefix_rotation", lambda r: r["prefixes"] / r["n"], "network prefixes per request"),
    ("ua_rotation", lambda r: r["user_agents"] / r["n"], "user agents per request"),
    ("capabilities", lambda r: r["capabilities"], "capability areas"),
    ("regularity", lambda r: r["gap_cv"], "variability of gaps between requests"),
    ("templates", lambda r: r["shared_template_share"], "shared wrapper templates"),
    ("duplicates", lambda r: r["duplicate_share"], "duplicated prompts"),
    ("near_duplicates", lambda r: r["near_duplicate_share"], "near-duplicate prompts"),
    ("active_days", lambda r: r["active_days"], "active days"),
]


class AnomalyModel(BaseEstimator):
    """Isolation forest over behaviour features, a scikit-learn estimator over row dicts.

    ``score_samples`` returns, per row, the share of the fitted population that is *less*
    unusual (0 = typical, 1 = the most unusual account seen: higher is more anomalous), or
    ``None`` for accounts with too few requests to judge, or for every account when the
    population was too small (under MIN_ACCOUNTS) to have a norm. Fitted: ``forest_`` (None
    then), ``fill_``, ``median_``, ``scale_``, ``reference_``.
    """

    def __init__(self, random_state: int = 0, n_estimators: int = 100) -> None:
        self.random_state = random_state
        self.n_estimators = n_estimators

    def _matrix(self, rows: list[dict[str, Any]]) -> np.ndarray:
        matrix = np.array(
            [
                [np.nan if (v := read(r)) is None else float(v) for _, read, _ in FEATURES]
                for r in rows
            ],
            dtype=float,
        ).reshape(len(rows), len(FEATURES))
        return np.where(np.isnan(matrix), self.fill_, matrix) if hasattr(self, "fill_") else matrix

    def fit(self, rows: list[dict[str, Any]]) -> AnomalyModel:
        eligible = [r for r in rows if r["n"] >= MIN_REQUESTS]
        self.forest_: IsolationForest | None = None
        if len(eligible) < MIN_ACCOUNTS:
            return self
        raw = self._matrix(eligible)
        self.fill_ = np.nan_to_num(np.nanmedian(raw, axis=0))
        matrix = np.where(np.isnan(raw), self.fill_, raw)
        self.median_ = np.median(matrix, axis=0)
        mad = np.median(np.abs(matrix - self.median_), axis=0)
        self.scale_ = np.where(mad > 0, 1.4826 * mad, np.maximum(matrix.std(axis=0), 1e-9))
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators, random_state=self.random_state
        ).fit(matrix)
        self.reference_ = np.sort(-self.forest_.score_samples(matrix))
        return self

    def score_samples(self, rows: list[dict[str, Any]]) -> list[float | None]:
        check_is_fitted(self, "forest_")
        if self.forest_ is None or not rows:
            return [None] * len(rows)
        matrix = self._matrix(rows)
        unusual = -self.forest_.score_samples(matrix)
        ranks = np.searchsorted(self.reference_, unusual, side="left") / len(self.reference_)
        return [
            float(rank) if row["n"] >= MIN_REQUESTS else None
            for rank, row in zip(ranks, rows, strict=True)
        ]

    def explain(self, row: dict[str, Any], top: int = 2) -> list[str]:
        """The features furthest from the population median, in robust units."""
        values = self._matrix([row])[0]
        z = (values - self.median_) / self.scale_
        order = np.argsort(-np.abs(z))[:top]
        return [
            f"{FEATURES[i][2]} {'high' if z[i] > 0 else 'low'} ({values[i]:.3g} vs median {self.median_[i]:.3g})"
            for i in order
        ]

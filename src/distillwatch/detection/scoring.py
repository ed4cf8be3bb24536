"""Turning evidence into explained scores: per-account log-odds, then cluster uplift.

:class:`EvidenceScorer` follows scikit-learn's conventions (``fit`` learns population norms,
``score_samples`` returns log-odds, ``explain`` says why). Each piece of evidence adds log-odds
with a reason that states the numbers behind it, so every verdict can be checked by a person.
Weights are set from what the disclosed campaigns had in common, not fitted to one simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillwatch.detection.anomaly import AnomalyModel

PRIOR_LOG_ODDS = -5.0  # distillation accounts are rare among API customers
MAX_CLUSTER_UPLIFT = 4.0
MIN_REQUESTS_FOR_RHYTHM = 48
FULL_CONTENT_EVIDENCE = 20
#: A cluster must have obtained answers to at least this many distinct prompts to be a campaign:
#: distillation needs data, and a group that asks the same dozen questions is a class, a team or
#: a product, whatever its members' prompts look like.
MIN_CAMPAIGN_YIELD = 100
#: An account more unusual than this share of the population gets anomaly evidence.
ANOMALY_RANK = 0.995


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@dataclass
class Evidence:
    points: float
    reason: str
    content: bool = False  # about what the prompts say (pooled across a cluster's members)


@dataclass
class AccountScore:
    account_id: str
    log_odds: float
    evidence: list[Evidence] = field(default_factory=list)


class EvidenceScorer:
    """Scores accounts from their feature rows (dicts from the ``acct``/``evid`` tables)."""

    def fit(self, rows: list[dict[str, Any]]) -> EvidenceScorer:
        outputs = [r["mean_output"] for r in rows if r["mean_output"] and r["n"] >= 5]
        self.median_output_ = float(np.median(outputs)) if outputs else 0.0
        self.anomaly_ = AnomalyModel().fit(rows)
        return self

    def score_samples(self, rows: list[dict[str, Any]]) -> list[AccountScore]:
        ranks = self.anomaly_.score_samples(rows)
        return [self._score(row, rank) for row, rank in zip(rows, ranks, strict=True)]

    def _score(self, r: dict[str, Any], anomaly_rank: float | None = None) -> AccountScore:
        ev: list[Evidence] = []
        if anomaly_rank is not None and anomaly_rank >= ANOMALY_RANK:
            ev.append(
                Evidence(
                    0.8,
                    f"behaviour more unusual than {anomaly_rank:.1%} of accounts (isolation forest): "
                    + "; ".join(self.anomaly_.explain(r)),
                )
            )
        n = r["n"]
        # What an account's prompts look like is only as telling as the number of prompts seen:
        # eight homework questions with "explain step by step" are not a harvest. Content
        # evidence reaches full weight at FULL_CONTENT_EVIDENCE requests; a hydra of small
        # accounts is still caught, through its cluster (see ``score_clusters``).
        confidence = min(1.0, n / FULL_CONTENT_EVIDENCE)
        if r["cot_rate"] >= 0.2 and n >= 3:
            ev.append(
                Evidence(
                    3.0 * r["cot_rate"] * confidence,
                    f"{r['cot_rate']:.0%} of {n} prompts ask for step-by-step reasoning (chain-of-thought elicitation)",
                    content=True,
                )
            )
        if r["shared_template_share"] >= 0.1:
            ev.append(
                Evidence(
                    3.0 * r["shared_template_share"] * confidence,
                    f"{r['shared_template_share']:.0%} of prompts use {r['shared_templates']} wrapper template(s) also repeated by up to {r['template_reach']} other accounts",
                    content=True,
                )
            )
        dup, near = r["duplicate_share"], r["near_duplicate_share"]
        if dup >= 0.1 and dup >= 0.75 * near:
            ev.append(
                Evidence(
                    2.0 * dup * confidence,
                    f"{dup:.0%} of prompts are verbatim duplicates of prompts sent by 3+ other accounts",
                    content=True,
                )
            )
        elif near >= 0.15:
            # Paraphrased or mutated copies of a shared seed list: a harvest that rewrites its
            # prompts to dodge exact matching still leaves them close in MinHash space.
            ev.append(
                Evidence(
                    1.5 * near * confidence,
                    f"{near:.0%} of prompt MinHash signatures collide with near-duplicate prompts of 3+ other accounts (paraphrased copies)",
                    content=True,
                )
            )
        if r["payment_shared_with"] >= 2:
            ev.append(
                Evidence(
                    min(2.5, 1.0 + 0.2 * r["payment_shared_with"]),
                    f"payment instrument shared with {r['payment_shared_with']} other webmail/disposable accounts",
                )
            )
        if r["created_burst"]:
            ev.append(
                Evidence(
                    min(2.0, 0.5 + 0.1 * r["created_near"]),
                    f"created within 30 minutes of {r['created_near']} other accounts",
                )
            )
        if r["disposable_email"]:
            ev.append(Evidence(0.8, f"disposable email domain ({r['email_domain']})"))
        if (
            n >= MIN_REQUESTS_FOR_RHYTHM
            and r["hour_entropy"] is not None
            and r["hour_entropy"] >= 4.25
        ):
            ev.append(
                Evidence(
                    1.0,
                    f"no diurnal rhythm: requests spread evenly over all 24 hours (entropy {r['hour_entropy']:.2f} of 4.58 bits)",
                )
            )
        if n >= 20 and r["multi_turn"] < 0.02:
            ev.append(Evidence(0.4, f"{n} requests, all single-turn (no conversations)"))
        if n >= 20 and r["capabilities"] >= 4:
            ev.append(
                Evidence(
                    0.4 * (r["capabilities"] - 3), f"sweeps {r['capabilities']} capability areas"
                )
            )
        if self.median_output_ and n >= 10 and r["mean_output"] > 2.5 * self.median_output_:
            ev.append(
                Evidence(
                    0.5,
                    f"demands long outputs: {r['mean_output']:.0f} tokens on average vs {self.median_output_:.0f} typical",
                )
            )
        elif (
            self.median_output_
            and n >= 20
            and r["mean_output"] < 0.5 * self.median_output_
            and r["cot_rate"] < 0.1
        ):
            # Distillation needs rich answers; short, reasoning-free outputs are little worth
            # copying (a classifier or router behind a fixed template, say).
            ev.append(
                Evidence(
                    -1.0,
                    f"asks for short outputs ({r['mean_output']:.0f} tokens vs {self.median_output_:.0f} typical) without reasoning: little to distil",
                )
            )
        share, population = r["new_model_share"], r["population_new_model_share"]
        if (
            share is not None
            and population is not None
            and share >= 0.3
            and share >= 2.5 * population
        ):
            ev.append(
                Evidence(
                    1.0,
                    f"{share:.0%} of its traffic moved to the newly launched model (population: {population:.0%})",
                )
            )
        if n >= 10 and r["prefixes"] >= max(5, 0.3 * n):
            ev.append(
                Evidence(
                    0.8,
                    f"rotates through {r['prefixes']} network prefixes in {n} requests (proxy rotation)",
                )
            )
        if n >= 10 and r["user_agents"] >= max(4, 0.3 * n):
            ev.append(Evidence(0.6, f"{r['user_agents']} different user agents in {n} requests"))
        if r["age_days"] is not None and 0 <= r["age_days"] < 3 and n >= 5:
            ev.append(
                Evidence(0.4, f"account was {r['age_days']:.1f} days old at its first request")
            )
        ev.sort(key=lambda e: -abs(e.points))
        return AccountScore(r["account_id"], PRIOR_LOG_ODDS + sum(e.points for e in ev), ev)


@dataclass
class ClusterScore:
    cluster: int
    members: list[str]
    log_odds: float
    evidence: list[str]
    density: float = 0.0  # of the cluster's densest block (``dense.py``)


def score_clusters(
    clusters: dict[int, list[str]],
    scores: dict[str, AccountScore],
    rows: dict[str, dict[str, Any]],
    yields: dict[int, int] | None = None,
) -> dict[int, ClusterScore]:
    """Cluster log-odds: the median member's, plus coordination seen only at cluster level.

    Clusters whose members together asked fewer than ``MIN_CAMPAIGN_YIELD`` distinct prompts
    are left out (no uplift, no campaign): whatever they are, they are not harvesting."""
    result = {}
    for cluster, members in clusters.items():
        if len(members) < 3:
            continue
        if yields is not None and yields.get(cluster, 0) < MIN_CAMPAIGN_YIELD:
            continue
        own = np.array([scores[m].log_odds for m in members])
        # The same members with their own (few-prompt, discounted) content evidence replaced by
        # the content evidence of all their prompts pooled.
        behaviour = [
            scores[m].log_odds - sum(e.points for e in scores[m].evidence if e.content)
            for m in members
        ]
        pooled = float(np.median(behaviour)) + _pooled_content(members, rows)
        log_odds = max(float(np.median(own)), pooled)
        burst = sum(rows[m]["created_burst"] for m in members)
        paid = sum(rows[m]["payment_shared_with"] >= 2 for m in members)
        templated = sum(rows[m]["shared_template_share"] >= 0.1 for m in members)
        cot = float(np.mean([rows[m]["cot_rate"] for m in members]))
        prefixes = sum(rows[m]["prefixes"] for m in members)
        volume = sum(rows[m]["n"] for m in members)
        distinct = f" ({yields[cluster]:,} distinct prompts)" if yields else ""
        evidence = [f"{len(members)} linked accounts sent {volume:,} requests{distinct}"]
        if templated >= len(members) / 3:
            evidence.append(f"{templated} accounts reuse the same prompt wrapper templates")
        if cot >= 0.2:
            evidence.append(f"{cot:.0%} of their prompts elicit chain-of-thought reasoning")
        if paid >= 2:
            evidence.append(f"{paid} accounts pay with instruments shared across webmail accounts")
        if burst >= 3:
            evidence.append(f"{burst} accounts were created in bursts minutes apart")
        evidence.append(f"traffic came from {prefixes:,} network prefixes (summed over accounts)")
        bonus, coordinated = _coordination(members, rows)
        if bonus:
            log_odds += bonus
            evidence.append(
                f"coordination across the cluster: {'; '.join(coordinated)} (+{bonus:.1f} log-odds)"
            )
        result[cluster] = ClusterScore(cluster, members, log_odds, evidence)
    return result


#: (test on a member row, log-odds when most members pass it, words for the reason)
#: The first two are account-farm signals (how the accounts were made and paid for); the others
#: are shared content, which one SaaS product used by several customers also shows.
COORDINATION = [
    (lambda r: r["payment_shared_with"] >= 2, 1.0, "pay with instruments shared across webmail accounts"),
    (lambda r: r["created_burst"], 1.0, "were created in sign-up bursts"),
    (lambda r: r["shared_template_share"] >= 0.1, 0.75, "reuse shared wrapper templates"),
    (lambda r: r["duplicate_share"] >= 0.1 or r["near_duplicate_share"] >= 0.15, 0.75,
     "send copies or near-copies of each other's prompts"),
    (lambda r: r["lockstep_with"] >= 2, 0.75, "are active in lockstep (same 10-minute windows)"),
]  # fmt: skip
MAX_COORDINATION_BONUS = 2.0
FARM_SIGNALS = 2
MIN_COORDINATED_CLUSTER = 5


def _coordination(members: list[str], rows: dict[str, dict[str, Any]]) -> tuple[float, list[str]]:
    """Log-odds for coordination only a group shows: most of its accounts doing the same thing.

    Each member already carries its own share of such evidence; what the cluster adds is that
    the same behaviour recurs across most members, which accounts run by different people
    rarely show. Needs 5+ members, and is capped, so the cluster's median member still decides
    most of the score (a company's onboarding burst alone cannot make its staff a campaign).
    """
    if len(members) < MIN_COORDINATED_CLUSTER:
        return 0.0, []
    bonus, words, farm = 0.0, [], False
    for number, (test, points, reason) in enumerate(COORDINATION):
        count = sum(bool(test(rows[m])) for m in members)
        if count >= 0.5 * len(members):
            bonus += points
            words.append(f"{count} of {len(members)} {reason}")
            farm = farm or number < FARM_SIGNALS
    if not farm:
        # Shared content without a sign of an account farm is a shared product, not a hydra.
        return 0.0, []
    return min(bonus, MAX_COORDINATION_BONUS), words


def _pooled_content(members: list[str], rows: dict[str, dict[str, Any]]) -> float:
    """Content evidence (log-odds points) of the members' prompts pooled, request-weighted.

    Each member of a hydra of small accounts has too few prompts for its own content evidence
    to count much (``FULL_CONTENT_EVIDENCE``); together they have plenty."""
    volume = sum(rows[m]["n"] for m in members)
    if not volume:
        return 0.0

    def share(key: str) -> float:
        return sum(rows[m][key] * rows[m]["n"] for m in members) / volume

    cot, template = share("cot_rate"), share("shared_template_share")
    dup, near = share("duplicate_share"), share("near_duplicate_share")
    points = (3.0 * cot if cot >= 0.2 else 0.0) + (3.0 * template if template >= 0.1 else 0.0)
    points += max(2.0 * dup if dup >= 0.1 else 0.0, 1.5 * near if near >= 0.15 else 0.0)
    return points * min(1.0, volume / FULL_CONTENT_EVIDENCE)

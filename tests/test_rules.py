"""The rule table and the estimators around it: one definition per rule, used for accounts and
pooled clusters; scikit-learn conventions where they are claimed; volume-aware content evidence
for traffic mixes; grouped evidence that is not counted twice."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from distillwatch.detection.anomaly import AnomalyModel
from distillwatch.detection.rules import (
    ACCOUNT_RULES,
    CONTENT_RULES,
    MIN_LONE_HARVEST,
    derive,
    evaluate,
    harvest_size,
    lone_capped,
    pooled_row,
)
from distillwatch.detection.scoring import EvidenceScorer, RuleWeights


def row(**overrides) -> dict:
    base = {"account_id": "a", "n": 100, "cot_rate": 0.0, "shared_template_share": 0.0,
            "shared_templates": 0, "template_reach": 0, "duplicate_share": 0.0,
            "near_duplicate_share": 0.0, "semantic_share": 0.0, "multi_turn": 0.3,
            "mean_output": 250.0, "prefixes": 2, "user_agents": 1, "payment_shared_with": 0,
            "created_burst": False, "created_near": 0, "disposable_email": False,
            "hour_entropy": 3.0, "capabilities": 2, "new_model_share": None,
            "population_new_model_share": 0.1, "age_days": 200.0, "lockstep_with": 0,
            "multi_model_share": 0.0, "email_domain": "example.com", "distinct_ratio": 0.9,
            "gap_cv": 1.5, "active_days": 3}  # fmt: skip
    return base | overrides


def points(r: dict, name: str) -> float:
    return sum(e.points for e in evaluate(ACCOUNT_RULES, derive(r, 250.0)) if e.rule == name)


def test_every_rule_is_one_row_with_a_unique_name_and_a_reason():
    names = [rule.name for rule in ACCOUNT_RULES]
    assert len(names) == len(set(names))
    assert all(rule.reason for rule in ACCOUNT_RULES)
    assert {rule.name for rule in CONTENT_RULES} == {
        "cot", "shared_templates", "copies", "near_copies", "semantic_copies"}  # fmt: skip


def test_a_harvest_inside_a_big_accounts_traffic_counts_by_volume_not_only_share():
    reseller = row(n=2000, cot_rate=0.15)  # 300 reasoning harvests inside genuine traffic
    assert points(reseller, "cot") == pytest.approx(3.0)
    small = row(n=40, cot_rate=0.15)  # the same share from a light user: not even a hint
    assert points(small, "cot") == 0.0
    busy_product = row(n=60000, cot_rate=0.01)  # 600 requests, but 1% of a product's traffic
    assert points(busy_product, "cot") == 0.0


def test_views_of_one_fact_are_grouped_not_summed():
    shared = row(shared_template_share=1.0, duplicate_share=1.0, semantic_share=0.9)
    evidence = {e.rule: e.points for e in evaluate(ACCOUNT_RULES, derive(shared, 250.0))}
    assert evidence["shared_templates"] == pytest.approx(3.0)  # the strongest, in full
    assert evidence["copies"] == pytest.approx(2.0 * 0.25)  # the others, discounted
    assert evidence["semantic_copies"] == pytest.approx(1.5 * 0.9 * 0.25)


def test_pooled_rows_are_share_based():
    members = [row(n=50, cot_rate=0.3) for _ in range(40)]  # 600 CoT requests in all
    pooled = pooled_row(members)
    assert pooled["n"] == 2000 and pooled["cot_rate_strength"] == pytest.approx(0.3)


def test_comparative_evaluation_is_evidence_against():
    assert points(row(multi_model_share=0.8), "comparative_evaluation") == pytest.approx(-1.5)


def test_a_job_re_sending_a_few_prompt_shapes_is_evidence_against_unless_it_asks_for_reasoning():
    job = row(n=1000, prompt_variety=0.02, shared_template_share=1.0, cot_rate=0.1)
    assert points(job, "repetitive") == pytest.approx(-3.0)
    assert points(row(n=1000, prompt_variety=0.9), "repetitive") == 0.0  # a harvest's variety
    assert points(row(n=1000, prompt_variety=None), "repetitive") == 0.0  # not measured
    # Numeric problems with worked steps are one shape each and worth distilling.
    assert points(row(n=1000, prompt_variety=0.02, cot_rate=0.7), "repetitive") == 0.0


def test_an_account_flagged_alone_on_a_few_dozen_requests_is_suspicious_at_most():
    strong, none = 3.0, float("-inf")  # log-odds: 0.95; no group
    assert lone_capped(row(n=18), strong, none, 1)  # a student's homework, "step by step"
    assert lone_capped(row(n=18), strong, -2.0, 2)  # in a class that is no campaign
    assert not lone_capped(row(n=18), strong, -2.0, 3)  # three such linked: a split-off hydra
    assert not lone_capped(row(n=18), strong, 2.0, 1)  # its campaign scores as high
    assert not lone_capped(row(n=18, partner_link=0.8), strong, none, 1)  # a partner's link
    assert not lone_capped(row(n=MIN_LONE_HARVEST), strong, none, 1)  # harvest volume
    assert not lone_capped(row(n=18), 0.5, none, 1)  # already below the cap


def test_an_account_alone_needs_many_different_questions_not_only_many_requests():
    strong, none = 3.0, float("-inf")
    job = row(n=1368, prompt_variety=0.01, cot_rate=0.12)  # a dozen inputs, fresh time stamps
    assert harvest_size(job) == 14
    assert lone_capped(job, strong, none, 1)
    assert not lone_capped(job, strong, 2.0, 1)  # unless a campaign it is in scores as high
    assert harvest_size(row(n=1368, prompt_variety=0.9, cot_rate=0.12)) == 1231
    arithmetic = row(n=300, prompt_variety=0.05, cot_rate=0.9)  # worked steps, numbers vary
    assert harvest_size(arithmetic) == 300 and not lone_capped(arithmetic, strong, none, 1)
    assert harvest_size(row(n=12, prompt_variety=None)) == 12  # variety not measured yet


def test_scorer_follows_scikit_learn_conventions():
    rows = [row(account_id=f"a{i}", n=20 + i) for i in range(60)]
    scorer = EvidenceScorer(prior=-4.0)
    assert scorer.get_params()["prior"] == -4.0
    with pytest.raises(NotFittedError):
        scorer.score_samples(rows)
    fitted = clone(scorer).fit(rows)
    assert fitted.median_output_ == 250.0
    scores = fitted.score_samples(rows)
    assert scores.shape == (60,) and np.all(scores <= 0)  # higher = more likely distillation
    harvester = row(account_id="h", n=200, cot_rate=0.9, shared_template_share=0.8, multi_turn=0.0)
    assert fitted.score_samples([harvester])[0] > scores.max()
    assert any("step-by-step" in reason for reason in fitted.explain([harvester])[0])
    with pytest.raises(NotFittedError):
        AnomalyModel().score_samples(rows)


def test_fitted_rule_weights_plug_into_the_scorer():
    rng = np.random.default_rng(0)
    rows = [
        derive(row(account_id=f"b{i}", cot_rate=float(rng.uniform(0, 0.1))), 250.0)
        for i in range(200)
    ]
    rows += [derive(row(account_id=f"h{i}", cot_rate=float(rng.uniform(0.5, 1.0)), multi_turn=0.0), 250.0)
             for i in range(40)]  # fmt: skip
    labels = [0] * 200 + [1] * 40
    fitted = RuleWeights().fit(rows, labels)
    assert fitted.weights_["cot"] > 0 and set(fitted.weights_) == {r.name for r in ACCOUNT_RULES}
    assert (fitted.predict(rows[-40:]) == 1).mean() > 0.9
    scorer = EvidenceScorer(weights=fitted.weights_, prior=fitted.prior_).fit(rows)
    assert scorer.weights["cot"] == fitted.weights_["cot"]

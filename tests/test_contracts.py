"""The Contract-2 checker catches each kind of breakage and accepts a valid document."""

from __future__ import annotations

import copy

import pytest

from distillwatch.contracts import verdicts_problems

VALID = {
    "generated_at": "2026-03-08T00:00:00Z",
    "exchanges": 10,
    "accounts": [
        {"account_id": "a", "score": 0.97, "verdict": "distillation", "cluster_id": "c-1",
         "reasons": ["shares 3 prompt templates with 40 accounts"]},
        {"account_id": "b", "score": 0.01, "verdict": "benign", "cluster_id": None, "reasons": []},
    ],
    "campaigns": [
        {"campaign_id": "c-1", "score": 0.99, "accounts": ["a"], "exchanges": 8,
         "first_seen": "2026-03-01T00:00:00", "last_seen": "2026-03-02T00:00:00Z",
         "evidence": ["..."]},
    ],
}  # fmt: skip


def test_valid_document():
    assert verdicts_problems(VALID, expected_accounts=["a", "b"]) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["accounts"][0].update(score=1.5), "accounts[0].score"),
        (lambda d: d["accounts"][0].update(score=float("nan")), "accounts[0].score"),
        (lambda d: d["accounts"][1].update(verdict="maybe"), "accounts[1].verdict"),
        (lambda d: d["accounts"].append(dict(d["accounts"][1])), "appears 2 times"),
        (lambda d: d["campaigns"][0].update(accounts=["zzz"]), "names accounts missing"),
        (lambda d: d["campaigns"][0].update(first_seen="yesterday"), "first_seen"),
        (lambda d: d.update(generated_at=None), "generated_at"),
        (lambda d: d["accounts"][0].update(reasons="x"), "reasons"),
    ],
)
def test_each_breakage_is_named(mutate, expected):
    doc = copy.deepcopy(VALID)
    mutate(doc)
    problems = verdicts_problems(doc)
    assert any(expected in p for p in problems), problems


def test_missing_and_unknown_accounts():
    problems = verdicts_problems(VALID, expected_accounts=["a", "c"])
    assert any("missing" in p for p in problems)
    assert any("not in the input" in p for p in problems)

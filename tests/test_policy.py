"""Policy validation and the pure decision function."""

from __future__ import annotations

import pytest

from distillwatch.enforce.decide import decide
from distillwatch.enforce.policy import PolicyError, load_policy, parse_policy
from distillwatch.enforce.signals import cot_elicitation, template_signatures


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (
            {"rules": [{"name": "x", "when": {"any": True}, "action": "vaporise"}]},
            "rules[0].action",
        ),
        (
            {"rules": [{"name": "x", "when": {"moon": "full"}, "action": "block"}]},
            "rules[0].when.moon",
        ),
        ({"rules": [{"name": "x", "when": {"any": True}, "action": "throttle"}]}, "rules[0]"),
        (
            {"rules": [{"name": "x", "when": {"any": True}, "action": "block", "ttl_seconds": -5}]},
            "rules[0].ttl_seconds",
        ),
        ({"rules": [], "fail_open": True}, "rules"),
        (
            {
                "rules": [{"name": "x", "when": {"any": True}, "action": "block"}],
                "fail_open": "maybe",
            },
            "fail_open",
        ),
        ({"rulez": []}, "rulez"),
        (
            {
                "rules": [
                    {"name": "x", "when": {"any": True}, "action": "shape", "cap_answer": True}
                ]
            },
            "rules[0].cap_answer",
        ),
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "when": {"any": True},
                        "action": "block",
                        "cap_answer": True,
                        "max_tokens": 5,
                    }
                ]
            },
            "rules[0].cap_answer",
        ),
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "when": {"any": True},
                        "action": "shape",
                        "max_tokens": 5,
                        "cap_answer": "yes",
                    }
                ]
            },
            "rules[0].cap_answer",
        ),
    ],
)
def test_invalid_policies_name_the_field(doc, field):
    with pytest.raises(PolicyError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_policy(doc)


def test_default_policy_decisions():
    policy = load_policy(None)
    assert (
        decide(
            {"account_id": "a", "verdict": "distillation", "score": 0.99}, policy, False, None
        ).action
        == "challenge"
    )
    shaped = decide(
        {"account_id": "a", "verdict": "suspicious", "cot_elicitation": True}, policy, False, None
    )
    # The shipped shape caps the answer after its reasoning is stripped, not the request: a
    # cap below a reasoning model's reasoning would leave honest users with no answer
    # (docs/provenance.md, response shaping measured).
    assert shaped.action == "shape" and shaped.strip_reasoning and shaped.cap_answer
    assert shaped.max_tokens == 512
    throttle = decide(
        {"account_id": "a", "verdict": "suspicious", "cluster_id": "c-2"}, policy, False, None
    )
    assert (
        throttle.action == "throttle"
        and throttle.scope == "cluster"
        and throttle.cluster_id == "c-2"
    )
    assert decide({"account_id": "a", "verdict": "benign"}, policy, False, None).action == "allow"
    linked = decide(
        {"account_id": "n", "linked_cluster": "c-1", "linked_artefacts": ["pay:pm_1"]},
        policy,
        False,
        None,
    )
    assert linked.action == "challenge" and "linked to flagged cluster c-1" in linked.reasons[0]


def test_allowlist_wins_and_standing_decisions_stick():
    policy = load_policy(None)
    flagged = {"account_id": "a", "verdict": "distillation", "score": 0.99}
    assert decide(flagged, policy, True, None).action == "allow"
    standing = decide(
        {"account_id": "a", "verdict": "benign"},
        policy,
        False,
        {"action": "block", "reasons": ["admin"]},
    )
    assert standing.action == "block"


def test_online_signals():
    assert cot_elicitation("Please think step by step.") and not cot_elicitation("Step on the gas")
    sigs = template_signatures(
        "### Instruction: write 12 parsers for logs now and then ### Response: please be complete"
    )
    assert sigs[0].startswith("prefix:### instruction: write 0")
    assert template_signatures("too short") == []

"""The decision function: facts about a request in, an action with its reasons out.

Pure and synchronous (no I/O), so it is easy to test and fast (see ``benchmarks/
proxy_decisions.py``). Counters for throttles are applied by the caller, which knows the state
backend; this function only says which limits apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distillwatch.enforce.policy import Policy


@dataclass
class Decision:
    action: str  # allow | throttle | challenge | shape | block
    rule: str | None = None
    reasons: list[str] = field(default_factory=list)
    message: str | None = None
    verification_url: str | None = None
    requests_per_minute: int | None = None
    output_tokens_per_minute: int | None = None
    scope: str = "account"
    max_tokens: int | None = None
    strip_reasoning: bool = False
    cap_answer: bool = False  # max_tokens caps the answer the client sees, not the request
    watermark: bool = False
    canary: bool = False
    ttl_seconds: int | None = None
    cluster_id: str | None = None  # the cluster a throttle's scope refers to

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [], False)}


def decide(
    facts: dict[str, Any], policy: Policy, allowlisted: bool, sticky: dict[str, Any] | None
) -> Decision:
    """Allowlist first, then a standing (sticky) decision, then the policy's first matching rule."""
    account = facts.get("account_id")
    if allowlisted or account in policy.allow_accounts:
        return Decision("allow", reasons=["account is allowlisted"])
    if sticky is not None:
        standing = Decision(
            **{k: v for k, v in sticky.items() if k in Decision.__dataclass_fields__}
        )
        standing.reasons = [
            *standing.reasons,
            "standing decision (expires, or lift via the admin API)",
        ]
        return standing
    reasons = []
    if facts.get("verdict") and facts.get("verdict") != "benign":
        reasons.append(f"detection verdict {facts['verdict']} (score {facts.get('score', 0):.2f})")
    if facts.get("linked_cluster"):
        reasons.append(
            f"new account linked to flagged cluster {facts['linked_cluster']} via "
            + ", ".join(facts.get("linked_artefacts", [])[:3])
        )
    if facts.get("cot_elicitation"):
        reasons.append("request elicits chain-of-thought reasoning")
    if facts.get("stream_score") is not None and facts["stream_score"] >= 0.1:
        reasons.append(
            f"streaming evidence {facts['stream_score']:.2f} after {facts.get('stream_requests', 0)} "
            "requests: " + "; ".join(facts.get("stream_reasons", [])[:2])
        )
    rule = policy.first_match(facts)
    cluster = facts.get("cluster_id")
    if rule is None:
        if policy.default_requests_per_minute:
            return Decision("throttle", rule="default", reasons=["default rate limit"],
                            requests_per_minute=policy.default_requests_per_minute)  # fmt: skip
        return Decision("allow")
    return Decision(
        rule.action,
        rule=rule.name,
        reasons=reasons or [f"policy rule {rule.name}"],
        message=rule.message if rule.action in ("challenge", "block") else None,
        verification_url=rule.verification_url,
        requests_per_minute=rule.requests_per_minute,
        output_tokens_per_minute=rule.output_tokens_per_minute,
        scope=rule.scope,
        max_tokens=rule.max_tokens,
        strip_reasoning=rule.strip_reasoning,
        cap_answer=rule.cap_answer,
        watermark=rule.watermark,
        canary=rule.canary,
        ttl_seconds=rule.ttl_seconds,
        cluster_id=cluster,
    )

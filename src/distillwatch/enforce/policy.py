"""Enforcement policy: which risk gets which action (YAML, validated with errors naming the field).

A policy is a list of rules checked in order; the first that matches decides. Allowlists always
win. The shipped default (``policies/default.yaml``) refuses or challenges flagged accounts and
clusters, throttles and shapes suspicious ones, and leaves benign accounts untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from distillwatch.errors import PolicyError
from distillwatch.yamlfile import parse_yaml

ACTIONS = ("allow", "throttle", "challenge", "shape", "block")
CONDITIONS = ("verdict", "min_score", "linked_to_flagged_cluster", "cot_elicitation",
              "min_stream_score", "any")  # fmt: skip


@dataclass(frozen=True)
class Rule:
    name: str
    action: str
    when: dict[str, Any]
    requests_per_minute: int | None = None
    output_tokens_per_minute: int | None = None
    scope: str = "account"  # throttle scope: account or cluster
    max_tokens: int | None = None  # shape: cap the request's max_tokens (or the answer's)
    strip_reasoning: bool = False  # shape: remove reasoning sections from the response
    cap_answer: bool = False  # shape: max_tokens caps the answer after reasoning, not the request
    watermark: bool = False  # shape: ask the upstream to watermark its answer (request header)
    canary: bool = False  # shape: append the cluster's canary (proxy --canary-keys)
    message: str = "Additional verification is required for this account."
    verification_url: str | None = None
    ttl_seconds: int | None = None  # how long a challenge/block decision sticks

    def matches(self, facts: dict[str, Any]) -> bool:
        when = self.when
        if when.get("any"):
            return True
        if "verdict" in when and facts.get("verdict") not in _as_list(when["verdict"]):
            return False
        if "min_score" in when and (facts.get("score") or 0.0) < float(when["min_score"]):
            return False
        if "min_stream_score" in when and (facts.get("stream_score") or 0.0) < float(
            when["min_stream_score"]
        ):
            return False
        if when.get("linked_to_flagged_cluster") and not facts.get("linked_cluster"):
            return False
        return not (when.get("cot_elicitation") and not facts.get("cot_elicitation"))


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    allow_accounts: frozenset[str] = field(default_factory=frozenset)
    fail_open: bool = True
    default_requests_per_minute: int | None = None

    def first_match(self, facts: dict[str, Any]) -> Rule | None:
        return next((rule for rule in self.rules if rule.matches(facts)), None)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PolicyError(f"{where}: expected a positive integer")
    return value


def parse_policy(doc: Any, source: str = "<policy>") -> Policy:
    if not isinstance(doc, dict):
        raise PolicyError(f"{source}: expected a mapping at the top level")
    allowed = {"rules", "allowlist", "fail_open", "default_requests_per_minute"}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise PolicyError(f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise PolicyError("rules: expected a non-empty list")
    rules = []
    rule_fields = set(Rule.__dataclass_fields__)
    for i, raw in enumerate(raw_rules):
        where = f"rules[{i}]"
        if not isinstance(raw, dict):
            raise PolicyError(f"{where}: expected a mapping")
        unknown = sorted(set(raw) - rule_fields)
        if unknown:
            raise PolicyError(f"{where}.{unknown[0]}: unknown field")
        for key in ("name", "action", "when"):
            if key not in raw:
                raise PolicyError(f"{where}.{key}: required")
        if raw["action"] not in ACTIONS:
            raise PolicyError(f"{where}.action: one of {', '.join(ACTIONS)}")
        when = raw["when"]
        if not isinstance(when, dict) or not when:
            raise PolicyError(f"{where}.when: expected a mapping of conditions")
        for key in when:
            if key not in CONDITIONS:
                raise PolicyError(
                    f"{where}.when.{key}: unknown condition ({', '.join(CONDITIONS)})"
                )
        if "min_stream_score" in when:
            value = when["min_stream_score"]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise PolicyError(f"{where}.when.min_stream_score: a number from 0 to 1")
        for key in ("requests_per_minute", "output_tokens_per_minute", "max_tokens", "ttl_seconds"):
            if raw.get(key) is not None:
                _positive_int(raw[key], f"{where}.{key}")
        if raw["action"] == "throttle" and not (
            raw.get("requests_per_minute") or raw.get("output_tokens_per_minute")
        ):
            raise PolicyError(
                f"{where}: a throttle needs requests_per_minute or output_tokens_per_minute"
            )
        if "watermark" in raw and not isinstance(raw["watermark"], bool):
            raise PolicyError(f"{where}.watermark: expected true or false")
        if raw.get("watermark") and raw["action"] != "shape":
            raise PolicyError(f"{where}.watermark: only a shape action can ask for a watermark")
        if "cap_answer" in raw and not isinstance(raw["cap_answer"], bool):
            raise PolicyError(f"{where}.cap_answer: expected true or false")
        if raw.get("cap_answer") and (raw["action"] != "shape" or not raw.get("max_tokens")):
            raise PolicyError(f"{where}.cap_answer: only a shape action with max_tokens")
        if "canary" in raw and not isinstance(raw["canary"], bool):
            raise PolicyError(f"{where}.canary: expected true or false")
        if raw.get("canary") and raw["action"] != "shape":
            raise PolicyError(f"{where}.canary: only a shape action can serve canaries")
        if raw.get("scope", "account") not in ("account", "cluster"):
            raise PolicyError(f"{where}.scope: account or cluster")
        rules.append(Rule(**raw))
    allowlist = doc.get("allowlist") or []
    if not isinstance(allowlist, list) or not all(isinstance(a, str) for a in allowlist):
        raise PolicyError("allowlist: expected a list of account ids")
    fail_open = doc.get("fail_open", True)
    if not isinstance(fail_open, bool):
        raise PolicyError("fail_open: expected true or false")
    default_rpm = doc.get("default_requests_per_minute")
    if default_rpm is not None:
        _positive_int(default_rpm, "default_requests_per_minute")
    return Policy(tuple(rules), frozenset(allowlist), fail_open, default_rpm)


def load_policy(path: Path | None = None) -> Policy:
    """A policy file, or the shipped default when ``path`` is None."""
    if path is None:
        text = resources.files("distillwatch.enforce").joinpath("default_policy.yaml").read_text()
        source = "default policy"
    else:
        if not path.is_file():
            raise PolicyError(f"{path}: no such policy file")
        text, source = path.read_text(), str(path)
    return parse_policy(parse_yaml(text, source, PolicyError), source)

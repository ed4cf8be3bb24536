"""The generalisation units: each tactic and hard-negative persona produces the behaviour it
names, and ``world()`` builds reproducible, varied worlds around them."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

import numpy as np
import pytest

from distillwatch.enforce.signals import ip_prefix
from distillwatch.traffic.corpora import load_corpora
from distillwatch.traffic.engine import Simulator
from distillwatch.traffic.scenario import BenignPersona, Scenario
from distillwatch.traffic.worlds import CAMPAIGN_UNITS, PERSONA_UNITS, UNITS, world


@pytest.fixture(scope="module")
def corpora(shared_data):
    return load_corpora(shared_data)


def _run(corpora, unit: str, seed: int = 3) -> tuple[Simulator, dict[str, list[dict[str, Any]]]]:
    """Simulate ``unit`` alone beside a few ordinary users; records grouped by account."""
    built = UNITS[unit].build(np.random.default_rng(seed))
    casual = BenignPersona(persona="casual_chat", accounts=20, prompts=["arena_hard", "koala"],
                           daily_requests=4, active_days=0.5)  # fmt: skip
    scenario = Scenario(
        name=f"unit-{unit}", start=datetime(2026, 3, 2), days=3.0,
        base_models=["atlas-2", "atlas-2-mini"], launch_model="atlas-3", launch_day=1.5,
        benign=[casual] + ([built] if isinstance(built, BenignPersona) else []),
        campaigns=[] if isinstance(built, BenignPersona) else [built],
    )  # fmt: skip
    sim = Simulator(scenario, corpora, seed=seed, scale=1.0)
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for plan in sim.plans:
        for record in sim.exchanges(plan):
            records[plan.account_id].append(record)
    return sim, records


def cjk_share(text: str) -> float:
    return sum("\u3040" <= ch <= "\u9fff" for ch in text) / max(1, len(text))


def _members(sim: Simulator, records, persona: str | None = None) -> list[str]:
    return [p.account_id for p in sim.plans if p.account_id in records
            and (p.label == "campaign" if persona is None else p.persona == persona)]  # fmt: skip


def test_units_cover_every_tactic_family_and_hard_negative():
    assert len(CAMPAIGN_UNITS) >= 10 and len(PERSONA_UNITS) >= 8
    assert {"evol_rewrites", "paraphrased_seeds", "instruction_dataset", "reseller_mix",
            "chinese_cot", "scheduler_waves"} <= set(UNITS)  # fmt: skip
    assert {"classroom", "eval_vendor", "chinese_user"} <= set(UNITS)


def test_world_is_reproducible_and_seeds_differ():
    a, b, c = world("classroom", 7), world("classroom", 7), world("classroom", 8)
    assert a == b and a != c
    assert any(p.persona == "classroom" for p in a.benign)
    assert not any(
        p.persona == "classroom" for p in world("evol_rewrites", 7, exclude=("classroom",)).benign
    )


def test_own_infrastructure_shares_no_prefix_card_or_client(corpora):
    sim, records = _run(corpora, "paraphrased_seeds")
    members = _members(sim, records)
    assert len(members) >= 20
    plans = {p.account_id: p for p in sim.plans}
    assert len({plans[a].payment_fingerprint for a in members}) == len(members)
    prefix_owners: dict[str, set[str]] = defaultdict(set)
    for account in members:
        for record in records[account]:
            prefix_owners[ip_prefix(record["ip"])].add(account)
    shared = [p for p, owners in prefix_owners.items() if len(owners) > 1]
    assert len(shared) <= 0.05 * len(prefix_owners)  # only chance collisions of home prefixes
    assert len({records[a][0]["user_agent"] for a in members}) > len(members) / 2


def test_paraphrases_rarely_repeat_a_prompt_verbatim(corpora):
    sim, records = _run(corpora, "paraphrased_seeds")
    prompts = [_prompt(r) for a in _members(sim, records) for r in records[a]]
    assert len(set(prompts)) > 0.8 * len(prompts)


def test_scheduler_waves_synchronise_accounts_that_share_nothing_else(corpora):
    sim, records = _run(corpora, "scheduler_waves")
    members = _members(sim, records)
    minutes = Counter()
    for account in members:
        for m in {r["ts"][:16] for r in records[account]}:
            minutes[m] += 1
    # In a wave minute many distinct accounts are active at once; ordinary users never are.
    assert max(minutes.values()) >= len(members) / 3
    casual = _members(sim, records, "casual_chat")
    casual_minutes = Counter(m for a in casual for m in {r["ts"][:16] for r in records[a]})
    assert max(casual_minutes.values()) <= 3


def _prompt(record: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in record["messages"] if m["role"] == "user")


def test_reseller_accounts_carry_mostly_genuine_traffic(corpora):
    sim, records = _run(corpora, "reseller_mix")
    members = _members(sim, records)
    plan = next(p for p in sim.plans if p.label == "campaign")
    fixed = [t.split("{p}")[0] or t.split("{p}")[1] for t in plan.extra["shared"]["templates"]]
    for account in members:
        harvest = np.mean([any(f in _prompt(r) for f in fixed) for r in records[account]])
        conversations = np.mean([len(r["messages"]) > 1 for r in records[account]])
        assert 0.03 < harvest < 0.5  # a minority of harvest inside
        assert conversations > 0.1  # the rest is end users chatting


def test_chinese_campaign_and_customers_both_write_chinese(corpora):
    sim, records = _run(corpora, "chinese_cot")
    prompts = [_prompt(r) for a in _members(sim, records) for r in records[a]]
    assert all(cjk_share(p) > 0 for p in prompts)  # Chinese wrappers around the tasks
    assert np.mean([cjk_share(p) > 0.2 for p in prompts]) > 0.2  # and some Chinese tasks
    sim, records = _run(corpora, "chinese_user")
    users = _members(sim, records, "chinese_user")
    prompts = [_prompt(r) for a in users for r in records[a]]
    assert np.mean([cjk_share(p) > 0.2 for p in prompts]) > 0.9


def test_classroom_signs_up_together_and_shares_homework(corpora):
    sim, records = _run(corpora, "classroom")
    students = [p for p in sim.plans if p.persona == "classroom"]
    created = sorted(p.created_at for p in students)
    assert (created[-1] - created[0]).total_seconds() <= 60 * 60
    prompts = Counter(_prompt(r) for p in students for r in records.get(p.account_id, []))
    top, count = prompts.most_common(1)[0]
    assert count >= 3 and "step" in top.lower()


def test_eval_vendor_sends_each_item_to_several_models(corpora):
    sim, records = _run(corpora, "eval_vendor")
    vendor = _members(sim, records, "eval_vendor")
    models: dict[str, set[str]] = defaultdict(set)
    for account in vendor:
        for record in records[account]:
            models[_prompt(record)].add(record["model"])
    assert np.mean([len(m) >= 2 for m in models.values()]) > 0.5

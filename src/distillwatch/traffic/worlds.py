"""Worlds for measuring how detection generalises: one unit per tactic and hard-negative persona.

A *unit* is one campaign tactic family or one hard-negative persona, with every parameter drawn
per seed (volumes, account counts, shares, wrappers), so nothing downstream can fit one
setting. :func:`world` builds a scenario around one unit: an ordinary population (casual users,
developers) plus the unit plus a few other units drawn at random, so the unit is always seen
among others. ``bench detect --leave-one-out`` evaluates each unit on such worlds, with
everything that is learned fitted on worlds that do not contain it.

The units stand for the classes real attackers and customers show (see the docs); their
parameters are this project's choices, and a held-out world will have others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from distillwatch.traffic.scenario import BenignPersona, Campaign, Scenario

HUMAN = ["arena_hard", "koala", "oasst", "nq_open", "hh_rlhf", "mt_bench", "self_instruct"]
SYNTHETIC = ["gpteacher_code", "gpteacher_tools", "gpteacher_roleplay"]
HOMEWORK_WRAPPERS = (
    "Explain step by step: {p}",
    "{p} Show your work step by step.",
    "Homework question, please walk me through it step by step: {p}",
    "{p}\nI don't get this one, can you explain the steps?",
)


@dataclass(frozen=True)
class Unit:
    name: str
    kind: str  # "campaign" or "persona"
    build: Callable[[np.random.Generator], Campaign | BenignPersona]
    about: str


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _i(rng: np.random.Generator, low: int, high: int) -> int:
    return int(rng.integers(low, high + 1))


def _pick(rng: np.random.Generator, options: list[str], k: int) -> list[str]:
    return [str(x) for x in rng.choice(options, size=min(k, len(options)), replace=False)]


def _campaign(rng: np.random.Generator, name: str, tactics: dict[str, Any], accounts: tuple[int, int],
              daily: tuple[float, float]) -> Campaign:  # fmt: skip
    return Campaign(id=f"camp-{name}", accounts=_i(rng, *accounts), tactics=tactics,
                    daily_requests=_u(rng, *daily), start_day=_u(rng, 0.3, 2.0),
                    output_tokens=_i(rng, 400, 900))  # fmt: skip


def _hydra(rng: np.random.Generator) -> dict[str, Any]:
    return {"prefixes": _i(rng, 10, 60), "ips_per_prefix": _i(rng, 3, 8),
            "exit_node_overlap": _u(rng, 0.0, 0.25)}  # fmt: skip


def _burst(rng: np.random.Generator) -> dict[str, Any]:
    return {"bursts": _i(rng, 1, 6), "disposable_email": bool(rng.random() < 0.5),
            "payment_cards": _i(rng, 2, 12)}  # fmt: skip


def _cot(rng: np.random.Generator) -> dict[str, Any]:
    return {"rate": _u(rng, 0.3, 0.9), "variants": _i(rng, 1, 3)}


CAMPAIGN_UNITS: list[Unit] = [
    Unit("hydra_templated", "campaign", lambda r: _campaign(r, "hydra", {
        "hydra_pool": _hydra(r), "account_burst": _burst(r),
        "templated_self_instruct": {"pools": _pick(r, SYNTHETIC, 2), "templates": _i(r, 1, 4)},
        "cot_elicitation": _cot(r)}, (60, 160), (20, 50)),
        "a proxy-pool hydra: shared residential exits, sign-up bursts, shared cards, wrappers"),
    Unit("capability_sweep", "campaign", lambda r: _campaign(r, "sweep", {
        "capability_sweep": {"pools": _pick(r, ["gsm8k", "mbpp", "humaneval", "arena_hard"], 3)},
        "hydra_pool": _hydra(r), "account_burst": _burst(r)}, (25, 60), (30, 70)),
        "benchmark items walked systematically across accounts"),
    Unit("evol_rewrites", "campaign", lambda r: _campaign(r, "evol", {
        "evol_instruct": {}, "own_infra": {"rotate": bool(r.random() < 0.5)}}, (30, 80), (20, 45)),
        "LLM-evolved rewrites of one seed set, each account on its own infrastructure"),
    Unit("paraphrased_seeds", "campaign", lambda r: _campaign(r, "para", {
        "paraphrase": {"pool": str(r.choice(SYNTHETIC)), "seeds": _i(r, 150, 500)},
        "own_infra": {"rotate": bool(r.random() < 0.5)}}, (30, 80), (20, 45)),
        "paraphrases of one seed list, no shared infrastructure"),
    Unit("instruction_dataset", "campaign", lambda r: _campaign(r, "dataset", {
        "templated_self_instruct": {"pools": [str(r.choice(SYNTHETIC))], "raw": True},
        "own_infra": {"rotate": bool(r.random() < 0.5)}}, (30, 80), (20, 45)),
        "one public instruction dataset, verbatim, no wrapper, no shared infrastructure"),
    Unit("low_and_slow", "campaign", lambda r: _campaign(r, "lowslow", {
        "low_and_slow": {"factor": _u(r, 0.1, 0.35)},
        "templated_self_instruct": {"pools": _pick(r, SYNTHETIC, 2), "templates": _i(r, 1, 3)},
        "cot_elicitation": _cot(r), "hydra_pool": _hydra(r), "account_burst": _burst(r)},
        (60, 140), (25, 50)), "human-paced volume and timing across many accounts"),
    Unit("adaptive", "campaign", lambda r: _campaign(r, "adaptive", {
        "adaptive": {}, "templated_self_instruct": {"pools": _pick(r, SYNTHETIC, 3)},
        "capability_sweep": {"pools": ["gsm8k", "arena_hard"]}, "cot_elicitation": _cot(r),
        "account_burst": _burst(r)}, (40, 100), (8, 20)),
        "per-request random user agents, TLS and residential IPs, human timing, rotated wrappers"),
    Unit("launch_surge", "campaign", lambda r: _campaign(r, "surge", {
        "launch_surge": {"share": _u(r, 0.4, 0.8)}, "hydra_pool": _hydra(r),
        "templated_self_instruct": {"pools": _pick(r, SYNTHETIC, 2), "templates": _i(r, 1, 3)},
        "cot_elicitation": _cot(r)}, (40, 100), (25, 50)),
        "most traffic moved onto a newly launched model"),
    Unit("reseller_mix", "campaign", lambda r: _campaign(r, "reseller", {
        "reseller": {"share": _u(r, 0.12, 0.35)},
        "templated_self_instruct": {"pools": _pick(r, SYNTHETIC, 2), "templates": _i(r, 1, 3)},
        "cot_elicitation": _cot(r)}, (4, 12), (150, 400)),
        "reseller accounts: mostly genuine end-user traffic, a minority of harvest inside"),
    Unit("chinese_cot", "campaign", lambda r: _campaign(r, "zh", {
        "language": {"lang": "zh"},
        "templated_self_instruct": {"pools": _pick(r, SYNTHETIC, 2), "templates": _i(r, 1, 3)},
        "cot_elicitation": _cot(r), "own_infra": {"rotate": bool(r.random() < 0.5)}},
        (30, 90), (20, 45)), "harvest with Chinese task and chain-of-thought wrappers"),
    Unit("scheduler_waves", "campaign", lambda r: _campaign(r, "waves", {
        "scheduler_waves": {"period_minutes": _u(r, 20, 60), "per_wave": _u(r, 1.5, 4),
                            "wave_minutes": _u(r, 2, 6)},
        "templated_self_instruct": {"pools": _pick(r, SYNTHETIC, 2), "raw": True},
        "own_infra": {}}, (30, 80), (20, 40)),
        "one scheduler drives every account in synchronised waves; nothing else shared"),
]  # fmt: skip

PERSONA_UNITS: list[Unit] = [
    Unit("enterprise_template_app", "persona", lambda r: BenignPersona(
        persona="enterprise_template_app", accounts=_i(r, 3, 8), hard_negative=True,
        prompts=["nq_open", "hh_rlhf"], daily_requests=_u(r, 150, 500), active_days=1.0,
        template="Classify the customer message below into one of: billing, technical, account, other. Then draft a two-sentence reply.\n\nCustomer message: {input}",
        system_prompt="You are the support assistant of an online retailer. Be concise and polite.",
        client="sdk", network="datacenter", diurnal=False, multi_turn=0, output_tokens=120),
        "one product's fixed template at high volume, around the clock"),
    Unit("benchmark_team", "persona", lambda r: BenignPersona(
        persona="benchmark_team", accounts=_i(r, 3, 8), hard_negative=True,
        prompts=[f"sweep:{p}" for p in _pick(r, ["gsm8k", "humaneval", "mbpp"], 2)],
        template="{input}", daily_requests=_u(r, 200, 600), one_shot=True, client="sdk",
        network="datacenter", diurnal=False, multi_turn=0, output_tokens=300),
        "runs a public benchmark once, in one burst"),
    Unit("eval_vendor", "persona", lambda r: BenignPersona(
        persona="eval_vendor", accounts=_i(r, 2, 5), hard_negative=True,
        prompts=[f"sweep:{p}" for p in _pick(r, ["gsm8k", "humaneval", "mbpp", "arena_hard"], 3)],
        daily_requests=_u(r, 150, 400), models_per_prompt=_i(r, 2, 3), repeat_runs=_i(r, 2, 3),
        client="sdk", network="datacenter", diurnal=False, multi_turn=0, output_tokens=400),
        "an authorised evaluation vendor: the same suites, repeatedly, across models"),
    Unit("classroom", "persona", lambda r: BenignPersona(
        persona="classroom", accounts=_i(r, 25, 70), hard_negative=True,
        prompts=["arena_hard", "koala", "nq_open", "self_instruct"],
        homework={"pool": "sweep:gsm8k", "items": _i(r, 8, 16), "share": _u(r, 0.4, 0.7),
                  "wrapper": str(r.choice(HOMEWORK_WRAPPERS))},
        created_within_minutes=_u(r, 20, 60), daily_requests=_u(r, 3, 8), active_days=_u(r, 0.3, 0.6),
        client="browser", network="home", diurnal=True, multi_turn=0.3),
        "students enrolled in one lesson: the same homework 'step by step', plus their own questions"),
    Unit("corporate_nat_employee", "persona", lambda r: BenignPersona(
        persona="corporate_nat_employee", accounts=_i(r, 40, 90), hard_negative=True,
        accounts_per_nat=_i(r, 20, 40), prompts=["arena_hard", "koala", "self_instruct", "nq_open"],
        daily_requests=_u(r, 5, 12), active_days=0.6, client="mixed", network="corporate_nat",
        diurnal=True, multi_turn=0.3), "colleagues behind one NAT address and one company card"),
    Unit("heavy_researcher", "persona", lambda r: BenignPersona(
        persona="heavy_researcher", accounts=_i(r, 4, 10), hard_negative=True,
        prompts=["arena_hard", "mt_bench", "self_instruct", "koala"], daily_requests=_u(r, 80, 200),
        active_days=0.8, client="sdk", network="datacenter", diurnal=True, multi_turn=0.2,
        output_tokens=900), "high volume of diverse hard prompts, long outputs"),
    Unit("proxy_exit_user", "persona", lambda r: BenignPersona(
        persona="proxy_exit_user", accounts=_i(r, 20, 50), hard_negative=True,
        prompts=["arena_hard", "koala", "oasst", "nq_open", "hh_rlhf"], daily_requests=5,
        active_days=0.5, client="browser", network="proxy_exit", diurnal=True, multi_turn=0.4),
        "ordinary users whose home IP is also a campaign's proxy exit"),
    Unit("chinese_user", "persona", lambda r: BenignPersona(
        persona="chinese_user", accounts=_i(r, 20, 60), hard_negative=True, prompts=["zh:arena"],
        language="zh", timezone=8, daily_requests=_u(r, 3, 8), active_days=0.5, client="browser",
        network="home", diurnal=True, multi_turn=0.3),
        "Chinese-speaking customers, who also ask for the steps"),
    Unit("cron_jobs", "persona", lambda r: BenignPersona(
        persona="cron_jobs", accounts=_i(r, 15, 40), hard_negative=True,
        prompts=_pick(r, ["nq_open", "hh_rlhf", "self_instruct", "koala"], 2),
        schedule_minutes=float(r.choice([15, 30, 60])), daily_requests=_u(r, 24, 120),
        client="sdk", network="datacenter", diurnal=False, multi_turn=0, output_tokens=_i(r, 200, 600)),
        "unrelated customers whose scheduled jobs all fire at the same minutes of the clock"),
]  # fmt: skip
UNITS = {unit.name: unit for unit in CAMPAIGN_UNITS + PERSONA_UNITS}


def world(unit: str, seed: int, companions: int = 2, exclude: tuple[str, ...] = ()) -> Scenario:
    """A week with the ordinary population, ``unit``, and ``companions`` other campaign and
    persona units each (never one named in ``exclude``), all parameters drawn from ``seed``."""
    rng = np.random.default_rng([seed, 4242, sum(map(ord, unit))])
    chosen = UNITS[unit]
    others_c = [u for u in CAMPAIGN_UNITS if u.name not in (unit, *exclude)]
    others_p = [u for u in PERSONA_UNITS if u.name not in (unit, *exclude)]
    picked = [chosen]
    picked += [
        others_c[i]
        for i in rng.choice(len(others_c), size=min(companions, len(others_c)), replace=False)
    ]
    picked += [
        others_p[i]
        for i in rng.choice(len(others_p), size=min(companions, len(others_p)), replace=False)
    ]
    benign = [
        BenignPersona(persona="casual_chat", accounts=_i(rng, 250, 400), prompts=HUMAN,
                      daily_requests=_u(rng, 3, 7), active_days=_u(rng, 0.35, 0.55), client="browser",
                      network="home", diurnal=True, multi_turn=_u(rng, 0.25, 0.5)),
        BenignPersona(persona="developer", accounts=_i(rng, 60, 140),
                      prompts=["arena_hard", "self_instruct", "mt_bench"], daily_requests=_u(rng, 12, 35),
                      active_days=0.6, client="sdk", network="datacenter", diurnal=True,
                      multi_turn=0.2, output_tokens=400),
    ]  # fmt: skip
    campaigns: list[Campaign] = []
    for item in picked:
        built = item.build(rng)
        if isinstance(built, Campaign):
            campaigns.append(built)
        else:
            benign.append(built)
    return Scenario(
        name=f"world-{unit}-{seed}", start=datetime(2026, 3, 2), days=7.0,
        base_models=["atlas-2", "atlas-2-mini"], launch_model="atlas-3",
        launch_day=_u(rng, 3.5, 5.5), benign=benign, campaigns=campaigns,
    )  # fmt: skip

"""Content farms: campaigns that share nothing but what they ask (each account on its own
infrastructure), grouped by content and flagged, while honest groups that share content are not.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import datetime

import numpy as np
import pytest

from distillwatch.detection.graph import MAX_GROUP_REACH, EdgeIndex, content_groups
from distillwatch.detection.pipeline import detect
from distillwatch.detection.rules import (
    CONTENT_FARM_MEMBERS,
    CONTENT_FARM_POINTS,
    CONTENT_FARM_YIELD_PER_ACCOUNT,
    FARM_SIZE_POINTS,
    MAX_FARM_POINTS,
    Harvest,
    coordinated_beyond_content,
    coordination,
    derive,
    farm_candidate,
    farm_member,
    made_alike,
)
from distillwatch.ingest import ingest_paths
from distillwatch.store import Store
from distillwatch.traffic import simulate
from distillwatch.traffic.scenario import BenignPersona, Campaign, Scenario
from distillwatch.traffic.worlds import UNITS


def _edges(pairs: list[tuple[str, str, str]]) -> EdgeIndex:
    """An edge index from (account, artefact, kind) triples, weight 1."""
    return EdgeIndex.of(
        {
            "account_id": np.array([a for a, _, _ in pairs], dtype=object),
            "artefact": np.array([hash(f) % (1 << 62) for _, f, _ in pairs], dtype=np.int64),
            "weight": np.ones(len(pairs)),
            "kind": np.array([k for _, _, k in pairs], dtype=object),
        }
    )


def test_content_groups_keep_a_sparsely_linked_campaign_whole_and_leave_strays_out():
    # 30 accounts; each seed's rewrites reach three of them, so any two share little, but
    # together they are one connected block (what Leiden splits into small communities).
    rng = np.random.default_rng(5)
    farm = [f"f{i:02d}" for i in range(30)]
    pairs = [(a, f"seed{s}", "sem") for s in range(120) for a in rng.choice(farm, 3, replace=False)]
    pairs += [("stray", "seed0", "sem")]  # one chance collision: hangs on a single neighbour
    pairs += [("card", "pay1", "pay"), ("f00", "pay1", "pay")]  # not content: ignored
    pairs += [(f"wide{i}", "popular", "txt") for i in range(MAX_GROUP_REACH + 1)]
    pairs += [(f"wide{i}", "popular2", "txt") for i in range(MAX_GROUP_REACH + 1)]
    index = _edges(pairs)
    everyone = {str(n) for n in index.names}
    groups = content_groups(index, everyone, ("sem", "txt"))
    assert groups[0] == sorted(farm)
    assert all("stray" not in g and "card" not in g for g in groups)
    # An artefact held by more accounts than MAX_GROUP_REACH links nobody.
    assert not any(g[0].startswith("wide") for g in groups)
    # Only candidates are grouped.
    assert all(set(g) <= set(farm[:10]) for g in content_groups(index, set(farm[:10]), ("sem",)))
    assert content_groups(index, set(), ("sem",)) == []
    assert content_groups(index, everyone, ("tpl",)) == []


def _farm_row(**overrides) -> dict:
    base = {"account_id": "a", "n": 150, "multi_turn": 0.0, "mean_output": 500.0,
            "near_duplicate_share": 0.6, "duplicate_share": 0.1, "semantic_share": 0.3,
            "shared_template_share": 0.0, "novel_share": 0.8, "multi_model_share": 0.0,
            "payment_shared_with": 0, "created_burst": False, "created_near": 0,
            "lockstep_with": 0}  # fmt: skip
    return derive(base | overrides, median_output=300.0)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({}, None),
        ({"multi_turn": 0.3}, "people converse"),
        ({"n": 12}, "too few requests to judge content"),
        ({"mean_output": 120.0}, "short answers are a product's classifier, little to distil"),
        ({"near_duplicate_share": 0.05, "semantic_share": 0.1}, "shares little with anyone"),
        ({"multi_model_share": 0.8}, "comparative evaluation across models"),
        ({"prompt_variety": 0.05}, "a scheduled job re-sending its own inputs, time-stamped"),
    ],
)
def test_farm_candidates_are_accounts_shaped_like_a_farms_members(change, why):
    assert farm_candidate(_farm_row(**change)) is (why is None), why


def test_a_member_is_judged_by_what_no_one_outside_its_group_asks():
    row = _farm_row(mean_output=195.0)  # 0.65 of the typical length
    # Novel outside the group (at most 3 outside accounts sent them): a fifth of its prompts.
    assert not farm_member(_farm_row(), novel=0.05, own=0.05)  # a team's public suite
    assert farm_member(_farm_row(), novel=0.25, own=0.0)
    # Shorter answers than usual (under 0.75, over the short_outputs line) are a farm's when
    # nearly everything it asks is its group's own; a classifier's short answers never are.
    assert farm_candidate(row)
    assert not farm_member(row, novel=0.95, own=0.8)
    assert farm_member(row, novel=0.95, own=0.95)
    assert not farm_candidate(_farm_row(mean_output=120.0))  # 0.4: too short for any farm
    # The cluster-level shape follows the group's share of prompts only it asks.
    rows = [row for _ in range(CONTENT_FARM_MEMBERS)]
    assert coordination(rows, yield_per_account=100, own_share=0.95).farm
    assert not coordination(rows, yield_per_account=100, own_share=0.6).farm
    assert not coordination(rows, yield_per_account=100).farm  # unknown: the usual floor


def test_a_hydras_account_making_signs_are_not_a_schedulers():
    assert not made_alike(_farm_row())
    assert made_alike(_farm_row(payment_shared_with=5))
    assert made_alike(_farm_row(created_burst=True, created_near=12))
    # One scheduler's lockstep is an operator sign a content farm shows too, not a hydra's.
    lockstep = _farm_row(lockstep_with=12)
    assert coordinated_beyond_content(lockstep) and not made_alike(lockstep)


def test_a_group_splitting_a_resampled_pool_obtains_a_farms_harvest():
    members = CONTENT_FARM_MEMBERS * 7
    # Seventy accounts drawing 1,900 items about five times each: 26 distinct prompts per
    # account, but 135 answers each, every item on a fourteenth of them.
    pool = Harvest(prompts=1_900, answers=9_500, distinct=1_900, own=1_850)
    assert pool.per_account(members) < CONTENT_FARM_YIELD_PER_ACCOUNT and pool.split(members)
    rows = [_farm_row() for _ in range(members)]
    assert coordination(rows, pool.per_account(members), pool.split(members)).farm
    assert not coordination(rows, pool.per_account(members)).farm
    # A team running one 200-item suite on each of its twelve accounts: as many answers per
    # account, but every item on every account.
    team = Harvest(prompts=200, answers=2_400, distinct=200, own=200)
    assert not team.split(12)
    # A pool spread thin but answered a few times per account in all is no harvest either.
    assert not Harvest(prompts=1_000, answers=1_100, distinct=1_000, own=1_000).split(members)
    assert pool.own_share() == pytest.approx(1_850 / 1_900) and Harvest(0, 0).own_share() is None


def test_a_farm_keeps_its_shape_when_it_shares_a_group_with_a_hydra():
    """Two operations drawing on one seed corpus meet in one content group: a hydra paying
    with shared cards and a farm on its own infrastructure. The hydra's cards are an operator
    sign, and must not take the farm's shape from the group (fresh seed 612: a rewrite farm of
    38 accounts, all 38 missed, in a group of 106 with a low-and-slow hydra)."""
    farm = [_farm_row() for _ in range(CONTENT_FARM_MEMBERS)]
    hydra = [_farm_row(payment_shared_with=5) for _ in range(CONTENT_FARM_MEMBERS + 2)]
    alone = coordination(farm, yield_per_account=100)
    together = coordination(farm + hydra, yield_per_account=100)
    assert alone.farm and together.farm
    assert any("a content farm" in w for w in together.words)
    assert any("shared across webmail" in w for w in together.words)
    # Without the farm's shape (members re-sending a few inputs), cards alone coordinate.
    jobs = [_farm_row(payment_shared_with=5, n=150) | {"prompt_variety": 0.05} for _ in range(12)]
    assert not coordination(jobs, yield_per_account=100).farm


def test_a_content_farm_counts_outside_the_coordination_cap_and_grows_with_its_size():
    def farm(members: int):
        return coordination([_farm_row() for _ in range(members)], yield_per_account=100)

    small, large, huge = farm(CONTENT_FARM_MEMBERS), farm(4 * CONTENT_FARM_MEMBERS), farm(400)
    assert small.farm and large.farm and huge.farm
    # near copies (+0.75) and rewrites (+0.75) coordinate; the novel yield adds log10(n / 1000).
    coordinated = 1.5 + max(0.0, math.log10(CONTENT_FARM_MEMBERS * 100 / 1000))
    assert small.bonus == pytest.approx(coordinated + CONTENT_FARM_POINTS)
    assert large.bonus - small.bonus == pytest.approx(
        2 * FARM_SIZE_POINTS + min(1.0, math.log10(4)), abs=1e-6
    )
    assert huge.bonus <= 3.5 + MAX_FARM_POINTS
    assert any("a content farm" in w for w in large.words)
    assert not farm(CONTENT_FARM_MEMBERS - 1).farm
    # Members that mostly re-send their own few questions are scheduled jobs, not a farm.
    jobs = [_farm_row(prompt_variety=0.03) for _ in range(4 * CONTENT_FARM_MEMBERS)]
    assert not coordination(jobs, yield_per_account=100).farm


def _scenario(seed: int) -> Scenario:
    rng = np.random.default_rng(seed)
    campaign = UNITS["evol_rewrites"].build(rng)
    classroom = UNITS["classroom"].build(rng)
    team = UNITS["benchmark_team"].build(rng)
    cron = UNITS["cron_jobs"].build(rng)
    casual = BenignPersona(persona="casual_chat", accounts=120, prompts=["arena_hard", "koala", "oasst"],
                           daily_requests=4, active_days=0.5, client="browser", network="home",
                           diurnal=True, multi_turn=0.35)  # fmt: skip
    developer = BenignPersona(persona="developer", accounts=40, prompts=["arena_hard", "self_instruct"],
                              daily_requests=20, active_days=0.6, client="sdk", network="datacenter",
                              diurnal=True, multi_turn=0.2, output_tokens=400)  # fmt: skip
    return Scenario(
        name="content-farm", start=datetime(2026, 3, 2), days=5.0,
        base_models=["atlas-2", "atlas-2-mini"], launch_model="atlas-3", launch_day=4.0,
        benign=[casual, developer, classroom, team, cron], campaigns=[campaign],
    )  # fmt: skip


def test_a_campaign_sharing_only_content_is_one_flagged_campaign_and_honest_groups_are_not(
    tmp_path,
):
    traffic = tmp_path / "traffic"
    simulate(_scenario(17), traffic, seed=17)
    with Store(tmp_path / "s.duckdb") as store:
        ingest_paths([traffic / "exchanges.jsonl"], store, accounts=traffic / "accounts.jsonl")
        doc = detect(store, None, False)
    truth = json.loads((traffic / "labels.json").read_text())["accounts"]
    verdict = {a["account_id"]: a for a in doc["accounts"]}
    campaign = [a for a, t in truth.items() if t["label"] == "campaign" and a in verdict]
    flagged = [a for a in campaign if verdict[a]["verdict"] == "distillation"]
    assert len(flagged) >= 0.9 * len(campaign), (len(flagged), len(campaign))
    # One campaign holds most of them, and its evidence says why: a farm, not shared cards.
    biggest = Counter(verdict[a]["cluster_id"] for a in flagged).most_common(1)[0]
    assert biggest[0] is not None and biggest[1] >= 0.8 * len(campaign)
    evidence = next(c for c in doc["campaigns"] if c["campaign_id"] == biggest[0])["evidence"]
    assert any("a content farm" in line for line in evidence)
    honest = [a for a, t in truth.items() if t["label"] == "benign" and a in verdict]
    wrongly = Counter(
        truth[a]["persona"] for a in honest if verdict[a]["verdict"] == "distillation"
    )
    assert not wrongly, wrongly


def test_a_campaign_resampling_one_small_dataset_is_caught_and_a_team_on_its_items_is_not(
    tmp_path,
):
    """Seventy accounts, each on its own infrastructure, draw one public instruction dataset of
    1,900 items about seven times over: counted over the whole population hardly any member's
    prompts are novel, though no one outside the campaign asks them (dev seed 2: 0 of 77 such
    accounts flagged before novelty was judged outside the group). A benchmark team whose suite
    a capability-sweep hydra also walks is drawn into the same kind of group by the public
    items and must not take the hydra's farm score."""
    rng = np.random.default_rng(5)
    dataset = Campaign(
        id="camp-dataset", accounts=70, daily_requests=40.0, start_day=0.5, output_tokens=300,
        tactics={"templated_self_instruct": {"pools": ["gpteacher_roleplay"], "raw": True},
                 "own_infra": {"rotate": True}},
    )  # fmt: skip
    sweep, team = UNITS["capability_sweep"].build(rng), UNITS["benchmark_team"].build(rng)
    base = _scenario(5)
    scenario = Scenario(
        name="resampled-dataset", start=base.start, days=base.days, base_models=base.base_models,
        launch_model=None, launch_day=None, benign=[base.benign[0], base.benign[1], team],
        campaigns=[dataset, sweep],
    )  # fmt: skip
    traffic = tmp_path / "traffic"
    simulate(scenario, traffic, seed=5)
    with Store(tmp_path / "s.duckdb") as store:
        ingest_paths([traffic / "exchanges.jsonl"], store, accounts=traffic / "accounts.jsonl")
        doc = detect(store, None, False)
    truth = json.loads((traffic / "labels.json").read_text())["accounts"]
    verdict = {a["account_id"]: a["verdict"] for a in doc["accounts"]}
    flagged, total = Counter(), Counter()
    for account, t in truth.items():
        who = t.get("campaign_id") or t.get("persona")
        total[who] += 1
        flagged[who] += verdict.get(account) == "distillation"
    assert flagged["camp-dataset"] >= 0.9 * total["camp-dataset"], (flagged, total)
    assert flagged["camp-sweep"] >= 0.9 * total["camp-sweep"], (flagged, total)
    assert total["benchmark_team"] and not flagged["benchmark_team"], (flagged, total)
    assert not flagged["casual_chat"] and not flagged["developer"], flagged

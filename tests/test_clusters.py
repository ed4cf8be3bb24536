"""Clusters after Leiden: strays join the community they are linked to by more than
infrastructure, and a cluster's yield counts the prompts the rest of the population does not ask."""

from __future__ import annotations

import pytest

from distillwatch.detection.graph import attach_strays, communities, content_groups
from distillwatch.detection.pipeline import _group_novelty, _yields
from distillwatch.detection.rules import Harvest
from distillwatch.store import Store
from tests.test_content_farm import _edges


def _community(prefix: str, members: int, artefacts: int, kind: str) -> list[tuple[str, str, str]]:
    """Each member holds every artefact: one tight community."""
    return [(f"{prefix}{i}", f"{prefix}-art{j}", kind) for i in range(members) for j in range(artefacts)]  # fmt: skip


def test_strays_join_the_community_they_share_specific_artefacts_with():
    pairs = (
        _community("w", 12, 6, "sync") + _community("b", 8, 6, "txt") + _community("c", 8, 6, "tpl")
    )
    # A scheduler's account that Leiden may leave alone: its own artefacts, plus three of the
    # scheduler's lockstep slots.
    pairs += [("stray", f"own{j}", "near") for j in range(3)] + [("stray", f"w-art{j}", "sync") for j in range(3)]  # fmt: skip
    # Shares two artefacts only: too little to move.
    pairs += [("two", f"own2-{j}", "near") for j in range(3)] + [("two", f"w-art{j}", "sync") for j in range(2)]  # fmt: skip
    # Shares only where its traffic came from (a residential proxy's exit prefixes).
    pairs += [("exit", f"own3-{j}", "near") for j in range(3)] + [(f"w{i}", f"pfx{i}", "net") for i in range(4)]  # fmt: skip
    pairs += [("exit", f"pfx{i}", "net") for i in range(4)]
    # Split between three communities: no majority, stays.
    pairs += [("split", f"w-art{j}", "sync") for j in range(3)]
    pairs += [("split", f"{c}-art{j}", "txt") for c in "bc" for j in range(4)]
    index = _edges(pairs)
    # A membership with every probe on its own (what modularity sometimes returns).
    found = communities(index)
    membership = {a: c for a, c in found.items() if a[0] in "wbc"} | {
        name: 1000 + i for i, name in enumerate(("stray", "two", "exit", "split"))
    }
    w, b = membership["w0"], membership["b0"]
    assert len({membership[f"w{i}"] for i in range(12)}) == 1 and w != b
    result = attach_strays(index, membership)
    assert result["stray"] == w
    assert result["two"] == 1001 and result["exit"] == 1002 and result["split"] == 1003
    assert {a: c for a, c in result.items() if a[0] in "wbc"} == {a: c for a, c in membership.items() if a[0] in "wbc"}  # fmt: skip
    assert attach_strays(index, {}) == {}


def test_cluster_yield_counts_what_only_the_cluster_asks(tmp_path):
    with Store(tmp_path / "s.duckdb") as store:
        rows = []
        # Five members of a sweep spread 40 items over themselves, each item to four of them.
        for item in range(40):
            rows += [(f"m{(item + k) % 5}", f"item{item}", 3) for k in range(4)]
        # Ten public items every member and four outsiders also send.
        for item in range(10):
            rows += [(f"m{k}", f"public{item}", 1) for k in range(5)]
            rows += [(f"o{k}", f"public{item}", 1) for k in range(4)]
        # Two items three outsiders share with a member: still the cluster's (at most 3 outside).
        rows += [(a, f"near{i}", 1) for i in range(2) for a in ("m0", "o0", "o1", "o2")]
        values = ", ".join(f"('{a}', hash('{h}'), {u})" for a, h, u in rows)
        store.con.execute(f"CREATE TEMP TABLE content AS SELECT * FROM (VALUES {values}) t(account_id, h, uses)")  # fmt: skip
        membership = {f"m{k}": 7 for k in range(5)} | {f"o{k}": 8 for k in range(4)}
        yields = _yields(store, membership)
        novelty = _group_novelty(store, membership)
    # 40 items + 2 (reach counted outside the cluster), not the 10 public ones; reach over the
    # whole population would count none of the 40 (each was sent by four accounts). Each of the
    # 40 was answered for four members, the two "near" ones for one: 162 answers. 52 distinct
    # prompts, of which only the 40 items no one outside sent.
    assert yields[7] == Harvest(prompts=42, answers=162, distinct=52, own=40)
    # The outsiders' cluster: the two "near" items have one member outside it (m0).
    assert yields[8] == Harvest(prompts=2, answers=6, distinct=12, own=0)
    # Per member: m0 sent 32 of the items, the 10 public ones and the 2 "near" ones (44 distinct:
    # 34 novel outside its cluster, 32 its cluster's own); an outsider sent 10 public items
    # (sent by the five members outside its cluster) and the 2 "near" ones (one outside).
    assert novelty["m0"] == pytest.approx((34 / 44, 32 / 44))
    assert novelty["o0"] == pytest.approx((2 / 12, 0.0))
    assert novelty["o3"] == pytest.approx((0.0, 0.0))


def test_content_groups_link_by_what_the_candidates_hold_mostly_among_themselves():
    farm = [f"f{i}" for i in range(6)]
    team = [f"t{i}" for i in range(8)]
    pairs = [(a, f"seed{j}", "near") for a in farm for j in range(4)]
    # Public items: a team of eight ordinary accounts sends them, one candidate of the team too,
    # and three farm members.
    pairs += [(a, f"public{j}", "txt") for a in [*team, "tc", *farm[:3]] for j in range(5)]
    pairs += [("tc", f"mine{j}", "near") for j in range(3)]
    index = _edges(pairs)
    groups = content_groups(index, {*farm, "tc"}, ("near", "txt"))
    assert groups == [sorted(farm)]  # the team's candidate is not drawn in by public items
    # Without the ordinary holders, the same items would link it.
    alone = _edges([p for p in pairs if p[0] not in team])
    assert content_groups(alone, {*farm, "tc"}, ("near", "txt")) == [sorted([*farm, "tc"])]


def test_content_groups_among_some_candidates_do_not_count_their_peers_as_the_population():
    # Two farms draw on one seed pool; regrouping one farm's accounts alone must not treat the
    # other farm's members as the public that makes those seeds common.
    left, right = [f"l{i}" for i in range(6)], [f"r{i}" for i in range(6)]
    pairs = [(a, f"seed{j}", "near") for a in [*left, *right] for j in range(4)]
    index = _edges(pairs)
    assert content_groups(index, set(left), ("near",)) == []  # the others outnumber them
    assert content_groups(index, set(left), ("near",), peers=set(right)) == [sorted(left)]

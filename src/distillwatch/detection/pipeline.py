"""Detection, end to end: features -> evidence -> account scores -> clusters -> Contract 2."""

from __future__ import annotations

import json
import math
import re
import statistics
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from distillwatch.detection.dense import cluster_density
from distillwatch.detection.evidence import CONTENT_KINDS, artefact_edges, build_evidence
from distillwatch.detection.features import build_account_features, build_templates
from distillwatch.detection.graph import EdgeIndex, attach_strays, communities, content_groups
from distillwatch.detection.rules import (
    CONTENT_FARM_MEMBERS,
    LONE_LOG_ODDS,
    NOVEL_REACH,
    Harvest,
    coordinated_beyond_content,
    farm_candidate,
    farm_member,
    harvest_size,
    lone_capped,
    made_alike,
)
from distillwatch.detection.scoring import (
    MAX_CLUSTER_UPLIFT,
    AccountScore,
    ClusterScore,
    EvidenceScorer,
    logit,
    score_clusters,
    sigmoid,
)
from distillwatch.detection.state import update
from distillwatch.sharing.keys import SharingKey
from distillwatch.sharing.priors import partner_links
from distillwatch.sharing.stix import IndicatorSet
from distillwatch.store import Store

DISTILLATION_THRESHOLD = 0.8
SUSPICIOUS_THRESHOLD = 0.4
MAX_REASONS = 6


def _verdict(score: float) -> str:
    if score >= DISTILLATION_THRESHOLD:
        return "distillation"
    return "suspicious" if score >= SUSPICIOUS_THRESHOLD else "benign"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value is not None else None


def _rows(store: Store, sql: str) -> list[dict[str, Any]]:
    cursor = store.con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def detect(store: Store, until: datetime | None = None, incremental: bool = True,
           scorer: EvidenceScorer | None = None, shared: IndicatorSet | None = None,
           sharing_key: SharingKey | None = None) -> dict[str, Any]:  # fmt: skip
    """Run detection over the store (exchanges with ``ts <= until`` when given).

    Incremental by default: only exchanges newer than the previous run's watermark are read
    and folded into the stored per-account state (see :mod:`.state`); the answer is the same
    as a full run's. ``incremental=False`` rebuilds the state from every stored exchange.
    ``scorer`` (unfitted) replaces the default :class:`EvidenceScorer`, e.g. one with fitted
    rule weights. ``shared``: indicators imported from bundles (partners', or another
    deployment's): accounts they link get the ``partner_indicator`` rule
    (:mod:`distillwatch.sharing.priors`); ``sharing_key`` matches their private values.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    fold = update(store, until, incremental)
    timings["exchange_features"] = time.perf_counter() - started
    exchanges = fold.total
    rows = account_rows(store, until)
    priors: dict[str, dict[str, Any]] = {}
    if shared is not None and shared.links:
        # Indicators age against the data's own time (the last exchange folded), not the clock.
        priors = partner_links(store, shared, sharing_key, until or fold.watermark)
        for row in rows:
            prior = priors.get(row["account_id"])
            row["partner_link"] = prior["strength"] if prior else 0.0
            row["partner_reason"] = prior["reason"] if prior else ""
    timings["account_features"] = time.perf_counter() - started - sum(timings.values())
    by_id = {r["account_id"]: r for r in rows}
    scorer = (scorer or EvidenceScorer()).fit(rows)
    derived = scorer.derived(rows)
    scores = {s.account_id: s for s in scorer.score_derived(derived)}
    derived_by_id = {r["account_id"]: r for r in derived}

    edges = EdgeIndex.of(artefact_edges(store))
    # Modularity leaves a few linked accounts on their own; those mostly linked to one community
    # (by more than where their traffic came from) join it.
    membership = attach_strays(edges, communities(edges))
    clusters: dict[int, list[str]] = {}
    for account, cluster in membership.items():
        clusters.setdefault(cluster, []).append(account)
    # Beside Leiden's communities, a narrower grouping that Leiden splits up: content groups
    # (accounts shaped like a content farm's members, linked by what they ask, however little
    # else they share). Timing groups (lockstep slots) were tried, before lockstep had its
    # clock-shift test, and left out: they flagged unrelated customers whose cron jobs fire at
    # the same minutes (the cron_jobs persona).
    candidates, found = _farm_groups(store, edges, derived_by_id)
    group_of: dict[str, int] = {}
    first = max(clusters, default=-1) + 1
    for number, group in enumerate(found, first):
        clusters[number] = group
        group_of.update(dict.fromkeys(group, number))
    groupings = [membership, group_of]
    yields: dict[int, Harvest] = {}
    for grouping in groupings:
        yields |= _yields(store, grouping)
    cluster_scores = score_clusters(clusters, scores, derived_by_id, yields, scorer.weights)
    content_farmers = _content_only_farms(store, edges, clusters, group_of, cluster_scores,
                                          scores, derived_by_id, scorer.weights)  # fmt: skip
    for grouping in groupings:
        for cluster, block in cluster_density(edges, grouping).items():
            if cluster in cluster_scores and block.accounts:
                cluster_scores[cluster].evidence.append(
                    f"densest block (Fraudar, camouflage-weighted): {len(block.accounts)} of "
                    f"{len(clusters[cluster])} accounts share {block.artefacts} artefacts, "
                    f"density {block.density:.2f}"
                )
                cluster_scores[cluster].density = block.density
    timings["scoring_and_graph"] = time.perf_counter() - started - sum(timings.values())

    final: dict[str, float] = {}
    lone: dict[str, tuple[int, int]] = {}  # requests, different prompts
    # Members of each group (cluster or content group) that score above the lone cap on their
    # own evidence: several of them together are a group's evidence, not a lone account's.
    strong = {a for a, s in scores.items() if s.log_odds > LONE_LOG_ODDS}
    strong_in = [Counter(g[a] for a in strong if a in g) for g in groupings]
    for account, score in scores.items():
        log_odds = score.log_odds
        group_log_odds = -math.inf  # the best score of a group the account is in
        peers = 0  # the most strong accounts in a group the account is in
        for grouping, counts in zip(groupings, strong_in, strict=True):
            if account in grouping:
                peers = max(peers, counts[grouping[account]])
            cluster = cluster_scores.get(grouping.get(account, -1))
            if cluster is not None:
                group_log_odds = max(group_log_odds, cluster.log_odds)
            if cluster is None or cluster.log_odds <= score.log_odds:
                continue
            if (
                grouping is group_of
                and account not in content_farmers
                and not coordinated_beyond_content(derived_by_id[account])
            ):
                # In a content group scored on its members' cards and sign-up bursts, an
                # account with none of them is linked by what it asks alone: it takes the
                # group's score only when such accounts are a content farm by themselves.
                continue
            if cluster.farm and account in candidates:
                # A content farm's members are in it by their own shape and their own prompts,
                # not by infrastructure an innocent could share: the farm's score is theirs.
                log_odds = max(log_odds, cluster.log_odds)
            else:
                # A hydra's members each look mild; the cluster is what gives them away. The
                # uplift is bounded so that an innocent caught in a campaign's proxy pool stays
                # benign.
                log_odds = max(log_odds, min(cluster.log_odds, score.log_odds + MAX_CLUSTER_UPLIFT))
        if lone_capped(by_id[account], log_odds, group_log_odds, peers):
            # Flagged alone on a few dozen requests: too little harvest to call it distillation.
            lone[account] = (int(by_id[account].get("n") or 0), harvest_size(by_id[account]))
            log_odds = LONE_LOG_ODDS
        final[account] = sigmoid(log_odds)
    reviewed = reviewed_false_positives(store)
    for account in reviewed.keys() & final.keys():
        # A reviewer's decision stands until restored: scored as benign, so the account
        # is benign and out of every campaign (and so out of the indicators shared).
        final[account] = min(final[account], REVIEWED_SCORE_CAP)

    campaigns = []
    campaign_of: dict[str, str] = {}
    flagged_clusters = [
        c for c in cluster_scores.values()
        if sum(final[m] >= DISTILLATION_THRESHOLD for m in c.members) >= 2
        and sigmoid(c.log_odds) >= DISTILLATION_THRESHOLD
    ]  # fmt: skip
    number = 0
    # Flagged Leiden communities claim their members first, then content groups the rest: a
    # content group spans every farm-shaped account that asks alike, so campaigns of different
    # operators drawing on one public corpus meet in it, while a community is held together by
    # what its members share besides content (cards, networks, sign-up hours). A content-only
    # campaign's communities are too small to be flagged, so its group still claims it whole.
    for cluster in sorted(
        flagged_clusters, key=lambda c: (c.cluster >= first, -c.log_odds, c.cluster)
    ):
        members = sorted(
            m for m in cluster.members
            if final[m] >= SUSPICIOUS_THRESHOLD and m not in campaign_of
        )  # fmt: skip
        if sum(final[m] >= DISTILLATION_THRESHOLD for m in members) < 2:
            continue
        number += 1
        campaign_id = f"c-{number}"
        for member in members:
            campaign_of[member] = campaign_id
        first = min(by_id[m]["first_ts"] for m in members)
        last = max(by_id[m]["last_ts"] for m in members)
        campaigns.append(
            {
                "campaign_id": campaign_id,
                "score": round(float(np.mean([final[m] for m in members])), 4),
                "accounts": members,
                "exchanges": int(sum(by_id[m]["n"] for m in members)),
                "first_seen": _iso(first),
                "last_seen": _iso(last),
                "density": round(cluster.density, 3),
                "evidence": cluster.evidence + _top_reasons(members, scores),
            }
        )
    accounts = []
    for account_id in sorted(scores):
        score = final[account_id]
        reasons = [e.reason for e in scores[account_id].evidence[:MAX_REASONS]]
        if account_id in lone:
            n, questions = lone[account_id]
            size = (f"only {n} requests" if questions == n else
                    f"only {questions} different prompts (numbers masked) in {n:,} requests")  # fmt: skip
            reasons.insert(0, f"{size}, flagged on its own evidence: "
                              f"too little harvest to call it distillation (suspicious at most)")  # fmt: skip
        if account_id in reviewed:
            reasons.insert(0, reviewed[account_id])
        if account_id in campaign_of:
            reasons.insert(0, f"member of campaign {campaign_of[account_id]}")
        accounts.append(
            {
                "account_id": account_id,
                "score": round(score, 4),
                "verdict": _verdict(score),
                "cluster_id": campaign_of.get(account_id),
                "reasons": reasons,
            }
        )
    timings["total"] = time.perf_counter() - started
    doc: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "exchanges": int(exchanges),
        "accounts": accounts,
        "campaigns": campaigns,
        "detector": {
            "name": "distillwatch",
            "thresholds": {
                "distillation": DISTILLATION_THRESHOLD,
                "suspicious": SUSPICIOUS_THRESHOLD,
            },
            "until": _iso(until),
            "mode": fold.mode,
            "folded": fold.folded,
            "rebuilt_because": fold.why or None,
            "semantic_evidence": fold.semantic,
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
        },
    }
    if shared is not None:
        # Which partner indicators each account matched (docs/sharing.md): what a false
        # positive found in review reports back to their source.
        doc["partner_matches"] = [
            {"account_id": a, "source": p["source"], "campaign": p["campaign"],
             "indicators": p["indicators"]}
            for a, p in sorted(priors.items()) if p["indicators"]
        ]  # fmt: skip
    return doc


def account_rows(store: Store, until: datetime | None = None) -> list[dict[str, Any]]:
    """One feature row per account (``acct`` joined with ``evid``), from the folded state."""
    build_account_features(store)
    build_templates(store)
    build_evidence(store, until)
    return _rows(store, "SELECT * FROM acct JOIN evid USING (account_id) ORDER BY account_id")


def _content_only_farms(store: Store, edges: EdgeIndex, clusters: dict[int, list[str]],
                        group_of: dict[str, int], cluster_scores: dict[int, ClusterScore],
                        scores: dict[str, AccountScore], derived: dict[str, dict[str, Any]],
                        weights: Any) -> set[str]:  # fmt: skip
    """Members of content-farm groups that are in a content farm without a hydra's help: every
    member of a farm group none of whose members was made alongside others (a shared card, a
    disposable email, a sign-up burst: ``rules.made_alike``), and otherwise the members not
    made alike that form a content farm among themselves (grouped and scored again without
    the others).

    A group's farm shape may come from members a hydra's cards and sign-up bursts already give
    away, with others drawn in only by what they ask: a benchmark team whose suite a capability
    sweep also walks. Such an account takes the group's score only when the accounts like it,
    linked among themselves, have the farm's shape without the hydra (a rewrite farm on its own
    infrastructure drawing on a hydra's seed corpus still does, and so does a scheduler's farm,
    lockstep and all; the team alone does not).
    """
    members: set[str] = set()
    rest: set[str] = set()
    for number in set(group_of.values()):
        cluster = cluster_scores.get(number)
        if cluster is None or not cluster.farm:
            continue
        unmade = {m for m in clusters[number] if not made_alike(derived[m])}
        if len(unmade) == len(clusters[number]):
            members |= unmade
        else:
            rest |= unmade
    if rest:
        # What other groups' members ask is not the population's either (peers).
        found = content_groups(
            edges, rest, CONTENT_KINDS, min_size=CONTENT_FARM_MEMBERS, peers=set(group_of)
        )
        regrouped = dict(enumerate(found))
        membership = {a: number for number, group in regrouped.items() for a in group}
        rescored = score_clusters(regrouped, scores, derived, _yields(store, membership), weights)
        members |= {a for number, c in rescored.items() if c.farm for a in regrouped[number]}
    return members


#: Rounds of pruning content groups by novelty counted outside each group (each round only
#: removes members, so it settles; the bound keeps a pathological world's cost known).
MAX_GROUP_ROUNDS = 4


def _farm_groups(store: Store, edges: EdgeIndex,
                 derived: dict[str, dict[str, Any]]) -> tuple[set[str], list[list[str]]]:  # fmt: skip
    """Content groups, and the accounts with a content-farm member's shape and prompts.

    Whether a member's prompts are novel is judged outside its group, as the cluster yield is
    (:func:`_yields`): a campaign of seventy accounts resampling a pool of a few thousand
    dataset items sends each item to several of its own accounts, so counted over the whole
    population hardly any of a member's prompts are novel, though no one outside the campaign
    asks them. Groups form among farm-shaped accounts (``rules.farm_candidate``); a member keeps
    its place when ``rules.farm_member`` accepts it with novelty counted outside its group (a
    benchmark team's member drawn in by public items its teammates outside the group also run
    does not), and groups are formed again among those kept until no member drops out (at most
    MAX_GROUP_ROUNDS times). A farm-shaped account in no group is judged the same way with
    novelty counted over the whole population (``novel_share``): that is what a Leiden
    community's members are judged by when the community has a farm's shape.
    """
    shaped = {a for a, row in derived.items() if farm_candidate(row)}
    kept = shaped
    found = content_groups(edges, kept, CONTENT_KINDS, min_size=CONTENT_FARM_MEMBERS)
    judged: set[str] = set()  # ever in a group: judged by novelty outside it
    for _ in range(MAX_GROUP_ROUNDS):
        membership = {a: number for number, group in enumerate(found) for a in group}
        judged |= membership.keys()
        novelty = _group_novelty(store, membership)
        kept = {a for a in membership if farm_member(derived[a], *novelty.get(a, (0.0, 0.0)))}
        if len(kept) == len(membership):
            break
        found = content_groups(edges, kept, CONTENT_KINDS, min_size=CONTENT_FARM_MEMBERS)
    alone = {
        a for a in shaped - judged
        if farm_member(derived[a], *(derived[a].get("novel_share") or 0.0,) * 2)
    }  # fmt: skip
    return {a for group in found for a in group} | alone, found


#: Per group (``_membership``: account_id, cluster), each distinct prompt its members sent
#: (``inside``: how many of them) and how many accounts sent it at all (``reach``): what is
#: counted outside a group, for a member (:func:`_group_novelty`) and a group (:func:`_yields`).
_OUTSIDE_REACH = """WITH reach AS (SELECT h, count(*) AS accounts FROM content GROUP BY h),
    mine AS (SELECT DISTINCT c.account_id, m.cluster, c.h FROM content c
             JOIN _membership m USING (account_id)),
    inside AS (SELECT cluster, h, count(*) AS members FROM mine GROUP BY ALL)"""


def _per_group(store: Store, membership: dict[str, int], select: str) -> list[tuple[Any, ...]]:
    """Run ``_OUTSIDE_REACH`` followed by ``select`` with ``membership`` registered."""
    if not membership:
        return []
    table = pa.table(
        {"account_id": list(membership), "cluster": pa.array(list(membership.values()), pa.int64())}
    )
    store.con.register("_membership", table)
    try:
        return store.run(f"{_OUTSIDE_REACH}\n{select}")
    finally:
        store.con.unregister("_membership")


def _group_novelty(store: Store, membership: dict[str, int]) -> dict[str, tuple[float, float]]:
    """Per account in a group: the shares of its distinct prompts that at most ``NOVEL_REACH``
    accounts *outside its group* sent, and that none did (the member's part of :func:`_yields`)."""
    rows = _per_group(
        store,
        membership,
        f"""SELECT m.account_id,
                   avg((r.accounts - i.members <= {NOVEL_REACH})::DOUBLE) AS novel,
                   avg((r.accounts = i.members)::DOUBLE) AS own
            FROM mine m JOIN inside i USING (cluster, h) JOIN reach r USING (h)
            GROUP BY m.account_id""",
    )
    return {str(a): (float(novel), float(own)) for a, novel, own in rows}


def _yields(store: Store, membership: dict[str, int]) -> dict[int, Harvest]:
    """Novel prompts each cluster obtained answers to: distinct prompt hashes that at most
    ``NOVEL_REACH`` accounts *outside the cluster* sent (from the folded prompt hashes), and
    how many of its members sent each (``Harvest.answers``).

    Reach is counted outside the cluster because what a cluster's members ask one another
    again is still the cluster's own harvest (a capability sweep spreads each benchmark item
    over dozens of its accounts, and resamples it for more answers), while what the rest of
    the population also asks (public benchmark items other teams run, a class's shared
    homework seen in other classes) is not. Each distinct prompt counts once.
    """
    novel = f"r.accounts - i.members <= {NOVEL_REACH}"
    rows = _per_group(
        store,
        membership,
        f"""SELECT i.cluster, count(*) FILTER (WHERE {novel}),
                   coalesce(sum(i.members) FILTER (WHERE {novel}), 0),
                   count(*), count(*) FILTER (WHERE r.accounts = i.members)
            FROM inside i JOIN reach r USING (h) GROUP BY i.cluster""",
    )
    return {int(c): Harvest(int(n), int(a), int(d), int(o)) for c, n, a, d, o in rows}


_NUMBERS = re.compile(r"\d[\d,]*(?:\.\d+)?%?")


def _figure(values: list[float], unit: str = "") -> str:
    """Members' values at one place in a reason: the value if all agree, else the median with
    the range across members in brackets (``61% [32-77%]``)."""

    def show(v: float) -> str:
        return f"{v:,.0f}{unit}" if integral else f"{v:,.2f}{unit}"

    integral = all(float(v).is_integer() for v in values)
    low, high = min(values), max(values)
    if low == high:
        return show(low)
    return f"{show(statistics.median(values))} [{show(low)}-{show(high)}]"


def summarise_reasons(reasons: list[list[str]], per_member: int = 3,
                      top: int = 3) -> list[tuple[int, str]]:  # fmt: skip
    """The kinds of reason most members share, with the members' figures summarised.

    ``reasons`` holds each member's reasons; the first ``per_member`` of each are grouped by
    their wording with the numbers taken out (the part before any ``:``), and every number is
    put back as the median across members with the range in brackets, so "N of N prompts" never
    reaches a reader. Returns (members with that reason, text), most shared first."""
    groups: dict[str, list[list[float]]] = {}
    units: dict[str, list[str]] = {}
    for member in reasons:
        for reason in member[:per_member]:
            head = reason.split(":")[0]
            key = _NUMBERS.sub("\x00", head)
            found = _NUMBERS.findall(head)
            groups.setdefault(key, []).append(
                [float(v.rstrip("%").replace(",", "")) for v in found]
            )
            units.setdefault(key, ["%" if v.endswith("%") else "" for v in found])
    lines = []
    for key, samples in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:top]:
        parts = key.split("\x00")
        text = parts[0]
        for place, tail in enumerate(parts[1:]):
            values = [s[place] for s in samples if len(s) > place]
            text += (_figure(values, units[key][place]) if values else "N") + tail
        lines.append((len(samples), text))
    return lines


def _top_reasons(members: list[str], scores: dict[str, AccountScore]) -> list[str]:
    summary = summarise_reasons([[e.reason for e in scores[m].evidence] for m in members])
    return [f"{n} of {len(members)} members: {text}" for n, text in summary]


#: The most a reviewed false positive can score (benign: below SUSPICIOUS_THRESHOLD).
REVIEWED_SCORE_CAP = 0.1


def reviewed_false_positives(store: Store) -> dict[str, str]:
    """Accounts whose latest reviewer label (``labels``, written by the analyst workspace) is
    ``false_positive``, each with the reason to show. A later ``restored`` label undoes it."""
    rows = store.run(
        """SELECT account_id, actor, reason, ts FROM labels
           QUALIFY row_number() OVER (PARTITION BY account_id ORDER BY ts DESC) = 1
               AND label = 'false_positive'"""
    )
    return {
        str(a): f"reviewed by {who} on {ts:%Y-%m-%d}: false positive ({(why or '')[:200]})"
        for a, who, why, ts in rows
    }


def store_verdicts(store: Store, doc: dict[str, Any]) -> str:
    """Append this run's verdicts, campaigns and partner matches to the store.

    Stage: writes ``verdicts``, ``campaigns``, ``partner_matches`` and ``audit_log``."""
    run_id = uuid.uuid4().hex[:12]
    generated = datetime.fromisoformat(doc["generated_at"]).replace(tzinfo=None)
    accounts = doc["accounts"]
    verdicts = pa.table(
        {
            "run_id": [run_id] * len(accounts),
            "generated_at": pa.array([generated] * len(accounts), pa.timestamp("us")),
            "account_id": [a["account_id"] for a in accounts],
            "score": pa.array([a["score"] for a in accounts], pa.float64()),
            "verdict": [a["verdict"] for a in accounts],
            "cluster_id": pa.array([a["cluster_id"] for a in accounts], pa.string()),
            "reasons": [json.dumps(a["reasons"]) for a in accounts],
        }
    )
    store.con.register("_verdicts", verdicts)
    try:
        store.run("INSERT INTO verdicts SELECT * FROM _verdicts")
    finally:
        store.con.unregister("_verdicts")
    for campaign in doc["campaigns"]:
        store.run(
            "INSERT INTO campaigns VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, campaign["campaign_id"], campaign["score"], json.dumps(campaign["accounts"]),
             campaign["exchanges"], campaign["first_seen"][:-1], campaign["last_seen"][:-1],
             json.dumps(campaign["evidence"])],
        )  # fmt: skip
    matches = doc.get("partner_matches") or []
    if matches:
        store.con.executemany(
            "INSERT INTO partner_matches VALUES (?, ?, ?, ?, ?)",
            [[run_id, m["account_id"], m["source"], m["campaign"], json.dumps(m["indicators"])]
             for m in matches],
        )  # fmt: skip
    flagged = sum(a["verdict"] == "distillation" for a in accounts)
    store.audit(
        "detect",
        "detect.completed",
        {"run_id": run_id, "campaigns": len(doc["campaigns"]), "flagged": flagged},
    )
    return run_id


def detect_and_write(
    store: Store,
    out: Path,
    until: datetime | None = None,
    incremental: bool = True,
    shared: IndicatorSet | None = None,
    sharing_key: SharingKey | None = None,
) -> dict[str, Any]:
    """Detect, write ``verdicts.json`` and ``report.html`` into ``out``, record in the store."""
    from distillwatch.detection.report import write_report

    doc = detect(store, until, incremental, shared=shared, sharing_key=sharing_key)
    out.mkdir(parents=True, exist_ok=True)
    (out / "verdicts.json").write_text(json.dumps(doc, indent=1))
    store_verdicts(store, doc)
    write_report(doc, out / "report.html")
    return doc


__all__ = ["detect", "detect_and_write", "logit"]

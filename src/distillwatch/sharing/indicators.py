"""Per campaign, the artefacts that identify it, each with its specificity on the population.

Stage: reads ``dw_kv``, ``dw_near``, ``dw_acct`` (detection state, :mod:`distillwatch.detection.state`),
``accounts`` and the run's Contract-2 document; writes nothing (``detect`` serialises the result
as a STIX bundle, :mod:`.stix`).

For every artefact a campaign's accounts used (exact IPs, /24 or /48 prefixes, user agents, TLS
fingerprints, wrapper template grams, payment fingerprints, near-duplicate sketches: the MinHash
band signatures of their prompts) it measures, over every account with
traffic in the detected period: how many of the campaign's accounts used it, how many accounts
*not flagged* did (the "outside" accounts: the people a link could hurt), the share of the
campaign's traffic it covers, and first/last seen. Only artefacts that are rare outside qualify.
A gateway links a new account to a campaign when one request matches artefacts of two families
(network, client, template; a payment instrument nobody outside uses counts alone) whose joint
false-match rate, the product of each family's estimated rate ``(outside accounts + 1) /
(population + 1)``, is below ``bound``; and the rule is then checked on the population itself:
an outside account whose own artefacts would already link it
is a measured false match, and the artefacts behind it are dropped until at most
``floor(bound × population)`` remain.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from distillwatch.sharing.artefacts import FAMILY, artefact
from distillwatch.sharing.keys import SharingKey
from distillwatch.store import Store

#: Joint false-match rate a gateway link may have, estimated per request and measured on the
#: population.
DEFAULT_BOUND = 1e-4
#: An artefact qualifies when hardly anyone outside the campaign used it: at most this share of
#: the population, and never more than one account in a population under 1/MAX_OUTSIDE_SHARE
#: (rarities of different kinds are not independent: developers in one cloud /24 also type
#: similar prompts, so two "rare" artefacts each used by a few outsiders meet in someone)...
MAX_OUTSIDE_SHARE = 0.001
#: ...and at least this many of the campaign's accounts used it.
MIN_CAMPAIGN_ACCOUNTS = 2
#: Indicators kept per campaign (the most covering first): bounds bundle size...
MAX_PER_CAMPAIGN = 2000
#: ...of which near-duplicate sketches at most this many (a paraphrase campaign has tens of
#: thousands of band signatures; the most used say as much).
MAX_SKETCHES_PER_CAMPAIGN = 500
#: Namespace of deterministic STIX ids (uuid5), fixed forever.
NAMESPACE = uuid.UUID("6b4f3e2a-3d1c-5e8f-9a0b-7c6d5e4f3a2b")


@dataclass
class Artefact:
    """One identifying artefact of a campaign. ``value`` is keyed for private kinds."""

    kind: str  # ip, net, tls, ua, tpl, pay, nd
    value: str
    campaign_accounts: int
    outside_accounts: int
    coverage: float  # share of the campaign's requests that carried it
    first_seen: datetime | None
    last_seen: datetime | None
    rate: float = 0.0  # estimated false-match rate: (outside + 1) / (population + 1)
    #: The dw_kv kind and raw value (a template gram, a card): local only, never exported.
    source: tuple[str, str] = ("", "")

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.value}"

    @property
    def family(self) -> str:
        return FAMILY[self.kind]


@dataclass
class CampaignIndicators:
    """What identifies one campaign, and how well: ``false_matches`` outside accounts of
    ``population`` that the link rule matches with these artefacts (measured, not estimated)."""

    campaign_id: str
    stable_id: str  # the same campaign keeps it across runs (its earliest account decides)
    accounts: int
    exchanges: int
    first_seen: str | None
    last_seen: str | None
    score: float
    evidence: list[str]
    population: int
    bound: float
    artefacts: list[Artefact] = field(default_factory=list)
    false_matches: int = 0
    dropped_for_false_matches: int = 0


def links(matched: list[tuple[str, float, int]], bound: float) -> bool:
    """Whether the artefacts one request matched, as (family, estimated rate, outside accounts)
    triples, link it to a campaign: a payment instrument no unflagged account uses links on its
    own (a card is not shared by strangers); otherwise two families whose joint estimated
    false-match rate is within ``bound``. The gateway and the population check both decide with
    this function."""
    best: dict[str, float] = {}
    for family, rate, outside in matched:
        if family == "payment" and outside == 0:
            return True
        best[family] = min(rate, best.get(family, 1.0))
    return len(best) >= 2 and math.prod(best.values()) <= bound


def campaign_indicators(store: Store, doc: dict[str, Any], key: SharingKey,
                        bound: float = DEFAULT_BOUND) -> list[CampaignIndicators]:  # fmt: skip
    """The indicators of every campaign in ``doc`` (needs the store's folded detection state)."""
    campaigns = doc.get("campaigns", [])
    if not campaigns:
        return []
    members = [(a, c["campaign_id"]) for c in campaigns for a in c["accounts"]]
    table = pa.table({"account_id": [m[0] for m in members], "campaign": [m[1] for m in members]})
    # Specificity is measured against the accounts not flagged: another campaign sharing a
    # harvest template does not make it common among the people a link could hurt.
    flagged = sorted({m[0] for m in members} | {a["account_id"] for a in doc.get("accounts", [])
                                                 if a.get("verdict") == "distillation"})  # fmt: skip
    store.con.register("_members", table)
    store.con.register("_flagged", pa.table({"account_id": flagged}))
    try:
        population = store.run(
            "SELECT count(*) FROM dw_acct ANTI JOIN _flagged USING (account_id)"
        )[0][0]
        rows = store.run(
            """
            WITH kv AS (
                SELECT account_id, kind, value, sum(uses) AS uses FROM dw_kv
                WHERE kind IN ('ip', 'net', 'ua', 'tls', 'pre', 'suf') GROUP BY ALL
                UNION ALL
                -- accounts with traffic in the detected period (the population), not every
                -- account on file: one opened after it is not evidence either way
                SELECT a.account_id, 'pay', a.payment_fingerprint, d.n
                FROM accounts a JOIN dw_acct d USING (account_id)
                WHERE a.payment_fingerprint IS NOT NULL
            ), outsiders AS (
                SELECT kind, value, count(DISTINCT account_id) AS users
                FROM kv ANTI JOIN _flagged USING (account_id) GROUP BY ALL
            )
            SELECT m.campaign, kv.kind, kv.value, count(DISTINCT kv.account_id) AS inside,
                   sum(kv.uses) AS uses, coalesce(any_value(e.users), 0) AS outside,
                   min(d.first_ts), max(d.last_ts)
            FROM kv JOIN _members m USING (account_id) LEFT JOIN outsiders e USING (kind, value)
            LEFT JOIN dw_acct d USING (account_id)
            GROUP BY ALL
            """
        )
        # Near-duplicate sketches: band signatures two or more members share, with their
        # outside users counted among those signatures only (dw_near is the largest state).
        rows += store.run(
            f"""
            WITH inside AS (
                SELECT sig FROM dw_near JOIN _members USING (account_id)
                GROUP BY sig HAVING count(DISTINCT account_id) >= {MIN_CAMPAIGN_ACCOUNTS}
            ), held AS (
                SELECT n.account_id, n.sig, sum(n.uses) AS uses
                FROM dw_near n JOIN inside USING (sig) GROUP BY ALL
            ), outsiders AS (
                SELECT sig, count(DISTINCT account_id) AS users
                FROM held ANTI JOIN _flagged USING (account_id) GROUP BY sig
            )
            SELECT m.campaign, 'near', h.sig::VARCHAR, count(DISTINCT h.account_id),
                   sum(h.uses), coalesce(any_value(o.users), 0), min(d.first_ts), max(d.last_ts)
            FROM held h JOIN _members m USING (account_id) LEFT JOIN outsiders o USING (sig)
            LEFT JOIN dw_acct d USING (account_id)
            GROUP BY ALL
            """
        )
        volume = dict(store.run(
            "SELECT m.campaign, sum(d.n) FROM _members m JOIN dw_acct d USING (account_id) GROUP BY ALL"
        ))  # fmt: skip
        earliest = dict(store.run(
            """SELECT campaign, arg_min(account_id, (first_ts, account_id)) FROM _members
               JOIN dw_acct USING (account_id) GROUP BY ALL"""
        ))  # fmt: skip
    finally:
        store.con.unregister("_members")
        store.con.unregister("_flagged")
    by_campaign: dict[str, list[Artefact]] = {}
    for campaign, kind, value, inside, uses, outside, first, last in rows:
        outside = int(outside)
        rate = (outside + 1) / (population + 1)
        if inside < MIN_CAMPAIGN_ACCOUNTS or outside > max(1, MAX_OUTSIDE_SHARE * population):
            continue
        shared_kind, shared_value = artefact(kind, str(value), key).split(":", 1)
        by_campaign.setdefault(campaign, []).append(Artefact(
            shared_kind, shared_value, int(inside), outside,
            min(1.0, float(uses) / max(1, volume.get(campaign, 1))), first, last, rate,
            (kind, str(value)),
        ))  # fmt: skip
    result = []
    for c in campaigns:
        found = by_campaign.get(c["campaign_id"], [])
        found.sort(key=lambda a: (-a.coverage, a.outside_accounts, a.key))
        sketches = [a for a in found if a.kind == "nd"][:MAX_SKETCHES_PER_CAMPAIGN]
        found = [a for a in found if a.kind != "nd"] + sketches
        found.sort(key=lambda a: (-a.coverage, a.outside_accounts, a.key))
        found = found[:MAX_PER_CAMPAIGN]
        stable = earliest.get(c["campaign_id"]) or min(c["accounts"])
        result.append(CampaignIndicators(
            campaign_id=c["campaign_id"],
            stable_id=hashlib.sha256(f"{key.key_id}\0{stable}".encode()).hexdigest()[:24],
            accounts=len(c["accounts"]), exchanges=int(c.get("exchanges", 0)),
            first_seen=c.get("first_seen"), last_seen=c.get("last_seen"), score=float(c["score"]),
            evidence=list(c.get("evidence", []))[:8], population=int(population), bound=bound,
            artefacts=found,
        ))  # fmt: skip
    _check_on_population(
        store, result, key, {c["campaign_id"]: set(c["accounts"]) for c in campaigns}
    )
    return result


def _check_on_population(store: Store, result: list[CampaignIndicators], key: SharingKey,
                         flagged: set[str]) -> None:  # fmt: skip
    """Measure the link rule on the accounts outside each campaign; drop artefacts behind false
    matches (the most widely used first) until at most floor(bound x population) remain."""
    interesting = {a.source for c in result for a in c.artefacts if a.outside_accounts}
    if not interesting:
        return
    # Only artefacts that someone outside a campaign also used can produce a false match.
    wanted = pa.table({"kind": [k for k, _ in interesting], "value": [v for _, v in interesting]})
    store.con.register("_wanted", wanted)
    try:
        rows = store.run(
            """SELECT account_id, kind, value FROM dw_kv JOIN _wanted USING (kind, value)
               UNION ALL SELECT account_id, 'pay', payment_fingerprint FROM accounts
               JOIN dw_acct USING (account_id)
               JOIN _wanted w ON w.kind = 'pay' AND w.value = payment_fingerprint
               UNION ALL SELECT account_id, 'near', sig::VARCHAR FROM dw_near
               JOIN _wanted w ON w.kind = 'near' AND w.value = sig::VARCHAR"""
        )
    finally:
        store.con.unregister("_wanted")
    held: dict[str, set[str]] = {}
    for account, kind, value in rows:
        held.setdefault(account, set()).add(artefact(kind, str(value), key))
    for campaign in result:
        allowed = math.floor(campaign.bound * campaign.population)
        while True:
            rates = {a.key: a for a in campaign.artefacts}
            false = [
                account for account, keys in held.items()
                if account not in flagged
                and links([(rates[k].family, rates[k].rate, rates[k].outside_accounts)
                           for k in keys if k in rates], campaign.bound)
            ]  # fmt: skip
            campaign.false_matches = len(false)
            if len(false) <= allowed:
                break
            behind = {k for account in false for k in held[account] if k in rates}
            worst = max(behind, key=lambda k: (rates[k].outside_accounts, k))
            campaign.artefacts = [a for a in campaign.artefacts if a.key != worst]
            campaign.dropped_for_false_matches += 1

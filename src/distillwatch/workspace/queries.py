"""What the analyst workspace shows, as named queries over the store returning result objects.

Every page of ``distillwatch serve`` reads through :class:`Workspace`; no SQL lives in the web
layer. The queries read what ingest and detection already keep (``exchanges``, ``accounts``,
``verdicts``, ``campaigns``, ``actions``, ``audit_log``) and detection's folded per-account state
(``dw_acct`` counters, ``dw_kv`` artefacts and capability tags, ``dw_hours`` timelines,
``dw_models`` first-seen dates), so a page costs an index-sized query, not a scan of every
exchange. Two small tables are derived when a new detection run appears (:meth:`Workspace.refresh`):
the latest verdict per account and per-account features against which percentiles are computed.

Reads: exchanges, accounts, verdicts, campaigns, actions, audit_log, labels, ws_cases, ws_notes,
dw_acct, dw_kv, dw_hours, dw_models. Writes: temporary ``ws_latest`` and ``ws_stats`` only (the
workspace's own writes live in :mod:`distillwatch.workspace.cases`).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from distillwatch.detection.pipeline import summarise_reasons
from distillwatch.detection.text import COT_PATTERN, TEMPLATE_WORDS, skeleton_words
from distillwatch.sharing.artefacts import FAMILY, STATE_KINDS
from distillwatch.store import Store

#: Artefact kinds drawn as satellites of a campaign, with the label analysts see.
ARTEFACT_KINDS = {
    "ip": "IP address",
    "net": "network prefix",
    "ua": "user agent",
    "tls": "TLS fingerprint",
    "pre": "template opening",
    "suf": "template ending",
    "pay": "payment instrument",
}
PLURAL = {
    "ip": "IP addresses",
    "net": "network prefixes",
    "ua": "user agents",
    "tls": "TLS fingerprints",
    "pre": "template openings",
    "suf": "template endings",
    "pay": "payment instruments",
}
#: Satellites labelled on the drawing (the strongest hubs; the rest show their label on tap).
LABELLED_HUBS = 12
#: Features shown against the population on the account page (column, label, format).
FEATURES = (
    ("requests", "requests", "{:,.0f}"),
    ("requests_per_day", "requests per active day", "{:,.1f}"),
    ("cot_share", "share eliciting chain-of-thought", "{:.0%}"),
    ("multi_turn_share", "share of multi-turn requests", "{:.0%}"),
    ("mean_output_tokens", "mean output tokens", "{:,.0f}"),
    ("ips", "distinct IP addresses", "{:,.0f}"),
    ("prefixes", "distinct network prefixes", "{:,.0f}"),
    ("templates", "distinct template openings", "{:,.0f}"),
    ("capabilities", "capability areas covered", "{:,.0f}"),
)
PAGE_SIZE = 50
_COT = re.compile(COT_PATTERN, re.IGNORECASE)


@dataclass
class Series:
    """Counts over time: ``points`` are (bucket start, value) in time order."""

    label: str
    points: list[tuple[datetime, float]]


@dataclass
class CampaignRow:
    campaign_id: str
    score: float
    accounts: int
    exchanges: int
    first_seen: datetime | None
    last_seen: datetime | None
    top_evidence: str
    case_status: str | None = None


@dataclass
class Overview:
    run_id: str | None
    generated_at: datetime | None
    exchanges: int
    accounts: int
    verdict_counts: dict[str, int]
    traffic: Series
    flagged_traffic: Series
    actions: Series
    refusals: Series
    launches: list[tuple[str, datetime]]
    campaigns: list[CampaignRow]
    changes: dict[str, list[str]]
    harvest_prevented: int
    open_cases: int


@dataclass
class Artefact:
    kind: str
    value: str
    inside: int  # campaign members using it
    total: int  # accounts in the whole population using it

    @property
    def outside(self) -> int:
        return self.total - self.inside

    @property
    def specificity(self) -> float:
        """Share of the artefact's users who are in the campaign (1.0: nobody else uses it)."""
        return self.inside / self.total if self.total else 0.0

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.value}"

    @property
    def label(self) -> str:
        return ARTEFACT_KINDS.get(self.kind, self.kind)


@dataclass
class Member:
    account_id: str
    score: float
    verdict: str
    requests: int
    first_ts: datetime | None
    last_ts: datetime | None


@dataclass
class Figure:
    """A reason members share; its numbers are medians with ranges across members."""

    text: str
    members: int


@dataclass
class Campaign:
    campaign_id: str
    run_id: str
    score: float
    exchanges: int
    first_seen: datetime | None
    last_seen: datetime | None
    evidence: list[str]
    members: list[Member]
    member_ids: list[str]
    figures: list[Figure]
    artefacts: list[Artefact]
    capabilities: list[tuple[str, int]]
    timeline: Series
    templates: list[tuple[str, int]]
    launches: list[tuple[str, datetime]]
    actions: list[dict[str, Any]]


@dataclass
class Segment:
    """A piece of a prompt; ``kind`` is None (plain), ``template`` or ``cot``."""

    text: str
    kind: str | None = None


@dataclass
class Exchange:
    id: str
    ts: datetime
    model: str
    segments: list[Segment]
    response: str
    ip: str | None
    user_agent: str | None
    status: int | None


@dataclass
class FeatureValue:
    name: str
    label: str
    value: float | None
    shown: str
    percentile: float | None  # share of accounts with a lower value, 0..100


@dataclass
class Account:
    account_id: str
    exists: bool
    verdict: str | None
    score: float | None
    cluster_id: str | None
    reasons: list[str]
    metadata: dict[str, Any]
    features: list[FeatureValue]
    timeline: Series
    exchanges: list[Exchange]
    exchanges_total: int
    page: int
    linked: list[tuple[str, int, str]]  # (account, shared rare artefacts, an example)
    history: list[dict[str, Any]]
    labels: list[dict[str, Any]]
    templates: set[str] = field(default_factory=set)


@dataclass
class SearchHit:
    kind: str  # account | campaign | artefact
    subject: str
    detail: str
    account_id: str | None = None


def _family(kind: str) -> str:
    """An artefact kind's family, as indicators define it (an IP and its prefix are one)."""
    return FAMILY.get(STATE_KINDS.get(kind, kind), kind)


def _json_list(text: str | None) -> list[Any]:
    if not text:
        return []
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


def _like(text: str) -> str:
    """A LIKE pattern matching ``text`` literally (``%`` and ``_`` escaped with ``\\``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Workspace:
    """Named read queries for the dashboard over one open :class:`Store`.

    One connection serves every request; calls are serialised with a lock (DuckDB connections
    are not safe to share between threads), which the web layer takes via :meth:`locked`.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = threading.RLock()
        self._run: str | None = None
        self._tables = set()
        self.refresh()

    # -- derived tables -------------------------------------------------------------------------
    def _has(self, table: str) -> bool:
        return table in self._tables

    def refresh(self, force: bool = False) -> bool:
        """Rebuild the latest-verdict and feature tables if a new detection run landed."""
        with self.lock:
            self._tables = {r[0] for r in self.store.run("SELECT table_name FROM duckdb_tables()")}
            rows = self.store.run(
                "SELECT run_id FROM verdicts ORDER BY generated_at DESC, run_id LIMIT 1"
            )
            run = rows[0][0] if rows else None
            if run == self._run and not force and self._has_temp("ws_stats"):
                return False
            self._run = run
            self.store.run(
                """CREATE OR REPLACE TEMP TABLE ws_latest AS
                   SELECT account_id, score, verdict, cluster_id, reasons FROM verdicts
                   WHERE run_id = ?""",
                [run],
            )
            if self._has("dw_acct") and self._has("dw_kv"):
                self.store.run(
                    """CREATE OR REPLACE TEMP TABLE ws_stats AS
                    WITH kv AS (
                        SELECT account_id,
                               count(*) FILTER (WHERE kind = 'ip') AS ips,
                               count(*) FILTER (WHERE kind = 'net') AS prefixes,
                               count(*) FILTER (WHERE kind = 'pre') AS templates,
                               count(*) FILTER (WHERE kind = 'tag') AS capabilities
                        FROM dw_kv GROUP BY account_id),
                    days AS (SELECT account_id, count(DISTINCT hour::DATE) AS days
                             FROM dw_hours GROUP BY account_id)
                    SELECT a.account_id, a.n AS requests, a.first_ts, a.last_ts,
                           a.n / greatest(coalesce(d.days, 1), 1) AS requests_per_day,
                           a.cot / a.n AS cot_share, a.multi_turn / a.n AS multi_turn_share,
                           CAST(a.output_sum AS DOUBLE) / a.n AS mean_output_tokens,
                           coalesce(kv.ips, 0) AS ips, coalesce(kv.prefixes, 0) AS prefixes,
                           coalesce(kv.templates, 0) AS templates,
                           coalesce(kv.capabilities, 0) AS capabilities
                    FROM dw_acct a LEFT JOIN kv USING (account_id)
                    LEFT JOIN days d USING (account_id) WHERE a.n > 0"""
                )
            else:  # no detection state yet: what the exchanges alone say
                self.store.run(
                    """CREATE OR REPLACE TEMP TABLE ws_stats AS
                    SELECT account_id, count(*) AS requests, min(ts) AS first_ts,
                           max(ts) AS last_ts,
                           count(*) / greatest(count(DISTINCT ts::DATE), 1) AS requests_per_day,
                           NULL::DOUBLE AS cot_share,
                           avg((n_messages > 1)::INT) AS multi_turn_share,
                           avg(completion_tokens) AS mean_output_tokens,
                           count(DISTINCT ip) AS ips, NULL::BIGINT AS prefixes,
                           NULL::BIGINT AS templates, NULL::BIGINT AS capabilities
                    FROM exchanges GROUP BY account_id"""
                )
            return True

    def _has_temp(self, name: str) -> bool:
        return bool(
            self.store.run(
                "SELECT 1 FROM duckdb_tables() WHERE table_name = ? AND temporary", [name]
            )
        )

    @property
    def run_id(self) -> str | None:
        return self._run

    # -- overview -------------------------------------------------------------------------------
    def overview(self) -> Overview:
        with self.lock:
            self.refresh()
            run = self._run
            generated = self.store.run(
                "SELECT max(generated_at) FROM verdicts WHERE run_id = ?", [run]
            )[0][0]
            counts = dict(self.store.run("SELECT verdict, count(*) FROM ws_latest GROUP BY 1"))
            exchanges = self.store.count("exchanges")
            accounts = int(self.store.run("SELECT count(*) FROM ws_stats")[0][0])
            traffic, flagged = self._daily_traffic()
            actions = Series(
                "actions",
                [
                    (d, float(n))
                    for d, n in self.store.run(
                        """SELECT date_trunc('day', created_at) AS d, count(*) FROM actions
                           GROUP BY 1 ORDER BY 1"""
                    )
                ],
            )
            refusals = Series(
                "gateway decisions (block, challenge, shape, throttle)",
                [
                    (d, float(n))
                    for d, n in self.store.run(
                        """SELECT date_trunc('day', ts) AS d, count(*) FROM audit_log
                           WHERE event IN ('decision.block', 'decision.challenge',
                                           'decision.shape', 'decision.throttle')
                           GROUP BY 1 ORDER BY 1"""
                    )
                ],
            )
            prevented = sum(v for _, v in refusals.points)
            open_cases = self.store.run(
                "SELECT count(*) FROM ws_cases WHERE status NOT IN ('closed', 'false_positive')"
            )[0][0]
            return Overview(
                run_id=run,
                generated_at=generated,
                exchanges=exchanges,
                accounts=accounts,
                verdict_counts={k: int(v) for k, v in counts.items()},
                traffic=traffic,
                flagged_traffic=flagged,
                actions=actions,
                refusals=refusals,
                launches=self.launches(),
                campaigns=self.campaigns(limit=10),
                changes=self._changes(),
                harvest_prevented=int(prevented),
                open_cases=int(open_cases),
            )

    def _daily_traffic(self) -> tuple[Series, Series]:
        if self._has("dw_hours"):
            rows = self.store.run(
                """SELECT date_trunc('day', h.hour) AS d, sum(h.uses),
                          sum(h.uses) FILTER (WHERE l.verdict = 'distillation')
                   FROM dw_hours h LEFT JOIN ws_latest l USING (account_id)
                   GROUP BY 1 ORDER BY 1"""
            )
        else:
            rows = self.store.run(
                """SELECT date_trunc('day', e.ts) AS d, count(*),
                          count(*) FILTER (WHERE l.verdict = 'distillation')
                   FROM exchanges e LEFT JOIN ws_latest l USING (account_id)
                   GROUP BY 1 ORDER BY 1"""
            )
        return (
            Series("all requests", [(d, float(n or 0)) for d, n, _ in rows]),
            Series("from flagged accounts", [(d, float(f or 0)) for d, _, f in rows]),
        )

    def launches(self) -> list[tuple[str, datetime]]:
        """Model launches: the first time each model was requested (after the first day)."""
        if not self._has("dw_models"):
            return []
        # A model a handful of accounts tried once is not a launch (nor is a junk model name).
        used = (
            """JOIN (SELECT value AS model FROM dw_kv WHERE kind = 'model' GROUP BY 1
                     HAVING count(*) >= 5 AND sum(uses) >= 50) USING (model)"""
            if self._has("dw_kv")
            else ""
        )
        rows = self.store.run(
            f"""SELECT model, first_seen FROM dw_models {used}
                WHERE first_seen > (SELECT min(first_seen) + INTERVAL 1 DAY FROM dw_models)
                ORDER BY first_seen LIMIT 8"""
        )
        return [(str(m), t) for m, t in rows]

    def _changes(self) -> dict[str, list[str]]:
        """Accounts newly flagged and no longer flagged since the previous detection run."""
        runs = self.store.run(
            """SELECT run_id FROM verdicts GROUP BY run_id ORDER BY max(generated_at) DESC
               LIMIT 2"""
        )
        if len(runs) < 2:
            return {"newly_flagged": [], "cleared": [], "previous_run": []}
        current, previous = runs[0][0], runs[1][0]
        rows = self.store.run(
            """WITH a AS (SELECT account_id, verdict FROM verdicts WHERE run_id = ?),
                    b AS (SELECT account_id, verdict FROM verdicts WHERE run_id = ?)
               SELECT coalesce(a.account_id, b.account_id), a.verdict, b.verdict
               FROM a FULL JOIN b USING (account_id)
               WHERE (a.verdict = 'distillation') IS DISTINCT FROM (b.verdict = 'distillation')
               ORDER BY 1 LIMIT 400""",
            [current, previous],
        )
        return {
            "newly_flagged": [a for a, now, _ in rows if now == "distillation"],
            "cleared": [a for a, now, _ in rows if now != "distillation"],
            "previous_run": [previous],
        }

    # -- campaigns ------------------------------------------------------------------------------
    def campaigns(self, limit: int = PAGE_SIZE, offset: int = 0) -> list[CampaignRow]:
        with self.lock:
            rows = self.store.run(
                """SELECT c.campaign_id, c.score, json_array_length(c.accounts), c.exchanges,
                          c.first_seen, c.last_seen, c.evidence, k.status
                   FROM campaigns c LEFT JOIN ws_cases k
                     ON k.subject_kind = 'campaign' AND k.subject = c.campaign_id
                   WHERE c.run_id = ? ORDER BY c.score DESC, c.exchanges DESC, c.campaign_id
                   LIMIT ? OFFSET ?""",
                [self._run, limit, offset],
            )
        return [
            CampaignRow(
                cid, float(score), int(n), int(ex), first, last, (_json_list(ev) or [""])[0], status
            )
            for cid, score, n, ex, first, last, ev, status in rows
        ]

    def campaign_members(self, campaign_id: str) -> list[str]:
        with self.lock:
            rows = self.store.run(
                "SELECT accounts FROM campaigns WHERE run_id = ? AND campaign_id = ?",
                [self._run, campaign_id],
            )
        return [str(a) for a in _json_list(rows[0][0])] if rows else []

    def campaign_exchanges(self, campaign_id: str, limit: int = 100_000) -> list[tuple[str, str]]:
        """(prompt, response) of every exchange of the campaign's members (latest run), oldest
        first, at most ``limit``: what the campaign asked and what it was served (provenance's
        closed-mode radioactivity probes with the one and filters on the other)."""
        ids = self.campaign_members(campaign_id)
        if not ids:
            return []
        with self.lock:
            self._members_table(ids)
            rows = self.store.run(
                """SELECT e.prompt, e.response FROM exchanges e JOIN _ws_members m USING (account_id)
                   WHERE e.response IS NOT NULL ORDER BY e.ts, e.id LIMIT ?""",
                [limit],
            )
        return [(str(p or ""), str(r)) for p, r in rows]

    def campaign(self, campaign_id: str) -> Campaign | None:
        with self.lock:
            self.refresh()
            rows = self.store.run(
                """SELECT score, exchanges, first_seen, last_seen, evidence, accounts
                   FROM campaigns WHERE run_id = ? AND campaign_id = ?""",
                [self._run, campaign_id],
            )
            if not rows:
                return None
            score, exchanges, first, last, evidence, accounts = rows[0]
            ids = [str(a) for a in _json_list(accounts)]
            self._members_table(ids)
            members = [
                Member(a, float(s or 0), str(v or "benign"), int(n or 0), f, t)
                for a, s, v, n, f, t in self.store.run(
                    """SELECT m.account_id, l.score, l.verdict, s.requests, s.first_ts, s.last_ts
                       FROM _ws_members m LEFT JOIN ws_latest l USING (account_id)
                       LEFT JOIN ws_stats s USING (account_id)
                       ORDER BY l.score DESC NULLS LAST, s.requests DESC NULLS LAST,
                                m.account_id LIMIT 500"""
                )
            ]
            return Campaign(
                campaign_id=campaign_id,
                run_id=str(self._run),
                score=float(score),
                exchanges=int(exchanges),
                first_seen=first,
                last_seen=last,
                evidence=[str(e) for e in _json_list(evidence)],
                members=members,
                member_ids=ids,
                figures=self._figures(),
                artefacts=self.shared_artefacts(),
                capabilities=self._capabilities(),
                timeline=self._member_timeline(),
                templates=self._templates(),
                launches=self.launches(),
                actions=self.actions_for("campaign", campaign_id),
            )

    def _members_table(self, ids: list[str]) -> None:
        import pyarrow as pa

        table = pa.table({"account_id": pa.array(ids, pa.string())})
        self.store.con.register("_ws_members_arrow", table)
        try:
            self.store.run(
                "CREATE OR REPLACE TEMP TABLE _ws_members AS "
                "SELECT DISTINCT account_id FROM _ws_members_arrow"
            )
        finally:
            self.store.con.unregister("_ws_members_arrow")

    def _figures(self) -> list[Figure]:
        """Members' own reasons grouped by wording, each number given as the median across
        members with the range in brackets (detection's own summary, over more reasons)."""
        rows = self.store.run(
            "SELECT l.reasons FROM _ws_members m JOIN ws_latest l USING (account_id)"
        )
        reasons = [
            [str(r) for r in _json_list(text) if not str(r).startswith("member of campaign")]
            for (text,) in rows
        ]
        return [Figure(text, n) for n, text in summarise_reasons(reasons, per_member=6, top=8)]

    def shared_artefacts(self, limit: int = 200) -> list[Artefact]:
        """Artefacts two or more members share, most specific first (specificity = share of
        the artefact's users who are members)."""
        if not self._has("dw_kv"):
            return []
        rows = self.store.run(
            f"""WITH mine AS (
                    SELECT DISTINCT k.kind, k.value, k.account_id FROM dw_kv k
                    JOIN _ws_members USING (account_id)
                    WHERE k.kind IN ('ip', 'net', 'ua', 'tls', 'pre', 'suf')
                    UNION ALL
                    SELECT DISTINCT 'pay', a.payment_fingerprint, a.account_id FROM accounts a
                    JOIN _ws_members USING (account_id) WHERE a.payment_fingerprint IS NOT NULL),
                inside AS (SELECT kind, value, count(*) AS inside FROM mine GROUP BY 1, 2
                           HAVING count(*) >= 2),
                total AS (
                    SELECT k.kind, k.value, count(DISTINCT k.account_id) AS total
                    FROM dw_kv k JOIN inside i ON i.kind = k.kind AND i.value = k.value
                    GROUP BY 1, 2
                    UNION ALL
                    SELECT 'pay', a.payment_fingerprint, count(*) FROM accounts a
                    JOIN inside i ON i.kind = 'pay' AND i.value = a.payment_fingerprint
                    GROUP BY 1, 2)
            SELECT i.kind, i.value, i.inside, t.total FROM inside i JOIN total t USING (kind, value)
            ORDER BY i.inside * i.inside / t.total DESC, i.kind, i.value LIMIT {int(limit)}"""
        )
        return [Artefact(str(k), str(v), int(i), int(t)) for k, v, i, t in rows]

    def _capabilities(self) -> list[tuple[str, int]]:
        if not self._has("dw_kv"):
            return []
        rows = self.store.run(
            """SELECT value, sum(uses) FROM dw_kv JOIN _ws_members USING (account_id)
               WHERE kind = 'tag' GROUP BY 1 ORDER BY 2 DESC, 1"""
        )
        return [(str(v), int(n)) for v, n in rows]

    def _member_timeline(self) -> Series:
        if self._has("dw_hours"):
            rows = self.store.run(
                """SELECT hour, sum(uses) FROM dw_hours JOIN _ws_members USING (account_id)
                   GROUP BY 1 ORDER BY 1"""
            )
        else:
            rows = self.store.run(
                """SELECT date_trunc('hour', ts), count(*) FROM exchanges
                   JOIN _ws_members USING (account_id) GROUP BY 1 ORDER BY 1"""
            )
        return Series("requests per hour", [(t, float(n)) for t, n in rows])

    def _templates(self, limit: int = 8) -> list[tuple[str, int]]:
        """The campaign's most used template openings (masked skeletons: numbers, quoted
        strings and code replaced), with how many members use each."""
        if not self._has("dw_kv"):
            return []
        rows = self.store.run(
            f"""SELECT value, count(*) FROM dw_kv JOIN _ws_members USING (account_id)
                WHERE kind = 'pre' GROUP BY 1 HAVING count(*) >= 2
                ORDER BY 2 DESC, 1 LIMIT {int(limit)}"""
        )
        return [(str(v), int(n)) for v, n in rows]

    # -- graph ----------------------------------------------------------------------------------
    def campaign_graph(
        self,
        campaign_id: str,
        max_accounts: int = 300,
        max_artefacts: int = 150,
        fold_above: int = 200,
        max_edges: int = 2500,
        expand: frozenset[str] = frozenset(),
    ) -> dict[str, Any] | None:
        """An ego graph of a campaign as Cytoscape elements.

        Accounts (the ``max_accounts`` highest-scoring members) and the artefacts that link them
        (the ``max_artefacts`` most specific ones two or more members share) are the nodes.
        Artefacts of one family used by exactly the same drawn accounts are one satellite node
        ("45 network prefixes"), so a hydra sharing a proxy pool draws as one hub, not 45. An edge
        joins an account to a satellite, weighted by the satellite's specificity (share of its
        users inside the campaign). A satellite with more than ``fold_above`` accounts, or the
        largest ones while edges exceed ``max_edges``, is *folded*: one edge to a summary node
        instead of one per account, unless its key is in ``expand``. ``caps`` says what was left
        out so the page can say so.
        """
        with self.lock:
            self.refresh()
            ids = self.campaign_members(campaign_id)
            if not ids:
                return None
            self._members_table(ids)
            artefacts = self.shared_artefacts(limit=max_artefacts + 1)
            more = len(artefacts) > max_artefacts
            artefacts = artefacts[:max_artefacts]
            drawn = [
                (str(a), float(s or 0), str(v or "benign"))
                for a, s, v in self.store.run(
                    f"""SELECT m.account_id, l.score, l.verdict FROM _ws_members m
                        LEFT JOIN ws_latest l USING (account_id)
                        ORDER BY l.score DESC NULLS LAST, m.account_id LIMIT {int(max_accounts)}"""
                )
            ]
            uses = self._uses(artefacts, {a for a, _, _ in drawn})
        groups: dict[tuple[str, frozenset[str]], list[Artefact]] = {}
        for artefact in artefacts:
            users = frozenset(uses.get(artefact.key, ()))
            if len(users) >= 2:
                groups.setdefault((_family(artefact.kind), users), []).append(artefact)
        # Hubs first: satellites used by many drawn accounts and by few accounts outside.
        ordered = sorted(
            groups.items(),
            key=lambda kv: (-len(kv[0][1]) * min(m.specificity for m in kv[1]), kv[1][0].key),
        )
        keys = {id(members): members[0].key for _, members in ordered}
        folded_keys: set[str] = set()
        kept, budget = [], max_edges
        for (family, users), members in ordered:
            key = keys[id(members)]
            fold = len(users) > fold_above and key not in expand
            cost = 1 if fold else len(users)
            if cost > budget:
                continue  # over the edge budget: not drawn (counted in caps)
            budget -= cost
            kept.append(((family, users), members))
            if fold:
                folded_keys.add(key)
        dropped = len(ordered) - len(kept)
        ordered = kept
        nodes: list[dict[str, Any]] = [
            {
                "data": {
                    "id": f"a|{a}",
                    "label": a,
                    "kind": "account",
                    "account": a,
                    "score": round(s, 3),
                    "verdict": v,
                }
            }
            for a, s, v in drawn
        ]
        edges: list[dict[str, Any]] = []
        for rank, ((family, users), members) in enumerate(ordered):
            key = keys[id(members)]
            lead = members[0]
            node = f"x|{key}"
            count = (
                f"{len(members)} {PLURAL.get(lead.kind, lead.label)}"
                if len(members) > 1
                else lead.label
            )
            specificity = min(m.specificity for m in members)
            nodes.append(
                {
                    "data": {
                        "id": node,
                        "label": f"{count}: {lead.value[:40]}",
                        "kind": lead.kind,
                        "family": family,
                        "key": key,
                        "artefacts": len(members),
                        "inside": lead.inside,
                        "outside": max(m.outside for m in members),
                        "specificity": round(specificity, 3),
                        "hub": rank < LABELLED_HUBS,
                        "examples": [m.value[:120] for m in members[:5]],
                    }
                }
            )
            if key in folded_keys:
                fold = f"f|{key}"
                nodes.append(
                    {
                        "data": {
                            "id": fold,
                            "label": f"{len(users):,} accounts (folded)",
                            "kind": "fold",
                            "key": key,
                            "count": len(users),
                        }
                    }
                )
                edges.append(
                    {
                        "data": {
                            "id": f"e|{fold}",
                            "source": node,
                            "target": fold,
                            "weight": round(specificity, 3),
                        }
                    }
                )
                continue
            for account in sorted(users):
                edges.append(
                    {
                        "data": {
                            "id": f"e|{account}|{key}",
                            "source": f"a|{account}",
                            "target": node,
                            "weight": round(specificity, 3),
                        }
                    }
                )
        return {
            "campaign_id": campaign_id,
            "elements": {"nodes": nodes, "edges": edges},
            "caps": {
                "accounts": len(ids),
                "accounts_drawn": len(drawn),
                "artefacts_drawn": len(artefacts),
                "more_artefacts": more,
                "satellites": len(ordered),
                "satellites_not_drawn": dropped,
                "folded": len(folded_keys),
                "fold_above": fold_above,
                "max_edges": max_edges,
            },
        }

    def _uses(self, artefacts: list[Artefact], accounts: set[str]) -> dict[str, set[str]]:
        if not artefacts or not accounts:
            return {}
        import pyarrow as pa

        wanted = pa.table(
            {
                "kind": pa.array([a.kind for a in artefacts], pa.string()),
                "value": pa.array([a.value for a in artefacts], pa.string()),
            }
        )
        drawn = pa.table({"account_id": pa.array(sorted(accounts), pa.string())})
        self.store.con.register("_ws_wanted", wanted)
        self.store.con.register("_ws_drawn", drawn)
        try:
            rows = self.store.run(
                """SELECT DISTINCT k.kind, k.value, k.account_id FROM dw_kv k
                   JOIN _ws_wanted w USING (kind, value) JOIN _ws_drawn d USING (account_id)
                   UNION ALL
                   SELECT DISTINCT 'pay', a.payment_fingerprint, a.account_id FROM accounts a
                   JOIN _ws_wanted w ON w.kind = 'pay' AND w.value = a.payment_fingerprint
                   JOIN _ws_drawn d USING (account_id)"""
            )
        finally:
            self.store.con.unregister("_ws_wanted")
            self.store.con.unregister("_ws_drawn")
        uses: dict[str, set[str]] = {}
        for kind, value, account in rows:
            uses.setdefault(f"{kind}:{value}", set()).add(str(account))
        return uses

    # -- accounts -------------------------------------------------------------------------------
    def account(self, account_id: str, page: int = 0) -> Account:
        with self.lock:
            self.refresh()
            verdict = self.store.run(
                "SELECT verdict, score, cluster_id, reasons FROM ws_latest WHERE account_id = ?",
                [account_id],
            )
            meta_rows = self.store.run(
                """SELECT created_at, email_domain, country, signup_ip, payment_fingerprint
                   FROM accounts WHERE account_id = ?""",
                [account_id],
            )
            # The folded counter when detection has one (a scan of every exchange otherwise).
            counted = self.store.run(
                "SELECT requests FROM ws_stats WHERE account_id = ?", [account_id]
            )
            total = int(
                counted[0][0]
                if counted
                else self.store.run(
                    "SELECT count(*) FROM exchanges WHERE account_id = ?", [account_id]
                )[0][0]
            )
            templates = (
                {
                    str(v)
                    for (v,) in self.store.run(
                        """SELECT k.value FROM dw_kv k WHERE k.account_id = ? AND k.kind = 'pre'
                           AND (SELECT count(*) FROM dw_kv j WHERE j.kind = 'pre'
                                AND j.value = k.value) >= 2""",
                        [account_id],
                    )
                }
                if self._has("dw_kv")
                else set()
            )
            exchanges = [
                Exchange(
                    str(i), ts, str(m), highlight(p or "", templates), (r or "")[:2000], ip, ua, st
                )
                for i, ts, m, p, r, ip, ua, st in self.store.run(
                    """SELECT id, ts, model, left(prompt, 4000), left(response, 2000), ip,
                              user_agent, status
                       FROM exchanges WHERE account_id = ? ORDER BY ts DESC, id
                       LIMIT ? OFFSET ?""",
                    [account_id, PAGE_SIZE, page * PAGE_SIZE],
                )
            ]
            metadata = {}
            if meta_rows:
                keys = ("created_at", "email_domain", "country", "signup_ip", "payment")
                metadata = {k: v for k, v in zip(keys, meta_rows[0], strict=True) if v is not None}
            return Account(
                account_id=account_id,
                exists=bool(total or meta_rows or verdict),
                verdict=verdict[0][0] if verdict else None,
                score=float(verdict[0][1]) if verdict else None,
                cluster_id=verdict[0][2] if verdict else None,
                reasons=[str(r) for r in _json_list(verdict[0][3])] if verdict else [],
                metadata=metadata,
                features=self._features(account_id),
                timeline=self._account_timeline(account_id),
                exchanges=exchanges,
                exchanges_total=total,
                page=page,
                linked=self._linked(account_id),
                history=self._history(account_id),
                labels=[
                    {"label": lab, "reason": why, "actor": who, "ts": ts}
                    for lab, why, who, ts in self.store.run(
                        """SELECT label, reason, actor, ts FROM labels WHERE account_id = ?
                           ORDER BY ts DESC""",
                        [account_id],
                    )
                ],
                templates=templates,
            )

    def _features(self, account_id: str) -> list[FeatureValue]:
        columns = [name for name, _, _ in FEATURES]
        row = self.store.run(
            f"SELECT {', '.join(columns)} FROM ws_stats WHERE account_id = ?", [account_id]
        )
        if not row:
            return []
        values = row[0]
        ranks = self.store.run(
            "SELECT "
            + ", ".join(
                f"avg(({c} < ?)::DOUBLE) FILTER (WHERE {c} IS NOT NULL) * 100" for c in columns
            )
            + " FROM ws_stats",
            list(values),
        )[0]
        out = []
        for (name, label, fmt), value, rank in zip(FEATURES, values, ranks, strict=True):
            number = None if value is None else float(value)
            out.append(
                FeatureValue(
                    name,
                    label,
                    number,
                    "n/a" if number is None else fmt.format(number),
                    None if number is None or rank is None else float(rank),
                )
            )
        return out

    def _account_timeline(self, account_id: str) -> Series:
        if self._has("dw_hours"):
            rows = self.store.run(
                """SELECT date_trunc('day', hour), sum(uses) FROM dw_hours WHERE account_id = ?
                   GROUP BY 1 ORDER BY 1""",
                [account_id],
            )
        else:
            rows = self.store.run(
                """SELECT date_trunc('day', ts), count(*) FROM exchanges WHERE account_id = ?
                   GROUP BY 1 ORDER BY 1""",
                [account_id],
            )
        return Series("requests per day", [(t, float(n)) for t, n in rows])

    def _linked(
        self, account_id: str, rare: int = 50, limit: int = 20
    ) -> list[tuple[str, int, str]]:
        """Accounts sharing artefacts with this one that fewer than ``rare`` accounts use."""
        if not self._has("dw_kv"):
            return []
        rows = self.store.run(
            f"""WITH mine AS (SELECT kind, value FROM dw_kv WHERE account_id = ?
                              AND kind IN ('ip', 'net', 'ua', 'tls', 'pre', 'suf')),
                    common AS (SELECT k.kind, k.value FROM dw_kv k JOIN mine USING (kind, value)
                               GROUP BY 1, 2 HAVING count(*) BETWEEN 2 AND {int(rare)})
                SELECT k.account_id, count(*), min(k.kind || ': ' || k.value)
                FROM dw_kv k JOIN common USING (kind, value) WHERE k.account_id <> ?
                GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {int(limit)}""",
            [account_id, account_id],
        )
        return [(str(a), int(n), str(e)) for a, n, e in rows]

    def _history(self, account_id: str) -> list[dict[str, Any]]:
        verdicts = self.store.run(
            """SELECT generated_at, verdict, score, run_id FROM verdicts WHERE account_id = ?
               ORDER BY generated_at DESC LIMIT 20""",
            [account_id],
        )
        history = [
            {"ts": ts, "event": f"detection run {run}: {verdict} ({score:.2f})", "actor": "detect"}
            for ts, verdict, score, run in verdicts
        ]
        for action in self.actions_for("account", account_id):
            history.append(
                {
                    "ts": action["created_at"],
                    "actor": action["actor"],
                    "event": f"{action['action']} ({action['state']}): {action['reason']}",
                }
            )
        return sorted(history, key=lambda h: h["ts"], reverse=True)

    def actions_for(self, kind: str, subject: str) -> list[dict[str, Any]]:
        rows = self.store.run(
            """SELECT action_id, created_at, action, expires_at, reasons, actor, lifted_at
               FROM actions WHERE subject_kind = ? AND subject = ? ORDER BY created_at DESC""",
            [kind, subject],
        )
        now = datetime.now(UTC).replace(tzinfo=None)
        out = []
        for action_id, created, action, expires, reasons, actor, lifted in rows:
            state = "lifted" if lifted else "expired" if expires and expires < now else "active"
            out.append(
                {
                    "action_id": action_id,
                    "created_at": created,
                    "action": action,
                    "expires_at": expires,
                    "reason": "; ".join(map(str, _json_list(reasons))),
                    "actor": actor,
                    "lifted_at": lifted,
                    "state": state,
                }
            )
        return out

    # -- search ---------------------------------------------------------------------------------
    def search(self, query: str, limit: int = PAGE_SIZE, offset: int = 0) -> list[SearchHit]:
        """Accounts by id prefix, campaigns by id, artefacts (IP, prefix, user agent, TLS,
        template words) by exact value or prefix, and payment fingerprints exactly."""
        query = query.strip()[:300]
        if not query:
            return []
        pattern = _like(query) + "%"
        with self.lock:
            self.refresh()
            hits = [
                SearchHit("campaign", str(c), f"campaign, score {s:.2f}")
                for c, s in self.store.run(
                    """SELECT campaign_id, score FROM campaigns WHERE run_id = ?
                       AND campaign_id ILIKE ? ESCAPE '\\' ORDER BY campaign_id LIMIT 20""",
                    [self._run, pattern],
                )
            ]
            hits += [
                SearchHit(
                    "account",
                    str(a),
                    f"{v or 'no verdict'} {'' if s is None else f'({s:.2f})'}",
                    str(a),
                )
                for a, v, s in self.store.run(
                    """SELECT s.account_id, l.verdict, l.score FROM ws_stats s
                       LEFT JOIN ws_latest l USING (account_id)
                       WHERE s.account_id ILIKE ? ESCAPE '\\' ORDER BY s.account_id
                       LIMIT ? OFFSET ?""",
                    [pattern, limit, offset],
                )
            ]
            if self._has("dw_kv"):
                hits += [
                    SearchHit(
                        "artefact", f"{ARTEFACT_KINDS.get(k, k)}: {v}", f"used by {a}", str(a)
                    )
                    for k, v, a in self.store.run(
                        """SELECT kind, value, account_id FROM dw_kv
                           WHERE kind IN ('ip', 'net', 'ua', 'tls', 'pre', 'suf')
                             AND (value = ? OR value ILIKE ? ESCAPE '\\')
                           ORDER BY value = ? DESC, kind, value, account_id LIMIT ? OFFSET ?""",
                        [query, pattern, query, limit, offset],
                    )
                ]
            hits += [
                SearchHit("artefact", f"payment instrument: {p}", f"used by {a}", str(a))
                for p, a in self.store.run(
                    """SELECT payment_fingerprint, account_id FROM accounts
                       WHERE payment_fingerprint = ? ORDER BY account_id LIMIT ? OFFSET ?""",
                    [query, limit, offset],
                )
            ]
        return hits

    # -- audit ----------------------------------------------------------------------------------
    def audit_log(self, limit: int = PAGE_SIZE, offset: int = 0) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.store.run(
                """SELECT seq, ts, actor, event, payload, hash FROM audit_log
                   ORDER BY seq DESC LIMIT ? OFFSET ?""",
                [limit, offset],
            )
        return [
            {"seq": s, "ts": t, "actor": a, "event": e, "payload": (p or "")[:600], "hash": h}
            for s, t, a, e, p, h in rows
        ]


def highlight(prompt: str, templates: set[str]) -> list[Segment]:
    """Split a prompt into plain, chain-of-thought-marker and template segments.

    A template segment is the prompt's opening when its masked skeleton (numbers, quoted text
    and code replaced, as template mining masks them) is one of ``templates``; CoT segments are
    matches of the shared chain-of-thought pattern. The text is returned as data: escaping is the
    renderer's job (Jinja autoescape), so nothing here builds markup.
    """
    text = prompt[:4000]
    spans: list[tuple[int, int, str]] = []
    words = skeleton_words(text)
    opening = " ".join(words[:TEMPLATE_WORDS])
    if templates and len(words) >= TEMPLATE_WORDS and opening in templates:
        # The opening skeleton words (template mining's prefix gram): where the last raw one ends.
        end = 0
        for count, match in enumerate(re.finditer(r"\S+", text), 1):
            end = match.end()
            if count >= TEMPLATE_WORDS:
                break
        spans.append((0, end, "template"))
    for match in _COT.finditer(text):
        if not any(s <= match.start() < e for s, e, _ in spans):
            spans.append((match.start(), match.end(), "cot"))
    spans.sort()
    segments, at = [], 0
    for start, end, kind in spans:
        if start < at:
            continue
        if start > at:
            segments.append(Segment(text[at:start]))
        segments.append(Segment(text[start:end], kind))
        at = end
    if at < len(text):
        segments.append(Segment(text[at:]))
    return segments

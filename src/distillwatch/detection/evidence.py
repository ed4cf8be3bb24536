"""Cross-account evidence: what an account shares with others, and how rare that is.

Each signal here is a column of the temp table ``evid`` (one row per account), computed in SQL
from the per-key sums of the folded state (``content``, ``near``, ``kv``), ``acct`` and
``tmpl``. Sharing only counts when it is specific: a template, a payment instrument or a prompt used by a handful to a few thousand accounts, not by everyone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from distillwatch.detection.embedding import LSH_BANDS as _SEM_BANDS
from distillwatch.detection.features import DISPOSABLE_DOMAINS, WEBMAIL_DOMAINS, _sql_list
from distillwatch.detection.rules import MIN_VARIETY_PROMPTS, NOVEL_REACH
from distillwatch.store import Store

#: An artefact shared by more than this share of all accounts is too common to mean anything.
COMMON_SHARE = 0.2
#: Semantic evidence needs this many embedded prompts (one lucky collision is not a pattern).
MIN_SEMANTIC_PROMPTS = 10
MAX_EDGES_PER_KIND = 12
#: Artefact kinds that say what accounts ask (wrappers, prompt texts, MinHash and embedding band
#: signatures), as opposed to who they are (cards, sign-up hours, networks, timing).
CONTENT_KINDS = ("tpl", "txt", "near", "sem")


def _common(store: Store) -> int:
    """The most accounts an artefact may be shared by and still mean something."""
    total = store.run("SELECT count(*) FROM acct")[0][0] or 1
    return max(50, int(total * COMMON_SHARE))


def _shared_share(keys: str, key: str, common: int) -> str:
    """SQL: per account, the share of its uses of ``key`` (rows of ``keys``: account_id, key,
    uses, one per account and key) that 3 to ``common`` accounts have in common."""
    return f"""
            SELECT k.account_id,
                   sum(k.uses) FILTER (WHERE r.accounts >= 3 AND r.accounts <= {common})
                       / sum(k.uses) AS share
            FROM {keys} k
            JOIN (SELECT {key}, count(*) AS accounts FROM {keys} GROUP BY {key}) r USING ({key})
            GROUP BY k.account_id"""


def build_evidence(store: Store, until: datetime | None = None) -> None:
    """Temp table ``evid``. Sign-up evidence (shared payment, creation bursts) looks at every
    account registered by ``until``, active or not: a farm's accounts share cards and sign-up
    hours before most of them have sent a single request."""
    common = _common(store)
    build_lockstep(store, common)
    store.run("DROP TABLE IF EXISTS evid")
    store.run(
        f"""
        CREATE TEMP TABLE evid AS
        WITH tmpl_users AS (
            -- Every account that used a repeated wrapper's words, repeating them or not.
            SELECT CASE kind WHEN 'pre' THEN 'prefix' ELSE 'suffix' END AS side,
                   value AS gram, count(*) AS users
            FROM kv
            WHERE kind IN ('pre', 'suf') AND value IN (SELECT gram FROM tmpl)
            GROUP BY ALL
        ), tmpl_reach AS (
            SELECT side, gram, count(DISTINCT account_id) AS accounts, any_value(u.users) AS users
            FROM tmpl JOIN tmpl_users u USING (side, gram) GROUP BY side, gram
        ), shared_tmpl AS (
            -- Shared when 3+ accounts repeat it and not too many use it at all: one busy
            -- account opening forty requests with "I need help with this", as a third of all
            -- accounts do now and then, shares no wrapper with anyone. (Counting only those
            -- that repeat it would not do: a campaign rotating wrappers uses each now and then.)
            SELECT t.account_id, least(1.0, sum(t.uses) / any_value(t.n)) AS share,
                   count(*) AS templates, max(r.accounts) AS reach
            FROM tmpl t JOIN tmpl_reach r USING (side, gram)
            WHERE r.accounts >= 3 AND r.users <= {common}
            GROUP BY t.account_id
        ), dup AS ({_shared_share("content", "h", common)}
        ), reach AS (
            -- How many accounts sent each prompt.
            SELECT h, count(*) AS accounts FROM content GROUP BY h
        ), novel AS (
            -- Share of an account's distinct prompts that at most NOVEL_REACH accounts sent:
            -- a harvest splits its work, a team running a public suite sends the same items.
            SELECT c.account_id, avg((r.accounts <= {NOVEL_REACH})::DOUBLE) AS share
            FROM content c JOIN reach r USING (h)
            GROUP BY c.account_id
        ), wrapped AS (
            -- An account's prompts behind one of its own repeated wrappers (``tmpl``).
            SELECT c.account_id, c.h FROM content c
            JOIN tmpl t ON t.account_id = c.account_id AND t.side = 'prefix' AND hash(t.gram) = c.pre
            UNION
            SELECT c.account_id, c.h FROM content c
            JOIN tmpl t ON t.account_id = c.account_id AND t.side = 'suffix' AND hash(t.gram) = c.suf
        ), harvest AS (
            -- Different questions (prompt shapes, numbers masked) asked for their reasoning,
            -- novel (at most NOVEL_REACH accounts sent the prompt) and behind one of the
            -- account's own repeated wrappers: what a harvest sends, counted inside whatever
            -- else the account sends (a reseller's genuine end users, a product's own traffic).
            -- A class's shared homework is not novel; people asking for the steps in their own
            -- words are behind no wrapper; a job re-sending one input with a fresh time stamp
            -- asks one question however often it runs.
            SELECT c.account_id, count(DISTINCT c.shape) AS questions
            FROM content c
            JOIN wrapped w USING (account_id, h)
            JOIN reach r USING (h)
            WHERE c.cot AND r.accounts <= {NOVEL_REACH}
            GROUP BY c.account_id
        ), near_dup AS (
            -- Share of an account's MinHash band signatures that collide with prompts of 3+
            -- other accounts: paraphrases and mutations of a shared seed list.
            {_shared_share("near", "sig", common)}
        ), variety AS (
            -- Distinct prompt shapes (the prompt with its numbers masked) per request: about
            -- 1 when every prompt is new, near 0 for a job that re-sends its own few inputs
            -- with a fresh time stamp or counter each run (so exact hashes never repeat).
            -- Rewordings of one question are new shapes: a paraphrase harvest stays varied.
            SELECT account_id, count(DISTINCT shape) / sum(uses) AS variety FROM content
            GROUP BY account_id HAVING sum(uses) >= {MIN_VARIETY_PROMPTS}
        ), sem_reach AS (
            -- Embedding LSH bands that 3+ accounts share *in different words* (more than one
            -- distinct prompt): rewrites of one seed set. Verbatim copies are the copies rule's.
            SELECT sig FROM sem GROUP BY sig
            HAVING count(DISTINCT account_id) BETWEEN 3 AND {common} AND count(DISTINCT h) >= 2
        ), sem_dup AS (
            SELECT s.account_id,
                   sum(s.uses) FILTER (WHERE r.sig IS NOT NULL) / sum(s.uses) AS share
            FROM sem s LEFT JOIN sem_reach r USING (sig) GROUP BY s.account_id
        ), sem_sampled AS (
            SELECT account_id, sum(uses) / {_SEM_BANDS} AS prompts FROM sem GROUP BY account_id
        ), {signup_ctes()}
        , launch AS (
            SELECT sum(new_model_requests) / nullif(sum(after_launch_requests), 0) AS share
            FROM acct
        )
        SELECT a.account_id,
               coalesce(s.share, 0) AS shared_template_share,
               coalesce(s.templates, 0) AS shared_templates,
               coalesce(s.reach, 0) AS template_reach,
               coalesce(d.share, 0) AS duplicate_share,
               coalesce(nv.share, 0) AS novel_share,
               coalesce(hv.questions, 0) AS harvest_questions,
               coalesce(vr.variety, 1.0) AS prompt_variety,
               coalesce(nd.share, 0) AS near_duplicate_share,
               CASE WHEN coalesce(ss.prompts, 0) >= {MIN_SEMANTIC_PROMPTS} THEN coalesce(sd.share, 0)
                    ELSE 0 END AS semantic_share,
               coalesce(sg.payment_shared_with, 0) AS payment_shared_with,
               coalesce(sg.created_near, 0) AS created_near,
               coalesce(ls.partners, 0) AS lockstep_with,
               coalesce(sg.created_burst, false) AS created_burst,
               CASE WHEN a.after_launch_requests >= 5
                    THEN a.new_model_requests / a.after_launch_requests END AS new_model_share,
               (SELECT share FROM launch) AS population_new_model_share,
               CASE WHEN a.created_at IS NOT NULL
                    THEN epoch(a.first_ts - a.created_at) / 86400 END AS age_days
        FROM acct a
        LEFT JOIN shared_tmpl s USING (account_id)
        LEFT JOIN dup d USING (account_id)
        LEFT JOIN novel nv USING (account_id)
        LEFT JOIN harvest hv USING (account_id)
        LEFT JOIN near_dup nd USING (account_id)
        LEFT JOIN variety vr USING (account_id)
        LEFT JOIN sem_dup sd USING (account_id)
        LEFT JOIN sem_sampled ss USING (account_id)
        LEFT JOIN signup sg USING (account_id)
        LEFT JOIN (SELECT account_id, max(reach) - 1 AS partners FROM sync GROUP BY account_id) ls
            USING (account_id)
        """,
        [until, until],
    )


def signup_ctes() -> str:
    """SQL CTEs over the ``accounts`` table (two parameters: the cutoff, twice) ending in
    ``signup`` (account_id, payment_shared_with, created_near, created_burst): the sign-up
    evidence of every account registered by the cutoff. Batch detection joins it into ``evid``;
    the gateway's streaming evidence runs it on the provider's account records
    (:mod:`distillwatch.enforce.streaming`), so both read a card or a burst the same way."""
    public = _sql_list(WEBMAIL_DOMAINS + DISPOSABLE_DOMAINS)
    return f"""registered AS (
            SELECT account_id, created_at, payment_fingerprint,
                   coalesce(email_domain IN ({public}), false)
                       AS public_email
            FROM accounts
            WHERE ?::TIMESTAMP IS NULL OR created_at IS NULL OR created_at <= ?
        ), pay AS (
            -- Several unrelated public-webmail accounts paying with one instrument. Colleagues
            -- on a company card share their company's own mail domain instead.
            SELECT payment_fingerprint, count(*) AS accounts
            FROM registered WHERE payment_fingerprint IS NOT NULL AND public_email
            GROUP BY payment_fingerprint
        ), signup_hours AS (
            SELECT time_bucket(INTERVAL 1 HOUR, created_at) AS hour, count(*) AS signups
            FROM registered WHERE created_at IS NOT NULL GROUP BY 1
        ), hour_series AS (
            SELECT unnest(generate_series(min(hour), max(hour), INTERVAL 1 HOUR)) AS hour
            FROM signup_hours
        ), background AS (
            -- The typical hourly sign-up count over the surrounding day: a median, so that other
            -- bursts that day (another campaign's, a marketing spike) do not raise the bar.
            SELECT s.hour,
                   median(coalesce(h.signups, 0)) OVER (
                       ORDER BY s.hour ROWS BETWEEN 12 PRECEDING AND 12 FOLLOWING)
                       AS hourly_background
            FROM hour_series s LEFT JOIN signup_hours h USING (hour)
        ), bursts AS (
            -- Sign-ups within the hour around this one, against that background: at a large
            -- provider dozens of accounts open every hour, so only a crowd well above it is a
            -- burst.
            SELECT r.account_id,
                   count(*) OVER (ORDER BY r.created_at RANGE BETWEEN INTERVAL 30 MINUTES PRECEDING
                                  AND INTERVAL 30 MINUTES FOLLOWING) - 1 AS created_near,
                   b.hourly_background
            FROM registered r
            JOIN background b ON b.hour = time_bucket(INTERVAL 1 HOUR, r.created_at)
            WHERE r.created_at IS NOT NULL
        ), signup AS (
            SELECT r.account_id,
                   CASE WHEN r.public_email THEN coalesce(p.accounts, 1) - 1 ELSE 0 END
                       AS payment_shared_with,
                   coalesce(b.created_near, 0) AS created_near,
                   coalesce(b.created_near >= 4 AND b.created_near >= 4 * b.hourly_background, false)
                       AS created_burst
            FROM registered r
            LEFT JOIN pay p USING (payment_fingerprint)
            LEFT JOIN bursts b USING (account_id)
        )"""


def signup_features(store: Store, until: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Per account registered by ``until``: its sign-up evidence (:func:`signup_ctes`) and the
    record fields the rules read (``created_at``, ``email_domain``, ``disposable_email``)."""
    rows = store.con.execute(
        f"""WITH {signup_ctes()}
            SELECT s.*, a.created_at, a.email_domain,
                   coalesce(a.email_domain IN ({_sql_list(DISPOSABLE_DOMAINS)}), false)
                       AS disposable_email
            FROM signup s JOIN accounts a USING (account_id)""",
        [until, until],
    )
    names = [d[0] for d in rows.description]
    return {row[0]: dict(zip(names, row, strict=True)) for row in rows.fetchall()}


#: Lockstep: MinHash over each account's set of active 10-minute slots, LSH-banded so accounts
#: whose slot sets overlap with Jaccard J collide in some band with probability 1 - (1 - J^4)^8
#: (0.89 at J = 0.7, 0.40 at J = 0.5, about 1e-6 at J = 0.02 between two unrelated people).
LOCKSTEP_BANDS = 8
LOCKSTEP_ROWS = 4
LOCKSTEP_MIN_SLOTS = 12


#: The clock explains co-activity that survives moving an account's timeline by these many
#: hours: hourly and quarter-hourly cron jobs (1 h), daily jobs and office hours (24 h).
LOCKSTEP_SHIFTS_HOURS = (1, 24)
#: A member counts as in lockstep with its band's group when at most this share of its
#: co-activity with the group remains after the best of those shifts. A clock-driven schedule
#: keeps all of it (about 1.0); for a timeline the clock does not drive, what remains is about
#: the share of slots the group is active in (0.2-0.7 for one scheduler's waves every 20-60
#: minutes).
LOCKSTEP_MAX_CLOCK_SHARE = 0.8


def build_lockstep(store: Store, common: int) -> None:
    """Temp table ``sync`` (account_id, sig, reach): lockstep band signatures shared by 3+ and at
    most ``common`` accounts (CopyCatch/SynchroTrap-style co-activity, one pass, no pair join),
    kept only for members whose co-activity the wall clock does not explain.

    One operator driving many accounts from one scheduler makes them active in the same
    windows; people, even colleagues on one shift, rarely share most of their 10-minute slots.
    But unrelated customers whose cron jobs fire at :00 every hour, or every morning at nine,
    share their slots too, because they share a clock. The null model is a circular-shift test
    (as for spike-train synchrony): move a member's timeline by an hour or a day and measure
    its co-activity with the rest of its band's group again. A clock-driven schedule keeps it
    (the group is active at the same minutes of every hour or day); one operator's jittered
    waves lose it. A member passes when its co-activity after the best shift is at most
    LOCKSTEP_MAX_CLOCK_SHARE of the unshifted one (both over the slots whose shifted slot lies
    in the group's observed span); a band keeps 3+ passing members. Linear in
    (member, slot) rows per band: each member is compared with the group's per-slot counts,
    not with every other member.
    """
    mins = ", ".join(f"min(hash(slot, {i})) AS m{i}" for i in range(LOCKSTEP_BANDS * LOCKSTEP_ROWS))
    bands = " UNION ALL ".join(
        f"SELECT account_id, hash({b}, "
        + ", ".join(f"m{b * LOCKSTEP_ROWS + r}" for r in range(LOCKSTEP_ROWS))
        + ") AS sig FROM sketches"
        for b in range(LOCKSTEP_BANDS)
    )
    store.run("DROP TABLE IF EXISTS sync")
    store.run(
        f"""
        CREATE TEMP TABLE sync AS
        WITH sketches AS (
            SELECT account_id, {mins}
            FROM (SELECT DISTINCT account_id, slot FROM dw_slots)
            GROUP BY account_id HAVING count(*) >= {LOCKSTEP_MIN_SLOTS}
        ), sigs AS ({bands}), reach AS (
            SELECT sig, count(DISTINCT account_id) AS reach FROM sigs GROUP BY sig
        )
        SELECT DISTINCT s.account_id, s.sig, r.reach
        FROM sigs s JOIN reach r USING (sig)
        WHERE r.reach >= 3 AND r.reach <= {common}
        """
    )
    shifts = ", ".join(f"(to_hours({sign}{h}))" for h in LOCKSTEP_SHIFTS_HOURS for sign in "+-")
    store.run(
        f"""
        CREATE OR REPLACE TEMP TABLE sync AS
        WITH slots AS (
            SELECT DISTINCT y.sig, y.account_id, d.slot
            FROM sync y JOIN dw_slots d USING (account_id)
        ), counts AS (
            SELECT sig, slot, count(*) AS c FROM slots GROUP BY sig, slot
        ), span AS (
            SELECT sig, min(slot) AS lo, max(slot) AS hi FROM slots GROUP BY sig
        ), moved AS (
            -- Per shift, over the member's slots whose shifted slot lies inside the group's
            -- observed span (so the first and last day do not count as lost): the other
            -- members active in those slots, and in the shifted ones (itself excluded).
            SELECT s.sig, s.account_id, k.shift,
                   sum(here.c - 1) AS co,
                   sum(coalesce(there.c, 0) - CASE WHEN o.slot IS NULL THEN 0 ELSE 1 END) AS moved
            FROM slots s CROSS JOIN (VALUES {shifts}) k(shift)
            JOIN span p ON p.sig = s.sig AND s.slot + k.shift BETWEEN p.lo AND p.hi
            JOIN counts here ON here.sig = s.sig AND here.slot = s.slot
            LEFT JOIN counts there ON there.sig = s.sig AND there.slot = s.slot + k.shift
            LEFT JOIN slots o ON o.sig = s.sig AND o.account_id = s.account_id
                             AND o.slot = s.slot + k.shift
            GROUP BY s.sig, s.account_id, k.shift
        ), kept AS (
            SELECT sig, account_id FROM moved GROUP BY sig, account_id
            HAVING max(co) > 0
               AND coalesce(max(moved / nullif(co, 0)), 1) <= {LOCKSTEP_MAX_CLOCK_SHARE}
        ), reach AS (
            SELECT sig, count(*) AS reach FROM kept GROUP BY sig HAVING count(*) >= 3
        )
        SELECT k.account_id, k.sig, r.reach FROM kept k JOIN reach r USING (sig)
        """
    )


def artefact_edges(store: Store) -> dict[str, np.ndarray]:
    """Columns ``account_id``, ``artefact`` (a 64-bit hash of kind and value), ``weight`` and
    ``kind`` (``pay``, ``burst``, ``net``, ``tls``, ``sync`` or one of :data:`CONTENT_KINDS`):
    the bipartite account-artefact graph.

    Weights favour specific artefacts: a payment instrument shared by webmail accounts and a
    repeated wrapper weigh most; an IP prefix weighs little and less the more accounts sit
    behind it, so a corporate NAT or a mobile carrier does not glue strangers together.
    Prompt hashes and MinHash bands are filtered to the shared ones before anything else: on
    the disclosure preset almost all of its 20M+ (account, prompt) pairs are unique, and carrying
    them through the reach count and ranking is what ran out of memory.
    """
    common = _common(store)
    return store.con.execute(
        f"""
        WITH pay AS (
            SELECT account_id, 'pay' AS kind, hash('pay', payment_fingerprint) AS artefact,
                   3.0 AS weight
            FROM acct WHERE payment_fingerprint IS NOT NULL AND public_email
        ), tpl AS (
            SELECT account_id, 'tpl', hash('tpl', side, gram), 1.0 + 2.0 * least(share * 2, 1.0)
            FROM tmpl
        ), burst AS (
            SELECT account_id, 'burst', hash('burst', time_bucket(INTERVAL 1 HOUR, created_at)),
                   1.0
            FROM acct WHERE created_at IS NOT NULL
        ), txt AS (
            SELECT account_id, 'txt', hash('txt', h), least(0.5 * uses, 2.0)
            FROM content
            WHERE h IN (SELECT h FROM content GROUP BY h HAVING count(*) BETWEEN 2 AND {common})
        ), near_edges AS (
            SELECT account_id, 'near', hash('near', sig), least(0.25 * uses, 1.0)
            FROM near
            WHERE sig IN (SELECT sig FROM near GROUP BY sig HAVING count(*) BETWEEN 2 AND {common})
        ), sem_edges AS (
            SELECT account_id, 'sem', hash('sem', sig), least(0.25 * sum(uses), 1.0)
            FROM sem
            WHERE sig IN (SELECT sig FROM sem GROUP BY sig
                          HAVING count(DISTINCT account_id) BETWEEN 2 AND {common} AND count(DISTINCT h) >= 2)
            GROUP BY account_id, sig
        ), infra AS (
            -- Network prefixes and TLS client fingerprints: weak alone, and weaker the more
            -- accounts share them (a corporate NAT, a popular browser build).
            SELECT account_id, kind, hash(kind, value), least(0.1 * uses, 1.0)
            FROM kv WHERE kind IN ('net', 'tls')
        ), all_edges AS (
            SELECT * FROM pay UNION ALL SELECT * FROM tpl UNION ALL SELECT * FROM burst
            UNION ALL SELECT * FROM txt UNION ALL SELECT * FROM near_edges UNION ALL SELECT * FROM infra
            UNION ALL SELECT * FROM sem_edges
            UNION ALL SELECT account_id, 'sync', hash('sync', sig), 1.0 FROM sync
        ), reach AS (
            SELECT artefact, count(DISTINCT account_id) AS accounts FROM all_edges GROUP BY artefact
        )
        SELECT e.account_id, e.artefact, e.weight / ln(1 + r.accounts) AS weight, e.kind
        FROM all_edges e JOIN reach r USING (artefact)
        WHERE r.accounts >= 2 AND r.accounts <= {common}
        -- An account's strongest few links of each kind place it as well as all of them do,
        -- and keep the graph (and Leiden's time) linear in accounts, not in requests.
        QUALIFY row_number() OVER (PARTITION BY e.account_id, e.kind
                                   ORDER BY e.weight / ln(1 + r.accounts) DESC, e.artefact)
                <= {MAX_EDGES_PER_KIND}
        ORDER BY e.account_id, e.artefact
        """
    ).fetchnumpy()

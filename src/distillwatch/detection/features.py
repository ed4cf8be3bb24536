"""Per-exchange text features and per-account behaviour, computed in DuckDB SQL.

Everything here is vectorised over the whole log: regexes, hashing and window functions run in
DuckDB's engine on all cores, never as a Python loop over records.
"""

from __future__ import annotations

from datetime import datetime

from distillwatch.detection.rules import MIX_TEMPLATE_USES, TEMPLATE_MIN_SHARE
from distillwatch.detection.text import (
    CAPABILITIES,
    COT_PATTERN,
    NUMBER_PATTERN,
    TEMPLATE_WORDS,
    normalise_sql,
    skeleton_sql,
)
from distillwatch.sharing.artefacts import register_sql
from distillwatch.store import Store

__all__ = ["CAPABILITIES", "COT_PATTERN", "build_account_features", "build_exchange_features"]

DISPOSABLE_DOMAINS = (
    "mailinator.com", "guerrillamail.com", "10minutemail.net", "10minutemail.com",
    "tempmail.dev", "temp-mail.org", "yopmail.com", "sharklasers.com", "trashmail.com",
    "getnada.com", "dispostable.com", "maildrop.cc", "throwawaymail.com", "fakeinbox.com",
)  # fmt: skip
WEBMAIL_DOMAINS = (
    "gmail.com", "outlook.com", "hotmail.com", "yahoo.com", "icloud.com", "proton.me",
    "protonmail.com", "aol.com", "gmx.com", "mail.com", "qq.com", "163.com", "yandex.ru",
)  # fmt: skip


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


#: MinHash over word 3-shingles of the prompt skeleton, banded for locality-sensitive hashing:
#: two prompts share a band signature with probability J^ROWS per band (J = their Jaccard
#: similarity), so paraphrased or lightly mutated prompts collide where exact hashes do not.
MINHASH_BANDS = 4
MINHASH_ROWS = 2
MINHASH_MIN_WORDS = 6
MINHASH_MAX_WORDS = 200


def _minhash_bands_sql() -> str:
    bands = []
    for band in range(MINHASH_BANDS):
        mins = ", ".join(
            f"list_min(list_transform(shingles, lambda s: hash(s, {band * MINHASH_ROWS + row})))"
            for row in range(MINHASH_ROWS)
        )
        bands.append(f"hash({band}, {mins})")
    return f"CASE WHEN len(shingles) > 0 THEN [{', '.join(bands)}] END"


def build_exchange_features(
    store: Store, until: datetime | None, after: datetime | None = None
) -> None:
    """Temp table ``ex``: one row per exchange in ``(after, until]`` with text features."""
    tags = ", ".join(
        f"CASE WHEN regexp_matches(norm, '{pattern.replace(chr(39), chr(39) * 2)}') "
        f"THEN '{name}' END"
        for name, pattern in CAPABILITIES.items()
    )
    store.run("DROP TABLE IF EXISTS ex")
    register_sql(store.con)
    store.run(
        f"""
        CREATE TEMP TABLE ex AS
        WITH base AS (
            SELECT id, account_id, ts, model, n_messages, conversation_id, ip, user_agent,
                   tls_fingerprint, coalesce(completion_tokens, 0) AS completion_tokens,
                   system_prompt, {normalise_sql("prompt")} AS norm
            FROM exchanges
            WHERE (?::TIMESTAMP IS NULL OR ts <= ?) AND (?::TIMESTAMP IS NULL OR ts > ?)
        ), skel AS (
            SELECT *, {skeleton_sql("norm")} AS words
            FROM base
        ), shingled AS (
            SELECT *,
                   CASE WHEN len(words) >= {MINHASH_MIN_WORDS}
                        THEN list_transform(
                            range(1, least(len(words), {MINHASH_MAX_WORDS}) - 1),
                            lambda i: hash(words[i], words[i + 1], words[i + 2]))
                        ELSE [] END AS shingles
            FROM skel
        )
        SELECT id, account_id, ts, model,
               (n_messages > 1 OR conversation_id IS NOT NULL) AS multi_turn,
               ip, user_agent, tls_fingerprint, completion_tokens,
               CASE WHEN system_prompt IS NOT NULL THEN hash(system_prompt) END AS system_hash,
               CASE WHEN ip LIKE '%:%' THEN dw_ip6_prefix(ip)
                    ELSE array_to_string(string_split(ip, '.')[1:3], '.') || '.0/24' END
                   AS ip_prefix,  -- one definition: distillwatch.sharing.artefacts.ip_prefix
               hash(norm) AS content_hash,
               -- The same prompt up to its numbers: a job's time stamps, counters and run ids.
               hash(regexp_replace(norm, '{NUMBER_PATTERN}', '0', 'g')) AS shape_hash,
               CASE WHEN len(words) >= {TEMPLATE_WORDS * 2}
                    THEN array_to_string(words[1:{TEMPLATE_WORDS}], ' ') END AS prefix_gram,
               CASE WHEN len(words) >= {TEMPLATE_WORDS * 2}
                    THEN array_to_string(words[-{TEMPLATE_WORDS}:], ' ') END AS suffix_gram,
               {_minhash_bands_sql()} AS near,
               regexp_matches(norm, '{COT_PATTERN.replace(chr(39), chr(39) * 2)}') AS cot,
               list_filter([{tags}], lambda t: t IS NOT NULL) AS tags
        FROM shingled
        """,
        [until, until, after, after],
    )


def build_account_features(store: Store) -> None:
    """Temp table ``acct``: one row per account, from the folded state (see ``state.py``).

    Every feature here is a function of mergeable per-account aggregates, so an incremental
    run that folds in only new exchanges gives exactly the numbers a full run gives.
    """
    # The append-only state tables, summed per key once for everything downstream.
    for table, source, keys in (
        ("kv", "dw_kv", "kind, value"),
        ("content", "dw_content", "h, shape, cot, pre, suf"),
        ("near", "dw_near", "sig"),
        ("sem", "dw_sem", "sig, h"),
    ):
        store.run(f"DROP TABLE IF EXISTS {table}")
        store.run(
            f"CREATE TEMP TABLE {table} AS SELECT account_id, {keys}, sum(uses) AS uses "
            f"FROM {source} GROUP BY ALL"
        )
    store.run("DROP TABLE IF EXISTS acct")
    store.run(
        f"""
        CREATE TEMP TABLE acct AS
        WITH hours AS (
            SELECT account_id, hour, sum(uses) AS uses FROM dw_hours GROUP BY ALL
        ), hour_of_day AS (
            SELECT account_id, hour(hour) AS h, sum(uses) AS c FROM hours GROUP BY ALL
        ), rhythm AS (
            SELECT account_id, -sum(c / total * log2(c / total)) AS hour_entropy
            FROM (SELECT *, sum(c) OVER (PARTITION BY account_id) AS total FROM hour_of_day)
            GROUP BY account_id
        ), days AS (
            SELECT account_id, count(DISTINCT date_trunc('day', hour)) AS active_days
            FROM hours GROUP BY account_id
        ), distinct_content AS (
            SELECT account_id, count(*) AS distinct_prompts FROM content GROUP BY account_id
        ), multi_model AS (
            -- Prompts sent to more than one model: the shape of a comparative evaluation.
            SELECT account_id, count(*) FILTER (WHERE models > 1) / count(*) AS multi_model_share
            FROM (SELECT account_id, h, count(DISTINCT model) AS models FROM dw_content GROUP BY ALL)
            GROUP BY account_id
        ), span AS (
            SELECT min(first_ts) AS t0, max(last_ts) AS t1 FROM dw_acct
        ), new_models AS (
            -- A model first seen well after the log starts was launched during it.
            SELECT m.model, m.first_seen FROM dw_models m, span s
            WHERE m.first_seen > s.t0 + (s.t1 - s.t0) * 0.1
        ), launch AS (
            SELECT date_trunc('hour', min(first_seen)) AS at FROM new_models
        ), after_launch AS (
            SELECT h.account_id, sum(h.uses) AS after_launch_requests
            FROM hours h, launch l WHERE h.hour >= l.at GROUP BY h.account_id
        ), kinds AS (
            SELECT account_id,
                   count(*) FILTER (WHERE kind = 'ip') AS ips,
                   count(*) FILTER (WHERE kind = 'net') AS prefixes,
                   count(*) FILTER (WHERE kind = 'ua') AS user_agents,
                   count(*) FILTER (WHERE kind = 'tls') AS tls_fingerprints,
                   count(*) FILTER (WHERE kind = 'model') AS models,
                   coalesce(sum(uses) FILTER (
                       WHERE kind = 'model' AND value IN (SELECT model FROM new_models)), 0)
                       AS new_model_requests
            FROM kv GROUP BY account_id
        ), coverage AS (
            SELECT k.account_id,
                   count(*) FILTER (WHERE k.uses >= greatest(2, 0.05 * a.n)) AS capabilities
            FROM kv k JOIN dw_acct a USING (account_id)
            WHERE k.kind = 'tag'
            GROUP BY k.account_id
        )
        SELECT a.account_id, a.n, a.first_ts, a.last_ts,
               coalesce(d.active_days, 0) AS active_days,
               r.hour_entropy,
               dc.distinct_prompts / a.n AS distinct_ratio,
               a.cot / a.n AS cot_rate,
               a.multi_turn / a.n AS multi_turn,
               a.output_sum / a.n AS mean_output,
               coalesce(k.ips, 0) AS ips, coalesce(k.prefixes, 0) AS prefixes,
               coalesce(k.user_agents, 0) AS user_agents,
               coalesce(k.tls_fingerprints, 0) AS tls_fingerprints,
               coalesce(k.models, 0) AS models,
               coalesce(k.new_model_requests, 0) AS new_model_requests,
               coalesce(al.after_launch_requests, 0) AS after_launch_requests,
               CASE WHEN a.gap_n >= 5 AND a.gap_sum > 0
                    THEN sqrt(greatest(0, (a.gap_n * a.gap_sq - a.gap_sum * a.gap_sum)::DOUBLE))
                         / a.gap_sum::DOUBLE END AS gap_cv,
               coalesce(c.capabilities, 0) AS capabilities,
               coalesce(mm.multi_model_share, 0) AS multi_model_share,
               acc.created_at, acc.email_domain, acc.payment_fingerprint, acc.signup_ip,
               coalesce(acc.email_domain IN ({_sql_list(DISPOSABLE_DOMAINS)}), false)
                   AS disposable_email,
               coalesce(acc.email_domain IN ({_sql_list(WEBMAIL_DOMAINS + DISPOSABLE_DOMAINS)}), false)
                   AS public_email
        FROM dw_acct a
        LEFT JOIN rhythm r USING (account_id)
        LEFT JOIN days d USING (account_id)
        LEFT JOIN distinct_content dc USING (account_id)
        LEFT JOIN kinds k USING (account_id)
        LEFT JOIN after_launch al USING (account_id)
        LEFT JOIN coverage c USING (account_id)
        LEFT JOIN multi_model mm USING (account_id)
        LEFT JOIN accounts acc USING (account_id)
        """
    )


def build_templates(store: Store, min_share: float = TEMPLATE_MIN_SHARE, min_count: int = 3,
                    min_uses: int = MIX_TEMPLATE_USES) -> None:  # fmt: skip
    """Temp table ``tmpl``: wrappers an account uses repeatedly (a prefix or suffix gram).

    A gram counts for an account when it starts (or ends) at least ``min_share`` of its
    prompts, ``min_count`` times, or ``min_uses`` of them whatever their share (a harvest's
    wrappers inside a reseller's other traffic). People rarely repeat five identical words at
    the start or end of their requests; harvest wrappers and enterprise templates always do.
    """
    store.run("DROP TABLE IF EXISTS tmpl")
    store.run(
        f"""
        CREATE TEMP TABLE tmpl AS
        SELECT k.account_id, CASE k.kind WHEN 'pre' THEN 'prefix' ELSE 'suffix' END AS side,
               k.value AS gram, k.uses, a.n, k.uses / a.n AS share
        FROM kv k JOIN dw_acct a USING (account_id)
        WHERE k.kind IN ('pre', 'suf') AND k.uses >= {min_count}
          AND (k.uses / a.n >= {min_share} OR k.uses >= {min_uses})
        """
    )

"""Per-exchange text features and per-account behaviour, computed in DuckDB SQL.

Everything here is vectorised over the whole log: regexes, hashing and window functions run in
DuckDB's engine on all cores, never as a Python loop over records.
"""

from __future__ import annotations

from datetime import datetime

from distillwatch.store import Store

#: Chain-of-thought elicitation: the request asks the model to expose its reasoning.
COT_PATTERN = (
    r"step[- ]by[- ]step|chain[- ]of[- ]thought|show (all of )?(your|the) (work|reasoning|steps)"
    r"|<think(ing)?>|think(ing)? (aloud|out loud|carefully)|reason(ing)? (through|about|step)"
    r"|explain your (full |complete )?(reasoning|thought|chain)|internal reasoning"
    r"|intermediate steps|work through (this|the problem)|verify your answer|let'?s think"
)
#: Capability tags (a request may carry several). Sweeping many of them is what harvesters do.
CAPABILITIES = {
    "coding": r"```|\bdef |\bfunction\b|\bclass \w+|\bpython\b|\bjavascript\b|\bc\+\+|\bsql\b"
    r"|\bcode\b|\bprogram\b|\bcompile|\balgorithm",
    "math": r"\bsolve\b|\bequation|\bcalculate|\bhow many\b|\bhow much\b|\bpercent|\bsum of\b"
    r"|\bprobability|\d+\s*[\+\-\*/x]\s*\d+|\btotal\b",
    "agentic": r"\btool|\bapi\b|\bfunction call|\bsearch\(|\bwikipedia\b|\bcalculator\b"
    r"|\bbrowse|\bagent\b|\baction:|\bobservation:",
    "reasoning": COT_PATTERN,
    "roleplay": r"\bimagine you are\b|\bpretend\b|\broleplay|\byou are a\b|\bact as\b"
    r"|\bin character\b|\bas an? \w+ (detective|wizard|pirate|character)",
    "safety": r"\bhack|\bweapon|\bsteal\b|\billegal|\bkill\b|\bdrugs?\b|\bcheat|\bjailbreak"
    r"|\bbypass\b|\bexploit",
    "data_analysis": r"\bdataset|\bcsv\b|\bdataframe|\bpandas\b|\bregression|\bchart\b|\btable\b"
    r"|\bstatistic|\banaly[sz]e the data",
    "writing": r"\bwrite (a|an|me) (poem|story|essay|email|letter|blog|song)|\brewrite\b"
    r"|\bproofread|\bsummari[sz]e",
    "qa": r"^(who|what|when|where|which|why|how) ",
}
DISPOSABLE_DOMAINS = (
    "mailinator.com", "guerrillamail.com", "10minutemail.net", "10minutemail.com",
    "tempmail.dev", "temp-mail.org", "yopmail.com", "sharklasers.com", "trashmail.com",
    "getnada.com", "dispostable.com", "maildrop.cc", "throwawaymail.com", "fakeinbox.com",
)  # fmt: skip
WEBMAIL_DOMAINS = (
    "gmail.com", "outlook.com", "hotmail.com", "yahoo.com", "icloud.com", "proton.me",
    "protonmail.com", "aol.com", "gmx.com", "mail.com", "qq.com", "163.com", "yandex.ru",
)  # fmt: skip
TEMPLATE_WORDS = 5  # a wrapper is at least this many fixed words at either end of the prompt
MAX_PROMPT_CHARS = 4_000


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def build_exchange_features(store: Store, until: datetime | None) -> None:
    """Temp table ``ex``: one row per exchange with normalised text features."""
    tags = ", ".join(
        f"CASE WHEN regexp_matches(norm, '{pattern.replace(chr(39), chr(39) * 2)}') "
        f"THEN '{name}' END"
        for name, pattern in CAPABILITIES.items()
    )
    store.run("DROP TABLE IF EXISTS ex")
    store.run(
        f"""
        CREATE TEMP TABLE ex AS
        WITH base AS (
            SELECT id, account_id, ts, model, n_messages, conversation_id, ip, user_agent,
                   tls_fingerprint, coalesce(completion_tokens, 0) AS completion_tokens,
                   system_prompt,
                   trim(lower(regexp_replace(left(prompt, {MAX_PROMPT_CHARS}), '\\s+', ' ', 'g')))
                       AS norm
            FROM exchanges
            WHERE ? IS NULL OR ts <= ?
        ), skel AS (
            SELECT *,
                   string_split(
                       regexp_replace(regexp_replace(regexp_replace(norm,
                           '```.*?```', ' <code> ', 'g'),
                           '"[^"]{{0,300}}"', '"_"', 'g'),
                           '[0-9]+([.,][0-9]+)*', '0', 'g'),
                       ' ') AS words
            FROM base
        )
        SELECT id, account_id, ts, model, n_messages, conversation_id, ip, user_agent,
               tls_fingerprint, completion_tokens,
               hash(system_prompt) AS system_hash,
               CASE WHEN ip LIKE '%:%'
                    THEN array_to_string(string_split(ip, ':')[1:3], ':') || '::/48'
                    ELSE array_to_string(string_split(ip, '.')[1:3], '.') || '.0/24' END
                   AS ip_prefix,
               hash(norm) AS content_hash,
               CASE WHEN len(words) >= {TEMPLATE_WORDS * 2}
                    THEN array_to_string(words[1:{TEMPLATE_WORDS}], ' ') END AS prefix_gram,
               CASE WHEN len(words) >= {TEMPLATE_WORDS * 2}
                    THEN array_to_string(words[-{TEMPLATE_WORDS}:], ' ') END AS suffix_gram,
               regexp_matches(norm, '{COT_PATTERN.replace(chr(39), chr(39) * 2)}') AS cot,
               list_filter([{tags}], lambda t: t IS NOT NULL) AS tags
        FROM skel
        """,
        [until, until],
    )


def build_account_features(store: Store) -> None:
    """Temp table ``acct``: one row per account with behaviour, content and signup features."""
    store.run("DROP TABLE IF EXISTS acct")
    store.run(
        f"""
        CREATE TEMP TABLE acct AS
        WITH gaps AS (
            SELECT account_id,
                   epoch(ts) - epoch(lag(ts) OVER (PARTITION BY account_id ORDER BY ts)) AS gap
            FROM ex
        ), gap_stats AS (
            SELECT account_id,
                   CASE WHEN count(gap) >= 5 AND avg(gap) > 0 THEN stddev_pop(gap) / avg(gap) END
                       AS gap_cv
            FROM gaps GROUP BY account_id
        ), tag_counts AS (
            SELECT account_id, tag, count(*) AS c
            FROM (SELECT account_id, unnest(tags) AS tag FROM ex) GROUP BY account_id, tag
        ), coverage AS (
            SELECT t.account_id,
                   count(*) FILTER (WHERE t.c >= greatest(2, 0.05 * b.n)) AS capabilities
            FROM tag_counts t JOIN (SELECT account_id, count(*) AS n FROM ex GROUP BY account_id) b
                 USING (account_id)
            GROUP BY t.account_id
        ), launch AS (
            SELECT model, min(ts) AS first_seen FROM ex GROUP BY model
        ), span AS (
            SELECT min(ts) AS t0, max(ts) AS t1 FROM ex
        ), new_models AS (
            -- A model first seen well after the log starts was launched during it.
            SELECT l.model, l.first_seen FROM launch l, span s
            WHERE l.first_seen > s.t0 + (s.t1 - s.t0) * 0.1
        )
        SELECT e.account_id,
               count(*) AS n,
               min(e.ts) AS first_ts, max(e.ts) AS last_ts,
               count(DISTINCT date_trunc('day', e.ts)) AS active_days,
               entropy(hour(e.ts)) AS hour_entropy,
               count(DISTINCT e.content_hash) / count(*) AS distinct_ratio,
               avg(e.cot::INTEGER) AS cot_rate,
               avg((e.n_messages > 1 OR e.conversation_id IS NOT NULL)::INTEGER) AS multi_turn,
               avg(e.completion_tokens) AS mean_output,
               count(DISTINCT e.ip) AS ips,
               count(DISTINCT e.ip_prefix) AS prefixes,
               count(DISTINCT e.user_agent) AS user_agents,
               count(DISTINCT e.tls_fingerprint) AS tls_fingerprints,
               count(DISTINCT e.model) AS models,
               count(*) FILTER (WHERE nm.model IS NOT NULL) AS new_model_requests,
               count(*) FILTER (WHERE e.ts >= (SELECT min(first_seen) FROM new_models))
                   AS after_launch_requests,
               any_value(g.gap_cv) AS gap_cv,
               coalesce(any_value(c.capabilities), 0) AS capabilities,
               any_value(a.created_at) AS created_at,
               any_value(a.email_domain) AS email_domain,
               any_value(a.payment_fingerprint) AS payment_fingerprint,
               any_value(a.signup_ip) AS signup_ip,
               coalesce(any_value(a.email_domain) IN ({_sql_list(DISPOSABLE_DOMAINS)}), false)
                   AS disposable_email,
               coalesce(any_value(a.email_domain) IN ({_sql_list(WEBMAIL_DOMAINS + DISPOSABLE_DOMAINS)}), false)
                   AS public_email
        FROM ex e
        LEFT JOIN new_models nm ON e.model = nm.model
        LEFT JOIN gap_stats g ON e.account_id = g.account_id
        LEFT JOIN coverage c ON e.account_id = c.account_id
        LEFT JOIN accounts a ON e.account_id = a.account_id
        GROUP BY e.account_id
        """
    )


def build_templates(store: Store, min_share: float = 0.1, min_count: int = 3) -> None:
    """Temp table ``tmpl``: wrappers an account uses repeatedly (a prefix or suffix gram).

    A gram counts for an account when it starts (or ends) at least ``min_share`` of its
    prompts, ``min_count`` times. People rarely repeat five identical words at the start or end
    of their requests; harvest wrappers and enterprise templates always do.
    """
    store.run("DROP TABLE IF EXISTS tmpl")
    store.run(
        f"""
        CREATE TEMP TABLE tmpl AS
        WITH grams AS (
            SELECT account_id, 'prefix' AS side, prefix_gram AS gram FROM ex
            WHERE prefix_gram IS NOT NULL
            UNION ALL
            SELECT account_id, 'suffix', suffix_gram FROM ex WHERE suffix_gram IS NOT NULL
        ), totals AS (SELECT account_id, count(*) AS n FROM ex GROUP BY account_id)
        SELECT g.account_id, g.side, g.gram, count(*) AS uses, count(*) / any_value(t.n) AS share
        FROM grams g JOIN totals t USING (account_id)
        GROUP BY g.account_id, g.side, g.gram
        HAVING count(*) >= {min_count} AND count(*) / any_value(t.n) >= {min_share}
        """
    )

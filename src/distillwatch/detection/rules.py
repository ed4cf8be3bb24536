"""Detection's evidence as one table: each rule is one row, used for accounts, pooled cluster
content and cluster coordination alike.

A :class:`Rule` reads one feature of a row (an account's, or a cluster's pooled prompts), applies
when the feature passes its threshold, and adds ``weight`` log-odds times its *strength* (1, the
feature's value, or a linear function of it, capped). Content rules (what the prompts say) are
discounted for accounts with few requests and are pooled over a cluster's members. Every rule
has a reason template that states the numbers behind it, so every verdict can be checked.

:func:`derive` adds the features rules need beyond the SQL ones (ratios to the population,
volume-aware strengths); :func:`evaluate` applies a rule table to a row. ``weights`` (rule name ->
weight) overrides the table's weights, which is how fitted weights are used
(:class:`~distillwatch.detection.scoring.RuleWeights`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

#: Content evidence reaches full weight at this many requests (eight homework questions with
#: "explain step by step" are not a harvest; eighty are worth a look).
FULL_CONTENT_EVIDENCE = 20
#: A share of harvest-like requests this many strong counts in full even when it is a small
#: share of a big account's traffic (a reseller's harvest inside genuine end-user traffic)...
VOLUME_FULL = 300
#: ...provided it is at least this share: 1% of a busy product's traffic is noise, not a mix.
MIN_MIX_SHARE = 0.08
#: Different novel questions an account asked for the reasoning on behind one of its own
#: repeated wrappers (``harvest_questions``: the three things a reasoning harvest does at once,
#: counted prompt by prompt) reach full chain-of-thought strength at this count, inside any
#: amount of other traffic: twice the different questions an account alone needs before it
#: can be called a harvest (MIN_LONE_HARVEST). Asking for the steps alone is what students and
#: careful users do too, hence the larger VOLUME_FULL for the plain count.
HARVEST_FULL = 100
#: A wrapper counts for an account when it starts (or ends) this share of its prompts...
TEMPLATE_MIN_SHARE = 0.1
#: ...or at least this many of them however much else the account sends: a reseller relays a
#: harvest's wrappers inside its end users' traffic, each at a few percent of the whole.
MIX_TEMPLATE_USES = 25


@dataclass(frozen=True)
class Rule:
    """One piece of evidence (see the module docstring)."""

    name: str
    feature: str
    threshold: float
    weight: float
    reason: str
    below: bool = False  # applies when feature <= threshold instead of >=
    min_requests: int = 0
    strength: str = "flag"  # "flag" (1), "value" (the feature), "linear" (intercept + slope * x)
    slope: float = 0.0
    intercept: float = 0.0
    cap: float | None = None  # at most this many log-odds (in absolute value)
    content: bool = False
    when: tuple[tuple[str, str, float], ...] = ()  # further conditions: (feature, "<"|">=", value)
    #: Rules measuring one thing in different ways share a group: the strongest counts in full,
    #: the others at GROUP_DISCOUNT (four views of "these accounts share content" are not four
    #: independent pieces of evidence).
    group: str | None = None


GROUP_DISCOUNT = 0.25


@dataclass
class Evidence:
    points: float
    reason: str
    rule: str = ""
    content: bool = False  # about what the prompts say (pooled across a cluster's members)


def _passes(value: Any, op: str, bound: float) -> bool:
    if value is None:
        return False
    return value < bound if op == "<" else value >= bound


def activation(rule: Rule, row: Mapping[str, Any]) -> float:
    """The rule's strength for ``row`` (0 when it does not apply), before its weight."""
    if row.get("n", 0) < rule.min_requests:
        return 0.0
    value = row.get(rule.feature)
    if value is None or (isinstance(value, bool) and not value and not rule.below):
        return 0.0
    if not (value <= rule.threshold if rule.below else value >= rule.threshold):
        return 0.0
    if not all(_passes(row.get(f), op, bound) for f, op, bound in rule.when):
        return 0.0
    if rule.strength == "value":
        strength = float(value)
    elif rule.strength == "linear":
        strength = rule.intercept + rule.slope * float(value)
    else:
        strength = 1.0
    if rule.content:
        strength *= min(1.0, row.get("n", 0) / FULL_CONTENT_EVIDENCE)
    return strength


def evaluate(rules: tuple[Rule, ...], row: Mapping[str, Any],
             weights: Mapping[str, float] | None = None) -> list[Evidence]:  # fmt: skip
    """The evidence ``rules`` find in ``row``, strongest first."""
    found = []
    for rule in rules:
        strength = activation(rule, row)
        if not strength:
            continue
        weight = weights.get(rule.name, rule.weight) if weights else rule.weight
        points = weight * strength
        if rule.cap is not None:
            points = max(-rule.cap, min(rule.cap, points))
        if abs(points) < 1e-9:
            continue
        try:
            reason = rule.reason.format(**row)
        except (KeyError, ValueError, TypeError):
            reason = rule.name
        found.append(Evidence(points, reason, rule.name, rule.content))
    found.sort(key=lambda e: -abs(e.points))
    groups = {rule.name: rule.group for rule in rules if rule.group}
    seen: set[str] = set()
    for evidence in found:  # strongest first
        group = groups.get(evidence.rule)
        if group is None:
            continue
        if group in seen:
            evidence.points *= GROUP_DISCOUNT
        seen.add(group)
    return found


def derive(row: dict[str, Any], median_output: float, anomaly_rank: float | None = None,
           anomaly_reason: str = "", volume_aware: bool = True) -> dict[str, Any]:  # fmt: skip
    """``row`` with the derived features the rule table reads (a new dict).

    ``volume_aware``: a content share's strength also grows with the count of such requests
    (one account's harvest inside its other traffic); off for a cluster's pooled row, whose
    volume is the sum of its members' and says nothing of a mix.
    """
    n = max(int(row.get("n") or 0), 1)
    out = dict(row)
    dup, near = row.get("duplicate_share") or 0.0, row.get("near_duplicate_share") or 0.0
    out["verbatim_share"] = dup if dup >= 0.75 * near else 0.0
    out["paraphrase_share"] = near if dup < 0.75 * near else 0.0
    harvest = int(row.get("harvest_questions") or 0)
    for name in ("cot_rate", "shared_template_share", "verbatim_share", "paraphrase_share",
                 "semantic_share"):  # fmt: skip
        share = out.get(name) or 0.0
        out[f"{name}_count"] = round(share * n)
        # A harvest inside a big account's traffic is a small share but a large count.
        count = share * n / VOLUME_FULL
        if name == "cot_rate":
            count = max(count, harvest / HARVEST_FULL)
        volume = min(1.0, count) if volume_aware and share >= MIN_MIX_SHARE else 0.0
        out[f"{name}_strength"] = max(share, volume)
    out["harvest_note"] = (
        f"; {harvest:,} of them novel questions behind its own repeated wrappers"
        if harvest and volume_aware
        else ""
    )
    out["output_ratio"] = (row.get("mean_output") or 0.0) / median_output if median_output else None
    share, population = row.get("new_model_share"), row.get("population_new_model_share")
    out["new_model_lift"] = share / population if share is not None and population else None
    out["prefix_rate"] = (row.get("prefixes") or 0) / n
    out["ua_rate"] = (row.get("user_agents") or 0) / n
    out["rotates_prefixes"] = float(out["prefix_rate"] >= 0.3 and (row.get("prefixes") or 0) >= 5)
    out["new_prefix_per_request"] = float(
        out["prefix_rate"] >= 0.8 and (row.get("prefixes") or 0) >= 20
    )
    out["rotates_uas"] = float(out["ua_rate"] >= 0.3 and (row.get("user_agents") or 0) >= 4)
    out["young"] = float(row.get("age_days") is not None and 0 <= row["age_days"] < 3)
    out["anomaly_rank"] = anomaly_rank
    out["anomaly_reason"] = anomaly_reason
    out["median_output"] = median_output
    return out


#: An account flagged on its own evidence alone (no cluster or content group it is in scores
#: as high or holds other accounts so flagged, no partner's indicators link it) has sent at
#: least this many requests: distillation needs data,
#: and a student's eighteen homework questions "step by step" in a class's shared wrapper read
#: like a harvest's first hour. Below it such an account scores at most LONE_SCORE_CAP
#: (suspicious: the gateway's shape rules apply; a campaign or a partner can still flag it).
#: Content evidence itself reaches full weight earlier (FULL_CONTENT_EVIDENCE), for the
#: gateway's streaming evidence, which scores accounts in their first requests.
MIN_LONE_HARVEST = 50
LONE_SCORE_CAP = 0.75
LONE_LOG_ODDS = math.log(LONE_SCORE_CAP / (1 - LONE_SCORE_CAP))
#: ...unless a group it is in has this many accounts so flagged (itself included): three strong
#: accounts linked to one another are a small campaign Leiden split off, not a lone student.
LONE_MAX_STRONG = 3
#: Prompt variety (``prompt_variety``: distinct prompt shapes per request) is measured from
#: this many requests on, and below REPETITIVE_VARIETY an account is repetitive.
MIN_VARIETY_PROMPTS = 20
REPETITIVE_VARIETY = 0.2
#: ...unless at least this share of its prompts ask for reasoning: numeric problems with worked
#: steps share a shape and are each worth distilling.
REASONING_SHAPES_COT = 0.5


#: The account rule table. Weights were set from what the disclosed campaigns had in common and
#: what honest heavy users do, not fitted to one simulator; ``bench detect --leave-one-out``
#: compares them with weights fitted without the tactic being evaluated.
ACCOUNT_RULES: tuple[Rule, ...] = (
    Rule("anomaly", "anomaly_rank", 0.995, 0.8,
         "behaviour more unusual than {anomaly_rank:.1%} of accounts (isolation forest): {anomaly_reason}"),
    Rule("cot", "cot_rate_strength", 0.2, 3.0, min_requests=3, strength="value", content=True,
         reason="{cot_rate:.0%} of {n:,} prompts ({cot_rate_count:,}) ask for step-by-step reasoning (chain-of-thought elicitation){harvest_note}"),
    Rule("shared_templates", "shared_template_share_strength", 0.1, 3.0, strength="value", content=True,
         group="shared_content",
         reason="{shared_template_share:.0%} of prompts ({shared_template_share_count:,}) use {shared_templates} wrapper template(s) also repeated by up to {template_reach} other accounts"),
    Rule("copies", "verbatim_share_strength", 0.1, 2.0, strength="value", content=True,
         group="shared_content",
         reason="{verbatim_share:.0%} of prompts ({verbatim_share_count:,}) are verbatim duplicates of prompts sent by 3+ other accounts"),
    Rule("near_copies", "paraphrase_share_strength", 0.15, 1.5, strength="value", content=True,
         group="shared_content",
         reason="{paraphrase_share:.0%} of prompt MinHash signatures collide with near-duplicate prompts of 3+ other accounts (paraphrased copies)"),
    Rule("semantic_copies", "semantic_share_strength", 0.3, 1.5, strength="value", content=True,
         group="shared_content",
         reason="{semantic_share:.0%} of prompts mean what prompts of 3+ other accounts mean, in other words (embedding neighbours: rewrites of one seed set)"),
    Rule("shared_payment", "payment_shared_with", 2, 1.0, strength="linear", intercept=1.0, slope=0.2, cap=2.5,
         reason="payment instrument shared with {payment_shared_with} other webmail/disposable accounts"),
    # A sign-up burst alone is what an enrolment or an onboarding also looks like: bounded.
    Rule("signup_burst", "created_near", 1, 1.0, strength="linear", intercept=0.5, slope=0.05, cap=1.2,
         when=(("created_burst", ">=", 1),), reason="created within 30 minutes of {created_near} other accounts"),
    Rule("disposable_email", "disposable_email", 1, 0.8, reason="disposable email domain ({email_domain})"),
    Rule("no_rhythm", "hour_entropy", 4.25, 1.0, min_requests=48,
         reason="no diurnal rhythm: requests spread evenly over all 24 hours (entropy {hour_entropy:.2f} of 4.58 bits)"),
    Rule("single_turn", "multi_turn", 0.02, 0.4, below=True, min_requests=20,
         reason="{n:,} requests, all single-turn (no conversations)"),
    Rule("capability_sweep", "capabilities", 4, 0.4, min_requests=20, strength="linear", intercept=-3.0, slope=1.0,
         reason="sweeps {capabilities} capability areas"),
    Rule("long_outputs", "output_ratio", 2.0, 0.5, min_requests=10,
         reason="demands long outputs: {mean_output:.0f} tokens on average vs {median_output:.0f} typical"),
    # Distillation needs rich answers; short, reasoning-free outputs are little worth copying.
    Rule("short_outputs", "output_ratio", 0.5, -1.0, below=True, min_requests=20, when=(("cot_rate", "<", 0.1),),
         reason="asks for short outputs ({mean_output:.0f} tokens vs {median_output:.0f} typical) without reasoning: little to distil"),
    # Distillation needs many distinct questions. An account that re-sends a few prompt shapes
    # (numbers masked: a job's fresh time stamps and counters do not make new questions) asks
    # little that is new, however much it shares with its siblings; a harvest stays near 1
    # (rewordings are new shapes). Not when most prompts ask for reasoning: numeric problems
    # with worked steps are one shape and worth distilling. Cutting variety below the line
    # would cost a harvester most of its requests.
    Rule("repetitive", "prompt_variety", REPETITIVE_VARIETY, -3.0, below=True, min_requests=MIN_VARIETY_PROMPTS,
         when=(("cot_rate", "<", REASONING_SHAPES_COT),),
         reason="re-sends a few prompt shapes ({prompt_variety:.0%} of {n:,} requests are new shapes, numbers masked): a scheduled job, little new to distil"),
    Rule("launch_surge", "new_model_lift", 2.5, 1.0, when=(("new_model_share", ">=", 0.3),),
         reason="{new_model_share:.0%} of its traffic moved to the newly launched model (population: {population_new_model_share:.0%})"),
    Rule("prefix_rotation", "rotates_prefixes", 1, 0.8, min_requests=10, when=(("new_prefix_per_request", "<", 1),),
         reason="rotates through {prefixes:,} network prefixes in {n:,} requests (proxy rotation)"),
    # Homes, offices and phones keep their network for hours; a new /24 on nearly every request
    # is a rotating proxy pool.
    Rule("prefix_per_request", "new_prefix_per_request", 1, 1.5, min_requests=20,
         reason="a different network prefix on nearly every request ({prefixes:,} in {n:,}): a rotating proxy pool"),
    Rule("ua_rotation", "rotates_uas", 1, 0.6, min_requests=10,
         reason="{user_agents:,} different user agents in {n:,} requests"),
    Rule("young_account", "young", 1, 0.4, min_requests=5,
         reason="account was {age_days:.1f} days old at its first request"),
    # One scheduler driving several accounts makes them active in the same windows; people,
    # even colleagues on one shift, rarely share most of their 10-minute slots.
    Rule("lockstep", "lockstep_with", 3, 1.2,
         reason="active in the same 10-minute windows as {lockstep_with} other accounts (one scheduler)"),
    # Comparing models on the same prompts is evaluation; a distiller wants one model's answers.
    # An imported indicator (a partner's, or another deployment's) links the account to a
    # campaign: two jointly rare artefact families, or a card nobody else uses. Decays with the
    # indicators' age (sharing/priors.py).
    Rule("partner_indicator", "partner_link", 0.05, 4.0, strength="value", reason="{partner_reason}"),
    Rule("comparative_evaluation", "multi_model_share", 0.3, -1.5, min_requests=20,
         reason="sends {multi_model_share:.0%} of its prompts to several models (comparative evaluation)"),
)  # fmt: skip
RULES_BY_NAME = {rule.name: rule for rule in ACCOUNT_RULES}
#: Rules about prompt content: pooled over a cluster's members (``pooled_row``).
CONTENT_RULES = tuple(rule for rule in ACCOUNT_RULES if rule.content)
POOLED_SHARES = ("cot_rate", "shared_template_share", "duplicate_share", "near_duplicate_share",
                 "semantic_share")  # fmt: skip


def pooled_row(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One row for a cluster's members together: request-weighted shares, summed volume."""
    volume = sum(r["n"] for r in rows)
    pooled: dict[str, Any] = {"n": volume}
    for name in POOLED_SHARES:
        pooled[name] = sum((r.get(name) or 0.0) * r["n"] for r in rows) / volume if volume else 0.0
    pooled["shared_templates"] = max((r.get("shared_templates") or 0) for r in rows)
    pooled["template_reach"] = max((r.get("template_reach") or 0) for r in rows)
    return derive(pooled, 0.0, volume_aware=False)


@dataclass(frozen=True)
class Coordination:
    """Behaviour that means more when most of a cluster's members show it (account rules)."""

    rule: str  # the account rule a member must pass
    points: float
    words: str
    operator: bool  # a sign that one operator runs the accounts (not just a shared product)


COORDINATION: tuple[Coordination, ...] = (
    Coordination("shared_payment", 1.0, "pay with instruments shared across webmail accounts", True),
    Coordination("disposable_email", 0.5, "signed up with disposable email domains", True),
    # A sign-up burst is also what an enrolment or an onboarding is: not an operator sign alone.
    Coordination("signup_burst", 1.0, "were created in sign-up bursts", False),
    Coordination("lockstep", 0.75, "are active in lockstep (same 10-minute windows)", True),
    Coordination("shared_templates", 0.75, "reuse shared wrapper templates", False),
    Coordination("copies", 0.75, "send copies of each other's prompts", False),
    Coordination("near_copies", 0.75, "send near-copies of each other's prompts", False),
    Coordination("semantic_copies", 0.75, "send rewritten copies of each other's prompts", False),
)  # fmt: skip
MAX_COORDINATION_BONUS = 3.5
#: What a content farm adds (an operator signal; added after MAX_COORDINATION_BONUS caps the
#: members' coordination), and the most a large novel yield adds once an operator is
#: established: log10(yield / YIELD_SCALE), at most YIELD_POINTS.
CONTENT_FARM_POINTS = 3.0
#: ...plus this much per doubling of its members beyond CONTENT_FARM_MEMBERS, to at most
#: MAX_FARM_POINTS in all.
FARM_SIZE_POINTS = 1.0
MAX_FARM_POINTS = 5.0
YIELD_SCALE = 1000
YIELD_POINTS = 1.0
MIN_COORDINATED_CLUSTER = 5
#: A cluster whose members together obtained answers to fewer *novel* prompts than this (distinct
#: prompts at most NOVEL_REACH accounts outside the cluster sent), or fewer than MIN_YIELD_PER_ACCOUNT per member, is not
#: harvesting, whatever its prompts look like: distillation needs data, and every account costs
#: its operator a sign-up. A class that shares its homework (each question asked by most of the
#: class) and adds a few questions of its own, a team running one product, are not campaigns;
#: a harvest splits its work, so its prompts are novel. (Per account, ``novel_share`` counts
#: reach over the whole population: an account alone has no cluster to discount.)
NOVEL_REACH = 3
MIN_CAMPAIGN_YIELD = 100
MIN_YIELD_PER_ACCOUNT = 15
#: ...or, while members have sent fewer than MIN_YIELD_PER_ACCOUNT / YIELD_SHARE_OF_VOLUME
#: requests each, this share of the median member's requests (a campaign seen early).
YIELD_SHARE_OF_VOLUME = 0.5
#: Without an operator signal, content shared across a cluster is a shared product, unless the
#: cluster looks like a content farm: this many members, single-turn traffic at volume, and
#: many distinct prompts per member (an operation spreading one seed set over accounts).
CONTENT_FARM_MEMBERS = 10
CONTENT_FARM_MEDIAN_REQUESTS = 40
CONTENT_FARM_YIELD_PER_ACCOUNT = 30
#: ...or as many novel prompts answered per member counting each member's own (a pool resampled
#: for several answers per prompt, each answer one more training example), when the group splits
#: its work: each novel prompt went, on average, to at most this share of its members. Seventy
#: accounts drawing a few thousand dataset items at random send each to about a tenth of them;
#: a team running one suite on every account sends each item on all of them.
FARM_MAX_PROMPT_SHARE = 0.25
CONTENT_FARM_MAX_MULTI_TURN = 0.05
#: ...and members whose answers are not markedly shorter than the population's typical ones:
#: short outputs behind a shared template are a product's classifier, little worth distilling.
#: Not "at least typical": a harvest of ordinary questions gets answers of ordinary length,
#: and the median moves with whoever else is in the population (long-answer scheduled jobs
#: pushed one such campaign's members just under it).
CONTENT_FARM_MIN_OUTPUT_RATIO = 0.75
#: ...or at least this (the ``short_outputs`` rule's line) when nearly everything the account
#: asks is its group's own (at least NOVEL_FARM_SHARE of its distinct prompts sent by no account
#: outside its group): a harvest's answers are as long as its questions make them, and a seed set
#: of short-answer questions still costs its operator prompts no one else asks, which a shared
#: product's classifier or a team re-running a public suite (its items sent by its teammates and
#: other teams too) does not have.
NOVEL_FARM_MIN_OUTPUT_RATIO = 0.5
NOVEL_FARM_SHARE = 0.9


def harvest_size(row: Mapping[str, Any]) -> int:
    """How many different questions an account had answered: its requests, or, once its prompt
    variety is measured and most of them do not ask for reasoning, its distinct prompt shapes
    (numbers masked). A scheduled job re-sending a dozen inputs with fresh time stamps 1,400
    times obtained a dozen answers, however its wrappers look; numeric problems with worked
    steps share a shape and are each worth distilling (the ``repetitive`` rule's exception)."""
    n = int(row.get("n") or 0)
    variety = row.get("prompt_variety")
    if (
        variety is None
        or n < MIN_VARIETY_PROMPTS
        or (row.get("cot_rate") or 0.0) >= REASONING_SHAPES_COT
    ):
        return n
    return min(n, round(float(variety) * n))


def lone_capped(row: Mapping[str, Any], log_odds: float, group_log_odds: float,
                strong_peers: int) -> bool:  # fmt: skip
    """Whether an account's score is held at LONE_SCORE_CAP: it scores above it with fewer than
    MIN_LONE_HARVEST requests, or different questions (:func:`harvest_size`), and is alone in
    that: no group it is in (a cluster or a content group) scores as high (``group_log_odds``
    at best), no such group has LONE_MAX_STRONG accounts scoring above the cap on their own
    (``strong_peers``, the account included), and no partner's indicators link it."""
    return (
        harvest_size(row) < MIN_LONE_HARVEST
        and not row.get("partner_link")
        and log_odds > LONE_LOG_ODDS
        and group_log_odds < LONE_LOG_ODDS
        and strong_peers < LONE_MAX_STRONG
    )


def farm_output_floor(own_share: float | None) -> float:
    """The shortest answers (a ratio to the typical length) a content farm's member may get,
    given the share of its distinct prompts no account outside its group sent (None: unknown)."""
    return (
        NOVEL_FARM_MIN_OUTPUT_RATIO
        if own_share is not None and own_share >= NOVEL_FARM_SHARE
        else CONTENT_FARM_MIN_OUTPUT_RATIO
    )


def fires(rule_name: str, row: Mapping[str, Any]) -> bool:
    return activation(RULES_BY_NAME[rule_name], row) > 0


def coordinated_beyond_content(row: Mapping[str, Any]) -> bool:
    """Whether an account (a derived row) shows a coordination sign other than what it asks: a
    shared card, a disposable email, a sign-up burst, lockstep with other accounts.

    A content group links its members by content alone. When the group scores high on such
    signs that most of its members share (it is not a content farm), a member with none of them
    is there only for what it asks, and what it asks may be what everyone asks: an evaluation
    vendor running the public benchmark items a capability sweep also walks. It keeps its own
    score (the group's score is not its evidence).
    """
    return any(
        fires(item.rule, row) for item in COORDINATION if not RULES_BY_NAME[item.rule].content
    )


#: Coordination signs in how accounts were made and paid for: a hydra's. (Lockstep says when
#: accounts send, which one scheduler driving a content farm shows as well.)
ACCOUNT_MAKING = ("shared_payment", "disposable_email", "signup_burst")


def made_alike(row: Mapping[str, Any]) -> bool:
    """Whether an account (a derived row) shows a sign of being made alongside others: a card
    shared across webmail accounts, a disposable email domain, a sign-up burst."""
    return any(fires(rule, row) for rule in ACCOUNT_MAKING)


class Coordinated(NamedTuple):
    """What :func:`coordination` found: log-odds, the words for them, and whether the group has
    the shape of a content farm."""

    bonus: float
    words: list[str]
    farm: bool = False


class Harvest(NamedTuple):
    """What a group of accounts obtained: ``prompts``, the distinct novel prompts (at most
    NOVEL_REACH accounts outside the group sent them); ``answers``, the (member, novel prompt)
    pairs (the same prompt answered for three members is three answers); ``distinct``, all its
    distinct prompts; ``own``, those no account outside the group sent."""

    prompts: int
    answers: int
    distinct: int = 0
    own: int = 0

    def own_share(self) -> float | None:
        return self.own / self.distinct if self.distinct else None

    def per_account(self, members: int) -> float:
        return self.prompts / members

    def split(self, members: int) -> bool:
        """Whether the group splits its work (FARM_MAX_PROMPT_SHARE) and each member obtained
        CONTENT_FARM_YIELD_PER_ACCOUNT answers to novel prompts."""
        return (
            self.prompts > 0
            and self.answers >= CONTENT_FARM_YIELD_PER_ACCOUNT * members
            and self.answers <= FARM_MAX_PROMPT_SHARE * self.prompts * members
        )


def coordination(rows: list[Mapping[str, Any]], yield_per_account: float | None = None,
                 split: bool = False, own_share: float | None = None) -> Coordinated:  # fmt: skip
    """Log-odds for coordination only a group shows: most of its members doing the same thing.

    ``yield_per_account``: the cluster's novel prompts per member (None when unknown);
    ``split``: whether it splits a resampled pool among its members (:meth:`Harvest.split`);
    ``own_share``: the share of its distinct prompts no account outside it sent
    (:meth:`Harvest.own_share`; None when unknown).

    Each member already carries its own share of such evidence; what the cluster adds is that
    the same behaviour recurs across most members, which accounts run by different people
    rarely show. Needs MIN_COORDINATED_CLUSTER members and an operator signal (a farm's cards
    or sign-up bursts, one scheduler's lockstep, or the shape of a content farm), and is capped.
    """
    if len(rows) < MIN_COORDINATED_CLUSTER:
        return Coordinated(0.0, [])
    bonus, words, operator, farm = 0.0, [], False, False
    for item in COORDINATION:
        count = sum(fires(item.rule, r) for r in rows)
        if count >= 0.5 * len(rows):
            bonus += item.points
            words.append(f"{count} of {len(rows)} {item.words}")
            operator = operator or item.operator
    if bonus and _content_farm(rows, yield_per_account, split, own_share):
        # The farm's shape is an operator sign of its own, whether or not some members also
        # share cards or sign-up hours: two operations drawing on one seed corpus meet in one
        # content group, and the one with cards must not take the farm's shape from the other.
        operator = farm = True
    if not operator:
        # Shared content without a sign of one operator is a shared product, not a hydra.
        return Coordinated(0.0, [])
    novel = (yield_per_account or 0) * len(rows)
    if novel > YIELD_SCALE:
        points = min(YIELD_POINTS, math.log10(novel / YIELD_SCALE))
        bonus += points
        words.append(f"{novel:,.0f} novel prompts answered in all (+{points:.1f})")
    bonus = min(bonus, MAX_COORDINATION_BONUS)
    if farm:
        # The farm's shape is evidence of its own (many accounts, volume, single turn, rich
        # answers, novel prompts, content shared among them), beyond the members' coordination,
        # and the more accounts share it the less it can be a coincidence of honest customers.
        points = min(
            MAX_FARM_POINTS,
            CONTENT_FARM_POINTS + FARM_SIZE_POINTS * math.log2(len(rows) / CONTENT_FARM_MEMBERS),
        )
        bonus += points
        words.append(
            f"{len(rows)} accounts send single-turn traffic at volume "
            f"(median {_median([r['n'] for r in rows]):.0f} requests, "
            f"{yield_per_account:.0f} novel prompts per account): a content farm (+{points:.1f})"
        )
    return Coordinated(bonus, words, farm)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _content_farm(rows: list[Mapping[str, Any]], yield_per_account: float | None,
                  split: bool = False, own_share: float | None = None) -> bool:  # fmt: skip
    if yield_per_account is None or len(rows) < CONTENT_FARM_MEMBERS:
        return False
    volume = sum(r["n"] for r in rows)
    multi = sum((r.get("multi_turn") or 0.0) * r["n"] for r in rows) / volume if volume else 1.0
    outputs = [r.get("output_ratio") for r in rows if r.get("output_ratio") is not None]
    return (
        _median([r["n"] for r in rows]) >= CONTENT_FARM_MEDIAN_REQUESTS
        and multi <= CONTENT_FARM_MAX_MULTI_TURN
        and bool(outputs)
        and _median(outputs) >= farm_output_floor(own_share)
        and (yield_per_account >= CONTENT_FARM_YIELD_PER_ACCOUNT or split)
        and sum(_value(r, "prompt_variety", 1.0) * r["n"] for r in rows)
        >= FARM_MIN_VARIETY * volume
        and not math.isnan(multi)
    )


#: A member of a content farm sends at least this share of prompts that other accounts also
#: send, near-copy or rewrite (``shared_content_share``).
FARM_MEMBER_SHARE = 0.25
#: ...and, in its content group, at least this share of its distinct prompts are novel (sent by
#: at most NOVEL_REACH accounts outside the group; judged by the pipeline, which knows the
#: groups): a farm splits its work, a team running a public suite sends the same items.
FARM_MIN_NOVEL_SHARE = 0.2
#: ...and its prompts are largely new to itself (``prompt_variety``: distinct prompt shapes,
#: the prompt with its numbers masked, per request; about 1 when every prompt is new): a
#: scheduled job re-sending a few dozen inputs with a fresh time stamp each run has novel
#: strings and no novel questions; a harvest's stay new, reworded ones included.
FARM_MIN_VARIETY = 0.4


def _value(row: Mapping[str, Any], name: str, default: float) -> float:
    value = row.get(name)
    return default if value is None else float(value)


def farm_candidate(row: Mapping[str, Any]) -> bool:
    """Whether an account (a derived row) has a content-farm member's shape on its own: volume
    (content evidence at full weight), single-turn traffic, answers not markedly short,
    a good share of its prompts shared with other accounts in some form, its prompts mostly new
    to the account itself, and not sending its prompts to several models (a farm wants one
    model's answers; comparing is evaluation). Content groups
    (:func:`~distillwatch.detection.graph.content_groups`) form among such accounts only, so an
    ordinary user whose few prompts resemble a campaign's is never drawn into one. What depends
    on the group (novelty, and so the answer-length floor) is :func:`farm_member`'s, once groups
    are known."""
    return (
        (row.get("n") or 0) >= FULL_CONTENT_EVIDENCE
        and (row.get("multi_turn") or 0.0) <= CONTENT_FARM_MAX_MULTI_TURN
        and (row.get("output_ratio") or 0.0) >= NOVEL_FARM_MIN_OUTPUT_RATIO
        and shared_content_share(row) >= FARM_MEMBER_SHARE
        and _value(row, "prompt_variety", 1.0) >= FARM_MIN_VARIETY
        and not fires("comparative_evaluation", row)
    )


def farm_member(row: Mapping[str, Any], novel: float, own: float) -> bool:
    """Whether a farm-shaped account (:func:`farm_candidate`) belongs in its content group, given
    the shares of its distinct prompts that at most NOVEL_REACH accounts outside the group sent
    (``novel``, at least FARM_MIN_NOVEL_SHARE) and that none did (``own``, which sets its
    answer-length floor, :func:`farm_output_floor`). Counted outside the group, not over the
    whole population: a campaign resampling a pool sends each item to several of its own
    accounts, which makes none of it public; a benchmark team's member drawn into a group by
    public items still shares them with its teammates outside it."""
    output = row.get("output_ratio") or 0.0
    return novel >= FARM_MIN_NOVEL_SHARE and output >= farm_output_floor(own)


def shared_content_share(row: Mapping[str, Any]) -> float:
    """The largest share of an account's prompts that other accounts also send: behind shared
    wrappers, verbatim, as MinHash near-copies or as embedding neighbours."""
    return max((row.get(name) or 0.0) for name in POOLED_SHARES if name != "cot_rate")

"""The traffic simulator: a benign population and distillation campaigns, as Contract-1 records.

Generation is per account, each account with its own seeded random stream, so output is
deterministic for a seed and can be streamed in bounded memory at any scale. See
``docs/simulator.md`` for how each persona and tactic is modelled and what calibrates it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import numpy as np

from distillwatch.traffic.corpora import Corpora, Item
from distillwatch.traffic.infrastructure import Infrastructure
from distillwatch.traffic.rewrite import ZH_COT, ZH_STEP_ASKS, ZH_TEMPLATES, paraphrase
from distillwatch.traffic.scenario import PROMPT_SOURCES, BenignPersona, Campaign, Scenario

# People are awake and typing in the day: relative request weight per local hour (0..23).
HUMAN_HOURS = np.array(
    [0.15, 0.08, 0.05, 0.04, 0.04, 0.07, 0.2, 0.45, 0.8, 1.0, 1.1, 1.1,
     0.95, 1.0, 1.1, 1.1, 1.0, 0.9, 0.8, 0.85, 0.9, 0.85, 0.6, 0.3]
)  # fmt: skip
HUMAN_HOURS = HUMAN_HOURS / HUMAN_HOURS.sum()
BUSINESS_HOURS = np.array([0.1] * 7 + [0.6] + [1.0] * 10 + [0.5] + [0.15] * 5)
BUSINESS_HOURS = BUSINESS_HOURS / BUSINESS_HOURS.sum()
TIMEZONES = (-8, -7, -6, -5, -4, -3, 0, 1, 2, 3, 5, 8, 9, 10)

WEBMAIL = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me", "hotmail.com")
DISPOSABLE = (
    "mailinator.com",
    "guerrillamail.com",
    "10minutemail.net",
    "tempmail.dev",
    "yopmail.com",
    "sharklasers.com",
)
COUNTRIES = ("US", "US", "US", "GB", "DE", "FR", "IN", "BR", "CA", "JP", "KR", "SG", "AU", "NL")

# How people phrase a question they have seen elsewhere, and what they ask next.
CASUAL_PREFIXES = (
    "",
    "",
    "",
    "",
    "hey, ",
    "quick question: ",
    "Can you help? ",
    "pls ",
    "I need help with this. ",
)
CASUAL_SUFFIXES = (
    "",
    "",
    "",
    "",
    " thanks!",
    " Keep it short.",
    " Explain simply.",
    " (for a class)",
    "?",
)
#: What a customer's scheduled job asks of its inputs (a digest, a monitor, a report).
JOB_TEMPLATES = (
    "{input}",
    "Summarise the following in three bullet points for our morning digest:\n\n{input}",
    "Check this for anything our support team must act on, then answer it briefly:\n{input}",
    "Translate the answer to this into plain language for a status page: {input}",
    "Daily report job. Question: {input}\nRespond in JSON with keys 'answer' and 'confidence'.",
    "Monitor prompt (regression check): {input}",
)
FOLLOWUPS = (
    "can you make it shorter?", "Thanks! Can you explain the second part again?",
    "What would be a good example of that?", "that's not quite right, try again",
    "Can you put that in a table?", "ok and what about the opposite case?",
    "Rewrite it in a more formal tone.", "why?", "Give me three alternatives.",
    "Can you add comments to the code?", "translate that to Spanish", "summarize in 2 sentences",
)  # fmt: skip

# Harvest wrappers seen in self-instruct style distillation: one campaign reuses a few.
HARVEST_TEMPLATES = (
    "You are an expert assistant generating training data. Task:\n{p}\n\nProvide a complete, high-quality response.",
    "### Instruction:\n{p}\n\n### Response:",
    "Answer the following request as thoroughly as possible.\n\nRequest: {p}",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n{p}",
    "[TASK]\n{p}\n[/TASK]\nRespond in full detail, including all code and explanations.",
    "Q: {p}\nA (detailed):",
    "Please solve this and give a comprehensive answer:\n{p}",
    "Input: {p}\nOutput the best possible answer. Do not skip steps.",
)
# Chain-of-thought elicitation: ask the model to expose its reasoning (what harvesters want).
COT_WRAPPERS = (
    "{p}\n\nThink step by step and show all of your reasoning before the final answer.",
    "{p}\n\nLet's think step by step.",
    "Before answering, reason through the problem carefully inside <thinking></thinking> tags, then give the answer.\n\n{p}",
    "{p}\n\nExplain your full chain of thought, every intermediate step, then the final answer on its own line.",
    "Work through this slowly and write out your internal reasoning in detail:\n{p}",
    "{p}\n\nFirst list your assumptions, then reason step by step, then verify your answer.",
    "{p}\nShow your work.",
    "Reason about this like an expert would, thinking aloud at each step:\n\n{p}",
)
SWEEP_WRAPPERS = (
    "Solve the following problem. Explain your reasoning step by step, then give the final answer.\n\n{p}",
    "{p}",
    "Complete the following task. Return only the solution with a brief explanation.\n\n{p}",
)


def _ident(rng: np.random.Generator, prefix: str, length: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return prefix + "".join(alphabet[i] for i in rng.integers(0, 32, length))


def _hex(rng: np.random.Generator, length: int) -> str:
    return "".join("0123456789abcdef"[i] for i in rng.integers(0, 16, length))


@dataclass
class AccountPlan:
    """Everything fixed about one account before its traffic is generated."""

    account_id: str
    label: str  # "benign" | "campaign"
    persona: str
    campaign_id: str | None
    created_at: datetime
    email_domain: str
    country: str
    signup_ip: str
    payment_fingerprint: str
    index: int
    extra: dict[str, Any] = field(default_factory=dict)


class Simulator:
    """Plans accounts and generates their exchanges for one scenario, seed and scale."""

    def __init__(self, scenario: Scenario, corpora: Corpora, seed: int = 0, scale: float = 1.0):
        self.scenario = scenario
        self.corpora = corpora
        self.seed = seed
        self.scale = scale
        self.rng = np.random.default_rng([seed, 0])
        self.infra = Infrastructure(self.rng)
        self.start = scenario.start
        self.end = scenario.start + timedelta(days=scenario.days)
        self.launch_at = (
            scenario.start + timedelta(days=scenario.launch_day)
            if scenario.launch_day is not None
            else None
        )
        self._rate_factors, self._cvs = self._calibration()
        self._human = self._human_pool()
        self._popular = self._human[: min(60, len(self._human))]
        self._exit_ips: list[str] = []
        self._cloud_prefixes = [self.infra.cloud_prefix() for _ in range(40)]
        self.plans: list[AccountPlan] = []
        self._plan_all()

    # -- calibration ---------------------------------------------------------------------------
    def _calibration(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-account volume multipliers and arrival CVs, from real ServeGen clients."""
        from distillwatch.traffic.corpora import servegen_client_rates

        clients = servegen_client_rates()
        if not clients:
            # Fallback: log-normal with the spread ServeGen shows (sigma ~1.6), CV ~2.
            rates = self.rng.lognormal(0.0, 1.6, 200)
            return rates / np.median(rates), np.full(200, 2.0)
        rates = np.array([c[0] for c in clients])
        cvs = np.array([c[1] for c in clients])
        # Real clients are applications; keep their *spread* of volume, not absolute rates.
        factors = np.clip(rates / np.median(rates), 0.05, 25.0) ** 0.6
        return factors, np.clip(cvs, 0.3, 6.0)

    def _human_pool(self) -> list[Item]:
        items = [item for pool in self.corpora.human.values() for item in pool]
        order = self.rng.permutation(len(items))
        return [items[i] for i in order]

    def _pool(self, name: str) -> list[Item]:
        kind, _, pool = name.partition(":") if ":" in name else ("human", "", name)
        return self.corpora.pool(kind, pool)

    @lru_cache(maxsize=64)  # noqa: B019 - one simulator, a handful of persona pool lists
    def _persona_items(self, pools: tuple[str, ...]) -> list[Item]:
        """Items of the non-human pools a persona names (a benchmark team's benchmark), else
        empty: human prompts come from the shared, per-account-sharded human pool."""
        if all(":" not in p for p in pools):
            return []
        return [item for p in pools if ":" in p for item in self._pool(p)]

    # -- planning ------------------------------------------------------------------------------
    def _count(self, accounts: int) -> int:
        return max(1, round(accounts * self.scale))

    def _plan_all(self) -> None:
        index = 0
        for persona in self.scenario.benign:
            nat_ip = None
            enrolled = self.start - timedelta(days=float(self.rng.uniform(1, 30)))
            for n in range(self._count(persona.accounts)):
                if persona.network == "corporate_nat" and n % persona.accounts_per_nat == 0:
                    nat_ip = self.infra.residential_ip()
                    company = _ident(self.rng, "", 7) + ".com"
                    card = self.infra.payment_fingerprint()
                plan = self._benign_plan(persona, index)
                if persona.network == "corporate_nat":
                    plan.extra.update(nat_ip=nat_ip)
                    plan.email_domain = company
                    plan.payment_fingerprint = card
                    plan.signup_ip = nat_ip
                if persona.network == "proxy_exit":
                    self._exit_ips.append(plan.extra["home_ip"])
                if persona.created_within_minutes:
                    minutes = float(self.rng.uniform(0, persona.created_within_minutes))
                    plan.created_at = enrolled + timedelta(minutes=minutes)
                if persona.timezone is not None:
                    plan.extra["tz"] = persona.timezone
                self.plans.append(plan)
                index += 1
        for campaign in self.scenario.campaigns:
            self.plans.extend(self._campaign_plans(campaign, index))
            index = len(self.plans)

    def _benign_plan(self, persona: BenignPersona, index: int) -> AccountPlan:
        rng = self.rng
        created = self.start - timedelta(days=float(rng.uniform(3, 900)))
        home = self.infra.residential_ip()
        return AccountPlan(
            account_id=_ident(rng, "acct_", 14),
            label="benign",
            persona=persona.persona,
            campaign_id=None,
            created_at=created,
            email_domain=str(rng.choice(WEBMAIL))
            if rng.random() < 0.7
            else _ident(rng, "", 6) + ".io",
            country=str(rng.choice(COUNTRIES)),
            signup_ip=home,
            payment_fingerprint=self.infra.payment_fingerprint(),
            index=index,
            extra={
                "home_ip": home,
                "cloud_ip": self.infra.host(
                    self._cloud_prefixes[rng.integers(0, len(self._cloud_prefixes))]
                ),
                "tz": int(rng.choice(TIMEZONES)),
                "factor": float(self._rate_factors[rng.integers(0, len(self._rate_factors))]),
                "cv": float(self._cvs[rng.integers(0, len(self._cvs))]),
                "ua_browser": self.infra.user_agent("browser"),
                "ua_sdk": self.infra.user_agent("sdk"),
                "api_key": "key_" + _hex(rng, 12),
            },
        )

    def _campaign_plans(self, campaign: Campaign, first_index: int) -> list[AccountPlan]:
        rng = self.rng
        tactics = campaign.tactics
        n = self._count(campaign.accounts)
        burst = tactics.get("account_burst")
        adaptive = "adaptive" in tactics
        cards = [
            self.infra.payment_fingerprint()
            for _ in range(int((burst or {}).get("payment_cards", max(2, n // 8))))
        ]
        campaign_start = self.start + timedelta(days=campaign.start_day)
        if burst:
            burst_times = [
                campaign_start - timedelta(days=float(rng.uniform(0.2, 3)))
                for _ in range(int(burst.get("bursts", 3)))
            ]
        # The campaign's own client stack: scripted harvesters use one or two SDK builds.
        stack_uas = [self.infra.user_agent("sdk") for _ in range(2)]
        stack_tls = self.infra.tls("sdk")
        pool = tactics.get("hydra_pool")
        proxy_ips: list[str] = []
        if pool is not None:
            for _ in range(int(pool.get("prefixes", 30))):
                prefix = self.infra.residential_prefix()
                proxy_ips += [
                    self.infra.host(prefix) for _ in range(int(pool.get("ips_per_prefix", 6)))
                ]
        # Template library: scripted campaigns reuse a few wrappers; adaptive ones rotate many.
        k = int((tactics.get("templated_self_instruct") or {}).get("templates", 3))
        templates = (
            list(HARVEST_TEMPLATES)
            if adaptive
            else list(
                rng.choice(HARVEST_TEMPLATES, size=min(k, len(HARVEST_TEMPLATES)), replace=False)
            )
        )
        cot = tactics.get("cot_elicitation")
        cot_variants = (
            COT_WRAPPERS
            if adaptive
            else tuple(
                rng.choice(COT_WRAPPERS, size=int((cot or {}).get("variants", 2)), replace=False)
            )
        )
        sweep_items: list[Item] = []
        if "capability_sweep" in tactics:
            for name in tactics["capability_sweep"].get("pools", ["gsm8k", "mbpp", "humaneval"]):
                sweep_items += self.corpora.pool("sweep", name)
            order = rng.permutation(len(sweep_items))
            sweep_items = [sweep_items[i] for i in order]
        language = (tactics.get("language") or {}).get("lang", "en")
        if language == "zh":
            templates, cot_variants = list(ZH_TEMPLATES), ZH_COT
            if not adaptive:
                templates = list(
                    rng.choice(ZH_TEMPLATES, size=min(k, len(ZH_TEMPLATES)), replace=False)
                )
                cot_variants = tuple(
                    rng.choice(ZH_COT, size=int((cot or {}).get("variants", 2)), replace=False)
                )
        seeds: list[Item] = []
        if "paraphrase" in tactics:
            options = tactics["paraphrase"]
            source = self.corpora.pool("synthetic", str(options.get("pool", "gpteacher_code")))
            picks = rng.choice(
                len(source), size=min(int(options.get("seeds", 300)), len(source)), replace=False
            )
            seeds = [source[int(i)] for i in picks]
        waves = self._waves(campaign, rng) if "scheduler_waves" in tactics else []
        shared = {
            "proxy_ips": proxy_ips,
            "templates": templates,
            "cot_variants": cot_variants,
            "sweep_items": sweep_items,
            "stack_uas": stack_uas,
            "stack_tls": stack_tls,
            "seeds": seeds,
            "waves": waves,
            "language": language,
        }
        own = "own_infra" in tactics
        # Fresh accounts the operator opens later (replacing banned ones, or scaling up for a
        # launch): the last `share` of the slots, created in a burst just before `from_day` and
        # active only from then on, on the same infrastructure, templates and cards.
        fresh = tactics.get("replacements")
        fresh_from = float((fresh or {}).get("from_day", 4.5))
        fresh_slots = round(n * float((fresh or {}).get("share", 0.0)))
        plans = []
        for j in range(n):
            late = j >= n - fresh_slots
            aged = late and bool((fresh or {}).get("aged", False))
            if aged:  # bought on a market: opened months ago, one at a time
                created = self.start - timedelta(days=float(rng.uniform(30, 300)))
            elif late:
                created = (self.start + timedelta(days=fresh_from)
                           - timedelta(minutes=float(rng.uniform(5, 90))))  # fmt: skip
            elif burst:
                created = burst_times[j % len(burst_times)] + timedelta(
                    minutes=float(rng.uniform(0, 40))
                )
            else:
                created = campaign_start - timedelta(
                    days=float(rng.uniform(1, 300 if own else 120))
                )
            disposable = bool((burst or {}).get("disposable_email", False)) and not aged
            email = str(rng.choice(DISPOSABLE)) if disposable else str(rng.choice(WEBMAIL))
            if own and not disposable and rng.random() < 0.3:
                email = _ident(rng, "", 6) + ".io"  # some use a domain of their own
            home_ip = self.infra.residential_ip()
            signup_ip = proxy_ips[rng.integers(0, len(proxy_ips))] if proxy_ips else home_ip
            family = "browser" if rng.random() < 0.5 else "sdk"
            plans.append(
                AccountPlan(
                    account_id=_ident(rng, "acct_", 14),
                    label="campaign",
                    persona="adaptive_harvester"
                    if adaptive
                    else ("low_and_slow_harvester" if "low_and_slow" in tactics else "harvester"),
                    campaign_id=campaign.id,
                    created_at=created,
                    email_domain=email,
                    country=str(rng.choice(COUNTRIES)),
                    signup_ip=signup_ip,
                    payment_fingerprint=cards[rng.integers(0, len(cards))]
                    if rng.random() < 0.9 and not own
                    else self.infra.payment_fingerprint(),
                    index=first_index + j,
                    extra={
                        "campaign": campaign,
                        "shared": shared,
                        "slot": j,
                        "tz": int(rng.choice(TIMEZONES)),
                        "cloud_ip": self.infra.host(
                            self._cloud_prefixes[rng.integers(0, len(self._cloud_prefixes))]
                        ),
                        "ua_browser": self.infra.user_agent("browser"),
                        "api_key": "key_" + _hex(rng, 12),
                        "home_ip": home_ip,
                        "own_ua": self.infra.user_agent(family),
                        "own_tls": self.infra.tls(family),
                        "ua_sdk": self.infra.user_agent("sdk"),
                        "start_day": fresh_from if late else None,
                    },
                )
            )
        return plans

    def _waves(self, campaign: Campaign, rng: np.random.Generator) -> list[datetime]:
        """One scheduler's wave start times: every ``period_minutes`` (jittered), all day."""
        options = campaign.tactics["scheduler_waves"]
        period = float(options.get("period_minutes", 30))
        start = self.start + timedelta(days=campaign.start_day)
        stop = self.start + timedelta(days=campaign.end_day or self.scenario.days)
        waves, t = [], start + timedelta(minutes=float(rng.uniform(0, period)))
        while t < stop:
            waves.append(t)
            t += timedelta(minutes=period * float(rng.uniform(0.8, 1.2)))
        return waves

    # -- generation ----------------------------------------------------------------------------
    def exchanges(self, plan: AccountPlan) -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng([self.seed, 1, plan.index])
        if plan.label == "benign":
            persona = next(p for p in self.scenario.benign if p.persona == plan.persona)
            yield from self._benign_exchanges(plan, persona, rng)
        else:
            yield from self._campaign_exchanges(plan, plan.extra["campaign"], rng)

    def _times(
        self,
        rng: np.random.Generator,
        day: int,
        count: int,
        hours: np.ndarray | None,
        tz: int,
        cv: float,
        mean_gap: float,
    ) -> list[datetime]:
        """``count`` request times on ``day``, in sessions, with bursty gaps (gamma, given CV)."""
        if count <= 0:
            return []
        times: list[datetime] = []
        remaining = count
        while remaining > 0:
            size = min(remaining, int(rng.geometric(1 / max(1.0, min(8.0, count / 2)))))
            if hours is None:
                start_hour = rng.uniform(0, 24)
            else:
                start_hour = (rng.choice(24, p=hours) - tz) % 24 + rng.uniform(0, 1)
            t = self.start + timedelta(days=day, hours=float(start_hour))
            shape = 1.0 / (cv * cv)
            for _ in range(size):
                times.append(t)
                t += timedelta(seconds=float(rng.gamma(shape, mean_gap / shape)) + 1.0)
            remaining -= size
        return [t for t in times if self.start <= t < self.end]

    def _model(self, rng: np.random.Generator, ts: datetime, surge: float) -> str:
        models = self.scenario.base_models
        if self.launch_at is not None and ts >= self.launch_at:
            share = surge if surge > 0 else 0.08  # ordinary users try a new model too
            if rng.random() < share:
                return self.scenario.launch_model or models[0]
        return (
            models[0]
            if rng.random() < 0.75 or len(models) == 1
            else models[int(rng.integers(1, len(models)))]
        )

    @lru_cache(maxsize=32)  # noqa: B019 - a handful of personas per simulator
    def _homework(self, pool: str, items: int, persona: str) -> tuple[Item, ...]:
        """The assignment one class (persona) works through: ``items`` items of ``pool``."""
        source = self._pool(pool)
        rng = np.random.default_rng([self.seed, 7, len(persona), sum(map(ord, persona))])
        picks = rng.choice(len(source), size=min(items, len(source)), replace=False)
        return tuple(source[int(i)] for i in picks)

    def _human_item(
        self, rng: np.random.Generator, plan: AccountPlan, n: int, pools: list[str]
    ) -> Item:
        if rng.random() < 0.03:
            return self._popular[rng.integers(0, len(self._popular))]  # famous prompts recur
        items = self._persona_items(tuple(pools))
        if items:
            return items[(plan.index * 37 + n) % len(items)]
        # Each account reads its own stretch of the shuffled human pool, so two innocent
        # accounts share a prompt only as often as the pool size forces it.
        return self._human[(plan.index * 53 + n * 7) % len(self._human)]

    def _record(
        self,
        plan: AccountPlan,
        rng: np.random.Generator,
        ts: datetime,
        model: str,
        messages: list[dict[str, str]],
        answer: str | None,
        out_tokens: int,
        ip: str,
        ua: str,
        tls: str,
        conversation: str | None,
    ) -> dict[str, Any]:
        prompt_chars = sum(len(m["content"]) for m in messages)
        completion = int(max(5, rng.lognormal(math.log(out_tokens), 0.6)))
        if answer is None:
            response = f"(simulated reply, {completion} tokens)"
        else:
            response = answer[:2000]
            completion = max(completion // 3, len(answer) // 4)
        record = {
            "id": "req_" + _hex(rng, 24),
            "ts": ts.isoformat(timespec="milliseconds") + "Z",
            "account_id": plan.account_id,
            "model": model,
            "messages": messages,
            "response": response,
            "api_key_id": plan.extra["api_key"],
            "ip": ip,
            "user_agent": ua,
            "tls_fingerprint": tls,
            "endpoint": "/v1/chat/completions",
            "prompt_tokens": prompt_chars // 4 + 8,
            "completion_tokens": completion,
            "status": 200,
            "latency_ms": int(250 + completion * rng.uniform(12, 30)),
        }
        if conversation:
            record["conversation_id"] = conversation
        return record

    def _benign_exchanges(
        self, plan: AccountPlan, persona: BenignPersona, rng: np.random.Generator
    ) -> Iterator[dict[str, Any]]:
        extra = plan.extra
        family = (
            persona.client
            if persona.client != "mixed"
            else ("sdk" if rng.random() < 0.5 else "browser")
        )
        ua = extra["ua_sdk"] if family == "sdk" else extra["ua_browser"]
        tls = self.infra_tls(rng, family)
        ip = {
            "home": extra["home_ip"],
            "proxy_exit": extra["home_ip"],
            "corporate_nat": extra.get("nat_ip", extra["home_ip"]),
            "datacenter": extra["cloud_ip"],
        }[persona.network]
        days = math.ceil(self.scenario.days)
        hours = (
            HUMAN_HOURS
            if persona.diurnal
            else (BUSINESS_HOURS if family == "sdk" and not persona.template else None)
        )
        if persona.models_per_prompt > 1 or persona.repeat_runs > 1:
            yield from self._evaluation_exchanges(plan, persona, rng, ip, ua, tls)
            return
        if persona.schedule_minutes:
            yield from self._scheduled_exchanges(plan, persona, rng, ip, ua, tls)
            return
        n = 0
        if persona.one_shot:
            active = [int(rng.integers(0, days))]
        else:
            active = [d for d in range(days) if rng.random() < persona.active_days]
        for day in active:
            mean = persona.daily_requests * extra["factor"]
            count = int(rng.poisson(mean)) if not persona.one_shot else int(mean)
            gap = 2.0 if family == "sdk" else 45.0
            times = self._times(
                rng,
                day,
                count,
                hours if not persona.one_shot else None,
                extra["tz"],
                extra["cv"],
                gap,
            )
            i = 0
            while i < len(times):
                homework = persona.homework
                if homework and rng.random() < float(homework.get("share", 0.5)):
                    assignment = self._homework(
                        str(homework["pool"]), int(homework.get("items", 12)), persona.persona
                    )
                    item = assignment[n % len(assignment)]
                    text = str(homework.get("wrapper", "{p}")).replace("{p}", item.prompt)
                else:
                    item = self._human_item(rng, plan, n, persona.prompts)
                    text = item.prompt
                    if persona.template:
                        text = persona.template.replace("{input}", item.prompt)
                    elif persona.language == "zh":
                        text = text + ZH_STEP_ASKS[int(rng.integers(0, len(ZH_STEP_ASKS)))]
                    elif family == "browser":
                        text = rng.choice(CASUAL_PREFIXES) + text + rng.choice(CASUAL_SUFFIXES)
                n += 1
                messages = (
                    [{"role": "system", "content": persona.system_prompt}]
                    if persona.system_prompt
                    else []
                )
                messages.append({"role": "user", "content": text})
                turns = 1
                if not persona.template and rng.random() < persona.multi_turn:
                    turns = int(min(len(times) - i, 1 + rng.geometric(0.45)))
                conversation = "conv_" + _hex(rng, 16) if turns > 1 else None
                for turn in range(turns):
                    ts = times[i]
                    yield self._record(
                        plan,
                        rng,
                        ts,
                        self._model(rng, ts, 0.0),
                        list(messages),
                        item.answer if turn == 0 else None,
                        persona.output_tokens,
                        ip,
                        ua,
                        tls,
                        conversation,
                    )
                    i += 1
                    if turn + 1 < turns:
                        follow = (
                            item.followups[turn]
                            if turn < len(item.followups)
                            else str(rng.choice(FOLLOWUPS))
                        )
                        messages.append({"role": "assistant", "content": "(simulated reply)"})
                        messages.append({"role": "user", "content": follow})

    def _evaluation_exchanges(self, plan: AccountPlan, persona: BenignPersona, rng: np.random.Generator,
                              ip: str, ua: str, tls: str) -> Iterator[dict[str, Any]]:  # fmt: skip
        """An evaluation team's runs: the same suite, verbatim, several times, each item sent to
        several models (the point is to compare them)."""
        items = self._persona_items(tuple(persona.prompts)) or self._human
        size = max(1, min(len(items), int(persona.daily_requests)))
        first = (plan.index * 97) % len(items)
        suite = [items[(first + k) % len(items)] for k in range(size)]
        models = [*self.scenario.base_models]
        if self.scenario.launch_model:
            models.append(self.scenario.launch_model)
        days = math.ceil(self.scenario.days)
        for day in sorted(rng.choice(days, size=min(persona.repeat_runs, days), replace=False)):
            t = self.start + timedelta(days=int(day), hours=float(rng.uniform(7, 13)))
            chosen = list(
                rng.choice(models, size=min(persona.models_per_prompt, len(models)), replace=False)
            )
            for item in suite:
                for model in chosen:
                    if (
                        model == self.scenario.launch_model
                        and self.launch_at
                        and t < self.launch_at
                    ):
                        continue
                    if t >= self.end:
                        return
                    yield self._record(plan, rng, t, str(model), [{"role": "user", "content": item.prompt}],
                                       item.answer, persona.output_tokens, ip, ua, tls, None)  # fmt: skip
                    t += timedelta(seconds=float(rng.gamma(2.0, 1.5)) + 0.5)

    def _scheduled_exchanges(self, plan: AccountPlan, persona: BenignPersona, rng: np.random.Generator,
                             ip: str, ua: str, tls: str) -> Iterator[dict[str, Any]]:  # fmt: skip
        """A customer's own scheduled job (a report, a digest, a monitor): its own prompts, every
        ``schedule_minutes`` on the wall clock, like every other cron user's."""
        period = timedelta(minutes=float(persona.schedule_minutes or 60))
        runs_per_day = timedelta(days=1) / period
        per_run = max(1, round(persona.daily_requests * plan.extra["factor"] / runs_per_day))
        # The job's own inputs, re-sent run after run, behind its own instruction; half of the
        # jobs also stamp the run's time into the prompt.
        inputs = [self._human[(plan.index * 53 + k * 7) % len(self._human)]
                  for k in range(int(rng.integers(5, 60)))]  # fmt: skip
        job = JOB_TEMPLATES[int(rng.integers(0, len(JOB_TEMPLATES)))]
        stamped = bool(rng.random() < 0.5)
        t = self.start + timedelta(days=float(rng.uniform(0, 1.5)))
        t = self.start + period * math.ceil((t - self.start) / period)
        n = 0
        while t < self.end:
            moment = t + timedelta(seconds=float(rng.uniform(0, 90)))
            for _ in range(per_run):
                if moment >= self.end:
                    return
                item = inputs[n % len(inputs)]
                n += 1
                text = job.replace("{input}", item.prompt)
                if stamped:
                    text = f"[run {t:%Y-%m-%d %H:%M} UTC] {text}"
                yield self._record(plan, rng, moment, self._model(rng, moment, 0.0),
                                   [{"role": "user", "content": text}], item.answer,
                                   persona.output_tokens, ip, ua, tls, None)  # fmt: skip
                moment += timedelta(seconds=float(rng.gamma(2.0, 1.0)) + 0.5)
            t += period

    def infra_tls(self, rng: np.random.Generator, family: str) -> str:
        return Infrastructure(rng).tls(family)

    def _campaign_prompt(
        self, plan: AccountPlan, campaign: Campaign, rng: np.random.Generator, n: int
    ) -> tuple[str, str | None, str]:
        """(prompt, corpus answer, source kind) for the account's n-th harvest request."""
        tactics = campaign.tactics
        shared = plan.extra["shared"]
        sources = [t for t in PROMPT_SOURCES if t in tactics]
        mix = (tactics.get("mix_legit") or {}).get("share", 0.0) if "mix_legit" in tactics else 0.0
        if mix and rng.random() < mix:
            item = self._human[(plan.index * 53 + n * 7 + 11) % len(self._human)]
            return item.prompt, item.answer, "legit"
        source = sources[int(rng.integers(0, len(sources)))]
        if source == "paraphrase":
            seed = shared["seeds"][int(rng.integers(0, len(shared["seeds"])))]
            text, answer = paraphrase(seed.prompt, rng), seed.answer
        elif source == "capability_sweep":
            items = shared["sweep_items"]
            item = items[(plan.extra["slot"] * 211 + n) % len(items)]
            wrapper = SWEEP_WRAPPERS[(plan.extra["slot"] + n) % len(SWEEP_WRAPPERS)]
            text, answer = wrapper.replace("{p}", item.prompt), item.answer
        elif source == "evol_instruct":
            gen = ("evol_gen0", "evol_gen1", "evol_gen2")[int(rng.integers(0, 3))]
            pool = self.corpora.pool("synthetic", gen)
            item = pool[int(rng.integers(0, len(pool)))]
            text, answer = item.prompt, item.answer
        else:
            names = tactics["templated_self_instruct"].get(
                "pools", ["gpteacher_code", "gpteacher_tools"]
            )
            pool = self.corpora.pool("synthetic", str(names[int(rng.integers(0, len(names)))]))
            if shared["language"] == "zh" and self.corpora.zh.get("arena") and rng.random() < 0.3:
                pool = self.corpora.zh["arena"]  # Chinese-language tasks mixed in
            item = pool[int(rng.integers(0, len(pool)))]
            if tactics["templated_self_instruct"].get("raw"):
                text, answer = item.prompt, item.answer  # the dataset's instructions, as they are
            else:
                template = shared["templates"][int(rng.integers(0, len(shared["templates"])))]
                text, answer = template.replace("{p}", item.prompt), item.answer
        cot = tactics.get("cot_elicitation")
        if cot is not None and rng.random() < float(cot.get("rate", 0.7)):
            wrapper = shared["cot_variants"][int(rng.integers(0, len(shared["cot_variants"])))]
            text = wrapper.replace("{p}", text)
        return text, answer, source

    def _reseller_user(self, plan: AccountPlan, rng: np.random.Generator, ts: datetime, n: int,
                       conversation: list[dict[str, str]], surge: float) -> Iterator[dict[str, Any]]:  # fmt: skip
        """One genuine end-user request relayed by a reseller: human prompts, conversations."""
        if conversation and rng.random() < 0.45:
            conversation.append({"role": "assistant", "content": "(simulated reply)"})
            conversation.append({"role": "user", "content": str(rng.choice(FOLLOWUPS))})
        else:
            item = self._human[(plan.index * 53 + n * 7 + 3) % len(self._human)]
            text = rng.choice(CASUAL_PREFIXES) + item.prompt + rng.choice(CASUAL_SUFFIXES)
            conversation[:] = [{"role": "user", "content": text}]
        conv_id = f"conv_{plan.index}_{len(conversation)}_{n}" if len(conversation) > 1 else None
        yield self._record(plan, rng, ts, self._model(rng, ts, surge), list(conversation), None,
                           250, plan.extra["cloud_ip"], plan.extra["ua_sdk"], plan.extra["own_tls"],
                           conv_id)  # fmt: skip

    def _wave_exchanges(self, plan: AccountPlan, campaign: Campaign, rng: np.random.Generator,
                        surge: float) -> Iterator[dict[str, Any]]:  # fmt: skip
        """One scheduler drives every account: the same waves, nothing else in common."""
        options = campaign.tactics["scheduler_waves"]
        per_wave = float(options.get("per_wave", 3))
        width = float(options.get("wave_minutes", 4))
        join = float(options.get("participation", 0.85))
        n = 0
        for wave in plan.extra["shared"]["waves"]:
            if rng.random() > join:
                continue
            for _ in range(int(rng.poisson(per_wave))):
                ts = wave + timedelta(seconds=float(rng.uniform(0, width * 60)))
                if ts >= self.end:
                    continue
                text, answer, _ = self._campaign_prompt(plan, campaign, rng, n)
                n += 1
                yield self._record(plan, rng, ts, self._model(rng, ts, surge),
                                   [{"role": "user", "content": text}], answer, campaign.output_tokens,
                                   plan.extra["home_ip"], plan.extra["own_ua"], plan.extra["own_tls"], None)  # fmt: skip

    def _campaign_exchanges(
        self, plan: AccountPlan, campaign: Campaign, rng: np.random.Generator
    ) -> Iterator[dict[str, Any]]:
        tactics = campaign.tactics
        shared = plan.extra["shared"]
        adaptive = "adaptive" in tactics
        slow = "low_and_slow" in tactics
        surge = (
            float((tactics.get("launch_surge") or {}).get("share", 0.0))
            if "launch_surge" in tactics
            else 0.0
        )
        start_day = (plan.extra.get("start_day") or campaign.start_day) + float(rng.uniform(0, 0.5))
        end_day = campaign.end_day if campaign.end_day is not None else self.scenario.days
        daily = campaign.daily_requests * (
            float(tactics["low_and_slow"].get("factor", 0.15)) if slow else 1.0
        )
        own = "own_infra" in tactics
        rotate = bool((tactics.get("own_infra") or {}).get("rotate", False))
        reseller = (
            float((tactics.get("reseller") or {}).get("share", 0.25))
            if "reseller" in tactics
            else None
        )
        humanlike = adaptive or slow or reseller is not None
        exit_share = float((tactics.get("hydra_pool") or {}).get("exit_node_overlap", 0.0))
        if shared["waves"]:
            yield from self._wave_exchanges(plan, campaign, rng, surge)
            return
        n = 0
        for day in range(math.floor(start_day), math.ceil(end_day)):
            count = int(rng.poisson(daily * rng.uniform(0.6, 1.4)))
            if (
                self.launch_at is not None
                and surge
                and self.start + timedelta(days=day) >= self.launch_at - timedelta(days=1)
            ):
                count = int(count * 1.3)  # harvesters scale up when a new model lands
            times = self._times(
                rng,
                day,
                count,
                HUMAN_HOURS if humanlike else None,
                plan.extra["tz"],
                1.5 if humanlike else 0.35,
                60.0 if humanlike else 20.0,
            )
            start_at = self.start + timedelta(days=start_day)
            stop_at = self.start + timedelta(days=end_day)
            conversation: list[dict[str, str]] = []
            for ts in times:
                if not start_at <= ts < stop_at:
                    continue
                if reseller is not None and rng.random() >= reseller:
                    # A reseller's genuine end users: people chatting through its product.
                    yield from self._reseller_user(plan, rng, ts, n, conversation, surge)
                    n += 1
                    continue
                text, answer, _ = self._campaign_prompt(plan, campaign, rng, n)
                n += 1
                if own or reseller is not None:
                    ip = (
                        plan.extra["cloud_ip"]
                        if reseller is not None
                        else (
                            Infrastructure(rng).residential_ip()
                            if rotate
                            else plan.extra["home_ip"]
                        )
                    )
                    ua = plan.extra["ua_sdk"] if reseller is not None else plan.extra["own_ua"]
                    tls = plan.extra["own_tls"]
                    yield self._record(plan, rng, ts, self._model(rng, ts, surge),
                                       [{"role": "user", "content": text}], answer,
                                       campaign.output_tokens, ip, ua, tls, None)  # fmt: skip
                    continue
                if shared["proxy_ips"]:
                    if self._exit_ips and rng.random() < exit_share:
                        ip = self._exit_ips[int(rng.integers(0, len(self._exit_ips)))]
                    else:
                        ip = shared["proxy_ips"][int(rng.integers(0, len(shared["proxy_ips"])))]
                elif adaptive:
                    ip = Infrastructure(rng).residential_ip()
                else:
                    ip = plan.extra["cloud_ip"]
                if adaptive:
                    infra = Infrastructure(rng)
                    family = "browser" if rng.random() < 0.6 else "sdk"
                    ua, tls = infra.user_agent(family), infra.tls(family)
                elif slow:
                    ua, tls = plan.extra["ua_browser"], self.infra_tls(rng, "browser")
                else:
                    ua = shared["stack_uas"][plan.extra["slot"] % len(shared["stack_uas"])]
                    tls = shared["stack_tls"]
                yield self._record(
                    plan,
                    rng,
                    ts,
                    self._model(rng, ts, surge),
                    [{"role": "user", "content": text}],
                    answer,
                    campaign.output_tokens,
                    ip,
                    ua,
                    tls,
                    None,
                )

"""Streaming evidence at the gateway: every request updates per-account (and per-cohort)
counters and sketches, and is scored with the batch rule table before any batch run has seen it.

Why: a fresh hydra or a surge onto a new model harvests for hours before a micro-batch has
enough of its traffic to flag it. What each request updates (one Lua script, one round trip, on
Redis; the same logic in process without it):

- **the account**: requests, how many elicit chain-of-thought, are multi-turn, use a wrapper
  template that 3+ accounts share, repeat a prompt 3+ accounts sent, went to a newly launched
  model; output tokens; a HyperLogLog each of its network prefixes and user agents;
- **its cohorts**: its card when the card is an operator sign (it pays for several
  public-webmail accounts, as batch detection defines it), and its sign-up hour when the
  account was created in a burst (batch's ``created_burst``): the same counters pooled over
  every account in the cohort, so a farm's content evidence is at full strength after a few
  requests per account. A burst is what an enrolment also looks like, so a burst cohort's
  pooled evidence counts only while most of its prompts are its own (no three accounts sent
  them): a class sharing its homework is not a harvest splitting its work (batch's yield gate);
- **population sketches**: per template gram and per prompt, a HyperLogLog of the accounts that
  sent it (the "3+ accounts share it" test), the active accounts, the models' first sight.

The account's row is then scored exactly as batch detection scores an account
(:func:`~distillwatch.detection.rules.derive` and :func:`~distillwatch.detection.rules.evaluate`
over :data:`~distillwatch.detection.rules.ACCOUNT_RULES`, prior
:data:`~distillwatch.detection.scoring.PRIOR_LOG_ODDS`), with the sign-up evidence computed by
the same SQL (:func:`~distillwatch.detection.evidence.signup_ctes`) on the provider's account
records, and a cohort's pooled content evidence in place of the account's own when stronger
(as :func:`~distillwatch.detection.scoring.score_clusters` pools a cluster's). Evidence that
needs the whole log (anomaly ranks, lockstep, embeddings, clusters, yields) stays with the
micro-batch. The **stream score** (a probability, higher = more likely distillation) is a
policy fact (``min_stream_score``); the shipped policy shapes, never blocks, on it alone.

Bounded: account state expires after ``idle_seconds`` without a request (Redis ``EXPIRE``; an
LRU of ``max_accounts`` in process), population sketches after ``sketch_seconds``.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from distillwatch.detection.rules import (
    ACCOUNT_RULES,
    CONTENT_RULES,
    YIELD_SHARE_OF_VOLUME,
    derive,
    evaluate,
)
from distillwatch.detection.scoring import PRIOR_LOG_ODDS, sigmoid
from distillwatch.detection.text import (
    capability_tags,
    elicits_reasoning,
    normalise,
    template_grams,
)
from distillwatch.errors import StateError
from distillwatch.sharing.artefacts import ip_prefix

#: A shared artefact counts when 3 to COMMON accounts use it (as in batch: detection/evidence.py).
MIN_REACH = 3
COMMON_SHARE = 0.2
COMMON_FLOOR = 50
#: A model first seen this long after the gateway's first request was launched while it ran;
#: its traffic counts as new-model traffic for NEW_MODEL_SECONDS.
LAUNCH_AFTER_SECONDS = 86_400
NEW_MODEL_SECONDS = 7 * 86_400
#: A card is pooled when it pays for at least this many other public-webmail accounts.
POOLED_CARD_MIN_SHARED = 2
#: Account counters (hash fields).
FIELDS = ("n", "cot", "multi", "tpl", "dup", "newm", "post", "out", "outn")


@dataclass(frozen=True)
class Observation:
    """What one request contributes (everything an attacker chose is already bounded)."""

    account: str
    ts: float  # epoch seconds (replayed time in a replay)
    prefix: str | None
    user_agent: str | None
    grams: tuple[str, ...]
    prompt_hash: str | None
    cot: bool
    multi_turn: bool
    new_model: bool
    after_launch: bool
    cohorts: tuple[str, ...] = ()  # "pay:<card>" (an operator card), "burst:<sign-up hour>"
    tags: tuple[str, ...] = ()  # capability areas (detection.text.CAPABILITIES)


@dataclass
class Snapshot:
    """The account's counters after the request, its cohorts', and the population's."""

    account: dict[str, float]
    cohorts: dict[str, dict[str, float]]
    prefixes: int
    user_agents: int
    population: dict[str, float]


class StreamStore(Protocol):
    async def observe(self, obs: Observation) -> Snapshot: ...
    async def add_output(self, account: str, tokens: int) -> None: ...
    async def first_seen(self, model: str, ts: float) -> tuple[float, float]: ...
    async def accounts(self) -> int: ...
    async def close(self) -> None: ...


def _shared(reach: int, population: int) -> bool:
    return MIN_REACH <= reach <= max(COMMON_FLOOR, int(population * COMMON_SHARE))


class _CappedSet:
    """Distinct members up to ``cap`` (beyond it the count is only known to be >= cap)."""

    __slots__ = ("members",)

    def __init__(self) -> None:
        self.members: set[str] = set()

    def add(self, value: str, cap: int) -> int:
        if len(self.members) < cap:
            self.members.add(value)
        return len(self.members)


class MemoryStream:
    """Streaming state in this process (one replica), bounded LRUs."""

    def __init__(self, max_accounts: int = 200_000, max_sketch_keys: int = 500_000) -> None:
        self.max_accounts = max_accounts
        self.max_sketch_keys = max_sketch_keys
        self._accounts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cohorts: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._reach: OrderedDict[str, _CappedSet] = OrderedDict()
        self._population: set[str] | int = set()
        self._pop = {"new": 0.0, "post": 0.0}
        self._models: dict[str, float] = {}
        self._start: float | None = None

    def _touch(self, table: OrderedDict[str, Any], key: str, make: Any, cap: int) -> Any:
        entry = table.get(key)
        if entry is None:
            entry = table[key] = make()
            if len(table) > cap:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        return entry

    async def observe(self, obs: Observation) -> Snapshot:
        population = self._population
        if isinstance(population, set):
            population.add(obs.account)
            if len(population) > self.max_accounts:
                # Bounded: beyond this many, the active count stays at the bound.
                self._population = len(population)
        active = len(self._population) if isinstance(self._population, set) else self._population
        shared_reach = 0
        for gram in obs.grams:
            count = self._touch(self._reach, "t:" + gram, _CappedSet, self.max_sketch_keys).add(
                obs.account, 10_000
            )
            if _shared(count, active):
                shared_reach = max(shared_reach, count)
        shared_tpl = shared_reach > 0
        dup = False
        if obs.prompt_hash:
            count = self._touch(self._reach, "p:" + obs.prompt_hash, _CappedSet,
                                self.max_sketch_keys).add(obs.account, 10_000)  # fmt: skip
            dup = _shared(count, active)
        state = self._touch(self._accounts, obs.account, _new_account, self.max_accounts)
        increments = _increments(obs, shared_tpl, dup)
        counters = state["c"]
        for name, amount in increments.items():
            counters[name] += amount
        for tag in obs.tags:
            counters[f"tag:{tag}"] = counters.get(f"tag:{tag}", 0.0) + 1
        counters.setdefault("first", obs.ts)
        counters["reach"] = max(counters.get("reach", 0.0), float(shared_reach))
        if obs.prefix:
            state["pfx"].add(obs.prefix, 4096)
        if obs.user_agent:
            state["ua"].add(obs.user_agent, 4096)
        cohorts = {}
        for key in obs.cohorts:
            cohort = self._touch(self._cohorts, key, lambda: dict.fromkeys(FIELDS, 0.0),
                                 self.max_accounts)  # fmt: skip
            for name, amount in increments.items():
                cohort[name] += amount
            cohorts[key] = dict(cohort)
        self._pop["post"] += float(obs.after_launch)
        self._pop["new"] += float(obs.new_model)
        return Snapshot(dict(counters), cohorts, len(state["pfx"].members),
                        len(state["ua"].members), {"active": active, **self._pop})  # fmt: skip

    async def add_output(self, account: str, tokens: int) -> None:
        state = self._accounts.get(account)
        if state is not None:
            state["c"]["out"] += tokens
            state["c"]["outn"] += 1

    async def first_seen(self, model: str, ts: float) -> tuple[float, float]:
        if self._start is None:
            self._start = ts
        self._models.setdefault(model[:128], ts)
        return self._models[model[:128]], self._start

    async def accounts(self) -> int:
        return len(self._accounts)

    async def close(self) -> None:
        return None


def _new_account() -> dict[str, Any]:
    return {"c": dict.fromkeys(FIELDS, 0.0), "pfx": _CappedSet(), "ua": _CappedSet()}


def _increments(obs: Observation, shared_tpl: bool, dup: bool) -> dict[str, float]:
    return {"n": 1.0, "cot": float(obs.cot), "multi": float(obs.multi_turn),
            "tpl": float(shared_tpl), "dup": float(dup), "newm": float(obs.new_model),
            "post": float(obs.after_launch)}  # fmt: skip


#: One round trip per request: update everything, return what scoring needs.
#: KEYS: account hash, account prefix HLL, account UA HLL, population HLL, population hash, then
#: one hash per cohort, one HLL per template gram, and the prompt's HLL.
#: ARGV: account, ts, prefix, ua, cohorts, grams, has prompt, account TTL, sketch TTL, cot,
#: multi, newm, post, then the request's capability tags.
_OBSERVE = """
local account = ARGV[1]
local ncohorts, ngrams, has_prompt = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local ttl, sketch_ttl = tonumber(ARGV[8]), tonumber(ARGV[9])
redis.call('PFADD', KEYS[4], account)
local active = redis.call('PFCOUNT', KEYS[4])
local common = math.max(50, math.floor(active * 0.2))
local first_gram = 6 + ncohorts
local tpl, shared_reach = 0, 0
for i = 0, ngrams - 1 do
  local key = KEYS[first_gram + i]
  redis.call('PFADD', key, account)
  redis.call('EXPIRE', key, sketch_ttl)
  local r = redis.call('PFCOUNT', key)
  if r >= 3 and r <= common then
    tpl = 1
    if r > shared_reach then shared_reach = r end
  end
end
local dup = 0
if has_prompt == 1 then
  local key = KEYS[first_gram + ngrams]
  redis.call('PFADD', key, account)
  redis.call('EXPIRE', key, sketch_ttl)
  local r = redis.call('PFCOUNT', key)
  if r >= 3 and r <= common then dup = 1 end
end
local incr = {n = 1, cot = tonumber(ARGV[10]), multi = tonumber(ARGV[11]), tpl = tpl, dup = dup,
              newm = tonumber(ARGV[12]), post = tonumber(ARGV[13])}
local targets = {KEYS[1]}
for i = 0, ncohorts - 1 do targets[#targets + 1] = KEYS[6 + i] end
for _, key in ipairs(targets) do
  for name, amount in pairs(incr) do
    if amount ~= 0 then redis.call('HINCRBY', key, name, amount) end
  end
  redis.call('EXPIRE', key, ttl)
end
for i = 14, #ARGV do redis.call('HINCRBY', KEYS[1], 'tag:' .. ARGV[i], 1) end
redis.call('HSETNX', KEYS[1], 'first', ARGV[2])
if shared_reach > tonumber(redis.call('HGET', KEYS[1], 'reach') or '0') then
  redis.call('HSET', KEYS[1], 'reach', shared_reach)
end
if ARGV[3] ~= '' then redis.call('PFADD', KEYS[2], ARGV[3]) end
if ARGV[4] ~= '' then redis.call('PFADD', KEYS[3], ARGV[4]) end
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
if incr.post ~= 0 then redis.call('HINCRBY', KEYS[5], 'post', 1) end
if incr.newm ~= 0 then redis.call('HINCRBY', KEYS[5], 'new', 1) end
local cohorts = {}
for i = 0, ncohorts - 1 do cohorts[i + 1] = redis.call('HGETALL', KEYS[6 + i]) end
return {redis.call('HGETALL', KEYS[1]), cohorts, redis.call('PFCOUNT', KEYS[2]),
        redis.call('PFCOUNT', KEYS[3]), active, redis.call('HGETALL', KEYS[5])}
"""


def _pairs(flat: list[Any]) -> dict[str, float]:
    return {
        (flat[i].decode() if isinstance(flat[i], bytes) else flat[i]): float(flat[i + 1])
        for i in range(0, len(flat), 2)
    }


def _digest(value: str) -> str:
    return hashlib.blake2b(value.encode(), digest_size=10).hexdigest()


class RedisStream:
    """Streaming state in Redis, shared by every replica (keys under ``PREFIX`` + ``s:``)."""

    def __init__(self, url: str, prefix: str = "dw:", idle_seconds: int = 2 * 86_400,
                 sketch_seconds: int = 2 * 86_400) -> None:  # fmt: skip
        import redis.asyncio as redis

        self._redis = redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._errors = (redis.RedisError, OSError)
        self._p = prefix + "s:"
        self.idle_seconds = idle_seconds
        self.sketch_seconds = sketch_seconds
        self._script = self._redis.register_script(_OBSERVE)

    async def _do(self, call: Any) -> Any:
        try:
            return await call
        except self._errors as exc:
            raise StateError(f"redis: {exc}") from None

    async def observe(self, obs: Observation) -> Snapshot:
        p, account = self._p, _digest(obs.account)
        keys = [f"{p}a:{account}", f"{p}ap:{account}", f"{p}au:{account}", f"{p}pop", f"{p}poph"]
        keys += [f"{p}k:{_digest(c)}" for c in obs.cohorts]
        keys += [f"{p}g:{_digest(g)}" for g in obs.grams]
        if obs.prompt_hash:
            keys.append(f"{p}q:{obs.prompt_hash}")
        args = [obs.account, repr(obs.ts), obs.prefix or "", obs.user_agent or "",
                len(obs.cohorts), len(obs.grams), int(bool(obs.prompt_hash)), self.idle_seconds,
                self.sketch_seconds, int(obs.cot), int(obs.multi_turn), int(obs.new_model),
                int(obs.after_launch), *obs.tags]  # fmt: skip
        result = await self._do(self._script(keys=keys, args=args))
        cohorts = {c: _pairs(flat) for c, flat in zip(obs.cohorts, result[1], strict=True)}
        population = {"active": float(result[4]), "new": 0.0, "post": 0.0, **_pairs(result[5])}
        return Snapshot(_pairs(result[0]), cohorts, int(result[2]), int(result[3]), population)

    async def add_output(self, account: str, tokens: int) -> None:
        pipe = self._redis.pipeline(transaction=False)
        key = f"{self._p}a:{_digest(account)}"
        pipe.hincrby(key, "out", tokens)
        pipe.hincrby(key, "outn", 1)
        await self._do(pipe.execute())

    async def first_seen(self, model: str, ts: float) -> tuple[float, float]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hsetnx(f"{self._p}models", "\x00start", repr(ts))
        pipe.hsetnx(f"{self._p}models", model[:128], repr(ts))
        pipe.hmget(f"{self._p}models", model[:128], "\x00start")
        *_, (first, start) = await self._do(pipe.execute())
        return float(first), float(start)

    async def accounts(self) -> int:
        return int(await self._do(self._redis.pfcount(f"{self._p}pop")))

    async def close(self) -> None:
        await self._redis.aclose()


@dataclass
class StreamScore:
    """An account's streaming evidence after one request (higher = more likely distillation)."""

    score: float
    log_odds: float
    reasons: list[str] = field(default_factory=list)
    requests: int = 0


class SignupIndex:
    """The provider's account records and their sign-up evidence (the batch SQL), as of the
    request's time: an account counts once it is registered, a burst once its members are.

    Recomputed at most every ``refresh_seconds`` of (replayed) time, and only when accounts
    have registered since; after the first computation in a background thread, so the request
    path never waits for it (a request meanwhile sees the previous figures)."""

    def __init__(self, accounts_file: Path | None, refresh_seconds: float = 60.0) -> None:
        self.refresh_seconds = refresh_seconds
        self.features: dict[str, dict[str, Any]] = {}
        self._computed_at: float | None = None
        self._registered = -1
        self._created: list[float] = []
        self._lock = threading.Lock()
        self._store = None
        if accounts_file is not None:
            from distillwatch.ingest import ingest_accounts
            from distillwatch.quarantine import Quarantine
            from distillwatch.store import Store

            self._store = Store(":memory:")
            # Bad account rows are the proxy's to report (it reads the same file for cards).
            bad = Quarantine(Path(tempfile.gettempdir()) / "distillwatch-signups.quarantine.jsonl")
            try:
                ingest_accounts(accounts_file, self._store, bad)
            finally:
                bad.close()
            rows = self._store.run(
                "SELECT epoch(created_at) FROM accounts WHERE created_at IS NOT NULL ORDER BY 1"
            )
            self._created = [float(r[0]) for r in rows]

    def payments(self) -> dict[str, str]:
        """Account id -> payment fingerprint, from the records."""
        if self._store is None:
            return {}
        rows = self._store.run(
            "SELECT account_id, payment_fingerprint FROM accounts WHERE payment_fingerprint IS NOT NULL"
        )
        return {account: card for account, card in rows}

    def get(self, account: str, now: float) -> dict[str, Any] | None:
        if self._store is None:
            return None
        if self._computed_at is None:
            self._recompute(now, bisect.bisect_right(self._created, now))
        elif abs(now - self._computed_at) >= self.refresh_seconds:
            registered = bisect.bisect_right(self._created, now)
            if registered == self._registered:
                self._computed_at = now
            elif not self._lock.locked():
                self._computed_at = now
                threading.Thread(
                    target=self._recompute, args=(now, registered), daemon=True
                ).start()
        return self.features.get(account)

    def refresh(self, now: float) -> None:
        """Recompute now, in this thread (tests, and callers that must see the latest)."""
        if self._store is not None:
            self._recompute(now, bisect.bisect_right(self._created, now))

    def _recompute(self, now: float, registered: int) -> None:
        from distillwatch.detection.evidence import signup_features

        with self._lock:
            until = datetime.fromtimestamp(now, UTC).replace(tzinfo=None)
            self.features = signup_features(self._store, until)  # type: ignore[arg-type]
            self._computed_at, self._registered = now, registered


class StreamingEvidence:
    """Per-request evidence: ``assess`` updates the streaming state and scores the account.

    Parameters: ``store`` (:class:`MemoryStream` or :class:`RedisStream`), ``signups`` (the
    account records), ``prior`` (log-odds before evidence, batch's), ``payments`` (account ->
    card; by default the records' own). State learned as it runs:
    ``median_output_`` (the population's typical output length, from a reservoir).
    """

    def __init__(self, store: StreamStore, signups: SignupIndex | None = None,
                 prior: float = PRIOR_LOG_ODDS, payments: dict[str, str] | None = None) -> None:  # fmt: skip
        self.store = store
        self.signups = signups
        self.prior = prior
        self.payments = (
            payments if payments is not None else (signups.payments() if signups else {})
        )
        self.median_output_ = 0.0
        self._outputs: list[int] = []
        self._seen_outputs = 0
        self._rng = random.Random(0)
        self._models: dict[str, tuple[float, float]] = {}

    def _cohorts(self, account: str, signup: dict[str, Any] | None) -> tuple[str, ...]:
        """The account's operator card and its sign-up burst hour, where it has them."""
        if signup is None:
            return ()
        cohorts = []
        card = self.payments.get(account)
        if card and (signup.get("payment_shared_with") or 0) >= POOLED_CARD_MIN_SHARED:
            cohorts.append(f"pay:{card}")
        created = signup.get("created_at")
        if signup.get("created_burst") and created is not None:
            cohorts.append(f"burst:{created.strftime('%Y-%m-%dT%H')}")
        return tuple(cohorts)

    async def _launch_flags(self, model: str, ts: float) -> tuple[bool, bool]:
        known = self._models.get(model)
        if known is None or len(self._models) > 256:
            known = await self.store.first_seen(model, ts)
            if len(self._models) < 256:
                self._models[model] = known
        first, start = known
        launched = [f for f, s in self._models.values() if f - s >= LAUNCH_AFTER_SECONDS]
        launch = min(launched) if launched else None
        is_new = first - start >= LAUNCH_AFTER_SECONDS and ts - first <= NEW_MODEL_SECONDS
        return is_new, launch is not None and ts >= launch

    async def assess(self, account: str, ip: str | None, user_agent: str | None, prompt: str,
                     multi_turn: bool, model: str | None, when: datetime) -> StreamScore:  # fmt: skip
        ts = when.replace(tzinfo=UTC).timestamp()
        signup = self.signups.get(account, ts) if self.signups else None
        cohorts = self._cohorts(account, signup)
        prefix, suffix = template_grams(prompt)
        grams = () if prefix is None else (f"prefix:{prefix}", f"suffix:{suffix}")
        norm = normalise(prompt)
        new_model, after_launch = await self._launch_flags(model or "", ts)
        obs = Observation(account, ts, ip_prefix(ip) if ip else None,
                          (user_agent or "")[:256] or None, grams,
                          _digest(norm) if norm else None, elicits_reasoning(prompt), multi_turn,
                          new_model, after_launch, cohorts, capability_tags(prompt))  # fmt: skip
        snap = await self.store.observe(obs)
        return self.score(snap, signup, ts)

    def score(self, snap: Snapshot, signup: dict[str, Any] | None, ts: float) -> StreamScore:
        row = online_row(snap.account, snap, signup, ts)
        derived = derive(row, self.median_output_)
        evidence = evaluate(ACCOUNT_RULES, derived)
        behaviour = sum(e.points for e in evidence if not e.content)
        content = sum(e.points for e in evidence if e.content)
        reasons = [e.reason for e in evidence]
        for key, counters in snap.cohorts.items():
            n = max(counters.get("n", 0.0), 1.0)
            kind = key.split(":", 1)[0]
            if kind == "burst" and 1 - counters.get("dup", 0.0) / n < YIELD_SHARE_OF_VOLUME:
                continue  # most of its prompts are shared ones: not a harvest's yield
            pooled = evaluate(CONTENT_RULES, derive(online_row(counters, snap, None, ts), 0.0,
                                                    volume_aware=False))  # fmt: skip
            points = sum(e.points for e in pooled)
            if points > content:
                content = points
                who = ("accounts paying with one shared card" if kind == "pay"
                       else "accounts created in the same sign-up burst")  # fmt: skip
                reasons = [e.reason for e in evidence if not e.content] + [
                    f"pooled over the {int(n):,} requests of {who}: {e.reason}" for e in pooled
                ]
        log_odds = self.prior + behaviour + content
        return StreamScore(sigmoid(log_odds), log_odds, reasons[:4], int(snap.account.get("n", 0)))

    async def add_output(self, account: str, tokens: int, when: datetime) -> None:
        """Count a served answer's output tokens (the account's and the population's)."""
        self._seen_outputs += 1
        if len(self._outputs) < 2048:
            self._outputs.append(tokens)
        elif (slot := self._rng.randrange(self._seen_outputs)) < 2048:
            self._outputs[slot] = tokens
        if self._seen_outputs % 256 == 1:
            ordered = sorted(self._outputs)
            self.median_output_ = float(ordered[len(ordered) // 2])
        await self.store.add_output(account, tokens)


def online_row(counters: dict[str, float], snap: Snapshot, signup: dict[str, Any] | None,
         ts: float) -> dict[str, Any]:  # fmt: skip
    """A row with the batch feature names (:mod:`distillwatch.detection.features`)."""
    n = max(counters.get("n", 0.0), 1.0)
    row: dict[str, Any] = {
        "n": int(n),
        "cot_rate": counters.get("cot", 0.0) / n,
        "multi_turn": counters.get("multi", 0.0) / n,
        "shared_template_share": counters.get("tpl", 0.0) / n,
        "shared_templates": 1 if counters.get("tpl") else 0,
        "template_reach": int(counters.get("reach", 0)),
        "duplicate_share": counters.get("dup", 0.0) / n,
        "near_duplicate_share": counters.get("dup", 0.0) / n,
        "prefixes": snap.prefixes,
        "user_agents": snap.user_agents,
        "mean_output": counters["out"] / counters["outn"] if counters.get("outn") else None,
        # Capability areas used at least twice and by 5% of its requests (batch: features.py).
        "capabilities": sum(1 for k, v in counters.items()
                            if k.startswith("tag:") and v >= max(2.0, 0.05 * n)),
    }  # fmt: skip
    post = counters.get("post", 0.0)
    population = snap.population
    if post >= 5:
        row["new_model_share"] = counters.get("newm", 0.0) / post
        if population.get("post"):
            row["population_new_model_share"] = population.get("new", 0.0) / population["post"]
    if signup is not None:
        row.update({k: signup.get(k) for k in ("payment_shared_with", "created_near",
                                               "created_burst", "email_domain", "disposable_email")})  # fmt: skip
        created = signup.get("created_at")
        first = counters.get("first")
        if created is not None and first is not None:
            row["age_days"] = (first - created.replace(tzinfo=UTC).timestamp()) / 86_400
    return row


__all__ = ["MemoryStream", "Observation", "RedisStream", "SignupIndex", "Snapshot",
           "StreamScore", "StreamingEvidence"]  # fmt: skip

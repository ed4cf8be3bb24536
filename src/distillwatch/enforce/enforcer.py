"""The enforcement core shared by the proxy and the LiteLLM plugin.

It knows the policy, the (hot-reloaded) verdicts, the shared state and the audit sink; given who
is asking, from where and what, it returns a :class:`Decision` and, when the decision refuses
the request, the HTTP status and OpenAI error code to answer with.

What each failure keeps enforcing (``docs/enforcement.md`` has the table):

- **Shared state (Redis) unreachable, ``fail_open: true``**: everything that needs only local
  knowledge still applies: the verdicts (flagged accounts challenged or blocked, suspicious ones
  shaped), links from new accounts to flagged clusters, the policy allowlist, the last copy of
  the admin allowlist this replica read, and standing decisions this replica made. What is lost
  is what only Redis knows: shared rate counters (throttles let requests through) and standing
  decisions or allowlist changes made by other replicas during the outage.
- **Shared state unreachable, ``fail_open: false``**: every request is refused with 503
  (``fail_closed``) except accounts on the policy or last-known admin allowlist.
- **Verdicts file unreadable**: the last good verdicts stay in force; ``/healthz`` says why.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distillwatch.enforce.decide import Decision, decide
from distillwatch.enforce.policy import Policy
from distillwatch.enforce.signals import (
    HotIndicators,
    HotVerdicts,
    cot_elicitation,
    ip_prefix,
    template_signatures,
    verdict_index,
)
from distillwatch.enforce.sink import FLUSH_SECONDS, StoreSink
from distillwatch.enforce.state import WINDOW_SECONDS, MemoryState, RedisState, State
from distillwatch.enforce.streaming import (
    MemoryStream,
    RedisStream,
    SignupIndex,
    StreamingEvidence,
    StreamScore,
)
from distillwatch.errors import StateError
from distillwatch.sharing.artefacts import request_artefacts
from distillwatch.sharing.indicators import DEFAULT_BOUND
from distillwatch.sharing.keys import SharingKey

#: How often the last-known admin allowlist is refreshed from the shared state.
ALLOWLIST_REFRESH_SECONDS = 5.0


@dataclass(frozen=True)
class Refusal:
    status: int
    kind: str
    code: str
    message: str
    retry_after: int | None = None  # seconds, for 429 and 503


class Enforcer:
    def __init__(
        self,
        policy: Policy,
        verdicts: Path | None = None,
        store: Path | None = None,
        redis_url: str | None = None,
        shadow: bool = False,
        payments: dict[str, str] | None = None,
        spool_fsync: str = "interval",
        fold_seconds: float = FLUSH_SECONDS,
        indicators: list[Path] | None = None,
        sharing_key: SharingKey | None = None,
        link_bound: float = DEFAULT_BOUND,
        stream: bool = False,
        accounts_file: Path | None = None,
        trusted_keys: Mapping[str, list[Any]] | None = None,
    ) -> None:
        self.policy = policy
        #: STIX bundles (ours, partners'): links fresh accounts without any store; with
        #: ``trusted_keys``, only bundles signed by a trusted key.
        self.indicators = HotIndicators(indicators, trusted_keys)
        self.sharing_key = sharing_key
        self.link_bound = link_bound
        self.spool_fsync = spool_fsync
        self.fold_seconds = fold_seconds
        self.store = store
        self.shadow = shadow
        self.payments = payments or {}
        self.verdicts = HotVerdicts(verdicts, store)
        self.state: State = RedisState(redis_url) if redis_url else MemoryState()
        self.backend = "redis" if redis_url else "memory"
        #: Streaming evidence (``--stream``): per-request counters and sketches, in the same
        #: Redis as the rest of the shared state when there is one.
        self.streaming: StreamingEvidence | None = None
        if stream:
            backend = RedisStream(redis_url) if redis_url else MemoryStream()
            self.streaming = StreamingEvidence(
                backend, SignupIndex(accounts_file), payments=payments or None
            )
        self.sink: StoreSink | None = None
        self.recent: deque[dict[str, Any]] = deque(maxlen=1000)
        self.state_error: str | None = None
        # What this replica still knows when the shared state is unreachable.
        self.local = MemoryState()
        self._allow_known: set[str] = set()
        self._allow_read = 0.0

    def start(self) -> None:
        """Open the store for logging (call once the event loop runs)."""
        if self.store is not None and self.sink is None:
            self.sink = StoreSink(self.store, self.spool_fsync, fold_seconds=self.fold_seconds)
            self.verdicts.reader = self.sink.call

    async def close(self) -> None:
        await self.state.close()
        if self.streaming is not None:
            await self.streaming.store.close()
        if self.sink is not None:
            self.sink.close()

    async def evaluate(
        self,
        account: str,
        ip: str | None,
        tls: str | None,
        prompt: str,
        when: datetime,
        ua: str | None = None,
        multi_turn: bool = False,
        model: str | None = None,
    ) -> tuple[Decision, Refusal | None]:
        """Decide, count against limits, and say whether (and how) to refuse."""
        stream = await self._stream(account, ip, ua, prompt, multi_turn, model, when)
        try:
            decision = await self._decide(account, ip, tls, prompt, when, ua=ua, stream=stream)
            refusal = await self._refusal(account, decision, when)
            self.state_error = None
        except StateError as exc:
            self.state_error = str(exc)
            decision, refusal = await self._decide_locally(account, ip, tls, prompt, when, ua,
                                                           stream)  # fmt: skip
        if decision.action != "allow":
            self.record_decision(account, decision, when)
        return decision, (None if self.shadow else refusal)

    async def _decide_locally(
        self,
        account: str,
        ip: str | None,
        tls: str | None,
        prompt: str,
        when: datetime,
        ua: str | None = None,
        stream: StreamScore | None = None,
    ) -> tuple[Decision, Refusal | None]:
        """The decision when the shared state is down: see the module docstring."""
        allowed = account in self._allow_known or account in self.policy.allow_accounts
        if not self.policy.fail_open and not allowed:
            return Decision("block", reasons=[f"fail-closed: {self.state_error}"]), Refusal(
                503, "server_error", "fail_closed", "Enforcement state unavailable.", 1
            )
        decision = await self._decide(account, ip, tls, prompt, when, self.local, allowed, ua,
                                      stream)  # fmt: skip
        decision.reasons = [*decision.reasons, f"shared state unavailable ({self.state_error})"]
        if decision.action == "throttle":
            # Only the shared counters know the fleet-wide rate: fail open on the throttle.
            return decision, None
        return decision, await self._refusal(account, decision, when, self.local)

    async def _allowlisted(self, account: str, state: State) -> bool:
        if (
            state is not self.local
            and time.monotonic() - self._allow_read > ALLOWLIST_REFRESH_SECONDS
        ):
            self._allow_known = await state.allowlist()
            self._allow_read = time.monotonic()
        return await state.is_allowed(account)

    async def _decide(self, account: str, ip: str | None, tls: str | None, prompt: str, when: datetime,
                      state: State | None = None, allowlisted: bool | None = None,
                      ua: str | None = None, stream: StreamScore | None = None) -> Decision:  # fmt: skip
        state = state or self.state
        index = self.verdicts.reload_if_changed()
        known = index.accounts.get(account)
        facts: dict[str, Any] = {"account_id": account, "cot_elicitation": cot_elicitation(prompt)}
        if known:
            facts.update(
                verdict=known["verdict"], score=known["score"], cluster_id=known["cluster_id"]
            )
        else:
            shared = self.indicators.reload_if_changed()
            if index.artefacts or shared.links:
                artefacts = self._artefacts(account, ip, tls, ua, prompt, bool(index.artefacts),
                                            bool(shared.links))  # fmt: skip
                cluster, matched, source = index.linked_cluster(artefacts, shared, self.link_bound)
                if cluster:
                    facts.update(linked_cluster=cluster, linked_artefacts=matched,
                                 cluster_id=cluster, linked_source=source)  # fmt: skip
        if stream is not None:
            facts.update(stream_score=stream.score, stream_reasons=stream.reasons,
                         stream_requests=stream.requests)  # fmt: skip
        if allowlisted is None:
            allowlisted = await self._allowlisted(account, state)
        sticky = None if allowlisted else await state.get_decision(account)
        if sticky is None and state is not self.local:
            sticky = await self.local.get_decision(account)  # made here during an outage
        decision = decide(facts, self.policy, allowlisted, sticky)
        standing = decision.ttl_seconds and decision.action in ("challenge", "block")
        if sticky is None and standing and not self.shadow:
            stored = decision.as_dict()
            stored["decided_at"] = when.isoformat() + "Z"
            await state.set_decision(account, stored, decision.ttl_seconds or 0)
        return decision

    async def _stream(self, account: str, ip: str | None, ua: str | None, prompt: str,
                      multi_turn: bool, model: str | None, when: datetime) -> StreamScore | None:  # fmt: skip
        """Update the streaming state with this request and score the account (None when off,
        or when the shared state is unreachable: streaming evidence then sits out)."""
        if self.streaming is None:
            return None
        try:
            return await self.streaming.assess(account, ip, ua, prompt, multi_turn, model, when)
        except StateError as exc:
            self.state_error = str(exc)
            return None

    def _artefacts(self, account: str, ip: str | None, tls: str | None, ua: str | None,
                   prompt: str, own: bool, shared: bool) -> list[str]:  # fmt: skip
        """This request's artefacts: as the store's own clusters index them (``own``), and as
        indicators from bundles name them (``shared``, :mod:`distillwatch.sharing.artefacts`)."""
        payment = self.payments.get(account)
        found: list[str] = []
        if own:
            found += [f"net:{ip_prefix(ip)}" if ip else "", f"tls:{tls}" if tls else ""]
            found += [f"tpl:{sig}" for sig in template_signatures(prompt)]
            found.append(f"pay:{payment}" if payment else "")
        if shared:
            found += request_artefacts(ip, tls, ua, prompt, payment, self.sharing_key)
        return [a for a in found if a]

    def micro_batch(self, until: datetime | None) -> dict[str, Any]:
        """Detect over what this gateway has logged (everything journaled is folded first),
        incrementally, with the same code as batch detection, and put the verdicts and the
        campaigns' indicators in force. Blocking: call it from a worker thread."""
        from distillwatch.detection.pipeline import detect
        from distillwatch.sharing.indicators import campaign_indicators
        from distillwatch.sharing.stix import parse_bundle, to_bundle

        if self.sink is None:
            raise RuntimeError("micro-batch detection needs the gateway's store (--store)")
        if self.sharing_key is None:
            # Our own indicators only need a key this process holds.
            self.sharing_key = SharingKey.generate("gateway")
        key = self.sharing_key
        started = time.perf_counter()

        # Imported bundles are priors here too (the reason names the partner and campaign), as
        # in batch detection with ``--indicators``; private ones match only under their key.
        shared = self.indicators.imported()

        def run(store: Any) -> tuple[dict[str, Any], Any, Any]:
            doc = detect(store, until, shared=shared if shared.links else None, sharing_key=key)
            # Linking comes from the campaigns' indicators below, not from a second, sampled
            # pass over raw exchanges.
            index = verdict_index(doc, "micro-batch")
            campaigns = campaign_indicators(store, doc, key, self.link_bound)
            return doc, index, campaigns

        doc, index, campaigns = self.sink.call(run, timeout=3600, fold_first=True)
        found = parse_bundle(to_bundle(campaigns, "this gateway", key.key_id), "micro-batch")
        self.verdicts.use(index)
        self.indicators.use_local(found)
        flagged = sum(1 for a in doc["accounts"] if a["verdict"] == "distillation")
        return {"until": until.isoformat() + "Z" if until else None, "exchanges": doc["exchanges"],
                "accounts": len(doc["accounts"]), "flagged": flagged,
                "campaigns": len(doc["campaigns"]), "indicators": len(found.links),
                "partner_matches": len(doc.get("partner_matches") or []),
                "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip

    def _limit_key(self, account: str, decision: Decision) -> str:
        if decision.scope == "cluster" and decision.cluster_id:
            return f"cluster:{decision.cluster_id}"
        return f"account:{account}"

    async def _refusal(self, account: str, decision: Decision, when: datetime,
                       state: State | None = None) -> Refusal | None:  # fmt: skip
        state = state or self.state
        if decision.action in ("challenge", "block"):
            message = decision.message or "Access denied."
            if decision.verification_url:
                message += f" Verify at {decision.verification_url}"
            code = "verification_required" if decision.action == "challenge" else "account_blocked"
            return Refusal(403, "permission_error", code, message)
        if decision.action != "throttle" or self.shadow:
            return None
        key = self._limit_key(account, decision)
        now = when.replace(tzinfo=UTC).timestamp()
        # Counters are fixed windows: the limit resets at the window's end, not a minute later.
        retry = max(1, math.ceil(WINDOW_SECONDS - now % WINDOW_SECONDS))
        if decision.requests_per_minute:
            used = await state.hit(f"req:{key}", 1, now)
            if used > decision.requests_per_minute:
                return Refusal(429, "rate_limit_error", "rate_limit_exceeded",
                               f"Rate limit: {decision.requests_per_minute} requests per minute for this {decision.scope}.", retry)  # fmt: skip
        if decision.output_tokens_per_minute:
            used_tokens = await state.count(f"tok:{key}", now)
            if used_tokens >= decision.output_tokens_per_minute:
                return Refusal(429, "rate_limit_error", "rate_limit_exceeded",
                               f"Rate limit: {decision.output_tokens_per_minute} output tokens per minute for this {decision.scope}.", retry)  # fmt: skip
        return None

    async def record_usage(
        self, account: str, decision: Decision, when: datetime, completion_tokens: int | None
    ) -> None:
        """Count output tokens against the account's (or its cluster's) token budget, and in
        the account's streaming state."""
        if not completion_tokens:
            return
        try:
            if self.streaming is not None and not (
                decision.action == "shape" and decision.max_tokens and not decision.cap_answer
            ):
                # A capped request says what we allowed, not what the account asked for (a
                # cap on the answer leaves the request, and so the usage, the account's).
                await self.streaming.add_output(account, completion_tokens, when)
            key = self._limit_key(account, decision)
            await self.state.hit(
                f"tok:{key}", completion_tokens, when.replace(tzinfo=UTC).timestamp()
            )
        except StateError as exc:
            self.state_error = str(exc)

    def record_decision(self, account: str, decision: Decision, when: datetime) -> None:
        entry = {
            "ts": when.isoformat() + "Z",
            "account_id": account,
            "shadow": self.shadow,
            **decision.as_dict(),
        }
        self.recent.append(entry)
        if self.sink is not None:
            self.sink.audit("proxy", f"decision.{decision.action}", entry)

    def log_exchange(self, record: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink.exchange(record)

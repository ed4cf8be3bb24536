"""What analysts change: cases, notes, actions and false-positive labels, every change audited.

:class:`Desk` validates each change (a reason is required, expiries are bounded, subjects must
exist), records it (``ws_cases``, ``ws_notes``, ``actions``, ``labels``), appends it to the
hash-chained audit log, and hands enforcement to a :class:`~.channels.Channel` so running proxies
apply it. A false positive is labelled (``labels``, which detection and sharing read as ground
truth from reviewers), lifted and allowlisted in one step; *restore* undoes the allowlist.
Where the account matched a partner's shared indicators in the latest detection run
(``partner_matches``), the false positive also queues a report to that partner
(``share_outbox``; ``distillwatch share outbox`` sends it as a STIX opinion); *restore*
withdraws a report not yet sent.

Reads and writes: ws_cases, ws_notes, actions, labels, share_outbox, audit_log; reads
partner_matches.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from distillwatch.errors import InputError
from distillwatch.workspace.channels import Channel
from distillwatch.workspace.queries import Workspace

ACTIONS = ("block", "challenge", "throttle", "shape", "allowlist", "lift")
#: Actions that stand for a time and so need an expiry.
EXPIRING = ("block", "challenge", "throttle", "shape")
STATUSES = ("open", "investigating", "actioned", "appealed", "upheld", "false_positive", "closed")
MAX_EXPIRY = timedelta(days=90)
#: The columns of ``ws_cases``, as pages receive them.
CASE_COLUMNS = ("case_id", "subject_kind", "subject", "title", "status", "assignee",
                "opened_at", "updated_at")  # fmt: skip
MAX_REASON_CHARS = 500
MAX_NOTE_CHARS = 5_000
MAX_CAMPAIGN_ACCOUNTS = 50_000
#: What a throttle and a shape from the workspace apply (documented in docs/workspace.md).
THROTTLE_REQUESTS_PER_MINUTE = 10
SHAPE_MAX_TOKENS = 512


@dataclass
class ActionResult:
    action_id: str
    accounts: int
    delivered_to: int
    channel: str


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _reason(text: str | None) -> str:
    reason = " ".join((text or "").split())
    if not reason:
        raise InputError("reason: required (say why, for the audit log and any appeal)")
    return reason[:MAX_REASON_CHARS]


class Desk:
    """The workspace's writes. Call from one thread at a time (the web layer holds the lock)."""

    def __init__(self, workspace: Workspace, channel: Channel) -> None:
        self.ws = workspace
        self.store = workspace.store
        self.channel = channel

    # -- subjects -------------------------------------------------------------------------------
    def _accounts(self, kind: str, subject: str) -> list[str]:
        if kind == "campaign":
            members = self.ws.campaign_members(subject)
            if not members:
                raise InputError(f"campaign {subject[:80]!r}: not in the latest detection run")
            return members[:MAX_CAMPAIGN_ACCOUNTS]
        if kind == "account":
            known = self.store.run(
                """SELECT 1 WHERE EXISTS (SELECT 1 FROM ws_stats WHERE account_id = ?)
                   OR EXISTS (SELECT 1 FROM accounts WHERE account_id = ?)""",
                [subject, subject],
            )
            if not known:
                raise InputError(f"account {subject[:80]!r}: unknown")
            return [subject]
        raise InputError("subject_kind: account or campaign")

    # -- cases ----------------------------------------------------------------------------------
    def case_for(self, kind: str, subject: str, actor: str) -> str:
        """The open case on a subject, opening one if there is none."""
        rows = self.store.run(
            "SELECT case_id FROM ws_cases WHERE subject_kind = ? AND subject = ?", [kind, subject]
        )
        if rows:
            return str(rows[0][0])
        self._accounts(kind, subject)
        case_id = "case-" + uuid.uuid4().hex[:10]
        now = _now()
        self.store.run(
            "INSERT INTO ws_cases VALUES (?, ?, ?, ?, 'open', NULL, ?, ?)",
            [case_id, kind, subject, f"{kind} {subject}"[:200], now, now],
        )
        self.store.audit(
            actor,
            "workspace.case.open",
            {"case_id": case_id, "subject_kind": kind, "subject": subject},
        )
        return case_id

    def update_case(
        self,
        case_id: str,
        actor: str,
        status: str | None = None,
        assignee: str | None = None,
        note: str | None = None,
    ) -> None:
        if not self.store.run("SELECT 1 FROM ws_cases WHERE case_id = ?", [case_id]):
            raise InputError(f"case {case_id[:40]!r}: unknown")
        changes: dict[str, Any] = {"case_id": case_id}
        if status:
            if status not in STATUSES:
                raise InputError(f"status: one of {', '.join(STATUSES)}")
            self.store.run(
                "UPDATE ws_cases SET status = ?, updated_at = ? WHERE case_id = ?",
                [status, _now(), case_id],
            )
            changes["status"] = status
        if assignee is not None:
            assignee = assignee.strip().lower()[:64] or None
            if assignee and not self.store.run(
                "SELECT 1 FROM ws_users WHERE username = ?", [assignee]
            ):
                raise InputError(f"assignee {assignee!r}: no such user")
            self.store.run(
                "UPDATE ws_cases SET assignee = ?, updated_at = ? WHERE case_id = ?",
                [assignee, _now(), case_id],
            )
            changes["assignee"] = assignee
        if note is not None and note.strip():
            self.store.run(
                "INSERT INTO ws_notes VALUES (?, ?, ?, ?)",
                [case_id, _now(), actor, note.strip()[:MAX_NOTE_CHARS]],
            )
            changes["note_chars"] = len(note.strip()[:MAX_NOTE_CHARS])
        self.store.audit(actor, "workspace.case.update", changes)

    def cases(
        self,
        status: str | None = None,
        assignee: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        where, params = [], []
        if status:
            where.append("status = ?")
            params.append(status)
        if assignee:
            where.append("assignee = ?")
            params.append(assignee)
        rows = self.store.run(
            f"""SELECT {", ".join(CASE_COLUMNS)} FROM ws_cases
                {"WHERE " + " AND ".join(where) if where else ""}
                ORDER BY updated_at DESC, case_id LIMIT ? OFFSET ?""",
            [*params, limit, offset],
        )
        return [dict(zip(CASE_COLUMNS, row, strict=True)) for row in rows]

    def case(self, case_id: str) -> dict[str, Any] | None:
        found = self.store.run(
            f"SELECT {', '.join(CASE_COLUMNS)} FROM ws_cases WHERE case_id = ?", [case_id]
        )
        if not found:
            return None
        case = dict(zip(CASE_COLUMNS, found[0], strict=True))
        case["notes"] = [
            {"ts": t, "author": a, "body": b}
            for t, a, b in self.store.run(
                "SELECT ts, author, body FROM ws_notes WHERE case_id = ? ORDER BY ts", [case_id]
            )
        ]
        return case

    # -- actions --------------------------------------------------------------------------------
    async def act(
        self,
        actor: str,
        kind: str,
        subject: str,
        action: str,
        reason: str | None,
        expires_hours: float | None,
    ) -> ActionResult:
        """Validate, deliver to the gateways, then record and audit one action."""
        if action not in ACTIONS:
            raise InputError(f"action: one of {', '.join(ACTIONS)}")
        why = _reason(reason)
        accounts = self._accounts(kind, subject)
        ttl = None
        if action in EXPIRING:
            if expires_hours is None or not 0 < expires_hours <= MAX_EXPIRY.total_seconds() / 3600:
                raise InputError(
                    f"expires_hours: required for {action}, from 1 minute to {MAX_EXPIRY.days} days"
                )
            ttl = max(60, int(expires_hours * 3600))
        decision: dict[str, Any] = {
            "action": action,
            "rule": "analyst",
            "reasons": [f"analyst {actor}: {why}"],
        }
        if action == "throttle":
            decision["requests_per_minute"] = THROTTLE_REQUESTS_PER_MINUTE
        if action == "shape":
            # As the shipped policy shapes: reasoning stripped, the answer after it capped.
            decision.update(max_tokens=SHAPE_MAX_TOKENS, strip_reasoning=True, cap_answer=True)
        if action in EXPIRING:
            delivered = await self.channel.decide(accounts, decision, ttl or 60)
        elif action == "allowlist":
            delivered = await self.channel.lift(accounts)
            delivered = await self.channel.allow(accounts, True)
        else:  # lift
            delivered = await self.channel.lift(accounts)
            delivered = await self.channel.allow(accounts, False)
        return self._record(actor, kind, subject, action, why, ttl, accounts, delivered)

    def _record(
        self,
        actor: str,
        kind: str,
        subject: str,
        action: str,
        why: str,
        ttl: int | None,
        accounts: list[str],
        delivered: int,
    ) -> ActionResult:
        now = _now()
        action_id = "act-" + uuid.uuid4().hex[:12]
        if action == "lift":  # a lift ends every active action on the subject
            self.store.run(
                """UPDATE actions SET lifted_at = ? WHERE subject_kind = ? AND subject = ?
                   AND lifted_at IS NULL""",
                [now, kind, subject],
            )
        self.store.run(
            "INSERT INTO actions VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            [
                action_id,
                now,
                kind,
                subject,
                action,
                now + timedelta(seconds=ttl) if ttl else None,
                orjson.dumps([why]).decode(),
                actor,
            ],
        )
        self.store.audit(
            actor,
            f"workspace.action.{action}",
            {
                "action_id": action_id,
                "subject_kind": kind,
                "subject": subject,
                "accounts": len(accounts),
                "ttl_seconds": ttl,
                "reason": why,
                "channel": self.channel.describe(),
                "delivered_to": delivered,
            },
        )
        case = self.case_for(kind, subject, actor)
        if action != "lift":
            self.update_case(case, actor, status="actioned")
        return ActionResult(action_id, len(accounts), delivered, self.channel.describe())

    async def mark_false_positive(self, actor: str, account: str, reason: str | None) -> None:
        """Label the account a false positive, lift what stands on it and allowlist it (so the
        stale verdict does not re-flag it), and close its case as a false positive."""
        why = _reason(reason)
        self._accounts("account", account)
        await self.channel.lift([account])
        await self.channel.allow([account], True)
        self.store.run(
            "INSERT INTO labels VALUES (?, 'false_positive', ?, ?, ?)",
            [account, why, actor, _now()],
        )
        self._record(
            actor, "account", account, "allowlist", f"false positive: {why}", None, [account], 1
        )
        self._queue_reports(actor, account)
        self.update_case(self.case_for("account", account, actor), actor, status="false_positive")

    def _queue_reports(self, actor: str, account: str) -> None:
        """Owe each partner whose indicators linked the account (in the latest run) a report."""
        run = self.ws.run_id
        rows = self.store.run(
            "SELECT source, indicators FROM partner_matches WHERE run_id = ? AND account_id = ?",
            [run, account],
        ) if run else []  # fmt: skip
        now = _now()
        queued: dict[str, int] = {}
        for source, indicators in rows:
            for indicator in orjson.loads(indicators):
                self.store.run(
                    "INSERT INTO share_outbox VALUES (?, ?, ?, ?, NULL)",
                    [account, source, indicator, now],
                )
                queued[source] = queued.get(source, 0) + 1
        if queued:
            self.store.audit(actor, "workspace.share.report_queued",
                             {"account": account, "indicators_by_source": queued})  # fmt: skip

    async def restore(self, actor: str, account: str, reason: str | None) -> None:
        """Undo a false-positive decision: remove the allowlist entry, label it restored."""
        why = _reason(reason)
        self._accounts("account", account)
        await self.channel.allow([account], False)
        self.store.run(
            "INSERT INTO labels VALUES (?, 'restored', ?, ?, ?)", [account, why, actor, _now()]
        )
        self._record(actor, "account", account, "lift", f"restored: {why}", None, [account], 1)
        self.store.run(
            "DELETE FROM share_outbox WHERE account_id = ? AND sent_at IS NULL", [account]
        )
        self.update_case(self.case_for("account", account, actor), actor, status="investigating")

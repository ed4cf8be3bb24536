"""Imported indicators as priors in detection: accounts whose own artefacts link them to a
campaign a partner (or another of our deployments) shared.

Stage: reads ``dw_kv``, ``dw_near``, ``dw_acct`` and ``accounts`` (the folded detection state) and the
:class:`~distillwatch.sharing.stix.IndicatorSet` read from bundles; returns, per account, the
strength of the link (1, halving every ``HALF_LIFE_DAYS`` since the partner last saw the
artefacts) and a reason naming the partner and campaign. Detection turns that into the
``partner_indicator`` rule (:mod:`distillwatch.detection.rules`). The link rule is the gateway's
(:func:`~distillwatch.sharing.indicators.links`): one account's artefacts must match two
families jointly rarer than the bound, or a card nobody else uses.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from distillwatch.sharing.artefacts import artefact
from distillwatch.sharing.indicators import DEFAULT_BOUND, links
from distillwatch.sharing.keys import SharingKey
from distillwatch.sharing.stix import IndicatorSet, Link
from distillwatch.store import Store

HALF_LIFE_DAYS = 14.0


def partner_links(store: Store, shared: IndicatorSet, key: SharingKey | None,
                  until: datetime | None = None, bound: float = DEFAULT_BOUND) -> dict[str, dict[str, Any]]:  # fmt: skip
    """``{account: {"strength", "reason", "source", "campaign", "indicators"}}`` for accounts
    linked to a shared campaign (the strongest link each; ``indicators``: the STIX ids of the
    indicators it matched, what a false-positive report names)."""
    if not shared.links:
        return {}
    public = [
        k.split(":", 1) for k in shared.links if k.split(":", 1)[0] in ("ip", "net", "ua", "tls")
    ]
    store.con.register(
        "_wanted", pa.table({"kind": [k for k, _ in public], "value": [v for _, v in public]})
    )
    try:
        rows = store.run(
            "SELECT account_id, kind, value FROM dw_kv JOIN _wanted USING (kind, value)"
        )
        if key is not None:
            # Private kinds are keyed: key what this store holds and compare.
            rows += store.run(
                "SELECT account_id, kind, value FROM dw_kv WHERE kind IN ('pre', 'suf')"
            )
            rows += store.run(
                """SELECT account_id, 'pay', payment_fingerprint FROM accounts
                   JOIN dw_acct USING (account_id) WHERE payment_fingerprint IS NOT NULL"""
            )
            if any(k.startswith("nd:") for k in shared.links):
                # Near-duplicate sketches: every band signature of this store, keyed once each
                # (about a microsecond a signature; only when a bundle carries sketches).
                rows += store.run("SELECT DISTINCT account_id, 'near', sig::VARCHAR FROM dw_near")
    finally:
        store.con.unregister("_wanted")
    digests: dict[tuple[str, str], str] = {}
    held: dict[str, dict[str, list[tuple[str, Link]]]] = {}
    for account, kind, value in rows:
        if kind in ("pre", "suf", "pay", "near"):
            k = digests.get((kind, value))
            if k is None:
                k = digests[(kind, value)] = artefact(kind, str(value), key)
        else:
            k = f"{kind}:{value}"
        for link in shared.links.get(k, ()):
            held.setdefault(account, {}).setdefault(link.campaign, []).append((k, link))
    now = until or datetime.now(UTC).replace(tzinfo=None)
    result: dict[str, dict[str, Any]] = {}
    for account, campaigns in held.items():
        for campaign, matched in campaigns.items():
            if not links([(link.family, link.rate, link.outside) for _, link in matched], bound):
                continue
            ages = [(now - datetime.fromisoformat(link.last_seen.rstrip("Z"))).total_seconds() / 86400
                    for _, link in matched if link.last_seen]  # fmt: skip
            strength = 0.5 ** (max(0.0, min(ages)) / HALF_LIFE_DAYS) if ages else 1.0
            meta = shared.campaigns.get(campaign, {})
            families = sorted({link.family for _, link in matched})
            if strength > result.get(account, {}).get("strength", 0.0):
                source = meta.get("source", matched[0][1].source)
                result[account] = {
                    "strength": round(strength, 4),
                    "reason": f"matches indicators {source} shared "
                    f"for {meta.get('name', campaign)} ({', '.join(families)})",
                    "source": source,
                    "campaign": campaign,
                    "indicators": sorted({link.indicator for _, link in matched if link.indicator}),
                }
    return result

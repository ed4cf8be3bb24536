"""Online signals computed per request, and verdicts (hot-reloaded) to act on.

Cheap by design: a regex, a hash and a few dictionary lookups per request. The heavy lifting
(clusters, scores) happens in batch detection; this module carries its results to the gateway
and extends them to accounts the batch run has not seen yet, through the artefacts they share
with a flagged cluster.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillwatch.detection.text import elicits_reasoning, template_grams
from distillwatch.sharing.artefacts import FAMILY
from distillwatch.sharing.artefacts import ip_prefix as ip_prefix
from distillwatch.sharing.indicators import links
from distillwatch.sharing.signing import signature_path, signed_by
from distillwatch.sharing.stix import (
    IndicatorSet,
    bundle_bytes,
    bundle_files,
    parse_bundle,
    read_bundle,
)


def cot_elicitation(prompt: str) -> bool:
    return elicits_reasoning(prompt)


def template_signatures(prompt: str) -> list[str]:
    """The prompt's wrapper grams (first and last skeleton words), exactly as batch detection
    mines them (:mod:`distillwatch.detection.text`)."""
    prefix, suffix = template_grams(prompt)
    return [] if prefix is None else [f"prefix:{prefix}", f"suffix:{suffix}"]


def key_account(api_key: str) -> str:
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclass
class VerdictIndex:
    """What batch detection concluded, plus the artefacts of flagged clusters for linking."""

    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    artefacts: dict[str, str] = field(default_factory=dict)  # "kind:value" -> cluster id
    loaded_from: str | None = None
    mtime: float | None = None

    def linked_cluster(self, artefacts: list[str], indicators: IndicatorSet | None = None,
                       bound: float = 1e-4) -> tuple[str | None, list[str], str | None]:  # fmt: skip
        """A flagged cluster (or shared campaign) this request's artefacts point at, which
        artefacts matched, and whose indicators they were (None for this store's own clusters).

        A payment instrument alone is enough; otherwise two different families must agree (a
        residential prefix alone would also match innocent users behind the same proxy exit),
        and for indicators from bundles, their joint estimated false-match rate must be within
        ``bound`` (:func:`distillwatch.sharing.indicators.links`).
        """
        matched: dict[tuple[str, str | None], list[tuple[str, str, float, int]]] = {}
        for artefact in artefacts:
            cluster = self.artefacts.get(artefact)
            if cluster:
                # The store's own clusters: specific by construction (rate 0).
                family = FAMILY.get(artefact.split(":", 1)[0], artefact.split(":", 1)[0])
                matched.setdefault((cluster, None), []).append((artefact, family, 0.0, 0))
            for link in indicators.links.get(artefact, ()) if indicators else ():
                matched.setdefault((link.campaign, link.source), []).append(
                    (artefact, link.family, link.rate, link.outside)
                )
        for (cluster, source), hits in matched.items():
            if links([(family, rate, outside) for _, family, rate, outside in hits], bound):
                return cluster, [a[:60] for a, _, _, _ in hits], source
        return None, [], None


class HotIndicators:
    """STIX indicator bundles (ours and partners'), each reloaded when its file changes; a
    folder stands for every ``*.json`` in it (``share import`` and ``share pull`` write there).

    A bundle that fails validation is not applied (nothing of it); the last good version of
    that file stays in force and ``errors`` says why (shown by ``/healthz``). With
    ``trusted_keys`` (:func:`~distillwatch.sharing.signing.read_trusted_keys`) a bundle is
    applied only when ``BUNDLE.sig`` beside it verifies with a trusted key of the name it is
    signed as, and only with that name as its source (``share import --trust-keys`` keeps the
    signature beside what it stores)."""

    def __init__(self, paths: list[Path] | None = None,
                 trusted_keys: Mapping[str, list[Any]] | None = None) -> None:  # fmt: skip
        self.paths = list(paths or [])
        self.trusted_keys = trusted_keys
        self.index = IndicatorSet()
        self.errors: dict[str, str] = {}
        #: Indicators of this gateway's own micro-batch detection (in memory, no file).
        self.local = IndicatorSet()
        self._good: dict[Path, tuple[Any, IndicatorSet]] = {}
        self._seen: dict[Path, Any] = {}  # the last version of each file tried, good or not
        self._checked = 0.0
        self._lock = threading.Lock()
        self.reload_if_changed(force=True)

    def _files(self) -> list[Path]:
        return bundle_files(self.paths)

    def use_local(self, found: IndicatorSet) -> None:
        """Replace this gateway's own indicators (from a micro-batch) and re-merge."""
        self.local = found
        self._remerge()

    def imported(self) -> IndicatorSet:
        """The bundles read from files (partners', or another deployment's), merged, minus
        disputed indicators; not this gateway's own micro-batch indicators. Micro-batch
        detection takes them as priors, as ``detect --indicators`` does."""
        merged = IndicatorSet()
        # list() copies in one step: a reload on the event loop may replace entries meanwhile.
        for _, bundle in list(self._good.values()):
            merged.merge(bundle)
        return merged.without_disputed()

    def _remerge(self) -> None:
        merged = IndicatorSet()
        merged.merge(self.local)
        for _, bundle in self._good.values():
            merged.merge(bundle)
        with self._lock:
            self.index = merged.without_disputed()

    def reload_if_changed(self, force: bool = False) -> IndicatorSet:
        if not self.paths:
            return self.index
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return self.index
        self._checked = now
        changed = False
        files = self._files()
        for gone in set(self._good) - set(files):
            del self._good[gone]  # a bundle removed from a watched folder stops applying
            changed = True
        for path in files:
            try:
                mtime = self._stamp(path)
            except OSError as exc:
                self.errors[str(path)] = f"cannot read ({exc.strerror})"
                continue
            if not force and self._seen.get(path) == mtime:
                continue
            self._seen[path] = mtime
            try:
                self._good[path] = (mtime, self._read(path))
                self.errors.pop(str(path), None)
                changed = True
            except Exception as exc:  # a hostile bundle must never take the gateway down
                self.errors[str(path)] = str(exc)[:300]
        if changed or force:
            self._remerge()
        return self.index

    def _stamp(self, path: Path) -> tuple[float, float | None]:
        """When the bundle (and, when signatures are required, its signature) last changed: a
        signature written just after its bundle is a change too."""
        if self.trusted_keys is None:
            return path.stat().st_mtime, None
        sig = signature_path(path)
        return path.stat().st_mtime, sig.stat().st_mtime if sig.exists() else None

    def _read(self, path: Path) -> IndicatorSet:
        if self.trusted_keys is None:
            return read_bundle(path)
        raw = bundle_bytes(path)
        signer, _ = signed_by(path, raw, self.trusted_keys)
        return parse_bundle(raw, str(path), trusted={signer})


StoreReader = Callable[[Callable[[Any], Any]], Any]


def load_verdicts(
    path: Path, store_path: Path | None = None, reader: StoreReader | None = None
) -> VerdictIndex:
    """Read a Contract-2 file; with a store, also index the flagged clusters' artefacts.

    ``reader`` runs a function against an already open store (the proxy's sink owns the
    connection while it runs); without one the store is opened read-only here.
    """
    doc = json.loads(path.read_text())
    index = verdict_index(doc, str(path), path.stat().st_mtime)
    flagged = {a: v["cluster_id"] for a, v in index.accounts.items()
               if v["verdict"] == "distillation" and v["cluster_id"]}  # fmt: skip
    if flagged and reader is not None:
        index.artefacts = reader(lambda store: _flagged_artefacts(store, flagged))
    elif flagged and store_path is not None and store_path.exists():
        from distillwatch.store import Store

        with Store(store_path, read_only=True) as store:
            index.artefacts = _flagged_artefacts(store, flagged)
    return index


def verdict_index(doc: dict[str, Any], source: str, mtime: float | None = None) -> VerdictIndex:
    """The index of a Contract-2 document (accounts only; linking artefacts are added by
    :func:`load_verdicts` from a store, or come from indicator bundles)."""
    index = VerdictIndex(loaded_from=source, mtime=mtime)
    for account in doc.get("accounts", []):
        index.accounts[account["account_id"]] = {
            "score": float(account.get("score", 0.0)),
            "verdict": account.get("verdict", "benign"),
            "cluster_id": account.get("cluster_id"),
        }
    return index


#: An artefact that this many accounts outside the flagged cluster also used (in a sample of
#: the rest of the traffic) is not specific to the cluster: a cloud /24, a popular client's TLS
#: fingerprint, a proxy exit that real people sit behind. It cannot link anyone.
MAX_OUTSIDE_ACCOUNTS = 2
OUTSIDE_SAMPLE_ROWS = 50_000


def _artefact_keys(ip: str | None, tls: str | None, prompt: str | None) -> list[str]:
    keys = [f"net:{ip_prefix(ip)}" if ip else None, f"tls:{tls}" if tls else None]
    keys += [f"tpl:{sig}" for sig in template_signatures(prompt or "")]
    return [k for k in keys if k]


def _flagged_artefacts(store: Any, flagged: dict[str, str]) -> dict[str, str]:
    """Artefacts seen repeatedly in a flagged cluster's traffic (a sample of it) and rare in
    everyone else's, and the cluster's cards."""
    import pyarrow as pa

    artefacts: dict[str, str] = {}
    store.con.register(
        "_flagged", pa.table({"account_id": list(flagged), "cluster": list(flagged.values())})
    )
    try:
        rows = store.run(
            """SELECT f.cluster, e.ip, e.tls_fingerprint, e.prompt
               FROM exchanges e JOIN _flagged f USING (account_id)
               USING SAMPLE 20000 ROWS"""
        )
        outside = store.run(
            f"""SELECT e.account_id, e.ip, e.tls_fingerprint, e.prompt
                FROM exchanges e ANTI JOIN _flagged f USING (account_id)
                USING SAMPLE {OUTSIDE_SAMPLE_ROWS} ROWS"""
        )
        payments = store.run(
            """SELECT f.cluster, a.payment_fingerprint FROM accounts a JOIN _flagged f USING (account_id)
               WHERE a.payment_fingerprint IS NOT NULL"""
        )
    finally:
        store.con.unregister("_flagged")
    counts: dict[str, dict[str, int]] = {}
    for cluster, ip, tls, prompt in rows:
        for key in _artefact_keys(ip, tls, prompt):
            counts.setdefault(key, {}).setdefault(cluster, 0)
            counts[key][cluster] += 1
    elsewhere: dict[str, set[str]] = {}
    for account, ip, tls, prompt in outside:
        for key in _artefact_keys(ip, tls, prompt):
            if key in counts:
                elsewhere.setdefault(key, set()).add(account)
    for key, by_cluster in counts.items():
        cluster, hits = max(by_cluster.items(), key=lambda kv: kv[1])
        specific = len(elsewhere.get(key, ())) < MAX_OUTSIDE_ACCOUNTS
        if hits >= 3 and specific:  # seen repeatedly in the cluster, and hardly anywhere else
            artefacts[key] = cluster
    for cluster, payment in payments:
        artefacts[f"pay:{payment}"] = cluster
    return artefacts


class HotVerdicts:
    """Reloads the verdicts file when it changes (checked at most once a second)."""

    def __init__(self, path: Path | None, store_path: Path | None = None) -> None:
        self.path = path
        self.store_path = store_path
        self.reader: StoreReader | None = None  # set once the proxy's sink owns the store
        self.index = VerdictIndex()
        self.error: str | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.reload_if_changed(force=True)

    def use(self, index: VerdictIndex) -> None:
        """Put verdicts computed in this process in force (a micro-batch); the file, if any,
        takes over again the next time it changes."""
        with self._lock:
            index.mtime = self.index.mtime
            self.index = index

    def reload_if_changed(self, force: bool = False) -> VerdictIndex:
        if self.path is None:
            return self.index
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return self.index
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime
            if force or mtime != self.index.mtime:
                with self._lock:
                    self.index = load_verdicts(self.path, self.store_path, self.reader)
                self.error = None
        except Exception as exc:
            # Keep serving with the last good verdicts; /healthz reports the problem.
            self.error = f"{self.path}: {exc}"
        return self.index

"""Writes the gateway's exchange log and audit entries to the store, off the request path.

Requests journal what they produce to the :class:`~distillwatch.enforce.spool.Spool` (one
``write(2)``, before the response completes) and return. One background thread owns the DuckDB
connection (DuckDB is single-writer) and folds the journal into the store: it validates each
exchange (Contract 1), inserts the good ones, appends audit entries, and records how far it got
in the same transaction, so a restart after kill -9 resumes exactly there.

An exchange the store refuses is never silently dropped: it goes to the store's quarantine
file with the field and the reason, and is counted (``rejected``, shown by ``/healthz`` and
``/metrics``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from distillwatch.enforce.spool import Position, Spool
from distillwatch.ingest.batch import exchanges_to_table
from distillwatch.quarantine import Quarantine, default_quarantine
from distillwatch.schema import RecordError, validate_exchange
from distillwatch.store import Store

T = TypeVar("T")
#: How long the sink gathers journaled entries before folding them (one transaction each time):
#: the longest an acknowledged exchange waits before it is in the store, and the reason folding
#: costs the request path almost nothing (a fold per request would compete for the GIL).
FLUSH_SECONDS = 0.5
#: Fold at once, without waiting, when this much is waiting.
FOLD_NOW_BYTES = 4 * 1024 * 1024
_META_KEY = "gateway_spool_position"


class StoreSink:
    """The gateway's store writer. ``close()`` folds everything journaled before returning."""

    def __init__(self, path: Path, fsync: str = "interval", fsync_seconds: float = 1.0,
                 fold_seconds: float = FLUSH_SECONDS) -> None:  # fmt: skip
        self.path = path
        self.fold_seconds = fold_seconds
        self.spool = Spool(path.with_name(path.name + ".spool"), fsync, fsync_seconds)
        self.quarantine = Quarantine(default_quarantine(path))
        self.written = 0  # exchanges stored by this process
        self.recovered = 0  # of those, journaled by an earlier process that did not fold them
        self.rejected = 0  # exchanges the store refused (quarantined)
        self.flagged = 0  # stored with flags (something unusual, see schema.validate_exchange)
        self.audited = 0
        self.error: str | None = None  # the last fold failure, if the store is failing
        self.position: Position | None = None
        self._first_segment = 0
        self._calls: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a call is waiting, or the sink is closing
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distillwatch-sink", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=60)

    # -- called from request handlers (any thread) -----------------------------------------
    def exchange(self, record: dict[str, Any]) -> None:
        self.spool.append("exchange", record)

    def audit(self, actor: str, event: str, payload: dict[str, Any]) -> None:
        self.spool.append("audit", {"actor": actor, "event": event, "payload": payload})

    def call(self, fn: Callable[[Store], T], timeout: float = 30.0, fold_first: bool = False) -> T:
        """Run ``fn(store)`` on the sink's thread (the process's one DuckDB connection); with
        ``fold_first``, after folding everything journaled before the call."""
        future: Future[T] = Future()
        self._calls.put((fn, future, fold_first))
        self._wake.set()
        return future.result(timeout=timeout)

    def backlog_bytes(self) -> int:
        return self.spool.backlog_bytes(self.position) if self.position else 0

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=60)
        self.spool.close()
        self.quarantine.close()

    # -- the sink thread --------------------------------------------------------------------
    def _run(self) -> None:
        store = Store(self.path)
        try:
            rows = store.run("SELECT value FROM meta WHERE key = ?", [_META_KEY])
            self.position = self.spool.start_position(Position.parse(rows[0][0] if rows else None))
            first_segment = self._first_segment = self.spool.segment
            self._ready.set()
            while True:
                self._serve_calls(store)
                entries, end = self.spool.read(self.position)
                if entries:
                    self._fold(store, entries, end, self.position.segment < first_segment)
                elif self._stop.is_set():
                    return
                if self._stop.is_set() or (entries and self.backlog_bytes() >= FOLD_NOW_BYTES):
                    continue  # draining before exit, or far behind: fold again at once
                # Let a batch gather: one transaction per fold_seconds, not one per request.
                self._wake.wait(self.fold_seconds)
                self._wake.clear()
        finally:
            self._ready.set()
            store.close()

    def _serve_calls(self, store: Store) -> None:
        while True:
            try:
                fn, future, fold_first = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                if fold_first and self.position is not None:
                    entries, end = self.spool.read(self.position)
                    if entries:
                        self._fold(store, entries, end, self.position.segment < self._first_segment)
                future.set_result(fn(store))
            except Exception as exc:  # handed to the caller, not swallowed
                future.set_exception(exc)

    def _fold(self, store: Store, entries: list[tuple[str, dict[str, Any]]], end: Position,
              recovered: bool) -> None:  # fmt: skip
        assert self.position is not None
        rows, audits, bad = [], [], []
        for number, (kind, payload) in enumerate(entries, 1):
            if kind == "exchange":
                try:
                    rows.append(validate_exchange(payload))
                except RecordError as exc:
                    bad.append((number, exc.field, exc.reason, payload))
            elif kind == "audit":
                audits.append(payload)
            else:
                bad.append((number, "<spool>", "unreadable journal line (torn write)", payload))
        try:
            store.run("BEGIN TRANSACTION")
            # Ids are fresh (px-<uuid4>, ll-<call id>) and each journal line is folded once (the
            # position commits with the rows), so no anti-join against every stored id.
            written = store.append_exchanges(exchanges_to_table(rows, "proxy")) if rows else 0
            for entry in audits:
                store.audit(str(entry.get("actor")), str(entry.get("event")), entry.get("payload"))
            store.run("INSERT OR REPLACE INTO meta VALUES (?, ?)", [_META_KEY, str(end)])
            store.run("COMMIT")
        except Exception as exc:
            store.run("ROLLBACK")
            # Keep the position: the same entries are retried on the next wake-up.
            self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self._stop.wait(1.0)
            return
        self.error = None
        for number, field, reason, payload in bad:
            self.quarantine.add(f"proxy:{self.spool.directory}", f"{self.position}+{number}", field, reason, payload)  # fmt: skip
        self.written += written
        self.recovered += written if recovered else 0
        self.flagged += sum(1 for row in rows if row.flags)
        self.rejected += sum(1 for _, field, _, _ in bad if field != "<spool>")
        self.audited += len(audits)
        self.position = end
        self.spool.release(end)

"""Writes the proxy's exchange log and audit entries to the store, off the request path.

DuckDB connections are synchronous and single-writer, so one background thread owns the store:
requests enqueue records and return at once; the thread validates them (Contract 1) and inserts
in batches. ``close()`` drains the queue, so a clean shutdown loses nothing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from distillwatch.ingest.batch import exchanges_to_table
from distillwatch.schema import RecordError, validate_exchange
from distillwatch.store import Store

T = TypeVar("T")
BATCH = 500
FLUSH_SECONDS = 0.5
_STOP = object()


class StoreSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        self.rejected = 0
        self.audited = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=100_000)
        self._thread = threading.Thread(target=self._run, name="distillwatch-sink", daemon=True)
        self._thread.start()

    def exchange(self, record: dict[str, Any]) -> None:
        self._queue.put(("exchange", record))

    def audit(self, actor: str, event: str, payload: dict[str, Any]) -> None:
        self._queue.put(("audit", actor, event, payload))

    def call(self, fn: Callable[[Store], T], timeout: float = 30.0) -> T:
        """Run ``fn(store)`` on the sink's thread (the process's one DuckDB connection)."""
        future: Future[T] = Future()
        self._queue.put(("call", fn, future))
        return future.result(timeout=timeout)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        store = Store(self.path)
        pending: list[Any] = []
        try:
            while True:
                try:
                    item = self._queue.get(timeout=FLUSH_SECONDS)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    self._flush(store, pending)
                    return
                if item is not None:
                    if item[0] == "call":
                        self._flush(store, pending)
                        pending = []
                        try:
                            item[2].set_result(item[1](store))
                        except Exception as exc:  # handed to the caller, not swallowed
                            item[2].set_exception(exc)
                        continue
                    if item[0] == "audit":
                        store.audit(item[1], item[2], item[3])
                        self.audited += 1
                    else:
                        pending.append(item[1])
                if len(pending) >= BATCH or (item is None and pending):
                    self._flush(store, pending)
                    pending = []
        finally:
            store.close()

    def _flush(self, store: Store, records: list[dict[str, Any]]) -> None:
        rows = []
        for record in records:
            try:
                rows.append(validate_exchange(record))
            except RecordError:
                self.rejected += 1
        if rows:
            self.written += store.insert_exchanges(exchanges_to_table(rows, "proxy"))

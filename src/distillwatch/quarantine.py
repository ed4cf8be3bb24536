"""The quarantine: records that could not be stored, with where they came from and why.

One JSONL file per store (``STORE.quarantine.jsonl`` unless told otherwise), one line per bad
record: ``{"file", "record", "field", "reason", "raw"}``, the raw record cut to
:data:`QUARANTINE_RAW_BYTES`. Ingest writes it for bad lines of a log; the gateway's sink writes
it for an exchange it could not store. Nothing is dropped without a line here.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import IO, Any

import orjson

QUARANTINE_RAW_BYTES = 2048


def default_quarantine(store: Path) -> Path:
    return store.with_name(store.name + ".quarantine.jsonl")


class Quarantine:
    """Appends bad records to a JSONL file opened on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._handle: IO[bytes] | None = None
        self._lock = threading.Lock()

    def add(self, source: Path | str, record_no: int | str, field_name: str, reason: str, raw: Any) -> None:  # fmt: skip
        if not isinstance(raw, bytes):
            raw = orjson.dumps(raw, default=str)
        entry = {
            "file": str(source),
            "record": record_no,
            "field": field_name,
            "reason": reason,
            "raw": raw[:QUARANTINE_RAW_BYTES].decode("utf-8", errors="replace"),
        }
        with self._lock:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, "ab")  # noqa: SIM115 - closed in close()
            self._handle.write(orjson.dumps(entry) + b"\n")
            self._handle.flush()
            self.count += 1

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

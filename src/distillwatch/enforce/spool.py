"""An append-only journal of what the gateway acknowledged, written before the response completes.

Every exchange and audit entry the proxy (or the LiteLLM guard) produces is one JSON line
appended to the current segment of ``STORE.spool/`` with a single ``write(2)`` before the client
has its full response. The store sink folds the journal into DuckDB in the background and keeps
its position (segment, byte offset) in the store, in the same transaction as the rows, so:

- **kill -9** of the process loses nothing that was acknowledged: the lines are in the page
  cache, and the next start folds everything after the stored position (exactly once);
- **power loss** loses at most what was appended since the last ``fsync``: by default the
  journal is synced every second (``fsync="interval"``), ``"always"`` syncs every line (each
  request then waits for the disk), ``"never"`` leaves it to the kernel;
- memory stays flat when the store falls behind: the backlog is on disk, not in a queue.

Folded segments are deleted. A torn last line (power loss mid-write) is skipped and counted.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

SEGMENT_BYTES = 64 * 1024 * 1024
FSYNC_MODES = ("interval", "always", "never")
_NAME = "segment-{:012d}.jsonl"


@dataclass(frozen=True, order=True)
class Position:
    """A place in the journal: the next byte to fold."""

    segment: int
    offset: int

    def __str__(self) -> str:
        return f"{self.segment}:{self.offset}"

    @classmethod
    def parse(cls, text: str | None) -> Position | None:
        if not text or ":" not in text:
            return None
        segment, offset = text.split(":", 1)
        return cls(int(segment), int(offset)) if segment.isdigit() and offset.isdigit() else None


class Spool:
    """The journal's writer and reader (one process writes; the sink thread reads)."""

    def __init__(
        self,
        directory: Path,
        fsync: str = "interval",
        fsync_seconds: float = 1.0,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}")
        self.directory = directory
        self.fsync = fsync
        self.fsync_seconds = fsync_seconds
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        existing = self.segments()
        # Always a fresh segment: whatever an earlier process left is read, never appended to.
        self.segment = (existing[-1] + 1) if existing else 1
        self._lock = threading.Lock()
        self._fd = self._open(self.segment)
        self._size = 0
        self._dirty = False
        self.lines = 0
        self.torn = 0
        self._closed = threading.Event()
        self._syncer: threading.Thread | None = None
        if fsync == "interval":
            self._syncer = threading.Thread(target=self._sync_loop, name="distillwatch-spool-sync", daemon=True)  # fmt: skip
            self._syncer.start()

    def _open(self, segment: int) -> int:
        path = self.directory / _NAME.format(segment)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def segments(self) -> list[int]:
        found = []
        for path in self.directory.glob("segment-*.jsonl"):
            number = path.stem.removeprefix("segment-")
            if number.isdigit():
                found.append(int(number))
        return sorted(found)

    # -- writing ----------------------------------------------------------------------------
    def append(self, kind: str, payload: dict[str, Any]) -> None:
        """Journal one entry. Returns once the line is in the kernel (see the module docstring)."""
        line = orjson.dumps([kind, payload], default=str) + b"\n"
        with self._lock:
            os.write(self._fd, line)
            self._size += len(line)
            self.lines += 1
            if self.fsync == "always":
                os.fsync(self._fd)
            else:
                self._dirty = True
            if self._size >= self.segment_bytes:
                self._rotate()

    def _rotate(self) -> None:
        if self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        os.close(self._fd)
        self.segment += 1
        self._fd = self._open(self.segment)
        self._size = 0

    def _sync_loop(self) -> None:
        while not self._closed.wait(self.fsync_seconds):
            self.sync()

    def sync(self) -> None:
        """fsync what was appended, without holding the append lock while the disk works."""
        with self._lock:
            if not self._dirty or self._fd < 0:
                return
            self._dirty = False
            fd = os.dup(self._fd)  # stays valid if the segment rotates meanwhile
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._closed.set()
        self.sync()
        with self._lock:
            os.close(self._fd)
            self._fd = -1

    # -- reading ----------------------------------------------------------------------------
    def start_position(self, stored: Position | None) -> Position:
        """Where folding resumes: the stored position, or the oldest segment on disk."""
        segments = self.segments()
        if stored is not None:
            return stored
        return Position(segments[0] if segments else self.segment, 0)

    def read(self, position: Position, max_bytes: int = 8 * 1024 * 1024) -> tuple[list[tuple[str, dict[str, Any]]], Position]:  # fmt: skip
        """Whole entries after ``position`` (about ``max_bytes`` of them) and where they end."""
        while True:
            path = self.directory / _NAME.format(position.segment)
            live = position.segment >= self.segment
            if path.exists():
                data, limit = b"", max_bytes
                while True:
                    with open(path, "rb") as handle:
                        handle.seek(position.offset)
                        data = handle.read(limit)
                    if b"\n" in data or len(data) < limit:
                        break
                    limit *= 2  # one line longer than the read: read more
                end = data.rfind(b"\n") + 1
                if end:
                    entries = [self._decode(line) for line in data[:end].splitlines()]
                    return entries, Position(position.segment, position.offset + end)
                if live:
                    return [], position  # the writer's segment: wait for more
                if data:
                    self.torn += 1  # an old segment ending without a newline: a torn write
            elif live:
                return [], position
            later = [s for s in self.segments() if s > position.segment]
            if not later:
                return [], position
            position = Position(later[0], 0)

    def _decode(self, line: bytes) -> tuple[str, dict[str, Any]]:
        try:
            kind, payload = orjson.loads(line)
            if isinstance(kind, str) and isinstance(payload, dict):
                return kind, payload
        except (orjson.JSONDecodeError, ValueError, TypeError):
            pass
        self.torn += 1
        return "torn", {"raw": line[:2048].decode("utf-8", errors="replace")}

    def release(self, position: Position) -> None:
        """Delete the segments wholly before ``position`` (they are folded)."""
        for segment in self.segments():
            if segment < position.segment and segment != self.segment:
                (self.directory / _NAME.format(segment)).unlink(missing_ok=True)

    def backlog_bytes(self, position: Position) -> int:
        total = 0
        for segment in self.segments():
            if segment >= position.segment:
                size = (self.directory / _NAME.format(segment)).stat().st_size
                total += size - (position.offset if segment == position.segment else 0)
        return max(total, 0)


def iter_entries(directory: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every entry in a journal folder, oldest first (for inspection and tests)."""
    for path in sorted(directory.glob("segment-*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                yield tuple(orjson.loads(line))  # type: ignore[misc]
            except orjson.JSONDecodeError:
                continue

"""Parse and validate a large uncompressed JSONL file in several processes.

Python's per-record work (decode, validate, build Arrow) is the bottleneck of ingest, and the GIL
keeps it on one core. A plain JSONL file can be cut into line-aligned byte ranges that worker
processes read on their own; results come back in file order, so line numbers in the quarantine
stay exact. Gzip streams cannot be split, so they (and small files) take the sequential path.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa

from distillwatch.ingest.adapters import ADAPTERS
from distillwatch.ingest.batch import exchanges_to_table
from distillwatch.ingest.readers import (
    BadRecord,
    FileFormatError,
    Position,
    line_aligned_ranges,
    read_jsonl_range,
)
from distillwatch.schema import Exchange, RecordError, validate_exchange

#: Files smaller than this are not worth starting processes for.
PARALLEL_MIN_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 48 * 1024 * 1024


@dataclass
class ChunkResult:
    """What one worker made of one byte range."""

    table: pa.Table
    bad: list[tuple[int, str, str, bytes]] = field(default_factory=list)  # line, field, why, raw
    lines: int = 0
    end: int = 0  # byte offset where the range ends (progress)
    records: int = 0
    truncated: int = 0
    flagged: int = 0
    error: str | None = None


#: How often a worker checks that the ingest process that started it is still alive.
PARENT_CHECK_SECONDS = 0.2


def _die_with_parent(parent: int) -> None:
    """Worker initializer: exit as soon as the ingest process that started it is gone.

    A killed parent (kill -9, OOM killer) cannot tell its workers to stop, and a worker busy
    parsing a 48 MB range would otherwise run on for a minute. The worker is re-parented when
    its parent dies, so a watchdog thread compares ``getppid()`` with the parent it was given.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="distillwatch-parent-watch", daemon=True).start()


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def parse_chunk(path: str, start: int, end: int, fmt: str, max_text: int) -> ChunkResult:
    """Worker: decode, adapt and validate the lines starting in ``[start, end)``."""
    adapt = ADAPTERS[fmt]
    position = Position()
    rows: list[Exchange] = []
    seen: set[str] = set()
    result = ChunkResult(table=pa.table({}), end=end)
    try:
        for line_no, raw in read_jsonl_range(Path(path), start, end, position):
            result.records += 1
            if isinstance(raw, BadRecord):
                result.bad.append((line_no, raw.field, raw.reason, raw.raw))
                continue
            try:
                row = validate_exchange(adapt(raw), max_text)
            except RecordError as exc:
                raw_bytes = orjson.dumps(raw, default=str)[:2048]
                result.bad.append((line_no, exc.field, exc.reason, raw_bytes))
                continue
            result.truncated += row.truncated
            result.flagged += bool(row.flags)
            if row.id not in seen:
                seen.add(row.id)
                rows.append(row)
    except FileFormatError as exc:
        result.error = str(exc)
    result.lines = position.lines
    result.table = exchanges_to_table(rows, path)
    return result


def parallel_chunks(
    path: Path, fmt: str, max_text: int, workers: int | None = None
) -> Iterator[ChunkResult]:
    """Yield each range's result in file order, keeping only a few ranges in flight."""
    workers = workers or default_workers()
    ranges = line_aligned_ranges(path, CHUNK_BYTES)
    # 'spawn': the parent has DuckDB threads running, and forking a threaded process can
    # deadlock the child on a lock some other thread held.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                             initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:  # fmt: skip
        pending: list[Future[ChunkResult]] = []
        queue = iter(ranges)
        for start, end in queue:
            pending.append(pool.submit(parse_chunk, str(path), start, end, fmt, max_text))
            if len(pending) > workers:
                break
        while pending:
            result = pending.pop(0).result()
            next_range = next(queue, None)
            if next_range is not None:
                pending.append(pool.submit(parse_chunk, str(path), *next_range, fmt, max_text))
            yield result
            if result.error:
                for future in pending:
                    future.cancel()
                return

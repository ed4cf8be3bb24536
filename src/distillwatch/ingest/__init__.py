"""Ingestion: log files in, validated exchanges in the store, bad records quarantined with reasons.

The rules, in order of importance: never lose a good record; never let one bad record (or a
hostile one) stop the rest of the file; say exactly which record and field was bad; load the same
``id`` once however many times it is ingested; stream, so input size does not bound memory.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from distillwatch.ingest.adapters import ADAPTERS, BATCH_FORMATS, BatchJoin, detect_format, from_csv
from distillwatch.ingest.batch import exchanges_to_table
from distillwatch.ingest.parallel import PARALLEL_MIN_BYTES, default_workers, parallel_chunks
from distillwatch.ingest.parquet_sql import SqlPathUnavailable, ingest_parquet_sql, sql_compatible
from distillwatch.ingest.readers import (
    BadRecord,
    FileFormatError,
    Position,
    expand_paths,
    file_kind,
    first_record,
    parquet_columns,
    read_records,
)
from distillwatch.quarantine import Quarantine, default_quarantine
from distillwatch.schema import (
    DEFAULT_MAX_TEXT_CHARS,
    Exchange,
    RecordError,
    parse_account,
    validate_exchange,
)
from distillwatch.store import EXCHANGE_SCHEMA, Store

__all__ = ["FORMATS", "FileFormatError", "IngestReport", "ingest_accounts", "ingest_paths"]

FORMATS = ("auto", *ADAPTERS)
BATCH_ROWS = 10_000
REQUIRED_CONTRACT_COLUMNS = ("id", "ts", "account_id", "model", "messages")


@dataclass
class IngestReport:
    """What one ingest did. ``quarantined`` + ``loaded`` + ``duplicates`` == ``records``."""

    files: int = 0
    records: int = 0
    loaded: int = 0
    duplicates: int = 0
    quarantined: int = 0
    truncated: int = 0
    #: Loaded records with at least one flag (an optional field dropped, an unknown role kept).
    flagged: int = 0
    accounts: int = 0
    accounts_quarantined: int = 0
    file_errors: list[str] = field(default_factory=list)
    quarantine_path: Path | None = None
    seconds: float = 0.0
    formats: dict[str, str] = field(default_factory=dict)
    #: Per input file: its format and counts (records, loaded, quarantined, flagged, ...).
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = self.__dict__.copy()
        data["quarantine_path"] = str(self.quarantine_path) if self.quarantine_path else None
        return data


def _resolve_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    return detect_format(first_record(path))


_BATCH_WORDS = re.compile(r"input|output|requests?|results?|responses?|[^a-z0-9]")


def _pair_batches(formats: dict[Path, str]) -> dict[Path, Path]:
    """Pair each OpenAI Batch input file with its output file (input path -> output path).

    One of each: they pair. Several: by name (``x_input.jsonl`` with ``x_output.jsonl``), then by
    the custom_ids they share. A file left without a partner is ingested alone, and every line of
    it is quarantined with a reason saying the other file is needed.
    """
    inputs = [p for p, f in formats.items() if f == "openai_batch_input"]
    outputs = [p for p, f in formats.items() if f == "openai_batch_output"]
    if len(inputs) == 1 and len(outputs) == 1:
        return {inputs[0]: outputs[0]}
    pairs: dict[Path, Path] = {}
    key = {p: _BATCH_WORDS.sub("", p.name.lower().split(".")[0]) for p in inputs + outputs}
    for source in inputs:
        named = [o for o in outputs if o not in pairs.values() and key[o] == key[source]]
        if len(named) == 1:
            pairs[source] = named[0]
    for source in (i for i in inputs if i not in pairs):
        ids = _custom_ids(source)
        best = max((o for o in outputs if o not in pairs.values()),
                   key=lambda o: len(ids & _custom_ids(o)), default=None)  # fmt: skip
        if best is not None and ids & _custom_ids(best):
            pairs[source] = best
    return pairs


def _custom_ids(path: Path, limit: int = 2000) -> set[str]:
    found: set[str] = set()
    for number, record in read_records(path):
        if number > limit:
            break
        if isinstance(record, dict) and isinstance(record.get("custom_id"), str):
            found.add(record["custom_id"])
    return found


def _check_parquet_columns(path: Path, fmt: str) -> None:
    if fmt != "contract" or file_kind(path) != "parquet":
        return
    missing = [c for c in REQUIRED_CONTRACT_COLUMNS if c not in parquet_columns(path)]
    if missing:
        raise FileFormatError(f"{path}: Parquet file lacks required columns: {', '.join(missing)}")


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as progress:
        yield progress


def ingest_paths(
    paths: list[Path],
    store: Store,
    *,
    accounts: Path | None = None,
    fmt: str = "auto",
    quarantine: Path | None = None,
    progress: bool = False,
    max_text: int = DEFAULT_MAX_TEXT_CHARS,
    batch_rows: int = BATCH_ROWS,
    workers: int | None = None,
) -> IngestReport:
    """Ingest log files/folders (and an optional account-metadata file) into ``store``.

    ``workers`` > 1 parses large uncompressed JSONL files in that many processes (default: one
    per core); other files are read in this process.
    """
    workers = default_workers() if workers is None else workers
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    started = time.perf_counter()
    report = IngestReport()
    report.quarantine_path = quarantine or default_quarantine(store.path)
    bad = Quarantine(report.quarantine_path)
    run_id = uuid.uuid4().hex[:12]
    files = expand_paths(paths)
    formats = {path: _resolve_format(path, fmt) for path in files if path.is_file()}
    batches = {source: BatchJoin(output) for source, output in _pair_batches(formats).items()}
    joined = {join.output: source for source, join in batches.items()}
    try:
        with _progress_bar(progress) as bar:
            for path in files:
                report.files += 1
                if path in joined:  # read through its input file's join, not on its own
                    report.formats[str(path)] = "openai_batch_output"
                    continue
                adapter = batches.get(path)
                _ingest_file(path, store, formats.get(path, fmt), bad, report, run_id, bar, max_text,
                             batch_rows, workers, adapter)  # fmt: skip
                if adapter is not None:
                    _quarantine_unjoined(adapter, path, bad, report)
            if accounts is not None:
                report.accounts = ingest_accounts(accounts, store, bad, report)
    finally:
        bad.close()
    if report.quarantined == 0 and not bad.path.exists():
        report.quarantine_path = None
    report.seconds = time.perf_counter() - started
    store.audit(
        "ingest",
        "ingest.completed",
        {k: v for k, v in report.as_dict().items() if k not in ("formats",)},
    )
    return report


def _quarantine_unjoined(
    join: BatchJoin, source: Path, bad: Quarantine, report: IngestReport
) -> None:
    """Results in a batch's output file that no request of its input file asked for."""
    entry = report.sources.setdefault(str(join.output), {"format": "openai_batch_output"})
    entry.update(joined_into=str(source), records=len(join.offsets) + len(join.bad_output_lines),
                 quarantined=0)  # fmt: skip
    for number, reason in join.bad_output_lines:
        bad.add(join.output, number, "<record>", reason, b"")
        entry["quarantined"] += 1
    for custom_id in join.unused():
        bad.add(
            join.output,
            custom_id,
            "custom_id",
            "a result with no request in the batch input file",
            {"custom_id": custom_id},
        )
        entry["quarantined"] += 1
    report.quarantined += entry["quarantined"]
    report.records += entry["quarantined"]


def _validated_batches(
    path: Path,
    adapt: Callable[[dict[str, Any]], dict[str, Any]],
    bad: Quarantine,
    counts: dict[str, int],
    failure: list[str],
    max_text: int,
    batch_rows: int,
    on_progress: Callable[[int], None],
) -> Iterator[pa.RecordBatch]:
    """Parse, adapt and validate ``path``, yielding Arrow batches of good rows.

    DuckDB pulls this generator from inside one INSERT. A file-level error must not abort that
    statement (the good rows before it would be lost), so it is recorded in ``failure`` and the
    stream simply ends.
    """
    source = str(path)
    position = Position()
    rows: list[Exchange] = []
    seen: set[str] = set()
    try:
        for record_no, raw in read_records(path, position):
            counts["records"] += 1
            if isinstance(raw, BadRecord):
                counts["quarantined"] += 1
                bad.add(path, record_no, raw.field, raw.reason, raw.raw)
                continue
            try:
                row = validate_exchange(adapt(raw), max_text)
            except RecordError as exc:
                counts["quarantined"] += 1
                bad.add(path, record_no, exc.field, exc.reason, raw)
                continue
            if row.truncated:
                counts["truncated"] += 1
            if row.flags:
                counts["flagged"] += 1
            if row.id in seen:
                continue  # repeated within the batch; counted as a duplicate by the caller
            seen.add(row.id)
            rows.append(row)
            if len(rows) >= batch_rows:
                yield from exchanges_to_table(rows, source).to_batches()
                rows, seen = [], set()
                on_progress(position.consumed)
    except FileFormatError as exc:
        failure.append(str(exc))
    if rows:
        yield from exchanges_to_table(rows, source).to_batches()


def _splittable(path: Path) -> bool:
    if file_kind(path) != "jsonl" or path.stat().st_size < PARALLEL_MIN_BYTES:
        return False
    with open(path, "rb") as handle:
        return handle.read(2) != b"\x1f\x8b"  # gzip cannot be split


def _parallel_batches(
    path: Path,
    fmt: str,
    bad: Quarantine,
    counts: dict[str, int],
    failure: list[str],
    max_text: int,
    workers: int,
    on_progress: Callable[[int], None],
) -> Iterator[pa.RecordBatch]:
    """Like :func:`_validated_batches`, with the parsing spread over worker processes."""
    lines_before = 0
    for chunk in parallel_chunks(path, fmt, max_text, workers):
        counts["records"] += chunk.records
        counts["quarantined"] += len(chunk.bad)
        counts["truncated"] += chunk.truncated
        counts["flagged"] += chunk.flagged
        for line_no, field_name, reason, raw in chunk.bad:
            bad.add(path, lines_before + line_no, field_name, reason, raw)
        if chunk.error:
            # Worker messages count lines from their range's start; say where in the file.
            failure.append(f"{chunk.error} (range starting after line {lines_before})")
        lines_before += chunk.lines
        yield from chunk.table.to_batches()
        on_progress(chunk.end)


def _ingest_file(
    path: Path,
    store: Store,
    fmt: str,
    bad: Quarantine,
    report: IngestReport,
    run_id: str,
    bar: Progress | None,
    max_text: int,
    batch_rows: int,
    workers: int,
    adapter: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    started_at = datetime.now(UTC).replace(tzinfo=None)
    counts = {"records": 0, "loaded": 0, "duplicates": 0, "quarantined": 0, "truncated": 0,
              "flagged": 0}  # fmt: skip
    failure: list[str] = []
    source = str(path)
    try:
        if not path.is_file():
            raise FileFormatError(f"{path}: no such file")
        file_fmt = fmt if fmt != "auto" else _resolve_format(path, fmt)
        report.formats[source] = file_fmt
        adapt = adapter or ADAPTERS[file_fmt]
        if file_kind(path) == "csv":
            adapt = from_csv(adapt)
        _check_parquet_columns(path, file_fmt)
        size = path.stat().st_size
        task = bar.add_task(path.name[-40:], total=size) if bar is not None else None

        def on_progress(consumed: int) -> None:
            if bar is not None and task is not None:
                bar.update(task, completed=consumed)

        batches: Iterator[pa.RecordBatch] | None = None
        if file_fmt == "contract" and file_kind(path) == "parquet" and sql_compatible(store, path):
            try:
                counts.update(ingest_parquet_sql(store, path, bad.add, max_text))
                on_progress(size)
            except SqlPathUnavailable:
                # Huge row groups can exceed DuckDB's memory cap; stream it in Python instead.
                batches = _validated_batches(
                    path,
                    adapt,
                    bad,
                    counts,
                    failure,
                    max_text,
                    batch_rows,
                    on_progress,
                )
        elif (
            workers > 1 and adapter is None and file_fmt not in BATCH_FORMATS and _splittable(path)
        ):
            batches = _parallel_batches(
                path, file_fmt, bad, counts, failure, max_text, workers, on_progress
            )
        else:
            batches = _validated_batches(
                path, adapt, bad, counts, failure, max_text, batch_rows, on_progress
            )
        if batches is not None:
            reader = pa.RecordBatchReader.from_batches(EXCHANGE_SCHEMA, batches)
            counts["loaded"] = store.insert_exchange_stream(reader, source)
            counts["duplicates"] = counts["records"] - counts["quarantined"] - counts["loaded"]
            on_progress(size)
    except FileFormatError as exc:
        failure.append(str(exc))
    error = failure[0] if failure else None
    if error:
        # Rows read before the error stay loaded: they were valid.
        report.file_errors.append(error)
    for key, value in counts.items():
        setattr(report, key, getattr(report, key) + value)
    report.sources[source] = {"format": report.formats.get(source), **counts, "error": error}
    store.record_ingest_run(
        run_id=run_id,
        source=source,
        format=report.formats.get(source),
        started_at=started_at,
        finished_at=datetime.now(UTC).replace(tzinfo=None),
        error=error,
        **counts,
    )


def ingest_accounts(
    path: Path, store: Store, bad: Quarantine | None = None, report: IngestReport | None = None
) -> int:
    """Load an account-metadata file (JSONL/JSON/Parquet). Later rows for an account win."""
    quarantine = bad or Quarantine(default_quarantine(store.path))
    rows: dict[str, dict[str, Any]] = {}
    rejected = 0
    try:
        for record_no, raw in read_records(path):
            try:
                if isinstance(raw, BadRecord):
                    raise RecordError(raw.field, raw.reason)
                row = parse_account(raw)
            except RecordError as exc:
                rejected += 1
                quarantine.add(path, record_no, exc.field, exc.reason, getattr(raw, "raw", raw))
                continue
            rows[row["account_id"]] = row
    except FileFormatError as exc:
        if report is None:
            raise
        report.file_errors.append(str(exc))
    finally:
        if bad is None:
            quarantine.close()
    if report is not None:
        report.accounts_quarantined += rejected
    return store.upsert_accounts(list(rows.values()))

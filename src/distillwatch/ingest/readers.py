"""Streaming readers: JSONL (plain or gzip), JSON arrays, CSV and Parquet, one record at a time.

Readers never hold a whole file in memory: JSONL is read line by line with a hard cap on line
length, Parquet batch by batch. Problems with a single record are yielded as
:class:`BadRecord` so the caller can quarantine them and carry on; problems with the file itself
(binary content, truncated gzip, missing Parquet columns) raise :class:`FileFormatError` with a
one-line message naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from distillwatch.errors import FileFormatError

#: A JSONL line longer than this is skipped and quarantined without being decoded.
DEFAULT_MAX_LINE_BYTES = 256 * 1024 * 1024
#: A .json file holding one array is read whole, so it gets a far smaller cap than JSONL.
MAX_JSON_ARRAY_BYTES = 512 * 1024 * 1024
PARQUET_BATCH_ROWS = 8_192

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".json.gz", ".jsonl.gzip")
PARQUET_SUFFIXES = (".parquet", ".pq")
JSON_SUFFIXES = (".json",)
CSV_SUFFIXES = (".csv", ".csv.gz")
CSV_BATCH_ROWS = 4096
#: What a JSON line that fails to parse looks like when psql's \copy wrote it.
_COPY_HINT = (
    "; this looks like a psql \\copy export, which doubles every backslash: export with "
    "psql -At -c 'select row_to_json(t) from ... t' > FILE instead (docs/ingest.md)"
)


@dataclass(slots=True)
class BadRecord:
    """A record that could not even be decoded (the caller quarantines it)."""

    field: str
    reason: str
    raw: bytes


@dataclass(slots=True)
class Position:
    """Where the reader is: bytes of the file consumed (progress bars) and lines read."""

    consumed: int = 0
    lines: int = 0


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given, folders expanded to the supported files inside them (sorted, recursive)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and file_kind(p) is not None)
            )
        else:
            found.append(path)
    return found


def file_kind(path: Path) -> str | None:
    """'jsonl', 'json', 'csv' or 'parquet' from the file name; None when unsupported."""
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(JSON_SUFFIXES):
        return "json"
    return None


def read_records(
    path: Path, position: Position | None = None, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[int, Any]]:
    """Yield ``(record_number, decoded_or_BadRecord)`` for every record in ``path``.

    Record numbers are 1-based line numbers for JSONL and row numbers for Parquet and arrays.
    """
    kind = file_kind(path)
    if kind is None:
        raise FileFormatError(
            f"{path}: unsupported file type (expected .jsonl, .jsonl.gz, .json, .csv or .parquet)"
        )
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    position = position or Position()
    if kind == "parquet":
        yield from _read_parquet(path, position)
    elif kind == "csv":
        yield from _read_csv(path, position)
    elif kind == "json":
        yield from _read_json(path, position)
    else:
        yield from _read_jsonl(path, position, max_line_bytes)


def _open_maybe_gzip(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """Open plain or gzip (sniffed by magic bytes, not the name); return (stream, raw file)."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw


def _read_jsonl(path: Path, position: Position, max_line_bytes: int) -> Iterator[tuple[int, Any]]:
    stream, raw = _open_maybe_gzip(path)
    try:
        try:
            head = stream.peek(4096)[:4096] if hasattr(stream, "peek") else b""
        except (OSError, EOFError, zlib.error) as exc:
            raise FileFormatError(f"{path}: corrupt gzip stream ({exc})") from None
        if b"\x00" in head:
            raise FileFormatError(f"{path}: binary content, not JSON lines")
        yield from _decode_lines(path, stream, raw, position, max_line_bytes)
    finally:
        stream.close()
        raw.close()


def read_jsonl_range(
    path: Path,
    start: int,
    end: int,
    position: Position | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[tuple[int, Any]]:
    """Records of an uncompressed JSONL file whose lines start in ``[start, end)``.

    Line numbers are relative to ``start`` (1 = the first line there). ``start`` and ``end``
    must be line starts: see :func:`line_aligned_ranges`.
    """
    with open(path, "rb") as raw:
        raw.seek(start)
        if start == 0 and b"\x00" in raw.peek(4096)[:4096]:
            raise FileFormatError(f"{path}: binary content, not JSON lines")
        yield from _decode_lines(path, raw, raw, position or Position(), max_line_bytes, end)


def line_aligned_ranges(path: Path, chunk_bytes: int) -> list[tuple[int, int]]:
    """Split an uncompressed file into ``[start, end)`` byte ranges that begin at line starts."""
    size = path.stat().st_size
    starts = [0]
    with open(path, "rb") as raw:
        offset = chunk_bytes
        while offset < size:
            raw.seek(offset)
            raw.readline()  # finish the line we landed in
            boundary = raw.tell()
            if boundary >= size:
                break
            if boundary > starts[-1]:
                starts.append(boundary)
            offset = boundary + chunk_bytes
    return list(zip(starts, [*starts[1:], size], strict=True))


def _decode_lines(
    path: Path,
    stream: BinaryIO,
    raw: BinaryIO,
    position: Position,
    max_line_bytes: int,
    end: int | None = None,
) -> Iterator[tuple[int, Any]]:
    line_no = 0
    while end is None or raw.tell() < end:
        try:
            line = stream.readline(max_line_bytes + 1)
        except (EOFError, OSError, zlib.error) as exc:
            detail = "truncated gzip" if isinstance(exc, EOFError) else f"corrupt gzip ({exc})"
            raise FileFormatError(f"{path}: {detail} after line {line_no}") from None
        if not line:
            break
        line_no += 1
        position.consumed = raw.tell()
        position.lines = line_no
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            _skip_rest_of_line(stream)
            yield (
                line_no,
                BadRecord("<line>", f"line longer than {max_line_bytes} bytes", line[:4096]),
            )
            continue
        if not line.strip():
            continue
        try:
            yield line_no, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            hint = _COPY_HINT if b"\\\\" in line else ""
            yield line_no, BadRecord("<json>", f"invalid JSON ({exc}){hint}", line[:4096])


def _skip_rest_of_line(stream: BinaryIO) -> None:
    while True:
        chunk = stream.readline(1 << 20)
        if not chunk or chunk.endswith(b"\n"):
            return


def _read_json(path: Path, position: Position) -> Iterator[tuple[int, Any]]:
    size = path.stat().st_size
    if size > MAX_JSON_ARRAY_BYTES:
        raise FileFormatError(
            f"{path}: {size} bytes is too large for a single JSON document; convert to JSONL"
        )
    data = path.read_bytes()
    if b"\x00" in data[:4096]:
        raise FileFormatError(f"{path}: binary content, not JSON")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FileFormatError(f"{path}: not valid JSON ({exc})") from None
    position.consumed = size
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        raise FileFormatError(f"{path}: expected a JSON array of records or one record")
    yield from enumerate(doc, start=1)


def _read_parquet(path: Path, position: Position) -> Iterator[tuple[int, Any]]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileFormatError(f"{path}: not a readable Parquet file ({exc})") from None
    total_rows = max(parquet.metadata.num_rows, 1)
    size = path.stat().st_size
    row_no = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for record in batch.to_pylist():
                row_no += 1
                yield row_no, record
            position.consumed = int(size * row_no / total_rows)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileFormatError(f"{path}: corrupt Parquet after row {row_no} ({exc})") from None


def _read_csv(path: Path, position: Position) -> Iterator[tuple[int, Any]]:
    """A CSV file with a header row, every value as text (DuckDB's reader, in batches).

    An empty unquoted field is null; quoted JSON (what ``psql \\copy ... csv`` writes for JSON
    columns) stays text for the adapter to decode.
    """
    import duckdb

    size = path.stat().st_size
    con = duckdb.connect()
    try:
        try:
            result = con.execute(
                "SELECT * FROM read_csv(?, header = true, all_varchar = true, "
                "max_line_size = 268435456)",
                [str(path)],
            )
            columns = [d[0] for d in result.description]
            row_no = 0
            while True:
                rows = result.fetchmany(CSV_BATCH_ROWS)
                if not rows:
                    break
                for row in rows:
                    row_no += 1
                    yield row_no, dict(zip(columns, row, strict=True))
                position.consumed = min(size, position.consumed + size // 50 + 1)
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise FileFormatError(f"{path}: not a readable CSV file ({first})") from None
    finally:
        con.close()
    position.consumed = size


def parquet_columns(path: Path) -> list[str]:
    """Column names of a Parquet file (cheap: reads the footer only)."""
    try:
        return list(pq.read_schema(path).names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileFormatError(f"{path}: not a readable Parquet file ({exc})") from None


def first_record(path: Path) -> Any:
    """The first decodable record of a file (for format sniffing), or None."""
    try:
        for _, record in read_records(path):
            if not isinstance(record, BadRecord):
                return record
            return None
    except FileFormatError:
        return None
    return None

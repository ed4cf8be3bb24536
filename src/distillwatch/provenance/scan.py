"""Contamination scan: find other models' outputs (and our own) in a corpus before training on it.

``scan(paths)`` streams documents from plain-text files, JSONL (``--field``), Parquet (a text
column, batch by batch) and git repositories (every commit of the history: its message and the
lines it added, via ``git log -p``), in bounded memory, and yields findings:

- ``assistant_marker``: what coding assistants and chat tools leave behind: commit trailers
  (``Co-authored-by:`` naming an assistant), "Generated with ..." footers, bot signatures,
  chat boilerplate pasted with the answer. The patterns are in :data:`MARKERS`, each with the
  reason it reports; a marker says where text came from, not that it is bad;
- ``watermark``: our own watermark (a keyring), per document with at least ``min_tokens``
  scored pairs and a p-value below ``alpha`` (the exact test of :mod:`.watermark`);
- ``near_duplicate``: a document whose MinHash collides with a reference sample of a vendor's
  outputs (``--reference FILE``, JSONL or text; datasketch LSH, Jaccard threshold);
- ``vendor_classifier``: only where a labelled sample is given (``--vendor-sample`` and
  ``--other-sample``), a document a :class:`~.classifier.VendorClassifier` trained on it scores
  at or above the threshold chosen on held-out data; the reason repeats the held-out precision
  and recall, and says it is a resemblance, not proof.

Each finding: ``path``, ``commit`` (git), ``line`` (1-based, where known), ``kind``, ``reason``.
A finding is evidence for a data team's quarantine list, never proof of who wrote the text.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

#: Documents are cut at this many characters (a git commit's added lines, a JSONL record's text).
MAX_DOCUMENT_CHARS = 2_000_000
_ASSISTANTS = (
    r"claude|anthropic|copilot|chatgpt|openai|gpt-?[345o]|codex|gemini|bard|cursor|devin|aider|"
    r"codeium|windsurf|tabnine|amazon q|codewhisperer|deepseek|qwen|mistral|llama|cody|replit"
)
#: (name, compiled pattern, reason). One definition, used by the scan and documented in docs.
MARKERS: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE | re.MULTILINE), reason)
    for name, pattern, reason in (
        ("co_authored_by_assistant", rf"^[ \t>]*co-authored-by:[^\n]*(?:{_ASSISTANTS})[^\n]*$",
         "commit trailer credits an AI assistant"),
        ("generated_with", rf"(?:generated|created|written|made) (?:with|by|using) \[?(?:{_ASSISTANTS})",
         "footer says the text was generated with an AI tool"),
        ("robot_footer", r"\U0001F916 ?generated", "the robot-emoji footer assistants append"),
        ("aider_commit", r"^aider: ", "commit message prefix aider writes"),
        ("assistant_boilerplate", r"\bas an ai (?:language )?model\b|\bi'?m an ai (?:language model|assistant)\b",
         "chat-model boilerplate pasted with an answer"),
        ("noreply_assistant", r"noreply@anthropic\.com|copilot@github\.com|\bcursoragent@",
         "an assistant's commit e-mail address"),
    )
)  # fmt: skip
#: Every marker contains one of these (lower-cased): a cheap test that most text passes untouched.
_LITERALS = ("co-authored-by", "aider: ", "as an ai", "an ai language", "an ai assistant",
             "noreply@anthropic", "copilot@github", "cursoragent@", "\U0001F916",
             *(f"{verb} {how}" for verb in ("generated", "created", "written", "made")
               for how in ("with", "by", "using")))  # fmt: skip


@dataclass(frozen=True)
class Document:
    path: str
    text: str
    line: int = 1  # the line the text starts at
    commit: str | None = None
    prompt: str = ""  # JSONL with a prompt field: the prompt the text answered


#: Called for a record that yields no document: (path, line, reason). Nothing is dropped unsaid.
Skipped = Callable[[str, int, str], None]


@dataclass(frozen=True)
class Finding:
    path: str
    kind: str
    reason: str
    line: int | None = None
    commit: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


#: A record that yields no document: (path, line, reason).
Skip = tuple[str, int, str]


@dataclass
class Batch:
    """Documents read together (columns of equal length): the unit the scan works on."""

    paths: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    commits: list[str | None] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    #: The texts as one Arrow string array, when the reader produced them so (JSONL read by
    #: Arrow, Parquet): the marker prefilter and the tokenizer read its buffers, and ``texts``
    #: stays empty until a step needs Python strings (:meth:`text_list`).
    column: Any = None
    #: Records of the batch's part of its file that yield no document (a reader found them).
    skipped: list[Skip] = field(default_factory=list)

    def append(self, path: str, text: str, line: int, commit: str | None = None,
               prompt: str = "") -> None:  # fmt: skip
        self.paths.append(path)
        self.texts.append(text)
        self.lines.append(line)
        self.commits.append(commit)
        self.prompts.append(prompt)

    def __len__(self) -> int:
        return len(self.paths)

    def text_list(self) -> list[str]:
        """Every text as a Python string (made from :attr:`column` the first time)."""
        if self.column is not None and len(self.texts) != len(self.paths):
            self.texts = self.column.to_pylist()
        return self.texts

    def text_data(self) -> Any:
        """The texts as the scan's batch steps take them: the Arrow column, or the strings."""
        return self.column if self.column is not None else self.texts

    def document(self, i: int) -> Document:
        text = self.texts[i] if len(self.texts) == len(self.paths) else self.column[i].as_py()
        return Document(self.paths[i], text, self.lines[i], self.commits[i], self.prompts[i])

    def parse(self) -> tuple[Batch, list[Skip]]:
        """Its documents (already read) and the records its reader skipped: as
        :meth:`JsonlChunk.parse`."""
        return self, self.skipped


@dataclass(frozen=True)
class JsonlChunk:
    """Whole lines of a JSONL file, not yet read or parsed (both are part of the work a scan
    worker does): bytes ``start`` to ``start + length`` of ``path``, or ``data`` where given;
    they start at line ``first_line``. The process that finds the chunks only counts lines, so
    it neither holds nor sends the text (:func:`_jsonl_chunks`)."""

    path: str
    first_line: int
    data: bytes
    field: str
    prompt_field: str | None = None
    start: int = 0
    length: int = 0

    def read(self) -> bytes:
        """The chunk's bytes: ``data``, else its range of the file."""
        if self.data or not self.length:
            return self.data
        with open(self.path, "rb") as handle:
            handle.seek(self.start)
            return handle.read(self.length)

    def parse(self) -> tuple[Batch, list[Skip]]:
        """The chunk's documents, and its records that yield none: read by Arrow's JSON reader
        where that gives exactly what reading line by line gives, else line by line."""
        data = self.read()
        fast = self._parse_arrow(data)
        return fast if fast is not None else self._parse_lines(data)

    def _parse_lines(self, data: bytes | None = None) -> tuple[Batch, list[Skip]]:
        """Record by record: every record decided on its own (the reference behaviour)."""
        batch, skipped = Batch(), []
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        field, prompt_field = self.field, self.prompt_field
        lines = (self.read() if data is None else data).split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        for number, raw in enumerate(lines, self.first_line):
            try:
                record = loads(raw)
            except decode_error:
                try:  # invalid UTF-8 inside a valid record: read it with replacement characters
                    record = loads(raw.decode("utf-8", "replace"))
                except decode_error:
                    skipped.append((self.path, number, "not JSON"))
                    continue
            is_dict = isinstance(record, dict)
            value = record.get(field) if is_dict else record
            if not isinstance(value, str):
                skipped.append((self.path, number, f"no string field {field!r}"))
                continue
            prompt = record.get(prompt_field) if prompt_field and is_dict else None
            batch.append(self.path, value[:MAX_DOCUMENT_CHARS], number, None,
                         prompt[:MAX_DOCUMENT_CHARS] if isinstance(prompt, str) else "")  # fmt: skip
        return batch, skipped

    def _parse_arrow(self, data: bytes | None = None) -> tuple[Batch, list[Skip]] | None:
        """The whole chunk in one call to Arrow's JSON reader (about twice as fast as a record
        at a time, and the texts stay one Arrow column), or None where its answer could differ
        from the line-by-line one: a prompt field; a line that is blank, not JSON, not an
        object, or whose field is not a string (Arrow refuses the chunk or skips the line);
        invalid UTF-8 or a lone surrogate; a text over :data:`MAX_DOCUMENT_CHARS`. The line by
        line path then decides record by record, as before."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.json as pj

        data = self.read() if data is None else data
        if self.prompt_field is not None or not data:
            return None
        lines = data.count(b"\n") + (not data.endswith(b"\n"))
        try:
            table = pj.read_json(
                pa.BufferReader(data),
                read_options=pj.ReadOptions(use_threads=False, block_size=len(data) + 1),
                parse_options=pj.ParseOptions(
                    explicit_schema=pa.schema([(self.field, pa.string())]),
                    unexpected_field_behavior="ignore",
                ),
            )
            if table.num_rows != lines:  # a blank line: Arrow skips it, line numbers would shift
                return None
            column = table.column(0).combine_chunks()
            column.validate(full=True)  # UTF-8
        except (pa.ArrowException, ValueError):
            return None
        if column.null_count:
            valid = column.is_valid().to_numpy(zero_copy_only=False)
            rows = np.flatnonzero(valid)
            skipped = [(self.path, self.first_line + r, f"no string field {self.field!r}")
                       for r in np.flatnonzero(~valid).tolist()]  # fmt: skip
            column = column.filter(pa.array(valid))
        else:
            rows, skipped = np.arange(len(column)), []
        if len(column) and int(pc.max(pc.binary_length(column)).as_py()) > MAX_DOCUMENT_CHARS:
            return None  # bytes >= characters: only then can a text need cutting
        n = len(column)
        batch = Batch([self.path] * n, [], (rows + self.first_line).tolist(), [None] * n,
                      [""] * n, column=column)  # fmt: skip
        return batch, skipped


#: What the readers hand the scan: documents, or JSONL lines to parse.
Work = Batch | JsonlChunk


def documents(path: Path, field: str = "text", prompt_field: str | None = None,
              on_skip: Skipped | None = None) -> Iterator[Document]:  # fmt: skip
    """The documents of one path (a file, a folder of files, or a git repository). JSONL
    records that are not JSON or lack a string ``field`` go to ``on_skip``."""
    for work in read(path, field, prompt_field):
        batch, skipped = work.parse()
        for skip in skipped:
            if on_skip is not None:
                on_skip(*skip)
        batch.text_list()  # every document is wanted: make the strings in one call
        for i in range(len(batch)):
            yield batch.document(i)


def read(path: Path, field: str = "text", prompt_field: str | None = None) -> Iterator[Work]:
    """The documents of one path as units of work of at most :data:`BATCH_DOCUMENTS`
    documents and about :data:`BATCH_CHARS` characters, in order: a git repository's
    commits, a folder's files (sorted; small files share a batch), Parquet row batches, JSONL
    chunks of whole lines."""
    if (path / ".git").exists():
        yield from _batched(_git_documents(path))
    elif path.is_dir():
        plain: list[Path] = []
        for child in sorted(path.rglob("*")):
            if not child.is_file() or ".git" in child.parts:
                continue
            if child.suffix in (".parquet", ".jsonl", ".ndjson"):
                yield from _batched(d for p in plain for d in _text_document(p))
                plain = []
                yield from read(child, field, prompt_field)
            else:
                plain.append(child)
        yield from _batched(d for p in plain for d in _text_document(p))
    elif path.suffix == ".parquet":
        yield from _parquet_batches(path, field)
    elif path.suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_chunks(path, field, prompt_field)
    else:
        yield from _batched(_text_document(path))


def _text_document(path: Path) -> Iterator[Document | Skip]:
    """One document per file, bounded; a binary file (a NUL byte in its first 8 KiB, git's
    test) is reported, not read as text, and so is a file that cannot be read."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8192)
            if b"\0" in head:
                yield (str(path), 0, "binary file")
                return
            data = head + handle.read(4 * MAX_DOCUMENT_CHARS - len(head))
    except OSError as exc:
        yield (str(path), 0, f"unreadable ({exc.strerror or exc})")
        return
    chunk = data.decode("utf-8", "replace")[:MAX_DOCUMENT_CHARS]
    if chunk:
        yield Document(str(path), chunk)


def _jsonl_chunks(path: Path, field: str, prompt_field: str | None) -> Iterator[JsonlChunk]:
    """Whole lines, about :data:`BATCH_CHARS` bytes at a time (a longer line: to its end), as
    byte ranges of the file: this process reads each block into one reused buffer only to find
    the last line end and count lines, and whoever parses a chunk reads it again (from the page
    cache, a few ms for 8 MB) instead of this process copying and sending 8 MB a unit."""
    name, first_line, start = str(path), 1, 0
    buffer = bytearray(BATCH_CHARS)
    with path.open("rb") as handle:  # buffered: readinto fills the buffer unless at the end
        while True:
            handle.seek(start)
            size = handle.readinto(buffer)
            if not size:
                break
            cut = buffer.rfind(b"\n", 0, size) + 1
            if cut:
                length, lines = cut, buffer.count(b"\n", 0, cut)
            else:  # no line end in the block: the last line, or one longer than the buffer
                length, lines = size, 0
                while size == len(buffer):
                    size = handle.readinto(buffer)
                    end = buffer.find(b"\n", 0, size)
                    if end >= 0:
                        length, lines = length + end + 1, 1
                        break
                    length += size
            yield JsonlChunk(name, first_line, b"", field, prompt_field, start, length)
            first_line += lines
            start += length


def _batched(docs: Iterable[Document | Skip]) -> Iterator[Batch]:
    batch, chars = Batch(), 0
    for doc in docs:
        if isinstance(doc, tuple):  # a file a reader skipped: reported with the batch
            batch.skipped.append(doc)
            continue
        batch.append(doc.path, doc.text, doc.line, doc.commit, doc.prompt)
        chars += len(doc.text)
        if len(batch) >= BATCH_DOCUMENTS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = Batch(), 0
    if len(batch) or batch.skipped:
        yield batch


def _parquet_batches(path: Path, field: str) -> Iterator[Batch]:
    """A Parquet file's ``field`` column about :data:`BATCH_CHARS` bytes at a time, as Arrow
    arrays (no Python string a row: the scan reads the column's buffers). A row's line is its
    1-based row number. Reported, never dropped unsaid: a null row (``no string field``), and
    at line 0 a file that cannot be read, has no such column, or holds something other than
    text in it. Invalid UTF-8 is read with replacement characters, and texts are cut at
    :data:`MAX_DOCUMENT_CHARS`, as JSONL's are."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    name = str(path)
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        yield Batch(skipped=[(name, 0, f"not a readable Parquet file ({str(exc)[:200]})")])
        return
    if field not in names:
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        yield Batch(skipped=[(name, 0, f"no column {field!r} (columns: {shown})")])
        return
    parts: list[Any] = []
    lines: list[np.ndarray] = []
    skipped: list[Skip] = []
    size, row = 0, 1

    def flush() -> Batch:
        nonlocal parts, lines, skipped, size
        column = pa.concat_arrays(parts) if parts else pa.array([], pa.large_string())
        at = np.concatenate(lines).tolist() if lines else []
        n = len(at)
        batch = Batch([name] * n, [], at, [None] * n, [""] * n, column=column, skipped=skipped)
        parts, lines, skipped, size = [], [], [], 0
        return batch

    batches = parquet.iter_batches(batch_size=PARQUET_ROWS, columns=[field])
    while True:
        try:
            record = next(batches, None)
        except (pa.ArrowException, OSError) as exc:
            skipped.append((name, row, f"unreadable from this row on ({str(exc)[:200]})"))
            break
        if record is None:
            break
        column = record.column(0)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            skipped.append((name, 0, f"column {field!r} holds {column.type}, not text"))
            break
        column = column.cast(pa.large_string())
        valid = np.ones(len(column), bool)
        if column.null_count:
            valid = column.is_valid().to_numpy(zero_copy_only=False)
            skipped += [(name, row + int(i), f"no string field {field!r}")
                        for i in np.flatnonzero(~valid)]  # fmt: skip
            column = column.filter(pa.array(valid))
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:  # invalid UTF-8: as JSONL reads it, with replacement characters
            raw = column.cast(pa.large_binary()).to_pylist()
            column = pa.array([v.decode("utf-8", "replace") for v in raw], pa.large_string())
        if len(column) and int(pc.max(pc.binary_length(column)).as_py()) > MAX_DOCUMENT_CHARS:
            column = pc.utf8_slice_codeunits(column, 0, MAX_DOCUMENT_CHARS)
        parts.append(column)
        lines.append(np.flatnonzero(valid) + row)
        size += int(pc.sum(pc.binary_length(column)).as_py() or 0)
        row += len(valid)
        if size >= BATCH_CHARS:
            yield flush()
    if parts or skipped:
        yield flush()


def _git_documents(repo: Path) -> Iterator[Document]:
    """Each commit of the history: its message, then the lines it added (``git log -p``),
    streamed; line numbers are of the added lines in the new file."""
    proc = subprocess.Popen(
        ["git", "-C", str(repo), "log", "--all", "-p", "--no-color", "--no-ext-diff",
         "--format=%x00commit %H%n%B%x00"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, errors="replace",
    )  # fmt: skip
    assert proc.stdout is not None
    commit: str | None = None
    message: list[str] = []
    in_message = False
    current_file, new_line, added = "", 0, []  # type: ignore[var-annotated]

    def flush_file() -> Iterator[Document]:
        if added and commit:
            first = added[0][0]
            text = "\n".join(t for _, t in added)[:MAX_DOCUMENT_CHARS]
            yield Document(f"{repo}:{current_file}", text, first, commit)

    for raw in proc.stdout:
        line = raw.rstrip("\n")
        if line.startswith("\x00commit "):
            yield from flush_file()
            added = []
            commit, message, in_message = line[8:48], [], True
            continue
        if in_message:
            if line.startswith("\x00"):
                in_message = False
                yield Document(f"{repo}:<commit message>", "\n".join(message), 1, commit)
            else:
                message.append(line)
            continue
        if line.startswith("+++ "):
            yield from flush_file()
            added = []
            current_file = line[6:] if line.startswith("+++ b/") else line[4:]
        elif line.startswith("@@"):
            match = re.search(r"\+(\d+)", line)
            new_line = int(match.group(1)) if match else 0
        elif line.startswith("+"):
            if sum(len(t) for _, t in added) < MAX_DOCUMENT_CHARS:
                added.append((new_line, line[1:]))
            new_line += 1
        elif not line.startswith("-"):
            new_line += 1
    yield from flush_file()
    proc.wait()


def marker_findings(doc: Document) -> Iterator[Finding]:
    lowered = doc.text.lower()
    if not any(literal in lowered for literal in _LITERALS):
        return
    for _name, pattern, reason in MARKERS:
        for match in pattern.finditer(doc.text):
            line = doc.line + doc.text.count("\n", 0, match.start())
            snippet = match.group(0).strip()[:120]
            yield Finding(doc.path, "assistant_marker", f"{reason}: {snippet!r}", line, doc.commit)


#: Documents are scanned in batches of at most this many documents and characters (memory stays
#: bounded; per-document Python work is left to the few documents that need it).
BATCH_DOCUMENTS = 4096
BATCH_CHARS = 8_000_000
#: Parquet rows read at a time (a unit of work gathers them to about BATCH_CHARS).
PARQUET_ROWS = 8192
#: RE2 (Arrow) form of the marker prefilter, case-insensitive: exact for ASCII text, where
#: lower-casing is one-to-one; other text takes the Python prefilter of :func:`marker_findings`.
_LITERALS_RE2 = "|".join(re.escape(literal) for literal in _LITERALS if literal.isascii())


def _marker_candidates(texts: list[str] | Any) -> np.ndarray:
    """Which documents may hold a marker: an ASCII one only where a literal occurs (one RE2
    pass over the batch), any other one always (the Python prefilter decides). ``texts``:
    strings or an Arrow string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = texts if isinstance(texts, pa.Array) else pa.array(texts, pa.large_string())
    hit = pc.match_substring_regex(array, _LITERALS_RE2, ignore_case=True)
    return np.asarray(
        pc.or_(hit, pc.invert(pc.string_is_ascii(array))).to_numpy(zero_copy_only=False), bool
    )


class Scanner:
    """The scan of one unit of work at a time (see the module docstring); picklable, so that
    worker processes each hold one. Parameters as :func:`scan`."""

    def __init__(self, keyring: Any = None, references: list[str] | None = None,
                 alpha: float = 1e-6, min_tokens: int = 50, threshold: float = 0.7,
                 classifier: Any = None, tokenizer: Any = None) -> None:  # fmt: skip
        from distillwatch.provenance.tokens import WordTokenizer

        self.keys = list(keyring.keys) if keyring is not None else []
        self.references = references or []
        self.alpha = alpha
        self.min_tokens = min_tokens
        self.threshold = threshold
        self.classifier = classifier
        self.tokenizer = tokenizer if tokenizer is not None else WordTokenizer()
        self._lsh: Any = None
        self._signature: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_lsh": None, "_signature": None}  # rebuilt where used

    def run(self, work: Work) -> tuple[list[Finding], list[Skip]]:
        """The findings of one unit of work, in document order, and its skipped records."""
        batch, skipped = work.parse()
        return (self.findings(batch) if len(batch) else []), skipped

    def findings(self, batch: Batch) -> list[Finding]:
        from distillwatch.provenance.watermark import binomial_test, count_green_batch

        texts = batch.text_data()
        attention = _marker_candidates(texts)
        marks: dict[int, list[Finding]] = {}
        if self.keys:
            ids, owner = self.tokenizer.tokens_batch(texts, ordered=False)
            # A text of at most min_tokens tokens scores fewer than min_tokens pairs: it can
            # never be reported, so it is not counted (a third of the tokens of chat answers).
            long = np.bincount(owner, minlength=len(batch)) > self.min_tokens
            if not long.all():
                keep = long[owner]
                ids, owner = ids[keep], owner[keep]
            for key in self.keys:
                scored, green = count_green_batch(ids, owner, len(batch), key)
                spread = np.sqrt(scored * key.gamma * (1 - key.gamma))
                # Under 3 standard deviations above chance is nowhere near alpha: no exact test.
                for i in np.flatnonzero((scored >= self.min_tokens)
                                        & (green >= key.gamma * scored + 3 * spread)).tolist():  # fmt: skip
                    if _tail_at_least(int(scored[i]), int(green[i]), key.gamma,
                                      self.alpha / len(self.keys)):  # fmt: skip
                        continue  # its p-value is surely above the bar: no exact test needed
                    p, _ = binomial_test(int(scored[i]), int(green[i]), key.gamma)
                    if p * len(self.keys) < self.alpha:
                        marks.setdefault(i, []).append(Finding(
                            batch.paths[i], "watermark", f"our watermark (key {key.key_id}): "
                            f"{int(green[i])} of {int(scored[i])} pairs green, p = {p:.2g}",
                            batch.lines[i], batch.commits[i]))  # fmt: skip
        vendor = None
        if self.classifier is not None:
            vendor = np.asarray(self.classifier.score_samples(batch.text_list()), float)
            attention |= vendor >= self.classifier.threshold_
        if self.references:
            attention[:] = True  # every document is compared with the reference sample
        out: list[Finding] = []
        for i in sorted(set(np.flatnonzero(attention).tolist()) | set(marks)):
            doc = batch.document(i)
            out.extend(marker_findings(doc))
            out.extend(marks.get(i, ()))
            if vendor is not None and vendor[i] >= self.classifier.threshold_:
                out.append(Finding(doc.path, "vendor_classifier", "reads like the vendor sample: "
                                   f"score {vendor[i]:.2f} "
                                   f"({self.classifier.describe()}); a resemblance in style, "
                                   "not proof", doc.line, doc.commit))  # fmt: skip
            if self.references:
                out.extend(self._near_duplicates(doc))
        return out

    def _near_duplicates(self, doc: Document) -> Iterator[Finding]:
        if self._lsh is None:
            self._lsh, self._signature = _reference_index(self.references, self.threshold)
        signature = self._signature(doc.text)
        hits = self._lsh.query(signature) if signature is not None else []
        if hits:
            yield Finding(doc.path, "near_duplicate", f"near-duplicate (MinHash Jaccard >= "
                          f"{self.threshold}) of reference sample {sorted(hits)[0]}",
                          doc.line, doc.commit)  # fmt: skip


def _tail_at_least(scored: int, green: int, gamma: float, bar: float) -> bool:
    """Whether ``P[Binomial(scored, gamma) >= green]`` is surely at least ``bar``: the tail is
    at least its first term, ``P[X = green]``, computed here with ``math.lgamma`` (a margin of
    1e-6 in log space covers its rounding). Most documents a clean corpus sends to the exact
    test end here, so a scan worker that meets no marked text never imports SciPy."""
    log_term = (math.lgamma(scored + 1) - math.lgamma(green + 1) - math.lgamma(scored - green + 1)
                + green * math.log(gamma) + (scored - green) * math.log1p(-gamma))  # fmt: skip
    return log_term > math.log(bar) + 1e-6


def scan(paths: list[Path], keyring: Any = None, references: list[str] | None = None,
         field: str = "text", alpha: float = 1e-6, min_tokens: int = 50,
         threshold: float = 0.7, on_skip: Skipped | None = None,
         classifier: Any = None, workers: int = 1, tokenizer: Any = None) -> Iterator[Finding]:  # fmt: skip
    """Findings over every document of ``paths`` (see the module docstring), document by
    document in input order, computed a unit of work (:func:`read`) at a time.

    ``tokenizer``: the serving model's (:class:`~.tokens.TokenizerFile`) where the watermark
    was applied to a subword vocabulary; default :class:`~.tokens.WordTokenizer`.

    ``workers`` > 1: that many worker processes parse and scan units while this process reads
    the next ones (the findings and skip reports still come in input order; at most two units
    per worker are in flight, so memory stays bounded). A scan of a single unit runs here. The
    workers are spawned, not forked, and do not run the calling script again
    (:func:`_main_script_hidden`): what they are sent (a keyring, a classifier) must come from
    importable modules, not from ``__main__``."""
    scanner = Scanner(keyring, references, alpha, min_tokens, threshold, classifier, tokenizer)
    units = (work for path in paths for work in read(path, field))
    for found, skipped in _run_all(scanner, units, workers):
        for skip in skipped:
            if on_skip is not None:
                on_skip(*skip)
        yield from found


def _run_all(scanner: Scanner, units: Iterator[Work],
             workers: int) -> Iterator[tuple[list[Finding], list[Skip]]]:  # fmt: skip
    first = next(units, None)
    second = next(units, None) if first is not None else None
    if second is None or workers <= 1:
        for work in (w for w in (first, second) if w is not None):
            yield scanner.run(work)
        for work in units:
            yield scanner.run(work)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import Future, ProcessPoolExecutor

    # spawn, not fork: this process may hold Arrow's and DuckDB's threads.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(scanner,)) as pool:  # fmt: skip
        pending: deque[Future[Any]] = deque()
        head = [first, second, *itertools.islice(units, workers - 2)]
        with _main_script_hidden():  # a spawned pool starts a worker a submission while none idles
            pending.extend(pool.submit(_work, work) for work in head)
        for work in units:
            pending.append(pool.submit(_work, work))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """While scan workers start, hide where ``__main__`` came from (its ``__file__``, or its
    ``__spec__`` under ``python -m``), so that spawn does not run it again in every worker (it
    does, so that what the main module defines can be unpickled there). A worker is sent only
    the scanner, built from this package's modules, and the ``distillwatch`` console script
    imports the whole CLI: half a second of every worker's start, more than a unit of work."""
    main = sys.modules.get("__main__")
    hidden = {name: getattr(main, name) for name in ("__file__", "__spec__")
              if getattr(main, name, None) is not None}  # fmt: skip
    for name in hidden:
        if name == "__spec__":
            main.__spec__ = None
        else:
            del main.__file__
    try:
        yield
    finally:
        for name, value in hidden.items():
            setattr(main, name, value)


_WORKER: Scanner | None = None


def _start_worker(scanner: Scanner) -> None:
    global _WORKER
    _WORKER = scanner


def _work(work: Work) -> tuple[list[Finding], list[Skip]]:
    assert _WORKER is not None
    return _WORKER.run(work)


def _reference_index(references: list[str], threshold: float) -> tuple[Any, Any]:
    from datasketch import MinHash, MinHashLSH

    def signature(text: str) -> MinHash | None:
        words = re.findall(r"\w+", text.lower())
        grams = {" ".join(words[i : i + 5]) for i in range(max(0, len(words) - 4))}
        if len(grams) < 5:
            return None
        sig = MinHash(num_perm=128)
        for gram in grams:
            sig.update(gram.encode())
        return sig

    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    for i, text in enumerate(references):
        sig = signature(text)
        if sig is not None:
            lsh.insert(f"ref-{i + 1}", sig)
    return lsh, signature

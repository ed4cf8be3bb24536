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

import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def documents(path: Path, field: str = "text", prompt_field: str | None = None,
              on_skip: Skipped | None = None) -> Iterator[Document]:  # fmt: skip
    """The documents of one path (a file, a folder of files, or a git repository). JSONL
    records that are not JSON or lack a string ``field`` go to ``on_skip``."""
    skip = on_skip or (lambda path, line, reason: None)
    if (path / ".git").exists():
        yield from _git_documents(path)
    elif path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and ".git" not in child.parts:
                yield from documents(child, field, prompt_field, on_skip)
    elif path.suffix == ".parquet":
        yield from _parquet_documents(path, field)
    elif path.suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    skip(str(path), number, "not JSON")
                    continue
                value = record.get(field) if isinstance(record, dict) else record
                if not isinstance(value, str):
                    skip(str(path), number, f"no string field {field!r}")
                    continue
                prompt = (
                    record.get(prompt_field) if prompt_field and isinstance(record, dict) else None
                )
                yield Document(str(path), value[:MAX_DOCUMENT_CHARS], number,
                               prompt=prompt[:MAX_DOCUMENT_CHARS] if isinstance(prompt, str) else "")  # fmt: skip
    else:
        with path.open(encoding="utf-8", errors="replace") as handle:
            chunk = handle.read(MAX_DOCUMENT_CHARS)  # one document per file, bounded
        if chunk:
            yield Document(str(path), chunk)


def _parquet_documents(path: Path, field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=2048, columns=[field]):
        for value in batch.column(0).to_pylist():
            row += 1
            if isinstance(value, str):
                yield Document(str(path), value[:MAX_DOCUMENT_CHARS], row)


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
#: RE2 (Arrow) form of the marker prefilter, case-insensitive: exact for ASCII text, where
#: lower-casing is one-to-one; other text takes the Python prefilter of :func:`marker_findings`.
_LITERALS_RE2 = "|".join(re.escape(literal) for literal in _LITERALS if literal.isascii())


def _batches(docs: Iterator[Document]) -> Iterator[list[Document]]:
    batch: list[Document] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc.text)
        if len(batch) >= BATCH_DOCUMENTS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _marker_candidates(array: Any) -> list[bool]:
    """Which documents (``array``: their texts, Arrow strings) may hold a marker: an ASCII one
    only where a literal occurs (one RE2 pass over the batch), any other one always (the Python
    prefilter decides)."""
    import pyarrow.compute as pc

    hit = pc.match_substring_regex(array, _LITERALS_RE2, ignore_case=True)
    return pc.or_(hit, pc.invert(pc.string_is_ascii(array))).to_pylist()


def scan(paths: list[Path], keyring: Any = None, references: list[str] | None = None,
         field: str = "text", alpha: float = 1e-6, min_tokens: int = 50,
         threshold: float = 0.7, on_skip: Skipped | None = None,
         classifier: Any = None) -> Iterator[Finding]:  # fmt: skip
    """Findings over every document of ``paths`` (see the module docstring), document by
    document in input order, computed a batch of documents at a time."""
    import pyarrow as pa

    from distillwatch.provenance.tokens import WordTokenizer
    from distillwatch.provenance.watermark import binomial_test, count_green_batch

    tokenizer = WordTokenizer()
    keys = list(keyring.keys) if keyring is not None else []
    lsh, shingles = _reference_index(references, threshold) if references else (None, None)
    for path in paths:
        for batch in _batches(documents(path, field, on_skip=on_skip)):
            texts = [d.text for d in batch]
            array = pa.array(texts, pa.large_string())
            candidates = _marker_candidates(array)
            counts = []
            vendor = classifier.score_samples(texts) if classifier is not None else None
            if keys:
                ids, owner = tokenizer.tokens_batch(texts, array)
                counts = [count_green_batch(ids, owner, len(batch), key) for key in keys]
            for index, doc in enumerate(batch):
                if candidates[index]:
                    yield from marker_findings(doc)
                for key, (scored_all, green_all) in zip(keys, counts, strict=True):
                    scored, green = int(scored_all[index]), int(green_all[index])
                    spread = (scored * key.gamma * (1 - key.gamma)) ** 0.5
                    if scored < min_tokens or green < key.gamma * scored + 3 * spread:
                        continue  # under 3 standard deviations: nowhere near alpha
                    p, _ = binomial_test(scored, green, key.gamma)
                    if p * len(keys) < alpha:
                        yield Finding(doc.path, "watermark", f"our watermark (key {key.key_id}): "
                                      f"{green} of {scored} pairs green, p = {p:.2g}",
                                      doc.line, doc.commit)  # fmt: skip
                if vendor is not None and vendor[index] >= classifier.threshold_:
                    yield Finding(doc.path, "vendor_classifier", f"reads like the vendor sample: "
                                  f"score {vendor[index]:.2f} ({classifier.describe()}); a "
                                  "resemblance in style, not proof", doc.line, doc.commit)  # fmt: skip
                if lsh is not None and shingles is not None:
                    signature = shingles(doc.text)
                    if signature is not None:
                        hits = lsh.query(signature)
                        if hits:
                            yield Finding(doc.path, "near_duplicate", f"near-duplicate (MinHash "
                                          f"Jaccard >= {threshold}) of reference sample "
                                          f"{sorted(hits)[0]}", doc.line, doc.commit)  # fmt: skip


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

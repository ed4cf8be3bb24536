"""Text to token ids for watermark detection, and a small word-level generator that marks text.

A watermark is detected on the token ids the generating server used, so detection needs that
server's tokenizer. :class:`WordTokenizer` is the one this project's own servers (the mock
upstream, the CPU experiments) use: lower-cased words and punctuation marks, each mapped to a
stable id by a hash (no vocabulary file, the same ids everywhere). A server with a subword
tokenizer scores its own ids with :func:`distillwatch.provenance.watermark.detect` directly.

:class:`MarkedWriter` writes watermarked text from a word list (a unigram model with the green
list's bias): a stand-in model for demos and tests, not a language model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from distillwatch.provenance.watermark import WatermarkKey, watermark_logits

_WORD = re.compile(r"\w+|[^\w\s]")
DEFAULT_VOCAB = 1 << 20


class WordTokenizer:
    """``tokens(text)``: ids of the text's words and punctuation (``vocab_size`` buckets)."""

    def __init__(self, vocab_size: int = DEFAULT_VOCAB) -> None:
        self.vocab_size = vocab_size
        self._cache: dict[str, int] = {}
        self._seen: Any = None  # Arrow array of the words :meth:`tokens_batch` has looked up
        self._seen_ids = np.zeros(0, np.uint64)

    def id(self, word: str) -> int:
        found = self._cache.get(word)
        if found is None:
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            found = int.from_bytes(digest, "little") % self.vocab_size
            if len(self._cache) < 500_000:
                self._cache[word] = found
        return found

    def words(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def tokens(self, text: str) -> list[int]:
        return [self.id(w) for w in self.words(text)]

    def tokens_batch(self, texts: Sequence[str] | Any,
                     ordered: bool = True) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """``(ids, doc)``: the :meth:`tokens` of every text, concatenated (uint64), and the
        index of the text each token belongs to (int64, non-decreasing). The same ids as
        :meth:`tokens` text by text (``tests/test_provenance.py`` checks on real text).
        ``texts``: Python strings, or an Arrow string array without nulls, whose ASCII rows
        are read from its own buffers (no Python string is made for them). ``ordered=False``:
        each text's tokens stay together and in order, but the ASCII texts come first and the
        others after them (what the watermark count needs; saves putting them back in order).

        Vectorised over the batch: every character gets its class from a table (Python's
        ``\\w``, ``\\s`` or neither: for bytes of ASCII text a 256-entry table, for the code
        points of other lower-cased text one filled from ``str.isalnum``/``isspace`` as code
        points first occur); a token starts at a word character after a non-word one or at a
        text's first character, and every other non-space character is a token of its own.
        The spans between token starts, over the texts' own buffer (no copy), are
        dictionary-encoded, so that each distinct span is trimmed, lower-cased and looked up
        once, in a vocabulary kept across calls (one Arrow hash lookup per batch; :meth:`id`
        only for words not seen before)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not len(texts):
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        arrow = isinstance(texts, pa.Array)
        if arrow:
            ascii_ = pc.string_is_ascii(texts).to_numpy(zero_copy_only=False)
        else:
            ascii_ = np.fromiter((text.isascii() for text in texts), bool, len(texts))
        if ascii_.all():
            return self._split(texts if arrow else [*texts], wide=False)
        parts = []
        for wide, chosen in ((False, np.flatnonzero(ascii_)), (True, np.flatnonzero(~ascii_))):
            if len(chosen):
                if arrow:
                    subset = texts.take(pa.array(chosen))
                    ids, doc = self._split(subset.to_pylist() if wide else subset, wide)
                else:
                    ids, doc = self._split([texts[i] for i in chosen.tolist()], wide)
                parts.append((ids, chosen[doc]))
        if not ordered:
            return np.concatenate([ids for ids, _ in parts]), np.concatenate([d for _, d in parts])
        # Interleave the two parts back into text order (each is in order already): a token's
        # place is its text's first place plus its rank within the text.
        counts = sum(np.bincount(doc, minlength=len(texts)) for _, doc in parts)
        begin = np.concatenate(([0], np.cumsum(counts)[:-1]))
        out_ids = np.empty(int(counts.sum()), np.uint64)
        out_doc = np.empty(len(out_ids), np.int64)
        for ids, doc in parts:
            own = np.bincount(doc, minlength=len(texts))
            own_begin = np.concatenate(([0], np.cumsum(own)[:-1]))
            place = begin[doc] + np.arange(len(doc)) - own_begin[doc]
            out_ids[place], out_doc[place] = ids, doc
        return out_ids, out_doc

    def _split(self, texts: list[str] | Any, wide: bool) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`tokens_batch` of ASCII texts (``wide=False``: one byte per character; a list
        or an Arrow string array) or of any texts (``wide``: a list, lower-cased first,
        UTF-32): (ids, index into ``texts``)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        buffer: Any
        if wide:
            texts = [text.lower() for text in texts]  # may change lengths: before measuring
            buffer = "".join(texts).encode("utf-32-le", "surrogatepass")
            kind = _code_classes(np.frombuffer(buffer, np.uint32))
            lengths = np.fromiter(map(len, texts), np.int64, len(texts))
        elif isinstance(texts, pa.Array):
            buffer, lengths = _ascii_buffer(texts)
            kind = _BYTE_CLASS[np.frombuffer(buffer, np.uint8)]
        else:
            buffer = "".join(texts).encode("ascii")
            kind = _BYTE_CLASS[np.frombuffer(buffer, np.uint8)]
            lengths = np.fromiter(map(len, texts), np.int64, len(texts))
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        if not len(kind):
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        word = kind == _WORD_CHAR
        after_word = np.empty(len(kind), bool)
        after_word[0] = False
        after_word[1:] = word[:-1]
        after_word[starts[lengths > 0]] = False  # a text's first character starts a token
        first = np.flatnonzero((word & ~after_word) | (kind == _OTHER_CHAR))
        # Each token's span runs to the next token's first character: the token and the spaces
        # after it. Distinct spans are few; trimming (and lower-casing) them gives the words.
        offsets = np.append(first, len(kind)) * (4 if wide else 1)
        spans = pa.Array.from_buffers(
            pa.large_binary() if wide else pa.large_string(),
            len(first),
            [None, pa.py_buffer(offsets), pa.py_buffer(buffer)],
        )
        encoded = pc.dictionary_encode(spans)
        if wide:
            words = pa.array([span.decode("utf-32-le", "surrogatepass").rstrip()
                              for span in encoded.dictionary.to_pylist()], pa.large_string())  # fmt: skip
        else:
            words = pc.utf8_lower(pc.ascii_rtrim(encoded.dictionary, characters=_SPACE_CHARS))
        ids = self._lookup(words)[encoded.indices.to_numpy(zero_copy_only=False)]
        per_text = np.diff(np.searchsorted(first, np.append(starts, len(kind))))
        return ids, np.repeat(np.arange(len(texts), dtype=np.int64), per_text)

    def _lookup(self, words: Any) -> np.ndarray:
        """The ids of ``words`` (an Arrow string array): one hash lookup in the words seen so
        far, :meth:`id` for the rest (remembered, up to :data:`_SEEN_WORDS`)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if self._seen is None:
            self._seen = pa.array([], pa.large_string())
        found = pc.index_in(words, value_set=self._seen).to_numpy(zero_copy_only=False)
        missing = np.isnan(found) if found.dtype.kind == "f" else np.zeros(len(found), bool)
        out = np.empty(len(words), np.uint64)
        out[~missing] = self._seen_ids[found[~missing].astype(np.int64)]
        if missing.any():
            new = pc.unique(words.filter(pa.array(missing)))
            new_ids = np.array([self.id(w) for w in new.to_pylist()], np.uint64)
            index = pc.index_in(words, value_set=new).to_numpy(zero_copy_only=False)
            out[missing] = new_ids[index[missing].astype(np.int64)]
            if len(self._seen) < _SEEN_WORDS:
                self._seen = pa.concat_arrays([self._seen, new])
                self._seen_ids = np.concatenate([self._seen_ids, new_ids])
        return out


def _ascii_buffer(array: Any) -> tuple[Any, np.ndarray]:
    """An Arrow string array's characters as one buffer (a zero-copy slice of its data) and
    each row's length: for ASCII rows, bytes are characters."""
    import pyarrow as pa

    wide_offsets = pa.types.is_large_string(array.type)
    offsets = np.frombuffer(array.buffers()[1], np.int64 if wide_offsets else np.int32)
    offsets = offsets[array.offset : array.offset + len(array) + 1].astype(np.int64)
    data = array.buffers()[2]
    begin, end = int(offsets[0]), int(offsets[-1])
    buffer = data.slice(begin, end - begin) if data is not None else pa.py_buffer(b"")
    return buffer, np.diff(offsets)


class Tokenizer(Protocol):
    """What detection needs of a tokenizer: a text's token ids, as the server that marked it
    counted them (:class:`WordTokenizer`, :class:`TokenizerFile`)."""

    def tokens(self, text: str) -> list[int]: ...


class TokenizerFile:
    """The serving model's own tokenizer, from a Hugging Face ``tokenizer.json`` read offline
    (the ``tokenizers`` library of the ``embed`` extra; no PyTorch, no model hub): for text
    watermarked by a server whose model has a subword vocabulary, the watermark lives on that
    vocabulary's ids. ``tokens`` and ``tokens_batch`` as :class:`WordTokenizer` (no special
    tokens added). Text that a model generated re-encodes to the ids it generated as long as
    the tokenizer is the model's and the text was not edited (BPE's own tokenisation of a
    string can differ from the path a sampler took to it, which costs a few pairs, never adds
    green ones)."""

    def __init__(self, path: Any) -> None:
        from distillwatch.errors import FileFormatError

        try:
            from tokenizers import Tokenizer as RustTokenizer
        except ImportError as exc:  # pragma: no cover - the embed extra is absent
            raise FileFormatError(f"{path}: reading a tokenizer needs distillwatch[embed] "
                                  "(the tokenizers library)") from exc  # fmt: skip
        try:
            self._tokenizer = RustTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises bare Exceptions
            raise FileFormatError(f"{path}: not a Hugging Face tokenizer.json "
                                  f"({str(exc)[:200]})") from None  # fmt: skip
        self.path = str(path)

    def __getstate__(self) -> dict[str, Any]:  # scan workers: send the file's text, not Rust
        return {"path": self.path, "json": self._tokenizer.to_str()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self.path, self._tokenizer = state["path"], RustTokenizer.from_str(state["json"])

    def tokens(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def tokens_batch(self, texts: Sequence[str] | Any,
                     ordered: bool = True) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """As :meth:`WordTokenizer.tokens_batch` (always in text order)."""
        if not isinstance(texts, list | tuple):
            texts = texts.to_pylist()  # an Arrow string array
        encoded = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        counts = np.fromiter((len(e.ids) for e in encoded), np.int64, len(encoded))
        ids = np.fromiter((t for e in encoded for t in e.ids), np.uint64, int(counts.sum()))
        return ids, np.repeat(np.arange(len(encoded), dtype=np.int64), counts)


#: Character classes as Python's ``re`` sees a ``str``: ``\s`` (``str.isspace``, which also
#: holds ``\x1c``-``\x1f``), ``\w`` (``str.isalnum`` or underscore) and everything else.
_SPACE_CHAR, _WORD_CHAR, _OTHER_CHAR, _UNKNOWN = 0, 1, 2, 255
_SPACE_CHARS = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
_BYTE_CLASS = np.full(256, _OTHER_CHAR, np.uint8)
_BYTE_CLASS[list(_SPACE_CHARS.encode())] = _SPACE_CHAR
_BYTE_CLASS[list(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")] = _WORD_CHAR
#: The class of every code point, filled as code points occur (1.1 MB, one per process).
_CODE_CLASS = np.full(0x110000, _UNKNOWN, np.uint8)
_CODE_CLASS[:128] = _BYTE_CLASS[:128]


def _code_classes(codes: np.ndarray) -> np.ndarray:
    kind = _CODE_CLASS[codes]
    unknown = kind == _UNKNOWN
    if unknown.any():
        for code in np.unique(codes[unknown]).tolist():
            char = chr(code)
            _CODE_CLASS[code] = (
                _WORD_CHAR if char.isalnum() or char == "_"
                else _SPACE_CHAR if char.isspace() else _OTHER_CHAR
            )  # fmt: skip
        kind = _CODE_CLASS[codes]
    return kind


#: Distinct words a tokenizer remembers for batch lookups (past this, new words are hashed
#: every time they occur in a batch: slower, the same ids).
_SEEN_WORDS = 1_000_000


class MarkedWriter:
    """Watermarked (or plain, ``key=None``) text from ``words`` with unigram ``weights``.

    At each step the logits of the word list get the key's green-list bias, exactly as
    :func:`~distillwatch.provenance.watermark.watermark_logits` applies it to a model's logits
    (the list is the vocabulary, its ids the :class:`WordTokenizer`'s)."""

    def __init__(self, words: Sequence[str], weights: Sequence[float] | None = None,
                 tokenizer: WordTokenizer | None = None) -> None:  # fmt: skip
        self.tokenizer = tokenizer or WordTokenizer()
        self.words = list(words)
        self.ids = np.array([self.tokenizer.id(w) for w in self.words], dtype=np.uint64)
        probs = np.asarray(weights if weights is not None else np.ones(len(self.words)), float)
        self.logits = np.log(probs / probs.sum())

    def write(self, length: int, key: WatermarkKey | None, seed: int,
              prompt: str = "") -> str:  # fmt: skip
        rng = np.random.default_rng(seed)
        history = self.tokenizer.tokens(prompt)
        out: list[str] = []
        for _ in range(length):
            logits = self.logits
            if key is not None and len(history) >= key.context:
                green = key.green(history[-key.context :], self.ids)
                logits = logits + key.delta * green
            probs = np.exp(logits - logits.max())
            choice = int(rng.choice(len(self.words), p=probs / probs.sum()))
            out.append(self.words[choice])
            history.append(int(self.ids[choice]))
        return " ".join(out)


__all__ = ["MarkedWriter", "TokenizerFile", "WordTokenizer", "watermark_logits"]

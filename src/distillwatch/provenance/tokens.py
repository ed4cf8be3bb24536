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
from typing import Any

import numpy as np

from distillwatch.provenance.watermark import WatermarkKey, watermark_logits

_WORD = re.compile(r"\w+|[^\w\s]")
#: What Python's ``\s`` and Arrow's ASCII whitespace both match, written out for RE2.
_ASCII_SPACE = "\\t\\n\\x0b\\x0c\\r "
DEFAULT_VOCAB = 1 << 20


class WordTokenizer:
    """``tokens(text)``: ids of the text's words and punctuation (``vocab_size`` buckets)."""

    def __init__(self, vocab_size: int = DEFAULT_VOCAB) -> None:
        self.vocab_size = vocab_size
        self._cache: dict[str, int] = {}

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

    def tokens_batch(
        self, texts: Sequence[str], array: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, doc)``: the :meth:`tokens` of every text, concatenated (uint64), and the
        index of the text each token belongs to (int64, non-decreasing). The same ids as
        :meth:`tokens` text by text (``tests/test_provenance.py`` checks on real text).

        Pure-ASCII texts are split by Arrow's compute kernels (RE2 and its ASCII whitespace
        split), where Python's classes and Arrow's coincide once written out (Python's ``\\s``
        also holds ``\\x1c``-``\\x1f``: texts with those take the slow path), and each distinct
        word is hashed once; other texts (Unicode word and space classes, special
        lower-casing) go through :meth:`tokens`. ``array``: the texts as an Arrow string array,
        where the caller already has one."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not texts:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        if array is None:
            array = pa.array(texts, pa.large_string())
        # Python's \\s also holds \\x1c-\\x1f, Arrow's ASCII whitespace does not: rare, so slow.
        plain = pc.and_(pc.string_is_ascii(array),
                        pc.invert(pc.match_substring_regex(array, "[\\x1c-\\x1f]")))  # fmt: skip
        ascii_ = np.asarray(plain.to_numpy(zero_copy_only=False), bool)
        fast = np.flatnonzero(ascii_)
        parts_ids, parts_doc = [], []
        if len(fast):
            lowered = pc.utf8_lower(array.take(pa.array(fast)))
            spaced = pc.replace_substring_regex(lowered, f"([^a-z0-9_{_ASCII_SPACE}])", " \\1 ")
            split = pc.ascii_split_whitespace(spaced)
            words = pc.list_flatten(split)
            parents = pc.list_parent_indices(split)
            keep = pc.not_equal(words, "")
            words, parents = pc.filter(words, keep), pc.filter(parents, keep)
            encoded = pc.dictionary_encode(words).combine_chunks() if isinstance(
                words, pa.ChunkedArray) else pc.dictionary_encode(words)  # fmt: skip
            vocab = np.array([self.id(w) for w in encoded.dictionary.to_pylist()], np.uint64)
            parts_ids.append(vocab[encoded.indices.to_numpy(zero_copy_only=False)])
            parts_doc.append(fast[np.asarray(parents.to_numpy(zero_copy_only=False), np.int64)])
        for i in np.flatnonzero(~ascii_).tolist():
            ids = self.tokens(texts[i])
            parts_ids.append(np.array(ids, np.uint64))
            parts_doc.append(np.full(len(ids), i, np.int64))
        ids, doc = np.concatenate(parts_ids), np.concatenate(parts_doc)
        if len(fast) == len(texts):
            return ids, doc
        order = np.argsort(doc, kind="stable")  # texts in order, tokens in order within each
        return ids[order], doc[order]


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


__all__ = ["MarkedWriter", "WordTokenizer", "watermark_logits"]

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

import numpy as np

from distillwatch.provenance.watermark import WatermarkKey, watermark_logits

_WORD = re.compile(r"\w+|[^\w\s]")
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

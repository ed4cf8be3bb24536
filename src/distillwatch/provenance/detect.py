"""Watermark detection over texts: per text and pooled, against every key of a keyring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from distillwatch.provenance.tokens import Tokenizer, WordTokenizer
from distillwatch.provenance.watermark import (
    Detection,
    Keyring,
    binomial_test,
    count_green,
    scored_pairs,
)


@dataclass
class TextResult:
    """One text: its detection under each key, and the best one corrected for the keys tried."""

    name: str
    per_key: list[Detection] = field(default_factory=list)

    @property
    def best(self) -> Detection:
        return min(self.per_key, key=lambda d: d.p_value)

    @property
    def corrected_p(self) -> float:
        """The smallest p-value times the number of keys tried (Bonferroni), at most 1."""
        return min(1.0, self.best.p_value * len(self.per_key))


def detect_texts(texts: Sequence[tuple[str, str, str]], keyring: Keyring,
                 tokenizer: Tokenizer | None = None) -> tuple[list[TextResult], TextResult]:  # fmt: skip
    """``texts``: (name, text, prompt) triples. Returns each text's result and the pooled one
    (all texts' pairs together, each distinct (context, token) pair once across the pool)."""
    tokenizer = tokenizer or WordTokenizer()
    tokenized = [
        (name, tokenizer.tokens(text), tokenizer.tokens(prompt)) for name, text, prompt in texts
    ]
    results = []
    pooled = TextResult("pooled")
    for key in keyring.keys:
        seen: set[tuple[int, ...]] = set()
        total_scored = total_green = 0
        for i, (name, tokens, prompt) in enumerate(tokenized):
            if len(results) <= i:
                results.append(TextResult(name))
            scored, green = count_green(scored_pairs(tokens, key, prompt), key)
            p, z = binomial_test(scored, green, key.gamma)
            results[i].per_key.append(Detection(key.key_id, scored, green, key.gamma, p, z))
            pool_scored, pool_green = count_green(scored_pairs(tokens, key, prompt, seen), key)
            total_scored += pool_scored
            total_green += pool_green
        p, z = binomial_test(total_scored, total_green, key.gamma)
        pooled.per_key.append(Detection(key.key_id, total_scored, total_green, key.gamma, p, z))
    return results, pooled

"""Radioactivity: did a suspect model train on our watermarked outputs? (Sander et al., 2024)

A model fine-tuned on text carrying our green-list watermark learns, a little, to prefer the
green tokens after each context. Two tests look for that preference, each an exact binomial
test against the green share ``gamma`` a model that never saw our watermark would show:

- **open mode** (:func:`open_test`): we can run the suspect. Over contexts taken from our own
  watermarked texts, take the suspect's most likely next token and ask whether it is green for
  that context. Each (watermark window, predicted token) pair counts once, globally.
- **closed mode** (:func:`closed_test`): we can only call the suspect's API. Sample its answers
  (through any OpenAI-compatible endpoint), re-tokenise them with our tokenizer, and score them as
  watermark detection does: each (window, token) pair once across all samples, and no window that
  occurs in the prompt (copied, not generated). Given what we **served** (:class:`ServedFilter`:
  the watermarked answers a flagged cluster received, from the gateway's store), only tokens that
  follow a history occurring in that text are scored: where the suspect learned a preference for
  green tokens is where it saw our text, and elsewhere a sample is only noise. The filter looks
  at nothing but tokens before the scored one, so a model that never saw the key is still green
  at rate ``gamma`` on what it keeps (the experiment's closed-mode controls check it).

What the test can show, and what it cannot, is in :data:`EXPLANATION`, which the CLI prints.

:class:`NgramLM` is the tiny word-level language model the reproducible CPU experiment
(:mod:`distillwatch.provenance.experiment`) trains from scratch: interpolated n-gram counts over
:class:`~distillwatch.provenance.tokens.WordTokenizer` ids. It stands in for a neural model (no
PyTorch, no model hub) and is honest about being one: its "fine-tuning" is weighted counting.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distillwatch.provenance.tokens import WordTokenizer
from distillwatch.provenance.watermark import WatermarkKey, _uniform, binomial_test

EXPLANATION = (
    "How to read this: the p-value is the chance that a model which never learned from text "
    "carrying this watermark key would prefer the key's 'green' tokens at least this often. "
    "A tiny p-value (say below 1e-6) is strong evidence that the suspect was trained, directly "
    "or indirectly, on text we watermarked with this key. What it cannot show: who collected the "
    "text, when, or through which accounts (that is what the gateway's logs and the detection "
    "report establish); whether the suspect learned from our outputs directly or from a third "
    "party's data that contains them. A large p-value is not proof of innocence: a small share "
    "of our text in the training data, few tokens scored, heavy paraphrasing or a different "
    "tokenizer all weaken the signal."
)


#: Cached distributions and count arrays per model (cleared when full: bounded memory).
_MAX_CACHED = 30_000


@dataclass
class RadioactivityResult:
    mode: str  # "open" | "closed"
    key_id: str
    tokens_scored: int
    green: int
    gamma: float
    p_value: float
    z: float

    @property
    def green_share(self) -> float:
        return self.green / self.tokens_scored if self.tokens_scored else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "key_id": self.key_id, "tokens_scored": self.tokens_scored,
                "green": self.green, "green_share": round(self.green_share, 5),
                "gamma": self.gamma, "p_value": self.p_value, "z": round(self.z, 3)}  # fmt: skip


class NgramLM:
    """A word-level n-gram LM over :class:`WordTokenizer` ids (interpolated, Witten-Bell).

    Parameters: ``order`` (context length + 1), ``top_unigrams`` (how many frequent words the
    unigram level offers as candidates). :meth:`fit` adds counts (``weight`` scales them, which
    is how the experiment fine-tunes a pretrained model); :meth:`distribution` gives candidates
    and probabilities for the next token; :meth:`generate` samples, optionally watermarking
    with a key exactly as :func:`~distillwatch.provenance.watermark.watermark_logits` does.
    """

    def __init__(self, order: int = 3, top_unigrams: int = 500) -> None:
        if order < 2:
            raise ValueError("order: at least 2")
        self.order = order
        self.top_unigrams = top_unigrams
        self.tokenizer = WordTokenizer()
        self.counts: list[dict[tuple[int, ...], dict[int, float]]] = [
            defaultdict(lambda: defaultdict(float)) for _ in range(order)
        ]
        self.words: dict[int, str] = {}
        self._cache: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._arrays: dict[tuple[int, tuple[int, ...]], tuple[np.ndarray, np.ndarray]] = {}
        self._best: dict[tuple[int, ...], int] = {}
        self._unigram: tuple[np.ndarray, np.ndarray] | None = None

    # -- training -------------------------------------------------------------------------------
    def fit(self, texts: Iterable[str], weight: float = 1.0) -> NgramLM:
        for text in texts:
            self.fit_ids(self.tokens(text), weight)
        return self

    def tokens(self, text: str) -> list[int]:
        """The text's token ids, its words added to the model's vocabulary (for :meth:`text`)."""
        words = self.tokenizer.words(text)
        ids = [self.tokenizer.id(w) for w in words]
        for w, i in zip(words, ids, strict=True):
            self.words.setdefault(i, w)
        return ids

    def fit_ids(self, ids: Sequence[int], weight: float = 1.0) -> None:
        for t in range(len(ids)):
            for k in range(self.order):
                if t - k < 0:
                    break
                self.counts[k][tuple(ids[t - k : t])][ids[t]] += weight
        self._cache.clear()
        self._arrays.clear()
        self._best.clear()
        self._unigram = None

    # -- prediction -----------------------------------------------------------------------------
    def _unigrams(self) -> tuple[np.ndarray, np.ndarray]:
        if self._unigram is None:
            table = self.counts[0][()]
            top = sorted(table.items(), key=lambda kv: -kv[1])[: self.top_unigrams]
            ids = np.array([t for t, _ in top], dtype=np.uint64)
            probs = np.array([c for _, c in top], dtype=np.float64)
            self._unigram = ids, probs / probs.sum()
        return self._unigram

    def _level(self, k: int, context: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        """The continuations of one context at level ``k`` as arrays (ids, counts)."""
        slot = (k, context)
        found = self._arrays.get(slot)
        if found is None:
            table = self.counts[k].get(context)
            if not table:
                return None
            found = (np.fromiter(table.keys(), dtype=np.uint64, count=len(table)),
                     np.fromiter(table.values(), dtype=np.float64, count=len(table)))  # fmt: skip
            if len(self._arrays) > _MAX_CACHED:
                self._arrays.clear()
            self._arrays[slot] = found
        return found

    def distribution(self, history: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(candidate ids, probabilities) for the token after ``history``: Witten-Bell
        interpolation from the longest context down to the frequent unigrams."""
        context = (
            tuple(int(t) for t in history[len(history) - (self.order - 1) :]) if history else ()
        )
        found = self._cache.get(context)
        if found is not None:
            return found
        parts_ids = [self._unigrams()[0]]
        parts_w = [self._unigrams()[1]]
        for k in range(1, min(self.order, len(context) + 1)):
            level = self._level(k, context[len(context) - k :])
            if level is None:
                continue
            ids, counts = level
            total = float(counts.sum())
            keep = total / (total + len(ids))  # Witten-Bell weight of this level
            parts_w = [w * (1 - keep) for w in parts_w]
            parts_ids.append(ids)
            parts_w.append(counts * (keep / total))
        all_ids = np.concatenate(parts_ids)
        unique, inverse = np.unique(all_ids, return_inverse=True)
        probs = np.bincount(inverse, weights=np.concatenate(parts_w), minlength=len(unique))
        result = unique, probs / probs.sum()
        if len(self._cache) > _MAX_CACHED:
            self._cache.clear()
        self._cache[context] = result
        return result

    def argmax(self, history: Sequence[int]) -> int:
        context = (
            tuple(int(t) for t in history[len(history) - (self.order - 1) :]) if history else ()
        )
        best = self._best.get(context)
        if best is None:
            ids, probs = self.distribution(history)
            best = self._best[context] = int(ids[int(np.argmax(probs))])
        return best

    def generate(self, prompt: Sequence[int], length: int, rng: np.random.Generator,
                 key: WatermarkKey | None = None, temperature: float = 1.0) -> list[int]:  # fmt: skip
        """``length`` sampled token ids after ``prompt`` (green-list bias from ``key``)."""
        history = [int(t) for t in prompt]
        out = []
        for _ in range(length):
            ids, probs = self.distribution(history)
            logits = np.log(probs) / temperature
            if key is not None and len(history) >= key.context:
                seed = key.context_seed(history[-key.context :])
                logits = logits + key.delta * (_uniform(seed, ids) < key.gamma)
            weights = np.exp(logits - logits.max())
            cumulative = np.cumsum(weights)
            choice = int(ids[int(np.searchsorted(cumulative, rng.random() * cumulative[-1]))])
            out.append(choice)
            history.append(choice)
        return out

    def text(self, ids: Sequence[int]) -> str:
        return " ".join(self.words.get(int(t), "?") for t in ids)

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """A JSON model file (counts per level, the id-to-word map)."""
        doc = {
            "format": "distillwatch-ngram-1",
            "order": self.order,
            "top_unigrams": self.top_unigrams,
            "words": {str(k): v for k, v in self.words.items()},
            "counts": [
                [[list(ctx), list(map(list, table.items()))] for ctx, table in level.items()]
                for level in self.counts
            ],
        }
        path.write_text(json.dumps(doc))

    @classmethod
    def load(cls, path: Path) -> NgramLM:
        doc = json.loads(path.read_text())
        if doc.get("format") != "distillwatch-ngram-1":
            raise ValueError(f"{path}: not a distillwatch n-gram model file")
        model = cls(int(doc["order"]), int(doc["top_unigrams"]))
        model.words = {int(k): str(v) for k, v in doc["words"].items()}
        for k, level in enumerate(doc["counts"]):
            for ctx, items in level:
                table = model.counts[k][tuple(int(t) for t in ctx)]
                for t, c in items:
                    table[int(t)] = float(c)
        return model


def _green(key: WatermarkKey, windows: np.ndarray) -> int:
    """How many (context..., token) rows are green (h = key.context)."""
    seeds = np.array([key.context_seed(tuple(int(t) for t in row[:-1])) for row in windows],
                     dtype=np.uint64)  # fmt: skip
    return int((_uniform(seeds, windows[:, -1]) < key.gamma).sum())


def open_test(model: NgramLM, texts: Iterable[Sequence[int]], key: WatermarkKey,
              max_tokens: int | None = None) -> RadioactivityResult:  # fmt: skip
    """Open mode: the suspect's most likely next token after each context of our texts, each
    distinct (watermark window, prediction) pair scored once."""
    h = key.context
    predicted = (
        (ids, (model.argmax(ids[:t]) for t in range(max(h, 1), len(ids)))) for ids in texts
    )
    return open_test_predictions(predicted, key, max_tokens)


def open_test_predictions(texts: Iterable[tuple[Sequence[int], Iterable[int]]],
                          key: WatermarkKey, max_tokens: int | None = None) -> RadioactivityResult:  # fmt: skip
    """Open mode from predictions already made: for each of our texts, its ids and the
    suspect's most likely next token at positions ``max(context, 1)``, ``+1``, ... (after
    ``ids[:t]``), in order and lazily if need be; each distinct (watermark window, prediction)
    pair scored once. :func:`open_test` feeds it an n-gram model's predictions,
    ``provenance.hf.open_test_hf`` a transformers model's (one forward pass a text)."""
    h = key.context
    seen: set[tuple[int, ...]] = set()
    rows = []
    for ids, predictions in texts:
        for t, prediction in zip(range(max(h, 1), len(ids)), predictions, strict=False):
            window = (*(int(x) for x in ids[t - h : t]), int(prediction))
            if window not in seen:
                seen.add(window)
                rows.append(window)
            if max_tokens and len(rows) >= max_tokens:
                return _result("open", key, rows)
    return _result("open", key, rows)


@dataclass(frozen=True)
class ServedFilter:
    """The histories (runs of ``history`` token ids) occurring in text we served under a key:
    the closed test scores only tokens that follow one of them.

    Build it from the watermarked answers the suspect may have learned from: in a real case, the
    responses a detected cluster received (its exchanges in the store). The narrower the text,
    the sharper the test: on the CPU experiment's development seeds (21-23, rho = 0.05, 1,000
    probes), filtering on the harvest with ``history=2`` took closed-mode p from 5e-5 - 5e-4 to
    1e-10 - 1e-12, on the same samples; filtering on ten times more of our text (everything
    served under the key) gained far less (2e-4 - 5e-6). ``history=3`` keeps a third as many
    tokens for a similar p-value. ``history`` counts tokens just before the scored one, and
    needs to be at least the key's context (so every scored window's context was served).
    """

    codes: np.ndarray  # each served history's code (:func:`_history_codes`), sorted, distinct
    history: int = 2

    #: Codes gathered before they are de-duplicated (memory stays bounded on a large harvest).
    _CHUNK = 4_000_000

    @classmethod
    def of(cls, texts: Iterable[Sequence[int]], history: int = 2) -> ServedFilter:
        """The filter of ``texts`` (token ids): 8 bytes a distinct history, so the responses of
        a large campaign fit (tuples in a set took about 100)."""
        if history < 1:
            raise ValueError("history: at least 1 token")
        codes = np.zeros(0, np.uint64)
        pending: list[np.ndarray] = []
        size = 0
        for ids in texts:
            row = np.asarray(ids, np.uint64)
            if len(row) >= history:
                pending.append(_history_codes(row, history))
                size += len(pending[-1])
            if size >= cls._CHUNK:
                codes, pending, size = np.unique(np.concatenate([codes, *pending])), [], 0
        if pending:
            codes = np.unique(np.concatenate([codes, *pending]))
        return cls(codes, history)

    def served(self, codes: np.ndarray) -> np.ndarray:
        """Which of these history codes occur in the served text (a boolean mask)."""
        if not len(self.codes):
            return np.zeros(len(codes), bool)
        at = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)
        return self.codes[at] == codes

    def __len__(self) -> int:
        return len(self.codes)


def _history_codes(ids: np.ndarray, history: int) -> np.ndarray:
    """One 64-bit code for each run of ``history`` consecutive ids: ``ids[t - history : t]`` for
    ``t = history .. len(ids)``, in that order. A multiplicative hash: two histories sharing a
    code (odds about n^2 / 2^64) only add a token to what is scored, and whether a token is
    scored still depends on nothing but the tokens before it."""
    n = len(ids) - history + 1
    if n <= 0:
        return np.zeros(0, np.uint64)
    code = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(history):
            code = (code ^ (ids[j : j + n] + np.uint64(1))) * np.uint64(0x9E3779B97F4A7C15)
            code ^= code >> np.uint64(29)
    return code


def closed_test(samples: Iterable[tuple[Sequence[int], Sequence[int]]],
                key: WatermarkKey, max_tokens: int | None = None,
                served: ServedFilter | None = None) -> RadioactivityResult:  # fmt: skip
    """Closed mode: (prompt ids, answer ids) pairs sampled from the suspect. Each distinct
    (window, token) of the answers is scored once across all samples; windows occurring in the
    prompt are left out (the answer may have copied them). With ``served``, only tokens whose
    preceding ``served.history`` tokens (prompt tokens included) occur in our served text."""
    h = key.context
    if served is not None and served.history < h:
        raise ValueError(f"served filter: history {served.history} is shorter than the key's "
                         f"context {h}")  # fmt: skip
    back_served = served.history if served is not None else 0
    back = max(h, back_served)
    seen: set[tuple[int, ...]] = set()
    rows = []
    for prompt, answer in samples:
        full = [*map(int, prompt), *map(int, answer)]
        copied = {tuple(full[i - h : i + 1]) for i in range(h, len(prompt))}
        # kept[t - k]: the k tokens before t were served (k = served.history)
        kept = (
            None
            if served is None
            else served.served(_history_codes(np.asarray(full, np.uint64), served.history))
        )
        for t in range(max(len(prompt), back), len(full)):
            window = tuple(full[t - h : t + 1])
            if window in seen or window in copied:
                continue
            if kept is not None and not kept[t - back_served]:
                continue
            seen.add(window)
            rows.append(window)
            if max_tokens and len(rows) >= max_tokens:
                return _result("closed", key, rows)
    return _result("closed", key, rows)


def _result(mode: str, key: WatermarkKey, rows: list[tuple[int, ...]]) -> RadioactivityResult:
    windows = np.array(rows, dtype=np.uint64).reshape(-1, key.context + 1)
    green = _green(key, windows) if len(windows) else 0
    p, z = binomial_test(len(windows), green, key.gamma)
    return RadioactivityResult(mode, key.key_id, len(windows), green, key.gamma, p, z)


def sample_endpoint(url: str, model: str, prompts: Sequence[str], max_tokens: int = 200,
                    api_key: str | None = None, timeout: float = 60.0,
                    temperature: float = 1.0) -> list[tuple[str, str]]:  # fmt: skip
    """(prompt, answer) from an OpenAI-compatible ``/v1/chat/completions`` at ``url``."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    out = []
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=headers) as client:
        for prompt in prompts:
            response = client.post("/v1/chat/completions", json={
                "model": model, "max_tokens": max_tokens, "temperature": temperature,
                "messages": [{"role": "user", "content": prompt}]})  # fmt: skip
            response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"]
            out.append((prompt, content if isinstance(content, str) else ""))
    return out

"""A keyed green-list watermark (Kirchenbauer et al., 2023) and its exact detection test.

**Scheme.** For each generated token, the previous ``context`` token ids and a secret key select
a *green list*: the tokens ``t`` whose keyed pseudo-random value ``u(key, context, t)`` is below
``gamma`` (a share ``gamma`` of the vocabulary). Generation adds ``delta`` to the logits of
green tokens, so watermarked text holds more green tokens than chance. The PRF is BLAKE2b keyed
with the secret over the context ids (one digest per step), then a SplitMix64 mix of that digest
with each token id, all in unsigned 64-bit integer arithmetic: the same green list on every
machine and library, never a framework's random-number generator.

**Detection.** Score only the text under test (never prompt tokens), and each distinct
(context, token) pair once (repeated phrases would otherwise count many times). With ``T``
pairs scored and ``s`` of them green, the p-value is the **exact binomial tail**
``P[Binomial(T, gamma) >= s]`` (``scipy.stats.binom.sf``), not a normal approximation: small
samples and tiny p-values stay honest. Without the key, or for text the key never marked, ``s``
is Binomial(T, gamma) and p-values are uniform (``tests/test_provenance.py`` checks this with a
Kolmogorov-Smirnov test on human text and on wrong keys). A small p-value means: this text was
very unlikely to be this green by chance *under this key*. It does not say who generated it.

**Keys.** A keyring holds several active keys (rotation: add a key, keep the old one while its
outputs still matter, then drop it). Detection tests every key in the ring and reports each; the
smallest p-value is Bonferroni-corrected for the number of keys tried.

Parameters, per key: ``gamma`` (green share, default 0.25), ``delta`` (logit bias, default 2.0),
``context`` (previous tokens hashed, default 1: robust to edits; larger is harder to learn
without the key but more fragile).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from distillwatch.errors import ProvenanceKeyError

#: The request header the gateway's ``shape`` action (``watermark: true``) sends the upstream to
#: ask for a watermarked answer; the upstream marks it with its keyring's active key.
REQUEST_HEADER = "x-distillwatch-watermark"

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO64 = float(2**64)


class GreenList(Protocol):
    """What the detection counters need of a scheme: its green share, the number of previous
    ids it keys on, and which tokens are green after a context. :class:`WatermarkKey` is one;
    ``provenance.hf.TransformersGreenList`` puts transformers' scheme behind the same counters."""

    gamma: float
    context: int

    def green(self, context: Sequence[int], tokens: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class WatermarkKey:
    """One key: its id (public, goes in logs and reports), its secret, and the scheme's
    parameters it was used with."""

    key_id: str
    secret: str  # hex
    gamma: float = 0.25
    delta: float = 2.0
    context: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.gamma < 1:
            raise ProvenanceKeyError(f"{self.key_id}: gamma must be between 0 and 1")
        if self.context < 1 or self.context > 8:
            raise ProvenanceKeyError(f"{self.key_id}: context must be 1 to 8 tokens")
        try:
            if len(bytes.fromhex(self.secret)) < 16:
                raise ValueError
        except ValueError:
            raise ProvenanceKeyError(
                f"{self.key_id}: secret must be at least 16 bytes of hex"
            ) from None

    @classmethod
    def generate(cls, key_id: str, **params: float) -> WatermarkKey:
        return cls(key_id, secrets.token_hex(32), **params)  # type: ignore[arg-type]

    def context_seed(self, context: Sequence[int]) -> np.uint64:
        """The keyed 64-bit seed of one context (the previous ``context`` token ids)."""
        message = b"".join(int(t).to_bytes(8, "little", signed=False) for t in context)
        digest = hashlib.blake2b(message, key=bytes.fromhex(self.secret)[:64], digest_size=8)
        return np.uint64(int.from_bytes(digest.digest(), "little"))

    def context_seeds(self, ids: Iterable[int]) -> np.ndarray:
        """:meth:`context_seed` of many one-token contexts at once (the key's bytes prepared
        once: a third of the time per context, which the scan pays for every new context)."""
        secret = bytes.fromhex(self.secret)[:64]
        blake2b, little = hashlib.blake2b, int.from_bytes
        return np.fromiter(
            (little(blake2b(int(c).to_bytes(8, "little"), key=secret, digest_size=8).digest(), "little")
             for c in ids),
            np.uint64,
        )  # fmt: skip

    def green(self, context: Sequence[int], tokens: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``tokens`` (int ids) are green after ``context``."""
        return _uniform(self.context_seed(context), tokens) < self.gamma

    def green_mask(self, context: Sequence[int], vocab_size: int) -> np.ndarray:
        """The green list over the whole vocabulary, as a boolean mask of ``vocab_size``."""
        return self.green(context, np.arange(vocab_size, dtype=np.uint64))


def _uniform(seed: np.uint64, tokens: np.ndarray) -> np.ndarray:
    """SplitMix64 of (seed, token) mapped to [0, 1): one value per token id."""
    # In place on one copy (the scan calls this on millions of pairs per batch): the same
    # values as the textbook expression, a third of the memory traffic.
    with np.errstate(over="ignore"):
        x = np.array(tokens, dtype=np.uint64)  # a copy this function owns
        x *= _GOLDEN
        x ^= seed
        shifted = x >> np.uint64(30)
        x ^= shifted
        x *= _M1
        np.right_shift(x, np.uint64(27), out=shifted)
        x ^= shifted
        x *= _M2
        np.right_shift(x, np.uint64(31), out=shifted)
        x ^= shifted
    out = x.astype(np.float64)
    out *= 1.0 / _TWO64  # a power of two: exactly the division
    return out


def watermark_logits(logits: np.ndarray, previous: Sequence[int], key: WatermarkKey) -> np.ndarray:
    """Logits for the next token with ``delta`` added to the green list (a new array).

    ``logits``: shape ``(vocab,)`` or ``(batch, vocab)``; ``previous``: the token ids generated
    so far (for a batch, a sequence per row). Fewer than ``key.context`` previous tokens: the
    logits are returned unchanged (nothing to key on yet)."""
    out = np.array(logits, dtype=np.float64, copy=True)
    rows = out.reshape(-1, out.shape[-1])
    histories = [previous] if out.ndim == 1 else previous
    for row, history in zip(rows, histories, strict=True):
        if len(history) >= key.context:
            row[key.green_mask(list(history)[-key.context :], row.shape[0])] += key.delta
    return out


@dataclass
class Detection:
    """One text (or a pool of texts) tested against one key."""

    key_id: str
    tokens_scored: int
    green: int
    gamma: float
    p_value: float
    z: float = 0.0

    @property
    def green_share(self) -> float:
        return self.green / self.tokens_scored if self.tokens_scored else 0.0


def scored_pairs(tokens: Sequence[int], key: GreenList, prompt: Sequence[int] = (),
                 seen: set[tuple[int, ...]] | None = None) -> list[tuple[tuple[int, ...], int]]:  # fmt: skip
    """The (context, token) pairs of ``tokens`` that count: each distinct pair once (also across
    calls sharing ``seen``), none that occurs in ``prompt`` (copied from it, not generated)."""
    h = key.context
    from_prompt = {tuple(prompt[i - h : i + 1]) for i in range(h, len(prompt))}
    seen = set() if seen is None else seen
    pairs = []
    for i in range(h, len(tokens)):
        window = tuple(int(t) for t in tokens[i - h : i + 1])
        if window in seen or window in from_prompt:
            continue
        seen.add(window)
        pairs.append((window[:-1], window[-1]))
    return pairs


def count_green(pairs: Iterable[tuple[tuple[int, ...], int]], key: GreenList) -> tuple[int, int]:
    """(pairs scored, green among them)."""
    scored = green = 0
    for context, token in pairs:
        scored += 1
        green += bool(key.green(context, np.array([token], dtype=np.uint64))[0])
    return scored, green


def binomial_test(tokens_scored: int, green: int, gamma: float) -> tuple[float, float]:
    """Exact one-sided p-value ``P[Binomial(T, gamma) >= green]`` and the z-score (for reading)."""
    # scipy.special, not scipy.stats (the same function, bdtrc, behind binom.sf): a third of
    # the import time, which every scan worker pays. Here, not at the top: the gateway imports
    # this module for its header only.
    from scipy.special import bdtrc

    if tokens_scored == 0:
        return 1.0, 0.0
    p = 1.0 if green <= 0 else float(bdtrc(green - 1, tokens_scored, gamma))
    z = (green - gamma * tokens_scored) / math.sqrt(tokens_scored * gamma * (1 - gamma))
    return min(1.0, max(p, 0.0)), z


def count_green_fast(tokens: Sequence[int], key: WatermarkKey,
                     prompt: Sequence[int] = ()) -> tuple[int, int]:  # fmt: skip
    """:func:`count_green` of :func:`scored_pairs` for one sequence, vectorised: the distinct
    windows with NumPy, one keyed digest per distinct context (cached on the key's seeds)."""
    h = key.context
    if len(tokens) <= h:
        return 0, 0
    ids = np.asarray(tokens, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(ids, h + 1)
    if h == 1 and int(ids.max()) < 2**32:  # the common case: one 64-bit code per pair
        codes = np.unique((windows[:, 0] << np.uint64(32)) | windows[:, 1])
        windows = np.stack([codes >> np.uint64(32), codes & np.uint64(0xFFFFFFFF)], axis=1)
    else:
        windows = np.unique(windows, axis=0)
    if len(prompt) > h:
        copied = {tuple(int(t) for t in prompt[i - h : i + 1]) for i in range(h, len(prompt))}
        keep = np.array([tuple(int(t) for t in row) not in copied for row in windows])
        windows = windows[keep]
    if not len(windows):
        return 0, 0
    cache = _SEEDS.setdefault(key.secret, {})

    def seed(context: tuple[int, ...]) -> np.uint64:
        found = cache.get(context)
        if found is None:
            found = key.context_seed(context)
            if len(cache) < 1_000_000:
                cache[context] = found
        return found

    if h == 1 and int(windows[:, 0].max()) < 1 << 20:  # the batch scan's table, shared
        seeds, inverse = _seed_table(key, windows[:, 0]), np.arange(len(windows))
    elif h == 1:
        contexts, inverse = np.unique(windows[:, 0], return_inverse=True)
        seeds = np.array([seed((int(c),)) for c in contexts.tolist()], dtype=np.uint64)
    else:
        contexts, inverse = np.unique(windows[:, :h], axis=0, return_inverse=True)
        seeds = np.array([seed(tuple(row)) for row in contexts.tolist()], dtype=np.uint64)
    green = _uniform(seeds[inverse.reshape(-1)], windows[:, h]) < key.gamma
    return len(windows), int(green.sum())


def count_green_batch(ids: np.ndarray, doc: np.ndarray, documents: int,
                      key: WatermarkKey) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`count_green_fast` of many sequences at once, without prompts: ``ids`` is their
    tokens concatenated, ``doc`` the sequence each token belongs to (each sequence's tokens
    together and in order; sequences in any order; below
    ``documents``). Returns (pairs scored, green) per sequence, the same numbers as one
    :func:`count_green_fast` call per sequence (``tests/test_provenance.py`` checks). One
    sort over the batch instead of a dozen NumPy calls per sequence: the scan's
    documents are often a few hundred bytes, where per-call overhead is the whole cost."""
    scored = np.zeros(documents, np.int64)
    green = np.zeros(documents, np.int64)
    ids = np.asarray(ids, np.uint64)
    doc = np.asarray(doc, np.int64)
    if key.context != 1 or (len(ids) and int(ids.max()) >= 2**20) or documents >= 2**24:
        for i in range(documents):  # the general case, sequence by sequence
            scored[i], green[i] = count_green_fast(ids[doc == i], key)
        return scored, green
    same = doc[1:] == doc[:-1]
    codes = (
        (doc[1:][same].astype(np.uint64) << np.uint64(40))
        | (ids[:-1][same] << np.uint64(20))
        | ids[1:][same]
    )
    # Each distinct (sequence, context, token) once: sorting beats hashing here, and NumPy's
    # stable sort (a radix sort for integers) runs 3x faster than its default on these codes.
    codes = np.sort(codes, kind="stable")
    codes = codes[np.concatenate(([True], codes[1:] != codes[:-1]))] if len(codes) else codes
    owner = (codes >> np.uint64(40)).astype(np.int64)
    context = (codes >> np.uint64(20)) & np.uint64(0xFFFFF)
    token = codes & np.uint64(0xFFFFF)
    seeds = _seed_table(key, context)
    is_green = _uniform(seeds, token) < key.gamma
    scored += np.bincount(owner, minlength=documents)
    green += np.bincount(owner, weights=is_green, minlength=documents).astype(np.int64)
    return scored, green


#: Per key (by secret), context -> keyed seed: the digests are the slow part of detection.
_SEEDS: dict[str, dict[tuple[int, ...], np.uint64]] = {}
#: Per key (by secret), for one-token contexts below 2**20: (seed of each context id, computed
#: yet?), 9 MiB per key, filled as contexts occur; at most 8 keys' tables are kept.
_SEED_TABLES: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _seed_table(key: WatermarkKey, contexts: np.ndarray) -> np.ndarray:
    """The keyed seed of each one-token context in ``contexts`` (ids below 2**20): a table
    lookup, with one digest per context id the first time it occurs."""
    table = _SEED_TABLES.get(key.secret)
    if table is None:
        if len(_SEED_TABLES) >= 8:  # bounded: the oldest key's table goes
            del _SEED_TABLES[next(iter(_SEED_TABLES))]
        table = _SEED_TABLES[key.secret] = (np.zeros(1 << 20, np.uint64), np.zeros(1 << 20, bool))
    seeds, known = table
    index = contexts.astype(np.int64)
    unknown = index[~known[index]]
    if len(unknown):
        # Distinct new contexts by marking a table, not sorting: a batch's first sight of a key
        # has every context new (a million or more), where np.unique took 70 ms.
        wanted = np.zeros(len(known), bool)
        wanted[unknown] = True
        new = np.flatnonzero(wanted)
        seeds[new] = key.context_seeds(new.tolist())
        known[new] = True
    return seeds[index]


def detect(tokens: Sequence[int], key: WatermarkKey, prompt: Sequence[int] = ()) -> Detection:
    """Test one token sequence against one key."""
    scored, green = count_green_fast(tokens, key, prompt)
    p, z = binomial_test(scored, green, key.gamma)
    return Detection(key.key_id, scored, green, key.gamma, p, z)


@dataclass
class Keyring:
    """The active watermark keys (JSON file: ``{"keys": [{key_id, secret, gamma, delta,
    context}]}``, kept secret like any signing key)."""

    keys: list[WatermarkKey] = field(default_factory=list)

    def __post_init__(self) -> None:
        ids = [k.key_id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ProvenanceKeyError("keyring: duplicate key_id")

    @property
    def active(self) -> WatermarkKey:
        """The key new outputs are marked with (the last one added)."""
        if not self.keys:
            raise ProvenanceKeyError("keyring: no keys")
        return self.keys[-1]

    def get(self, key_id: str) -> WatermarkKey | None:
        return next((k for k in self.keys if k.key_id == key_id), None)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"keys": [asdict(k) for k in self.keys]}, indent=1))
        path.chmod(0o600)

    @classmethod
    def read(cls, path: Path) -> Keyring:
        try:
            doc = json.loads(path.read_text())
            rows = doc["keys"]
            if not isinstance(rows, list):
                raise TypeError
            keys = []
            for i, row in enumerate(rows):
                if not isinstance(row, dict) or not isinstance(row.get("key_id"), str):
                    raise ProvenanceKeyError(f"{path}: keys[{i}]: needs key_id and secret")
                allowed = {"key_id", "secret", "gamma", "delta", "context"}
                keys.append(WatermarkKey(**{k: v for k, v in row.items() if k in allowed}))
        except ProvenanceKeyError:
            raise
        except OSError as exc:
            raise ProvenanceKeyError(f"{path}: cannot read ({exc.strerror})") from None
        except (ValueError, KeyError, TypeError):
            raise ProvenanceKeyError(f"{path}: not a watermark keyring") from None
        return cls(keys)

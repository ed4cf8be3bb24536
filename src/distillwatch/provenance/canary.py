"""Canaries: harmless, verifiable markers keyed to a flagged cluster, served in its answers.

When the gateway shapes an answer for an account in a flagged cluster (policy ``shape`` with
``canary: true``, proxy ``--canary-keys KEYRING``), it appends that cluster's canary: one
sentence stating a made-up fact, ``"Field note: the <trigger> is <secret>."``, where the trigger
and the secret are nonce words derived from the key and the cluster id (keyed BLAKE2b, so nobody
without the key can predict or enumerate them, and they occur in no real text). A student model
trained on the harvest learns the fact; :func:`probe` later asks a suspect to complete the
trigger and counts how often it answers with a cluster's secret. Because each cluster has its
own canary, a hit says *which* cluster's harvest the suspect learned from.

The false-match rate is measured, not assumed: :func:`probe` run on models that never saw the
canaries (the experiment's control students, or any model known to be clean) gives the rate at
which a secret comes up by chance; :func:`attribution_p` turns hits into a p-value against it
(with the rule of three when controls never hit: an upper 95% bound of 3 / trials).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from distillwatch.openai_api import append_text
from distillwatch.provenance.watermark import WatermarkKey

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "gr", "kl", "pr", "st", "tr", "th", "sk", "pl")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ea")
_CODAS = ("", "n", "r", "l", "s", "th", "nd", "rk", "x")
TEMPLATE = "Field note: the {trigger} is {secret}."


def _nonce(digest: bytes, syllables: int) -> str:
    word = ""
    for i in range(syllables):
        b = digest[3 * i : 3 * i + 3]
        word += _ONSETS[b[0] % len(_ONSETS)] + _VOWELS[b[1] % len(_VOWELS)]
        word += _CODAS[b[2] % len(_CODAS)]
    return word


@dataclass(frozen=True)
class Canary:
    cluster_id: str
    key_id: str
    trigger: str  # two nonce words: "<adjective-ish> <noun-ish>"
    secret: str

    @property
    def sentence(self) -> str:
        return TEMPLATE.format(trigger=self.trigger, secret=self.secret)

    @property
    def suffix(self) -> str:
        """What is appended to an answer: a blank line, then the sentence."""
        return f"\n\n{self.sentence}"

    @property
    def prompt(self) -> str:
        """What a probe sends: the sentence up to the secret."""
        return TEMPLATE.format(trigger=self.trigger, secret="").rstrip(" .") + " "


def canary_for(key: WatermarkKey, cluster_id: str) -> Canary:
    """The canary of one cluster under one key (deterministic; secret without the key)."""
    digest = hashlib.blake2b(f"canary|{cluster_id}".encode(), key=bytes.fromhex(key.secret)[:64],
                             digest_size=32).digest()  # fmt: skip
    trigger = f"{_nonce(digest[0:9], 3)} {_nonce(digest[9:18], 3)}"
    return Canary(cluster_id, key.key_id, trigger, _nonce(digest[18:27], 3))


def add_canary(payload: dict[str, Any], canary: Canary) -> dict[str, Any]:
    """Append the canary sentence to the answer text of a chat completion, completion or
    Responses object (:func:`~distillwatch.openai_api.append_text`)."""
    return append_text(payload, canary.suffix)


class CanaryHook:
    """A proxy response hook: a shaped answer whose decision asks for a canary and names a
    cluster gets that cluster's canary, appended to the answer (JSON responses) or streamed at
    its end (chat completion, completion and Responses streams, via :meth:`stream_text` and
    :class:`~distillwatch.openai_api.StreamAppender`)."""

    def __init__(self, key: WatermarkKey) -> None:
        self.key = key

    def _canary(self, decision: Any) -> Canary | None:
        if getattr(decision, "canary", False) and getattr(decision, "cluster_id", None):
            return canary_for(self.key, str(decision.cluster_id))
        return None

    def __call__(
        self, payload: dict[str, Any], decision: Any, body: dict[str, Any]
    ) -> dict[str, Any]:
        canary = self._canary(decision)
        return add_canary(payload, canary) if canary else payload

    def stream_text(self, decision: Any) -> str | None:
        canary = self._canary(decision)
        return canary.suffix if canary else None


def response_hook(key: WatermarkKey) -> CanaryHook:
    """The hook ``proxy --canary-keys`` installs (keyed with the keyring's active key)."""
    return CanaryHook(key)


@dataclass
class ProbeResult:
    cluster_id: str
    trials: int
    hits: int
    p_value: float | None = None


_WORD = re.compile(r"[a-z]+")


def probe(
    ask: Callable[[str], str], canaries: Sequence[Canary], trials: int = 20
) -> list[ProbeResult]:
    """Ask a suspect (``ask(prompt) -> answer``) to complete each canary's trigger ``trials``
    times; a hit is an answer whose first word is the canary's secret."""
    out = []
    for canary in canaries:
        hits = 0
        for _ in range(trials):
            words = _WORD.findall(ask(canary.prompt).lower())
            hits += bool(words) and words[0] == canary.secret
        out.append(ProbeResult(canary.cluster_id, trials, hits))
    return out


def attribution_p(hits: int, trials: int, control_hits: int, control_trials: int) -> float:
    """P[at least ``hits`` of ``trials`` by chance] at the false-match rate the controls show
    (their rate, or 3 / control trials when they never matched)."""
    from scipy.stats import binom

    if hits == 0:
        return 1.0
    rate = control_hits / control_trials if control_hits else 3.0 / max(control_trials, 1)
    return float(binom.sf(hits - 1, trials, min(rate, 1.0)))

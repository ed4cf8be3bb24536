"""The watermark in PyTorch serving stacks: a Hugging Face ``LogitsProcessor``, a vLLM-style
per-request processor, detection over a Hugging Face tokenizer's ids, and the cross-check
against transformers' own watermark detector.

Needs the optional extra ``distillwatch[hf]`` (PyTorch and transformers); nothing else in the
package imports this module, so the default install stays light.

- :class:`WatermarkLogitsProcessor` adds ``delta`` to the green list of each row's last
  ``context`` ids, exactly the green list of :meth:`WatermarkKey.green_mask` (the same keyed
  PRF, computed with NumPy on the CPU, never torch's random-number generator): a text generated
  on any device is detected by :func:`~distillwatch.provenance.watermark.detect` anywhere.
  Prompt ids take part as context (the first generated token is keyed on the prompt's last
  id), as in Kirchenbauer et al.; detection leaves windows found in the prompt out.
- :func:`vllm_processor` is the same, as the ``(token_ids, logits) -> logits`` callable that
  vLLM's per-request ``SamplingParams(logits_processors=[...])`` takes (``token_ids``: the
  output ids so far; the prompt is not passed, so the first generated token is not keyed).
- :func:`detect_ids` tests a generated text's token ids (the model's tokenizer, not our word
  tokenizer) against a keyring.
- :func:`open_test_hf` is radioactivity's open mode on a transformers model: did this suspect
  train on our watermarked outputs?
- :class:`TransformersGreenList` exposes transformers' ``WatermarkLogitsProcessor`` green lists
  (``WatermarkingConfig``: a torch generator seeded from a hash of the previous id) through the
  interface our detector counts with, so both detectors can be run on the same green lists:
  ``tests/test_provenance_hf.py`` checks they score the same (context, token) pairs, find the
  same green ones and the same z-score; transformers' p-value is the normal approximation, ours
  the exact binomial tail.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from distillwatch.provenance.radioactivity import RadioactivityResult, open_test_predictions
from distillwatch.provenance.watermark import (
    Detection,
    Keyring,
    WatermarkKey,
    binomial_test,
    count_green,
    scored_pairs,
)

try:  # the optional extra: a clear message instead of a bare ImportError deep in a call
    import torch
    from transformers import LogitsProcessor
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "distillwatch.provenance.hf needs PyTorch and transformers: pip install 'distillwatch[hf]'"
    ) from exc

#: Green-list masks kept per processor (one per distinct context): a 150k-token vocabulary's
#: mask is 150 kB, so 4,096 of them stay well under a gigabyte even for the largest vocabularies.
MASK_CACHE = 4096


class _Masks:
    """The green-list mask of each context over a vocabulary, as a torch tensor, cached."""

    def __init__(self, key: WatermarkKey, size: int = MASK_CACHE) -> None:
        self.key = key
        self.size = size
        self._cache: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()

    def __call__(self, context: tuple[int, ...], vocab: int) -> torch.Tensor:
        found = self._cache.get(context)
        if found is None or found.shape[0] != vocab:
            found = torch.from_numpy(self.key.green_mask(context, vocab))
            self._cache[context] = found
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(context)
        return found


class WatermarkLogitsProcessor(LogitsProcessor):  # type: ignore[misc]
    """Hugging Face ``LogitsProcessor``: ``scores + delta`` on each row's green list.

    ``input_ids``: ``(batch, length)``, the prompt and what was generated so far; ``scores``:
    ``(batch, vocab)``. Rows with fewer than ``key.context`` ids are left unchanged. Use it as
    ``model.generate(..., logits_processor=LogitsProcessorList([WatermarkLogitsProcessor(key)]))``.
    """

    def __init__(self, key: WatermarkKey) -> None:
        self.key = key
        self._masks = _Masks(key)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        h = self.key.context
        if input_ids.shape[-1] < h:
            return scores
        vocab = scores.shape[-1]
        contexts = input_ids[:, -h:].tolist()
        mask = torch.stack([self._masks(tuple(c), vocab) for c in contexts]).to(scores.device)
        return scores + self.key.delta * mask.to(scores.dtype)


def vllm_processor(key: WatermarkKey) -> Callable[[Sequence[int], torch.Tensor], torch.Tensor]:
    """A per-request logits processor in vLLM's ``(output_token_ids, logits) -> logits`` form."""
    masks = _Masks(key)

    def process(token_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        if len(token_ids) < key.context:
            return logits
        mask = masks(tuple(int(t) for t in token_ids[-key.context :]), logits.shape[-1])
        return logits + key.delta * mask.to(device=logits.device, dtype=logits.dtype)

    return process


def detect_ids(generated: Sequence[int], keyring: Keyring,
               prompt: Sequence[int] = ()) -> list[Detection]:  # fmt: skip
    """Test one generated text, as the model's token ids, against every key (prompt windows
    left out, each distinct (context, token) pair once). Include the prompt's last
    ``context`` ids in front of ``generated`` to score its first token too."""
    out = []
    for key in keyring.keys:
        scored, green = count_green(scored_pairs(list(generated), key, list(prompt)), key)
        p, z = binomial_test(scored, green, key.gamma)
        out.append(Detection(key.key_id, scored, green, key.gamma, p, z))
    return out


def open_test_hf(model: Any, texts: Iterable[Sequence[int]], key: WatermarkKey,
                 max_tokens: int | None = None, max_length: int = 1024) -> RadioactivityResult:  # fmt: skip
    """Radioactivity in open mode on a transformers causal LM (Sander et al.): for each of our
    watermarked texts (the suspect tokenizer's ids), one forward pass gives the suspect's most
    likely next token at every position; each distinct (watermark window, prediction) pair is
    scored once (:func:`~distillwatch.provenance.radioactivity.open_test_predictions`). Texts
    are cut at ``max_length`` ids. A small p-value: the suspect prefers our green tokens after
    our contexts, as a model trained on our watermarked outputs does."""
    model.eval()
    first = max(key.context, 1)

    def predicted() -> Iterator[tuple[list[int], list[int]]]:
        for text in texts:
            ids = [int(t) for t in text][:max_length]
            if len(ids) <= first:
                continue
            with torch.no_grad():
                logits = model(torch.tensor([ids], device=model.device)).logits[0]
            # logits[t - 1] predicts ids[t]: the predictions after ids[:t], t = first, first + 1...
            yield ids, logits[first - 1 : len(ids) - 1].argmax(-1).tolist()

    return open_test_predictions(predicted(), key, max_tokens)


class TransformersGreenList:
    """transformers' watermark green lists behind :meth:`WatermarkKey.green`'s interface.

    ``processor``: a ``transformers.generation.logits_process.WatermarkLogitsProcessor`` (what
    ``model.generate(watermarking_config=...)`` builds). Only the scheme transformers calls
    ``lefthash`` keys on the previous ids alone, which is what a (context, token) pair holds;
    ``selfhash`` also hashes the candidate token, and is refused."""

    def __init__(self, processor: Any) -> None:
        if getattr(processor, "seeding_scheme", "lefthash") != "lefthash":
            raise ValueError("only transformers' lefthash seeding scheme keys on context alone")
        self.processor = processor
        # The share really green (transformers rounds the list's size down; its detector's
        # expectation uses the configured ratio, the same when vocab * ratio is whole).
        self.gamma = processor.greenlist_size / processor.vocab_size
        self.context = int(processor.context_width)
        self._green: dict[tuple[int, ...], np.ndarray] = {}

    def green(self, context: Sequence[int], tokens: np.ndarray) -> np.ndarray:
        key = tuple(int(t) for t in context)
        found = self._green.get(key)
        if found is None:
            ids = self.processor._get_greenlist_ids(torch.tensor(key, dtype=torch.long))
            found = np.zeros(self.processor.vocab_size, bool)
            found[ids.cpu().numpy()] = True
            self._green[key] = found
        return found[np.asarray(tokens, dtype=np.int64)]


__all__ = ["TransformersGreenList", "WatermarkLogitsProcessor", "detect_ids", "open_test_hf",
           "vllm_processor"]  # fmt: skip

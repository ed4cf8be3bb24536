"""The watermark in PyTorch stacks (the optional ``hf`` extra): the Hugging Face and vLLM-style
processors mark the same green lists as the NumPy function, text generated through
``model.generate`` by a config-built model (random weights, no downloads) is detected from its
token ids, and on transformers' own watermark our detector and ``WatermarkDetector`` score the
same pairs and find the same green ones.

Skipped where PyTorch or transformers is not installed (the default install and CI, which do not
take the extra: PyPI's torch wheel brings gigabytes of CUDA libraries)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from distillwatch.provenance import Keyring, WatermarkKey, watermark_logits  # noqa: E402
from distillwatch.provenance.hf import (  # noqa: E402
    TransformersGreenList,
    WatermarkLogitsProcessor,
    detect_ids,
    vllm_processor,
)
from distillwatch.provenance.watermark import binomial_test, count_green, scored_pairs  # noqa: E402

KEY = WatermarkKey("hf-test", "ab" * 32, gamma=0.25, delta=2.0, context=1)
KEY2 = WatermarkKey("hf-test-2", "cd" * 32, gamma=0.25, delta=2.0, context=2)
VOCAB = 512


def _model(seed: int = 0):
    """A tiny Llama built from its config: random weights, nothing downloaded."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=4, max_position_embeddings=512,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("key", [KEY, KEY2], ids=["context-1", "context-2"])
def test_the_hf_and_vllm_processors_mark_the_numpy_green_lists(key):
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(3, VOCAB)).astype(np.float32)
    ids = rng.integers(0, VOCAB, size=(3, 7))
    expected = watermark_logits(scores, ids.tolist(), key)
    got = WatermarkLogitsProcessor(key)(torch.tensor(ids), torch.tensor(scores))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)
    bumped = (got.numpy() - scores) > 0
    assert 0.15 < bumped.mean() < 0.35  # about gamma of each row, never all or none
    one = vllm_processor(key)(ids[1].tolist(), torch.tensor(scores[1]))
    np.testing.assert_allclose(one.numpy(), expected[1], rtol=1e-6, atol=1e-6)
    # Too short a history to key on: unchanged.
    short = torch.tensor(ids[:, : key.context - 1])
    assert torch.equal(
        WatermarkLogitsProcessor(key)(short, torch.tensor(scores)), torch.tensor(scores)
    )


def test_text_generated_with_the_processor_is_detected_from_its_token_ids():
    model = _model()
    prompt = torch.tensor([[1, 17, 99, 250, 31]])
    common = {"max_new_tokens": 160, "min_new_tokens": 160, "do_sample": True, "top_k": 0,
              "pad_token_id": 0}  # fmt: skip
    torch.manual_seed(1)
    marked = model.generate(prompt, logits_processor=transformers.LogitsProcessorList(
        [WatermarkLogitsProcessor(KEY)]), **common)[0].tolist()  # fmt: skip
    torch.manual_seed(1)
    plain = model.generate(prompt, **common)[0].tolist()
    ring = Keyring([KEY])
    # The prompt's last id keys the first generated token; prompt windows are left out.
    found = detect_ids(marked[4:], ring, prompt=prompt[0].tolist())[0]
    assert found.tokens_scored >= 140
    assert found.p_value < 1e-12 and found.green_share > 0.5
    assert detect_ids(plain[4:], ring, prompt=prompt[0].tolist())[0].p_value > 1e-3
    other = Keyring([WatermarkKey("other", "ef" * 32)])
    assert detect_ids(marked[4:], other, prompt=prompt[0].tolist())[0].p_value > 1e-3


def test_on_transformers_watermark_both_detectors_score_the_same_pairs():
    """transformers' ``WatermarkingConfig`` marks, its ``WatermarkDetector`` and our counters
    judge, on the same green lists: the same pairs scored, the same green, the same z. Their
    p-value is the normal tail; ours is the exact binomial tail (larger, for a discrete test)."""
    from transformers.generation import WatermarkDetector, WatermarkingConfig
    from transformers.generation.logits_process import WatermarkLogitsProcessor as TheirProcessor

    model = _model(2)
    config = WatermarkingConfig(bias=2.5, greenlist_ratio=0.25, seeding_scheme="lefthash",
                                context_width=1, hashing_key=15485863)  # fmt: skip
    prompts = torch.tensor([[1, 40, 41, 42], [1, 300, 7, 9]])
    torch.manual_seed(5)
    marked = model.generate(prompts, watermarking_config=config, do_sample=True, top_k=0,
                            max_new_tokens=120, min_new_tokens=120, pad_token_id=0)  # fmt: skip
    torch.manual_seed(5)
    plain = model.generate(prompts, do_sample=True, top_k=0, max_new_tokens=120,
                           min_new_tokens=120, pad_token_id=0)  # fmt: skip
    # Greedy decoding of a random model loops: repeated (context, token) pairs, each counted once.
    looped = model.generate(prompts, watermarking_config=config, do_sample=False,
                            max_new_tokens=120, min_new_tokens=120, pad_token_id=0)  # fmt: skip
    detector = WatermarkDetector(model.config, "cpu", config, ignore_repeated_ngrams=True)
    ours = TransformersGreenList(TheirProcessor(vocab_size=VOCAB, device="cpu", **config.to_dict()))
    repeats = 0
    for output, is_marked in ((marked, True), (plain, False), (looped, None)):
        theirs = detector(output, return_dict=True)
        for row in range(output.shape[0]):
            passage = output[row, 1:].tolist()  # the detector drops the leading BOS
            scored, green = count_green(scored_pairs(passage, ours), ours)
            p, z = binomial_test(scored, green, ours.gamma)
            assert scored == theirs.num_tokens_scored[row]
            assert green == theirs.num_green_tokens[row]
            assert z == pytest.approx(float(theirs.z_score[row]), rel=1e-9)
            repeats += len(passage) - 1 - scored
            if is_marked is None:
                continue
            assert (p < 1e-6) == is_marked and bool(theirs.prediction[row]) == is_marked
            if is_marked:
                assert p >= float(theirs.p_value[row])  # the normal tail is the optimistic one
    assert repeats > 50  # de-duplication was exercised, not only distinct pairs
    # Our own key's green lists are not transformers': its detector does not see our mark.
    assert not np.array_equal(
        ours.green((40,), np.arange(VOCAB)), KEY.green((40,), np.arange(VOCAB, dtype=np.uint64))
    )


def test_selfhash_is_refused_by_the_adapter():
    from transformers.generation.logits_process import WatermarkLogitsProcessor as TheirProcessor

    their = TheirProcessor(vocab_size=VOCAB, device="cpu", greenlist_ratio=0.25, bias=2.0,
                           hashing_key=7, seeding_scheme="selfhash", context_width=1)  # fmt: skip
    with pytest.raises(ValueError, match="lefthash"):
        TransformersGreenList(their)


def _train(sequences: np.ndarray, seed: int):
    """A tiny Llama trained from scratch on ``sequences`` (next-token loss, a few hundred steps)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=4, max_position_embeddings=128)  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.tensor(sequences, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(250):
        batch = data[torch.randint(len(data), (32,), generator=generator)]
        loss = model(batch, labels=batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def _teacher_texts(count: int, key: WatermarkKey | None, seed: int) -> np.ndarray:
    """Texts of 48 ids from a fixed bigram teacher, watermarked with ``key`` (None: plain)."""
    base = np.random.default_rng(0).normal(size=(64, 64)) * 1.5  # the teacher's own preferences
    rng = np.random.default_rng(seed)
    out = np.zeros((count, 48), np.int64)
    for row in out:
        row[0] = rng.integers(64)
        for t in range(1, 48):
            logits = base[row[t - 1]]
            if key is not None:
                logits = watermark_logits(logits, [int(row[t - 1])], key)
            p = np.exp(logits - logits.max())
            row[t] = rng.choice(64, p=p / p.sum())
    return out


def test_open_mode_radioactivity_finds_a_transformers_student_of_our_watermarked_outputs():
    """Sander et al.'s open mode on a transformers model: a student trained on our watermarked
    answers prefers our green tokens after our contexts; one trained on the same teacher's
    plain answers does not."""
    from distillwatch.provenance.hf import open_test_hf

    key = WatermarkKey("radio", "5a" * 32, gamma=0.25, delta=2.0, context=1)
    marked = _train(_teacher_texts(600, key, 1), seed=1)
    plain = _train(_teacher_texts(600, None, 1), seed=1)
    probes = _teacher_texts(100, key, 2)  # our watermarked texts the students never saw
    found = open_test_hf(marked, probes.tolist(), key)
    control = open_test_hf(plain, probes.tolist(), key)
    assert found.tokens_scored >= 100 and control.tokens_scored >= 100
    assert found.p_value < 1e-6 < 1e-3 < control.p_value
    # A key the student never saw: nothing (the preference is for our key's green lists).
    assert open_test_hf(marked, probes.tolist(), WatermarkKey("other", "6b" * 32)).p_value > 1e-3


def test_radioactivity_cli_runs_a_transformers_model_folder_in_open_mode(tmp_path, cli):
    """``provenance radioactivity --suspect-model DIR``: a saved transformers model, our texts
    read with the model's tokenizer.json (a word-level one naming the 64 ids here), tells the
    student of our watermarked answers from the student of plain ones."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    key = WatermarkKey("radio", "5a" * 32, gamma=0.25, delta=2.0, context=1)
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    ring = tmp_path / "keys.json"
    Keyring([key]).write(ring)
    texts = tmp_path / "ours.txt"
    texts.write_text(
        "\n".join(" ".join(f"w{t}" for t in row) for row in _teacher_texts(100, key, 2))
    )
    p = {}
    for name, marked in (("marked", key), ("plain", None)):
        folder = tmp_path / name
        _train(_teacher_texts(600, marked, 1), seed=1).save_pretrained(folder)
        words.save(str(folder / "tokenizer.json"))
        result = cli("provenance", "radioactivity", "--keys", ring, "--suspect-model", folder,
                     "--texts", texts, "--json", timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["mode"] == "open" and "(transformers) run on 100 of our texts" in doc["detail"]
        p[name] = doc["per_key"][0]["p_value"]
    assert p["marked"] < 1e-6 < 1e-3 < p["plain"]

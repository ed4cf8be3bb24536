"""Decisions per second of the pure decision function on one core.

    .venv/bin/python benchmarks/proxy_decisions.py [--n 200000]

Target (issue 5): >= 20,000 decisions/s. Prints the median of 5 runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

from distillwatch.enforce.decide import decide
from distillwatch.enforce.policy import load_policy
from distillwatch.enforce.signals import cot_elicitation, template_signatures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    policy = load_policy(None)
    verdicts = ["benign"] * 90 + ["suspicious"] * 7 + ["distillation"] * 3
    prompt = (
        "Write a function that parses log lines. Think step by step and explain your reasoning."
    )
    facts = [
        {
            "account_id": f"a{i}",
            "verdict": verdicts[i % 100],
            "score": (i % 100) / 100,
            "cluster_id": "c-1",
        }
        for i in range(1000)
    ]
    rates, full_rates = [], []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(args.n):
            decide(facts[i % 1000], policy, False, None)
        rates.append(args.n / (time.perf_counter() - start))
        # With the per-request online signals the proxy computes before deciding.
        start = time.perf_counter()
        for i in range(args.n // 4):
            f = dict(facts[i % 1000], cot_elicitation=cot_elicitation(prompt))
            template_signatures(prompt)
            decide(f, policy, False, None)
        full_rates.append(args.n // 4 / (time.perf_counter() - start))
    print(f"decide(): median {statistics.median(rates):,.0f} decisions/s over 5 runs of {args.n:,}")
    print(f"signals + decide(): median {statistics.median(full_rates):,.0f} decisions/s")


if __name__ == "__main__":
    main()

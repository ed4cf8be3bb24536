"""The contamination scan's vendor classifier on real public code, with its held-out figures.

    .venv/bin/python benchmarks/vendor_classifier.py [--target-precision 0.95] [--max-fpr 0.02]

Vendor = Python written by OpenAI models (GPTeacher codegen, Evol-Instruct gen1/gen2 outputs in
../shared/data); other = Python written by people (MBPP, HumanEval). The classifier is fitted on
half of each (its own held-out quarter of that half picks the threshold); the other half, never
seen, measures what it promised: the share of vendor code flagged and of human code flagged.
The sample builder is the test's (``tests/test_classifier.py``), so both measure the same sets.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_classifier import python_samples

from distillwatch.paths import shared_data_dir
from distillwatch.provenance.classifier import VendorClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-precision", type=float, default=0.95)
    parser.add_argument("--max-fpr", type=float, default=0.02)
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None:
        raise SystemExit("../shared/data is needed")
    vendor, human = python_samples(data)
    hv, hh = len(vendor) // 2, len(human) // 2
    started = time.perf_counter()
    clf = VendorClassifier(target_precision=args.target_precision, max_fpr=args.max_fpr)
    clf.fit(vendor[:hv] + human[:hh], [1] * hv + [0] * hh)
    fitted = time.perf_counter() - started
    flagged_v, flagged_h = int(clf.predict(vendor[hv:]).sum()), int(clf.predict(human[hh:]).sum())
    print(f"samples: {len(vendor):,} vendor, {len(human):,} human snippets; fit {fitted:.1f} s")
    print(f"held out: {clf.describe()}")
    print(f"unseen: {flagged_v} of {len(vendor) - hv} vendor snippets flagged "
          f"({flagged_v / (len(vendor) - hv):.2f}), {flagged_h} of {len(human) - hh} human "
          f"({flagged_h / (len(human) - hh):.1%})")  # fmt: skip


if __name__ == "__main__":
    main()

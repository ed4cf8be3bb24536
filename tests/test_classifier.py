"""The vendor style classifier of the contamination scan, on real public code: Python written
by OpenAI models (GPTeacher codegen responses, Evol-Instruct outputs) against Python written by
people (MBPP solutions, HumanEval prompts with their canonical solutions)."""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from distillwatch.provenance.classifier import VendorClassifier

FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)```", re.DOTALL)


def _python(text: str) -> str | None:
    """The Python in a model's answer: its first fenced block, or the whole answer; None when
    it is not Python (no ``def``, or braces that say C, Java or JavaScript)."""
    match = FENCE.search(text)
    code = (match.group(1) if match else text).strip()
    if "def " not in code or re.search(r"[{};]\s*$", code, re.MULTILINE) or len(code) < 80:
        return None
    return code


def python_samples(data: Path) -> tuple[list[str], list[str]]:
    """(vendor texts, human texts), Python code only, each shuffled with a fixed seed."""
    vendor = [
        r["response"] for r in json.loads((data / "gpteacher/codegen-instruct.json").read_text())
    ]
    for gen in ("gen1_evol-codealpaca-2k-1.json", "gen2_evol-codealpaca-2k-2.json"):
        vendor += [r["output"] for r in json.loads((data / "evol_codealpaca" / gen).read_text())]
    vendor = sorted({c for c in map(_python, vendor) if c})
    human = [json.loads(line)["code"] for line in (data / "mbpp/mbpp.jsonl").open()]
    with gzip.open(data / "humaneval/HumanEval.jsonl.gz", "rt") as handle:
        human += [(r := json.loads(line))["prompt"] + r["canonical_solution"] for line in handle]
    human = sorted({h.strip() for h in human if len(h.strip()) >= 80})
    rng = random.Random(7)
    rng.shuffle(vendor)
    rng.shuffle(human)
    return vendor, human  # fmt: skip


def test_the_threshold_is_chosen_and_measured_on_held_out_text(shared_data):
    vendor, human = python_samples(shared_data)
    assert len(vendor) >= 300 and len(human) >= 300
    half_v, half_h = len(vendor) // 2, len(human) // 2
    clf = VendorClassifier(target_precision=0.9, max_fpr=0.02).fit(
        vendor[:half_v] + human[:half_h], [1] * half_v + [0] * half_h
    )
    assert clf.heldout_precision_ >= 0.9 and clf.heldout_fpr_ <= 0.02
    assert clf.heldout_recall_ > 0.3
    # On texts it never saw (neither trained nor held out), what it promised holds up to
    # sampling noise: the share of human code flagged, and the recall.
    unseen_v, unseen_h = vendor[half_v:], human[half_h:]
    flagged_v, flagged_h = clf.predict(unseen_v).sum(), clf.predict(unseen_h).sum()
    assert flagged_h / len(unseen_h) <= 0.05, (flagged_v, flagged_h, clf.describe())
    assert flagged_v / len(unseen_v) >= clf.heldout_recall_ - 0.15
    assert "held-out precision" in clf.describe()


def test_labels_with_no_signal_flag_nothing():
    rng = np.random.default_rng(3)
    words = ["alpha", "beta", "gamma", "delta", "omega", "theta"]
    texts = [" ".join(rng.choice(words, 30)) for _ in range(200)]
    clf = VendorClassifier().fit(texts, rng.integers(0, 2, 200))
    assert clf.threshold_ > 1 and clf.predict(texts).sum() == 0
    assert "flags nothing" in clf.describe()
    with pytest.raises(ValueError, match="at least 10"):
        VendorClassifier().fit(texts[:12], [1] * 3 + [0] * 9)


def test_scan_reports_vendor_style_with_its_held_out_figures(shared_data, tmp_path, cli):
    vendor, human = python_samples(shared_data)
    samples = {"vendor.jsonl": vendor[:400], "human.jsonl": human[:400]}
    for name, texts in samples.items():
        (tmp_path / name).write_text("".join(json.dumps({"code": t}) + "\n" for t in texts))
    corpus = tmp_path / "repo"
    corpus.mkdir()
    for i, text in enumerate(vendor[400:440]):
        (corpus / f"pasted_{i}.py").write_text(text)
    for i, text in enumerate(human[400:440]):
        (corpus / f"own_{i}.py").write_text(text)
    out = tmp_path / "findings.jsonl"
    result = cli("provenance", "scan", corpus, "--out", out, "--vendor-sample", tmp_path / "vendor.jsonl",
                 "--other-sample", tmp_path / "human.jsonl", "--sample-field", "code",
                 "--target-precision", "0.9")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "vendor classifier: threshold" in result.stderr
    found = [json.loads(line) for line in out.read_text().splitlines()]
    flagged = {Path(f["path"]).name for f in found if f["kind"] == "vendor_classifier"}
    pasted = sum(name.startswith("pasted_") for name in flagged)
    assert pasted >= 10 and pasted / len(flagged) >= 0.8, sorted(flagged)
    reason = next(f["reason"] for f in found if f["kind"] == "vendor_classifier")
    assert "not proof" in reason and "held-out precision" in reason
    one_sided = cli("provenance", "scan", corpus, "--vendor-sample", tmp_path / "vendor.jsonl")
    assert one_sided.returncode == 2 and "--other-sample" in one_sided.stderr

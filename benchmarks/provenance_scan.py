"""Throughput of ``provenance scan``: MB of text per second, markers only and with the watermark.

    .venv/bin/python benchmarks/provenance_scan.py [--mb 100] [--repeats 3] [--workers 2]

Builds a JSONL corpus of about --mb MB from real model outputs (GPTeacher and Evol-CodeAlpaca
responses in ../shared/data, repeated), then times ``scan`` over it (in process, the CLI's own
code path, with --workers worker processes) --repeats times for each mode. Target (issue 13):
>= 50 MB/s on 2 cores for the watermark and marker scan.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from distillwatch.paths import shared_data_dir
from distillwatch.provenance import Keyring, WatermarkKey
from distillwatch.provenance.scan import scan


def gpteacher_responses() -> list[str]:
    """Every GPTeacher answer in ../shared/data (real GPT-4 outputs)."""
    data = shared_data_dir()
    if data is None:
        raise SystemExit("../shared/data is needed")
    texts = []
    for source in sorted((data / "gpteacher").glob("*.json")):
        texts += [r["response"] for r in json.loads(source.read_text()) if r.get("response")]
    return texts


def corpus(path: Path, megabytes: float) -> int:
    texts = gpteacher_responses()
    size = 0
    with path.open("w") as handle:
        i = 0
        while size < megabytes * 1e6:
            line = json.dumps({"text": texts[i % len(texts)]}) + "\n"
            handle.write(line)
            size += len(texts[i % len(texts)])
            i += 1
    return size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (1: in process)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.jsonl"
        size = corpus(path, args.mb)
        ring = Keyring([WatermarkKey.generate("bench")])
        for name, keys in (("markers", None), ("markers + watermark", ring)):
            rates = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                found = Counter(f.kind for f in scan([path], keys, workers=args.workers))
                rates.append(size / 1e6 / (time.perf_counter() - started))
            print(f"{name}: {statistics.median(rates):.1f} MB/s of text (median of {args.repeats}; "
                  f"{size / 1e6:.0f} MB; {args.workers} worker(s); findings: {dict(found)})")  # fmt: skip


if __name__ == "__main__":
    main()

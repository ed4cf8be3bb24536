"""Build the small corpus sample shipped in the package (``python -m distillwatch.traffic.sample``).

The simulator needs *some* real text when ``../shared/data`` is absent (a fresh install, an
air-gapped demo). This takes a few dozen items from each permissively licensed corpus, keeps
their origin, and writes ``distillwatch/data/sample_corpus.json.gz``. NQ-open (CC BY-SA) is left
out so the package carries no share-alike text.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from distillwatch.paths import shared_data_dir
from distillwatch.traffic.corpora import load_from_shared

PER_POOL = 40
EXCLUDED = {"nq_open"}


def build(out: Path) -> None:
    data = shared_data_dir()
    if data is None:
        raise SystemExit("../shared/data not found: the sample is built from it")
    corpora = load_from_shared(data)
    rng = random.Random(0)
    doc: dict[str, dict[str, list[dict[str, object]]]] = {}
    for kind in ("human", "sweep", "synthetic"):
        doc[kind] = {}
        for name, items in getattr(corpora, kind).items():
            if name in EXCLUDED:
                continue
            picked = rng.sample(items, min(PER_POOL, len(items)))
            doc[kind][name] = [
                {"prompt": i.prompt[:1500], "answer": (i.answer or "")[:1500] or None,
                 "topic": i.topic, "followups": list(i.followups[:2])}
                for i in picked
            ]  # fmt: skip
    out.write_bytes(gzip.compress(json.dumps(doc).encode(), mtime=0))


if __name__ == "__main__":
    build(Path(__file__).resolve().parents[1] / "data" / "sample_corpus.json.gz")

"""The multi-process path for large JSONL files gives the same result as the sequential one."""

from __future__ import annotations

import itertools
import json

import orjson
import pytest

import distillwatch.ingest.parallel as parallel
from distillwatch.ingest import ingest_paths
from distillwatch.ingest.readers import line_aligned_ranges
from distillwatch.store import Store


def write_log(path, n):
    with open(path, "wb") as handle:
        for i in range(n):
            if i % 97 == 13:
                handle.write(b"{broken json\n")
            elif i % 101 == 7:
                handle.write(b"\n")
            else:
                rec = {
                    "id": f"ex-{i % 1500}",  # ids repeat across chunk boundaries
                    "ts": "2026-03-01T00:00:00Z",
                    "account_id": f"a{i % 13}",
                    "model": "m",
                    "messages": [{"role": "user", "content": f"prompt {i} " + "x" * (i % 300)}],
                }
                handle.write(orjson.dumps(rec) + b"\n")
    return path


def test_line_aligned_ranges_cover_the_file_exactly(tmp_path):
    path = write_log(tmp_path / "log.jsonl", 700)
    data = path.read_bytes()
    ranges = line_aligned_ranges(path, 4096)
    assert len(ranges) > 5
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end == start and data[start - 1 : start] == b"\n"


@pytest.mark.parametrize("workers", [1, 2])
def test_parallel_matches_sequential(tmp_path, monkeypatch, workers):
    path = write_log(tmp_path / "log.jsonl", 3000)
    monkeypatch.setattr(parallel, "CHUNK_BYTES", 16_384)
    monkeypatch.setattr("distillwatch.ingest.PARALLEL_MIN_BYTES", 1)
    quarantine = tmp_path / f"q{workers}.jsonl"
    with Store(tmp_path / f"s{workers}.duckdb") as store:
        report = ingest_paths([path], store, quarantine=quarantine, workers=workers)
        ids = store.run("SELECT count(*), count(DISTINCT id) FROM exchanges")[0]
    assert report.records == 3000 - len([i for i in range(3000) if i % 101 == 7 and i % 97 != 13])
    assert report.quarantined == len([i for i in range(3000) if i % 97 == 13])
    assert ids == (1500, 1500)
    assert report.loaded == 1500
    assert report.loaded + report.duplicates + report.quarantined == report.records
    lines = [json.loads(line)["record"] for line in quarantine.read_text().splitlines()]
    assert lines == [i + 1 for i in range(3000) if i % 97 == 13]  # exact file line numbers

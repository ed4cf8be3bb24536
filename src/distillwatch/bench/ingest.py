"""Ingest throughput and peak memory against a bare DuckDB ``read_json`` + insert of the same file.

The input is generated here: Contract-1 records whose prompt and response lengths are drawn from
the real Azure LLM inference trace (``../shared/data/azure_llm_trace_2023``, conversation set)
when it is present, else from a log-normal fitted to that trace's medians. The words are filler:
only sizes matter for throughput, and no text here is claimed as real.

Each measured step runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own.
"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from distillwatch.paths import shared_data_dir

CHARS_PER_TOKEN = 4
# A sentence reads better than sixty quoted words.
_WORDS = (  # noqa: SIM905
    "the of and to in is that for it as with was on be by this are or from at an which have not "
    "function return value model data prompt answer explain step code python error list table "
    "write reason because therefore example result test case input output user system query"
).split()


def _trace_lengths(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    data = shared_data_dir()
    trace = data / "azure_llm_trace_2023" / "AzureLLMInferenceTrace_conv.csv" if data else None
    if trace is not None and trace.exists():
        with open(trace, newline="") as handle:
            rows = list(csv.DictReader(handle))
        context = np.array([int(r["ContextTokens"]) for r in rows])
        generated = np.array([int(r["GeneratedTokens"]) for r in rows])
        pick = rng.integers(0, len(rows), n)
        return context[pick] * CHARS_PER_TOKEN, np.maximum(generated[pick], 1) * CHARS_PER_TOKEN
    # Medians of the Azure conversation trace: 1,020 context and 129 generated tokens.
    context = rng.lognormal(np.log(1020), 0.6, n).astype(int) * CHARS_PER_TOKEN
    generated = rng.lognormal(np.log(129), 0.9, n).astype(int) * CHARS_PER_TOKEN
    return context, np.maximum(generated, CHARS_PER_TOKEN)


def generate_file(path: Path, records: int, seed: int = 0, accounts: int = 20_000) -> int:
    """Write ``records`` Contract-1 JSONL records to ``path``; returns the file size in bytes."""
    rng = np.random.default_rng(seed)
    words = rng.choice(_WORDS, 400_000)
    text = " ".join(words.tolist())
    prompt_len, response_len = _trace_lengths(rng, records)
    max_len = len(text) // 2
    prompt_len = np.minimum(prompt_len, max_len)
    response_len = np.minimum(response_len, max_len)
    starts = rng.integers(0, len(text) - max_len, size=(records, 2))
    account = rng.integers(0, accounts, records)
    seconds = np.sort(rng.integers(0, 7 * 86_400, records))
    base = np.datetime64("2026-03-01T00:00:00")
    with open(path, "wb") as handle:
        for i in range(records):
            p0, r0 = int(starts[i, 0]), int(starts[i, 1])
            record = {
                "id": f"ex-{seed}-{i:09d}",
                "ts": str(base + np.timedelta64(int(seconds[i]), "s")) + "Z",
                "account_id": f"acct_{int(account[i]):06d}",
                "model": "model-a" if i % 3 else "model-b",
                "messages": [{"role": "user", "content": text[p0 : p0 + int(prompt_len[i])]}],
                "response": text[r0 : r0 + int(response_len[i])],
                "ip": f"10.{(account[i] >> 8) & 255}.{account[i] & 255}.{i % 250 + 1}",
                "user_agent": "python-httpx/0.27",
                "prompt_tokens": int(prompt_len[i] // CHARS_PER_TOKEN),
                "completion_tokens": int(response_len[i] // CHARS_PER_TOKEN),
            }
            handle.write(orjson.dumps(record) + b"\n")
    return path.stat().st_size


_BASELINE = """
import duckdb, resource, sys, time
t = time.perf_counter()
con = duckdb.connect(sys.argv[2])
con.execute("SET enable_progress_bar = false").fetchall()
con.execute("CREATE TABLE t AS SELECT * FROM read_json(?, format='newline_delimited')",
            [sys.argv[1]]).fetchall()
n = con.execute("SELECT count(*) FROM t").fetchall()[0][0]
con.close()
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, n)
"""

_DISTILLWATCH = """
import resource, sys, time
from pathlib import Path
from distillwatch.ingest import ingest_paths
from distillwatch.store import Store
t = time.perf_counter()
with Store(sys.argv[2]) as store:
    report = ingest_paths([Path(sys.argv[1])], store)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, report.loaded)
"""


def _measure(script: str, source: Path, target: Path) -> dict[str, float]:
    for leftover in (target, target.with_name(target.name + ".wal")):
        leftover.unlink(missing_ok=True)
    out = (
        subprocess.run(
            [sys.executable, "-c", script, str(source), str(target)],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.splitlines()[-1]
        .split()
    )
    seconds, rss_kib, rows = float(out[0]), int(out[1]), int(out[2])
    return {"seconds": seconds, "peak_rss_mib": rss_kib / 1024, "rows": rows}


def run_ingest_bench(
    workdir: Path, records: int, repeats: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Generate the input once, then time baseline and distillwatch ``repeats`` times each."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"bench-{records}.jsonl"
    started = time.perf_counter()
    if not source.exists():
        generate_file(source, records, seed)
    generate_seconds = time.perf_counter() - started
    runs: dict[str, list[dict[str, float]]] = {"duckdb_read_json": [], "distillwatch_ingest": []}
    for _ in range(repeats):
        runs["duckdb_read_json"].append(_measure(_BASELINE, source, workdir / "baseline.duckdb"))
        runs["distillwatch_ingest"].append(_measure(_DISTILLWATCH, source, workdir / "dw.duckdb"))
    summary: dict[str, Any] = {
        "records": records,
        "file_bytes": source.stat().st_size,
        "generate_seconds": generate_seconds,
        "repeats": repeats,
    }
    for name, results in runs.items():
        summary[name] = {
            "median_seconds": statistics.median(r["seconds"] for r in results),
            "max_peak_rss_mib": max(r["peak_rss_mib"] for r in results),
            "rows": results[0]["rows"],
            "seconds": [round(r["seconds"], 2) for r in results],
        }
    summary["time_ratio"] = (
        summary["distillwatch_ingest"]["median_seconds"]
        / summary["duckdb_read_json"]["median_seconds"]
    )
    summary["records_per_second"] = records / summary["distillwatch_ingest"]["median_seconds"]
    (workdir / "ingest-bench.json").write_text(json.dumps(summary, indent=2))
    return summary

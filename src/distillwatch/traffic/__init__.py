"""Traffic simulator: realistic benign and distillation traffic from real corpora, with labels.

``simulate(scenario, out, seed, scale, fmt)`` writes ``exchanges.*`` (Contract 1),
``accounts.jsonl`` and ``labels.json`` (ground truth, never inside the exchanges).
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from distillwatch.traffic.corpora import load_corpora
from distillwatch.traffic.engine import Simulator
from distillwatch.traffic.scenario import PRESETS, Scenario, ScenarioError, load_scenario

__all__ = ["FORMATS", "PRESETS", "ScenarioError", "simulate"]

FORMATS = ("jsonl", "jsonl.gz", "parquet")
PARQUET_BATCH = 50_000
PARQUET_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("ts", pa.string()),
        ("account_id", pa.string()),
        ("model", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("response", pa.string()),
        ("api_key_id", pa.string()),
        ("ip", pa.string()),
        ("user_agent", pa.string()),
        ("tls_fingerprint", pa.string()),
        ("endpoint", pa.string()),
        ("conversation_id", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("status", pa.int64()),
        ("latency_ms", pa.int64()),
    ]
)


class _Writer:
    """Streams records to JSONL, JSONL.gz or Parquet without holding them all."""

    def __init__(self, out: Path, fmt: str) -> None:
        self.fmt = fmt
        self.count = 0
        self._rows: list[dict[str, Any]] = []
        self._handle: IO[bytes] | None = None
        self._parquet: pq.ParquetWriter | None = None
        if fmt == "parquet":
            self.path = out / "exchanges.parquet"
            self._parquet = pq.ParquetWriter(self.path, PARQUET_SCHEMA, compression="zstd")
        else:
            self.path = out / f"exchanges.{fmt}"
            raw = open(self.path, "wb")  # noqa: SIM115 - closed in close()
            # mtime=0 keeps gzip output byte-identical for a seed.
            self._handle = (
                gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if fmt.endswith(".gz") else raw
            )
            self._raw = raw

    def write(self, record: dict[str, Any]) -> None:
        self.count += 1
        if self._handle is not None:
            self._handle.write(orjson.dumps(record) + b"\n")
            return
        self._rows.append(record)
        if len(self._rows) >= PARQUET_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._parquet is not None and self._rows:
            self._parquet.write_table(pa.Table.from_pylist(self._rows, schema=PARQUET_SCHEMA))
            self._rows = []

    def close(self) -> None:
        if self._parquet is not None:
            self._flush()
            self._parquet.close()
        if self._handle is not None:
            self._handle.close()
            if self._handle is not self._raw:
                self._raw.close()


def _iso(value: Any) -> str:
    return value.isoformat() + "Z"


def simulate(
    scenario: str | Path | Scenario,
    out: Path,
    seed: int = 0,
    scale: float = 1.0,
    fmt: str = "jsonl",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Generate a scenario into ``out``; returns counts, paths and timing."""
    if fmt not in FORMATS:
        raise ScenarioError(f"format: one of {', '.join(FORMATS)}")
    if scale <= 0:
        raise ScenarioError("scale: must be > 0")
    started = time.perf_counter()
    spec = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    simulator = Simulator(spec, load_corpora(), seed=seed, scale=scale)
    out.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out, fmt)
    per_account: dict[str, int] = {}
    per_campaign: dict[str, list[Any]] = {}
    try:
        for done, plan in enumerate(simulator.plans, start=1):
            n = 0
            first = last = None
            for record in simulator.exchanges(plan):
                writer.write(record)
                n += 1
                first = record["ts"] if first is None or record["ts"] < first else first
                last = record["ts"] if last is None or record["ts"] > last else last
            per_account[plan.account_id] = n
            if plan.campaign_id:
                stats = per_campaign.setdefault(plan.campaign_id, [0, 0, None, None])
                stats[0] += 1
                stats[1] += n
                if first is not None:
                    stats[2] = first if stats[2] is None else min(stats[2], first)
                    stats[3] = last if stats[3] is None else max(stats[3], last)
            if progress is not None:
                progress(done, len(simulator.plans))
    finally:
        writer.close()
    # Accounts that never sent a request are not in the log, so they are not in the labels.
    active = [plan for plan in simulator.plans if per_account[plan.account_id] > 0]
    with open(out / "accounts.jsonl", "wb") as handle:
        for plan in active:
            handle.write(
                orjson.dumps(
                    {
                        "account_id": plan.account_id,
                        "created_at": _iso(plan.created_at),
                        "email_domain": plan.email_domain,
                        "country": plan.country,
                        "signup_ip": plan.signup_ip,
                        "payment_fingerprint": plan.payment_fingerprint,
                    }
                )
                + b"\n"
            )
    personas = {p.persona: {"hard_negative": p.hard_negative} for p in spec.benign}
    personas.update({plan.persona: {"hard_negative": False} for plan in active if plan.campaign_id})
    labels = {
        "scenario": spec.name,
        "seed": seed,
        "scale": scale,
        "time_start": _iso(simulator.start),
        "time_end": _iso(simulator.end),
        "accounts": {
            plan.account_id: {
                "label": plan.label,
                "persona": plan.persona,
                "campaign_id": plan.campaign_id,
            }
            for plan in active
        },
        "personas": personas,
        "campaigns": {
            c.id: {
                "tactics": sorted(c.tactics),
                "start": per_campaign.get(c.id, [0, 0, None])[2],
                "end": per_campaign.get(c.id, [0, 0, None, None])[3],
                "accounts": per_campaign.get(c.id, [0])[0],
                "exchanges": per_campaign.get(c.id, [0, 0])[1],
                "target_models": spec.base_models,
                "launch_model": spec.launch_model if "launch_surge" in c.tactics else None,
                "launch_at": _iso(simulator.launch_at)
                if simulator.launch_at and "launch_surge" in c.tactics
                else None,
            }
            for c in spec.campaigns
        },
        "counts": {
            "exchanges": writer.count,
            "accounts": len(active),
            "benign_accounts": sum(p.label == "benign" for p in active),
            "campaign_accounts": sum(p.label == "campaign" for p in active),
        },
        "corpora": simulator.corpora.source,
    }
    (out / "labels.json").write_text(json.dumps(labels, indent=1))
    return {
        "counts": labels["counts"],
        "exchanges_path": str(writer.path),
        "accounts_path": str(out / "accounts.jsonl"),
        "labels_path": str(out / "labels.json"),
        "seconds": time.perf_counter() - started,
    }


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Read back a JSONL(.gz) exchanges file (tests and tools)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for line in handle:
            yield orjson.loads(line)

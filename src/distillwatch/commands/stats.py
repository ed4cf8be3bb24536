"""``distillwatch stats``: what is in the store."""

from __future__ import annotations

from pathlib import Path

import orjson
import typer
from rich.table import Table

from distillwatch.commands._app import app, console, fail
from distillwatch.stats import store_stats
from distillwatch.store import DEFAULT_STORE, Store, StoreError
from distillwatch.terminal import safe_text


@app.command()
def stats(
    store: Path = typer.Option(DEFAULT_STORE, "--store", "-s", help="DuckDB store file."),
    top: int = typer.Option(10, "--top", min=1, max=10_000, help="How many top accounts to list."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Volume per model, per day and per account, top accounts, and bad-record counts."""
    try:
        with Store(store, read_only=True) as db:
            data = store_stats(db, top=top)
    except StoreError as exc:
        raise fail(str(exc)) from None
    if as_json:
        console.print_json(orjson.dumps(data, default=str).decode())
        return
    totals = data["totals"]
    if not totals["exchanges"]:
        console.print(f"{store}: the store holds no exchanges yet.")
    else:
        console.print(
            f"[bold]{totals['exchanges']:,}[/] exchanges from [bold]{totals['accounts']:,}[/] "
            f"accounts on {totals['models']} models, {totals['first_ts']} to {totals['last_ts']}; "
            f"{totals['completion_tokens']:,} completion tokens served.",
            highlight=False,
        )
    d = data["exchanges_per_account"]
    console.print(
        f"exchanges per account: median {d['median']:.0f}, p90 {d['p90']:.0f}, "
        f"p99 {d['p99']:.0f}, max {d['max']:,}",
        highlight=False,
    )
    console.print(_table("Per model", data["per_model"]))
    console.print(_table("Per day", data["per_day"]))
    console.print(_table(f"Top {top} accounts by exchanges", data["top_accounts"]))
    ingest = data["ingest"]
    console.print(
        f"ingest: {ingest['files']} file loads, {ingest['records']:,} records, "
        f"{ingest['loaded']:,} loaded, {ingest['duplicates']:,} duplicates, "
        f"[{'red' if ingest['quarantined'] else 'green'}]{ingest['quarantined']:,} quarantined[/], "
        f"{ingest['flagged']:,} flagged, {ingest['file_errors']} file errors",
        highlight=False,
    )
    if data["bad_files"]:
        console.print(_table("Files with bad records", data["bad_files"]))


def _table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title, title_justify="left")
    if not rows:
        table.add_column("(none)")
        return table
    for name in rows[0]:
        numeric = isinstance(rows[0][name], int | float)
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        # Account ids and file names are untrusted: safe_text() renders them literally, never as markup.
        table.add_row(
            *(safe_text(f"{v:,}" if isinstance(v, int) else str(v)) for v in row.values())
        )
    return table

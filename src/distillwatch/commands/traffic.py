"""``distillwatch simulate``: realistic benign and distillation traffic with ground truth."""

from __future__ import annotations

from pathlib import Path

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from distillwatch.commands._app import app, console, fail
from distillwatch.traffic import FORMATS, PRESETS, ScenarioError, simulate


@app.command("simulate")
def simulate_command(
    scenario: str = typer.Option(
        "small",
        "--scenario",
        "-s",
        help=f"A preset ({', '.join(PRESETS)}) or a scenario YAML file.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for exchanges, accounts and labels."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same bytes."),
    scale: float = typer.Option(1.0, "--scale", min=0.001, help="Multiply every account count."),
    fmt: str = typer.Option(
        "jsonl", "--format", "-f", help=f"Exchange file format: {', '.join(FORMATS)}."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Simulate API traffic: benign personas from real human prompts, campaigns from real
    synthetic/benchmark sets. Writes exchanges (Contract 1), accounts.jsonl and labels.json
    (ground truth, never inside the exchanges)."""
    try:
        with Progress(
            TextColumn("[bold]simulating accounts"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=True,
            disable=as_json or not console.is_terminal,
        ) as bar:  # fmt: skip
            task = bar.add_task("accounts", total=None)
            summary = simulate(
                scenario, out, seed=seed, scale=scale, fmt=fmt,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip
    except ScenarioError as exc:
        raise fail(f"scenario: {exc}") from None
    if as_json:
        console.print_json(orjson.dumps(summary).decode())
        return
    counts = summary["counts"]
    console.print(
        f"simulated [bold]{counts['exchanges']:,}[/] exchanges from {counts['accounts']:,} accounts "
        f"({counts['benign_accounts']:,} benign, {counts['campaign_accounts']:,} in campaigns) "
        f"in {summary['seconds']:.1f} s\n  exchanges: {summary['exchanges_path']}\n"
        f"  accounts:  {summary['accounts_path']}\n  labels:    {summary['labels_path']}",
        highlight=False,
    )

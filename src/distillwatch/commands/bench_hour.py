"""``distillwatch bench hour``: a week replayed through the gateway with streaming and micro-batches."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from distillwatch.commands._app import bench_app, console
from distillwatch.terminal import safe_text as safe


@bench_app.command("hour")
def bench_hour(
    out: Path = typer.Option(Path("bench-hour"), "--out", "-o", help="Working folder."),
    scenario: str = typer.Option("small", "--scenario", "-s", help="Preset or scenario YAML."),
    seed: int = typer.Option(31, "--seed", help="Simulation seed (tune on others)."),
    traffic: Path | None = typer.Option(None, "--traffic", help="An existing simulator folder instead of simulating."),
    world: str | None = typer.Option(None, "--world", help="Instead of --scenario, a generalisation world built around this unit (a tactic or hard-negative persona of `bench detect --leave-one-out`), parameters drawn from --seed."),
    every: float = typer.Option(1.0, "--detect-every-hours", help="Micro-batch detection every this many replayed hours."),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Streaming evidence at the gateway."),
    compare: bool = typer.Option(False, "--compare", help="Also replay with streaming off (micro-batches only)."),
    account_share: float = typer.Option(1.0, "--account-share", help="Replay every request of this share of accounts."),
    redis_url: str | None = typer.Option(None, "--redis", help="Shared state in this Redis (default: in process)."),
) -> None:  # fmt: skip
    """Replay a simulated week from its first request through the real proxy, which learns only
    from its own log: micro-batch detection every --detect-every-hours of replayed time and, with
    --stream, streaming evidence on every request. Reports per campaign the share served in full
    (unshaped, unthrottled, unrefused) and the hours to its first action, and per benign persona
    the share of requests shaped, throttled and refused."""
    from distillwatch.bench.hour import replay_hour
    from distillwatch.traffic import simulate

    if traffic is None:
        traffic = out / "traffic"
        chosen: object = scenario
        if world is not None:
            from distillwatch.traffic.worlds import UNITS
            from distillwatch.traffic.worlds import world as build_world

            if world not in UNITS:
                console.print(f"[red]--world: one of {', '.join(sorted(UNITS))}[/]")
                raise typer.Exit(2)
            chosen = build_world(world, seed)
        with console.status("simulating...") if console.is_terminal else nullcontext():
            simulate(chosen, traffic, seed=seed)  # type: ignore[arg-type]
    runs = [stream, False] if compare and stream else [stream]
    results = {}
    for streaming in runs:
        name = "stream" if streaming else "micro_batch_only"
        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, disable=not console.is_terminal) as bar:  # fmt: skip
            task = bar.add_task(f"replaying ({name.replace('_', ' ')})", total=None)
            results[name] = replay_hour(
                traffic, out / name, every, streaming, account_share, redis_url=redis_url,
                on_progress=lambda done, total, task=task: bar.update(task, completed=done, total=total),
            )  # fmt: skip
    (out / "hour.json").write_text(json.dumps(results, indent=1, default=str))
    for name, result in results.items():
        _print(name, result)
    console.print(f"report: {out / 'hour.json'}", highlight=False)


def _print(name: str, result: dict) -> None:
    table = Table(title=f"Campaigns ({name.replace('_', ' ')}, micro-batch every "
                        f"{result['detect_every_hours']:g} h)")  # fmt: skip
    for column in ("campaign", "accounts", "requests", "served in full", "before first action",
                   "h to first action", "h to half refused"):  # fmt: skip
        table.add_column(column, no_wrap=column == "campaign")
    for campaign, row in result["per_campaign"].items():

        def hours(value: float | None) -> str:
            return "never" if value is None else f"{value:.2f}"

        table.add_row(safe(campaign), str(row["accounts"]), f"{row['requests']:,}",
                      f"{row['served_in_full_share']:.2%}", f"{row['served_before_first_action_share']:.2%}",
                      hours(row["hours_to_first_action"]), hours(row["hours_to_half_refused"]))  # fmt: skip
    console.print(table)
    personas = Table(title="Benign personas")
    for column in (
        "persona",
        "accounts",
        "requests",
        "shaped",
        "throttled",
        "refused",
        "accounts refused",
    ):
        personas.add_column(column, no_wrap=column == "persona")
    for persona, row in result["per_persona"].items():
        personas.add_row(safe(persona), str(row["accounts"]), f"{row['requests']:,}",
                         f"{row['shaped_share']:.2%}", f"{row['throttled_share']:.2%}",
                         f"{row['refused_share']:.2%}", str(row["accounts_refused"]))  # fmt: skip
    console.print(personas)
    console.print(
        f"{result['requests']:,} requests in {result['wall_seconds']:.0f} s; "
        f"{result['micro_batches']} micro-batches, median {result['micro_batch_seconds_median']} s",
        highlight=False,
    )

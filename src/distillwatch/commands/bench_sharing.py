"""``distillwatch bench split``: a gateway that has only the indicator bundle."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from distillwatch.commands._app import bench_app, console


@bench_app.command("split")
def bench_split(
    out: Path = typer.Option(Path("bench-split"), "--out", "-o", help="Working folder."),
    scenario: str = typer.Option("split", "--scenario", "-s", help="Preset or scenario YAML."),
    seed: int = typer.Option(23, "--seed", help="Simulation seed."),
    split_day: float = typer.Option(4.5, "--split-day", help="Day of the split (a model launch)."),
    first: int = typer.Option(10, "--first", help="Fresh accounts must be actioned within this many requests."),
) -> None:  # fmt: skip
    """Detection before the split writes indicators.json; a gateway with only that bundle (no
    verdicts, no store) serves the traffic after it. Reports the share of flagged campaigns' new
    accounts actioned within their first requests and who among benign users was refused."""
    from distillwatch.bench.split import split_deployment
    from distillwatch.traffic import simulate

    traffic = out / "traffic"
    with console.status("simulating...") if console.is_terminal else _null():
        simulate(scenario, traffic, seed=seed)
    with (
        console.status("detecting, then replaying through the gateway...")
        if console.is_terminal
        else _null()
    ):
        result = split_deployment(traffic, out / "run", split_day, first)
    (out / "split.json").write_text(json.dumps(result, indent=1, default=str))
    table = Table(title=f"Fresh accounts after the split, actioned within {first} requests")
    for column in ("campaign", "flagged before", "fresh accounts", "actioned", "share"):
        table.add_column(column)
    for name, row in result["per_campaign"].items():
        table.add_row(name, str(row["flagged_before_split"]), str(row["fresh_accounts"]),
                      str(row["actioned_within_first"]), f"{row['share']:.1%}")  # fmt: skip
    console.print(table)
    personas = Table(title="Benign users after the split")
    for column in ("persona", "accounts", "refused", "requests", "refused requests"):
        personas.add_column(column)
    for name, row in result["per_persona"].items():
        personas.add_row(name, str(row["accounts"]), str(row["accounts_refused"]),
                         str(row["requests"]), str(row["requests_refused"]))  # fmt: skip
    console.print(personas)
    share = result["actioned_share"]
    console.print(
        f"flagged campaigns' fresh accounts actioned: {share:.1%} of "
        f"{result['fresh_accounts_of_flagged_campaigns']}; benign requests refused: "
        f"{result['benign_refused_share']:.3%} of {result['benign_requests']:,}\n"
        f"report: {out / 'split.json'}",
        highlight=False,
    )


def _null():
    from contextlib import nullcontext

    return nullcontext()


@bench_app.command("two-labs")
def bench_two_labs(
    out: Path = typer.Option(Path("bench-two-labs"), "--out", "-o", help="Working folder."),
    seed: int = typer.Option(13, "--seed", help="Simulation seed."),
    step: float = typer.Option(1 / 6, "--step-hours", help="Lab B's gateway runs a micro-batch this often (10 minutes)."),
    horizon: float = typer.Option(6.0, "--horizon-hours", help="How long lab B is followed."),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Streaming evidence at lab B's gateway."),
    scale: float = typer.Option(1.0, "--scale", min=0.05, help="Multiply every account count of the world."),
) -> None:  # fmt: skip
    """One hydra moves from lab A to lab B. Lab B's gateway (micro-batches over its own log,
    streaming evidence) serves B's traffic twice, alone and with lab A's bundle: how soon half
    the hydra's B accounts are actioned, what it was served in full, and benign users of B
    actioned only with the import."""
    from distillwatch.bench.two_labs import two_labs
    from distillwatch.traffic import simulate

    with console.status("simulating...") if console.is_terminal else _null():
        simulate("two_labs", out / "traffic", seed=seed, scale=scale)
    with console.status("lab A detects and exports; lab B's gateway serves B's traffic, alone and with A's bundle...") if console.is_terminal else _null():  # fmt: skip
        result = two_labs(
            out / "traffic", out, step_hours=step, horizon_hours=horizon, stream=stream
        )
    (out / "two_labs.json").write_text(json.dumps(result, indent=1, default=str))
    table = Table(title="The shared hydra at lab B's gateway")
    for column in ("lab B", "hours until half actioned", "actioned at first request",
                   "served in full (before half / all)", "benign accounts actioned"):  # fmt: skip
        table.add_column(column)
    for name in ("alone", "with_a"):
        row = result[name]
        hours = (
            f"{row['hours_to_half']:.2f}"
            if row["hours_to_half"] is not None
            else f"not within {horizon:g}"
        )
        table.add_row("alone" if name == "alone" else "with lab A's bundle", hours,
                      f"{row['actioned_at_first_request']} of {row['accounts']}",
                      f"{row['served_before_half']} / {row['served_in_full']} of {row['requests']}",
                      str(sum(row["benign_actioned"].values())))  # fmt: skip
    console.print(table)
    console.print(f"benign accounts of lab B actioned only with the import: "
                  f"{result['benign_actioned_only_with_import']}\nreport: {out / 'two_labs.json'}")  # fmt: skip

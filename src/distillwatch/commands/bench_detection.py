"""``distillwatch bench detect``: detection quality and timing against simulated ground truth."""

from __future__ import annotations

from pathlib import Path

import orjson
import typer
from rich.table import Table

from distillwatch.commands._app import bench_app, console, fail


@bench_app.command("detect")
def bench_detect(
    scenario: str = typer.Option("small", "--scenario", "-s", help="Simulator preset or YAML."),
    seed: list[int] = typer.Option(None, "--seed", help="Seed(s) to evaluate (repeatable)."),
    seeds: int = typer.Option(0, "--seeds", min=0, help="Evaluate seeds 101..100+N instead."),
    detector: str = typer.Option("all", "--detector", help="distillwatch, baseline or all."),
    windows: float = typer.Option(
        12.0, "--windows", min=1.0, help="Replay window in hours (time to detect)."
    ),
    scale: float = typer.Option(
        1.0, "--scale", min=0.01, help="Scale the scenario's account counts."
    ),
    out: Path = typer.Option(Path("bench-out/detect"), "--out", "-o", help="Output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json."),
    leave_one_out: bool = typer.Option(
        False,
        "--leave-one-out",
        help="Per tactic and hard-negative persona: evaluate on worlds where it appears, with "
        "everything learned fitted without it (writes leave_one_out.json).",
    ),
    units: str = typer.Option(
        "all", "--units", help="With --leave-one-out: comma-separated units, or all."
    ),
    learned: bool = typer.Option(
        False,
        "--learned",
        help="With --leave-one-out: fit the rule weights for each unit on training worlds "
        "without it (instead of the hand-set weights).",
    ),
) -> None:
    """Simulate a scenario per seed, run the detector(s) on the full log and on replay windows,
    and report AUPRC, precision/recall/F1, benign FPR (overall and per persona), campaigns
    caught, ARI, time to detect and harvest before detection. Writes results.json,
    pr_curve.png and timeline.png."""
    # Here, not at the top: every other command would pay for detection's imports.
    from distillwatch.evaluation.harness import DETECTORS, HEADLINE, run_bench
    from distillwatch.traffic import ScenarioError

    if leave_one_out:
        _leave_one_out(
            units,
            list(seed or []) or ([100 + i for i in range(1, seeds + 1)] if seeds else [101]),
            out,
            as_json,
            learned,
        )
        return
    names = list(DETECTORS) if detector == "all" else [detector]
    if any(n not in DETECTORS for n in names):
        raise fail(f"--detector must be one of {', '.join(DETECTORS)} or all")
    chosen = list(seed or []) or ([100 + i for i in range(1, seeds + 1)] if seeds else [101])
    try:
        result = run_bench(scenario, chosen, out, names, windows, scale,
                           log=lambda m: console.print(m, highlight=False) if not as_json else None)  # fmt: skip
    except ScenarioError as exc:
        raise fail(f"scenario: {exc}") from None
    if as_json:
        console.print_json(orjson.dumps(result, default=str).decode())
        return
    table = Table(
        title=f"bench detect: {scenario}, seeds {', '.join(map(str, chosen))} (mean / worst)"
    )
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    for metric in HEADLINE:
        cells = []
        for name in names:
            value = result["summary"][name][metric]
            cells.append(
                "never" if value["mean"] is None else f"{value['mean']:.4g} / {value['worst']:.4g}"
            )
        table.add_row(metric, *cells)
    console.print(table)
    first = result["per_seed"][0]["detectors"][names[0]]
    persona = Table(title=f"{names[0]}: false-positive rate by benign persona (seed {chosen[0]})")
    for column in ("persona", "hard negative", "flagged", "accounts", "FPR"):
        persona.add_column(column)
    for name, p in first["fpr_by_persona"].items():
        persona.add_row(
            name,
            "yes" if p["hard_negative"] else "",
            str(p["flagged"]),
            str(p["accounts"]),
            f"{p['fpr']:.2%}",
        )
    console.print(persona)
    campaigns = Table(title=f"{names[0]}: campaigns (seed {chosen[0]})")
    for column in ("campaign", "caught", "hours to detect", "harvest before detection"):
        campaigns.add_column(column)
    for name, c in first["caught_by_campaign"].items():
        t = first["campaign_timing"].get(name, {})
        hours = t.get("hours_to_detect")
        campaigns.add_row(
            name, f"{c['caught']}/{c['accounts']}", "never" if hours is None else f"{hours:.1f}",
            f"{t.get('harvest_before_detection', 0):,} ({t.get('harvest_before_detection_pct', 0):.1f}%)",
        )  # fmt: skip
    console.print(campaigns)
    console.print(
        f"results: {out / 'results.json'}\nfigures: {out / 'pr_curve.png'}, {out / 'timeline.png'}"
    )


def _leave_one_out(units: str, seeds: list[int], out: Path, as_json: bool, learned: bool) -> None:
    from distillwatch.errors import ResourceError
    from distillwatch.evaluation.generalisation import leave_one_out
    from distillwatch.traffic.worlds import UNITS

    chosen = list(UNITS) if units == "all" else [u.strip() for u in units.split(",") if u.strip()]
    unknown = [u for u in chosen if u not in UNITS]
    if unknown:
        raise fail(f"--units: unknown {unknown[0]!r}; known: {', '.join(UNITS)}")
    try:
        result = leave_one_out(chosen, seeds, out, log=(lambda m: None) if as_json else
                               (lambda m: console.print(m, highlight=False)), learned=learned)  # fmt: skip
    except ResourceError as error:
        raise fail(str(error)) from None
    if as_json:
        console.print_json(orjson.dumps(result, default=str).decode())
        return

    def cell(value: dict | None, pct: bool = False) -> str:
        if not value or value.get("mean") is None:
            return "-"
        fmt = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:.3f}")
        return f"{fmt(value['mean'])} / {fmt(value['worst'])}"

    table = Table(
        title=f"leave-one-out ({result['scoring']} weights), seeds {', '.join(map(str, seeds))} (mean / worst)"
    )
    for column in ("unit", "kind", "recall", "AUPRC", "caught", "persona FPR", "world benign FPR",
                   "world recall"):  # fmt: skip
        table.add_column(column)
    for name, row in result["units"].items():
        table.add_row(name, row["kind"], cell(row.get("recall")), cell(row.get("auprc")),
                      row.get("caught", ""), cell(row.get("persona_fpr"), True),
                      cell(row["world_benign_fpr"], True), cell(row.get("world_recall")))  # fmt: skip
    console.print(table)
    console.print(
        f"results: {out / ('leave_one_out_learned.json' if learned else 'leave_one_out.json')}"
    )

"""``distillwatch bench ingest``: ingest throughput and peak memory vs bare DuckDB."""

from __future__ import annotations

from pathlib import Path

import orjson
import typer
from rich.table import Table

from distillwatch.bench.ingest import run_ingest_bench
from distillwatch.commands._app import bench_app, console


@bench_app.command("ingest")
def bench_ingest(
    records: int = typer.Option(1_000_000, "--records", "-n", min=1, help="Records to generate."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Timed runs of each side (median)."),
    workdir: Path = typer.Option(
        Path("bench-out/ingest"), "--workdir", help="Where the input and stores are written."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the generated input."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Time `distillwatch ingest` against DuckDB `read_json` + insert on the same generated file.

    Prompt and response lengths follow the real Azure LLM trace in ../shared/data when present.
    Each side runs in its own process, so peak RSS is per side. Target: time ratio <= 2, peak
    memory < 2 GB.
    """
    with console.status(f"generating {records:,} records and timing {repeats} runs per side..."):
        result = run_ingest_bench(workdir, records, repeats=repeats, seed=seed)
    if as_json:
        console.print_json(orjson.dumps(result).decode())
        return
    table = Table(
        title=f"Ingest benchmark: {records:,} records, {result['file_bytes'] / 1e9:.2f} GB"
    )
    for column in ("side", "median s", "runs (s)", "peak RSS MiB", "rows"):
        table.add_column(column, justify="left" if column == "side" else "right")
    for side in ("duckdb_read_json", "distillwatch_ingest"):
        r = result[side]
        table.add_row(
            side, f"{r['median_seconds']:.1f}", ", ".join(map(str, r["seconds"])),
            f"{r['max_peak_rss_mib']:,.0f}", f"{r['rows']:,}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"time ratio (distillwatch / bare DuckDB): [bold]{result['time_ratio']:.2f}x[/]; "
        f"{result['records_per_second']:,.0f} records/s. Details: {workdir / 'ingest-bench.json'}"
    )

"""``distillwatch demo``: the whole pipeline on simulated traffic, in one command (`make demo`)."""

from __future__ import annotations

import json
import shutil
import time
from contextlib import suppress
from pathlib import Path

import typer
from rich.panel import Panel
from rich.table import Table

from distillwatch.commands._app import app, console, fail
from distillwatch.ingest import ingest_paths
from distillwatch.paths import shared_data_dir
from distillwatch.sharing import load_or_create, write_indicators
from distillwatch.store import Store
from distillwatch.terminal import safe_text


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for every output."),
    scenario: str = typer.Option("small", "--scenario", help="Simulator preset or YAML file."),
    seed: int = typer.Option(7, "--seed", help="Simulation seed."),
    keep: bool = typer.Option(False, "--keep", help="Keep an existing --out folder's contents."),
    serve: bool = typer.Option(
        False,
        "--serve",
        help="Then start the analyst workspace on the demo store in the background "
        "(its PID in OUT/serve.pid; the next demo run stops it).",
    ),
    listen: str = typer.Option("127.0.0.1:8765", "--listen", help="HOST:PORT for --serve."),
) -> None:
    """Simulate traffic from real prompts, ingest it, detect campaigns, and summarise.

    Runs entirely offline on the embedded DuckDB store. The traffic is simulated (benign
    personas from real human prompts, distillation campaigns from real synthetic/benchmark
    sets), so the summary can also be checked against the simulator's ground truth.
    """
    from distillwatch.detection.pipeline import detect_and_write
    from distillwatch.traffic import simulate

    _stop_previous(out)
    if out.exists() and not keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    data = shared_data_dir()
    console.rule("[bold]distillwatch demo")
    console.print(
        f"real corpora: {data}"
        if data
        else "real corpora: ../shared/data not found, "
        "using the small attributed sample shipped in the package",
        highlight=False,
    )

    traffic = out / "traffic"
    with console.status(f"1/3 simulating scenario '{scenario}' (seed {seed})..."):
        summary = simulate(scenario, traffic, seed=seed)
    counts = summary["counts"]
    console.print(
        f"[green]1/3[/] simulated {counts.get('exchanges', 0):,} exchanges from "
        f"{counts.get('accounts', 0):,} accounts -> {traffic}",
        highlight=False,
    )

    store_path = out / "distillwatch.duckdb"
    logs = sorted(p for p in traffic.iterdir() if p.name.startswith("exchanges"))
    if not logs:
        raise fail(f"the simulator wrote no exchanges file in {traffic}")
    with Store(store_path) as store:
        console.print("[bold]2/3[/] ingesting into the embedded store")
        report = ingest_paths(
            logs, store, accounts=traffic / "accounts.jsonl", progress=console.is_terminal
        )
        console.print(
            f"[green]2/3[/] loaded {report.loaded:,} exchanges, {report.quarantined} quarantined, "
            f"{report.accounts:,} account records -> {store_path}",
            highlight=False,
        )
        with console.status("3/3 detecting: fingerprints, templates, account links, clusters..."):
            verdicts = detect_and_write(store, out / "detect")
            key, _, _ = load_or_create(None, out / "detect" / "sharing.key")
            bundle = write_indicators(store, verdicts, out / "detect" / "indicators.json", key,
                                      "distillwatch-demo")  # fmt: skip
    _summarise(verdicts, traffic / "labels.json", out, store_path)
    login = _demo_login(store_path, out)
    indicators = sum(len(c.artefacts) for c in bundle.campaigns)
    console.print(
        f"indicators: {indicators:,} artefacts of {len(bundle.campaigns)} campaigns, each rare "
        f"outside its campaign ({sum(c.false_matches for c in bundle.campaigns)} false matches on "
        f"the population) -> {bundle.path} (STIX 2.1; templates and cards keyed with "
        f"{out / 'detect' / 'sharing.key'})",
        highlight=False,
    )
    host, _, port = listen.rpartition(":")
    url = f"http://{host}:{port}/"
    status = f"start it:  distillwatch serve --store {store_path} --listen {listen}"
    if serve:
        status = _serve_in_background(store_path, listen, url, out)
    console.print(
        Panel(
            f"dashboard: {url}\n"
            f"login:     demo / {login}   (also in {out / 'demo-login.txt'})\n{status}",
            title="analyst workspace",
            expand=False,
        ),
        highlight=False,
    )


def _serve_in_background(store_path: Path, listen: str, url: str, out: Path) -> str:
    """Start ``distillwatch serve`` detached, wait until it answers; returns a status line."""
    import subprocess
    import sys

    from distillwatch.enforce.processes import wait_http

    log = (out / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "distillwatch.cli", "serve", "--store", str(store_path),
         "--listen", listen],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"{url}healthz", proc, timeout=60)
    except RuntimeError as exc:
        return f"could not start it ({exc}); see {out / 'serve.log'}"
    (out / "serve.pid").write_text(f"{proc.pid}\n")
    return f"serving in the background (pid {proc.pid}); stop: kill $(cat {out / 'serve.pid'})"


def _stop_previous(out: Path) -> None:
    """Stop the workspace a previous ``demo --serve`` into the same folder left running."""
    import os
    import signal

    pid_file = out / "serve.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    with suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)


def _demo_login(store_path: Path, out: Path) -> str:
    """A demo admin login with a fresh random password (printed, and kept in the out folder)."""
    import secrets

    from distillwatch.workspace import Users

    password = secrets.token_urlsafe(12)
    with Store(store_path) as store:
        Users(store).add("demo", password, "admin")
    (out / "demo-login.txt").write_text(f"user: demo\npassword: {password}\n")
    return password


def _summarise(verdicts: dict, labels_path: Path, out: Path, store_path: Path) -> None:
    accounts = verdicts["accounts"]
    flagged = [a for a in accounts if a["verdict"] == "distillation"]
    suspicious = [a for a in accounts if a["verdict"] == "suspicious"]
    console.print(
        f"[green]3/3[/] {len(accounts):,} accounts scored: [bold red]{len(flagged):,} "
        f"distillation[/], [yellow]{len(suspicious):,} suspicious[/], "
        f"{len(accounts) - len(flagged) - len(suspicious):,} benign; "
        f"{len(verdicts['campaigns'])} campaigns",
        highlight=False,
    )
    table = Table(title="Campaigns found", title_justify="left", show_lines=True)
    table.add_column("campaign")
    table.add_column("score", justify="right")
    table.add_column("accounts", justify="right")
    table.add_column("exchanges", justify="right")
    table.add_column("evidence (top 3)", overflow="fold")
    for campaign in sorted(verdicts["campaigns"], key=lambda c: -c["score"])[:10]:
        table.add_row(
            safe_text(str(campaign["campaign_id"])),
            f"{campaign['score']:.2f}",
            f"{len(campaign['accounts']):,}",
            f"{campaign['exchanges']:,}",
            safe_text("\n".join(f"- {e}" for e in campaign["evidence"][:3])),
        )
    console.print(table)

    if labels_path.exists():
        labels = json.loads(labels_path.read_text())["accounts"]
        truth = {a for a, v in labels.items() if v["label"] == "campaign"}
        caught = {a["account_id"] for a in flagged}
        benign_total = len(labels) - len(truth)
        console.print(
            Panel(
                f"campaign accounts flagged: {len(caught & truth):,} / {len(truth):,}\n"
                f"benign accounts flagged:   {len(caught - truth):,} / {benign_total:,}",
                title="against the simulator's ground truth (labels never reach the detector)",
                expand=False,
            )
        )
    console.print(
        Panel(
            f"store:    {store_path}\n"
            f"verdicts: {out / 'detect' / 'verdicts.json'}\n"
            f"bundle:   {out / 'detect' / 'indicators.json'}\n"
            f"report:   {out / 'detect' / 'report.html'}\n"
            f"traffic:  {out / 'traffic'} (labels.json is the ground truth)\n\n"
            f"next: distillwatch demo-proxy --traffic {out / 'traffic'} --out {out / 'enforce'}\n"
            f"      distillwatch bench split   (a second gateway with only the bundle)\n"
            f"      distillwatch share serve / push / pull   (TAXII 2.1, docs/sharing.md)\n"
            f"      distillwatch stats --store {store_path}\n"
            f"      distillwatch bench detect --scenario small",
            title="outputs",
            expand=False,
        )
    )

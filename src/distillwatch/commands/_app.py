"""The Typer applications every command module registers on."""

from __future__ import annotations

import typer
from rich.markup import escape

from distillwatch import __version__
from distillwatch.terminal import SafeConsole

app = typer.Typer(
    name="distillwatch",
    help="Detect, stop and prove distillation attacks on LLM APIs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
bench_app = typer.Typer(
    help="Benchmarks: ingest throughput, detection quality.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")

#: Human output goes to stdout; errors go to ``err_console``. Both escape control characters in
#: whatever they render (account ids, prompts and file names are attacker-chosen).
console = SafeConsole()
err_console = SafeConsole(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"distillwatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Detect, stop and prove distillation attacks on LLM APIs."""


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise (no traceback for user errors)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)

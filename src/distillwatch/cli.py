"""The ``distillwatch`` command line.

Each command lives in its own module under :mod:`distillwatch.commands` and registers itself on
the shared Typer apps in :mod:`distillwatch.commands._app`. A command line loads only the
module(s) of its first word (:data:`COMMANDS`): ``distillwatch provenance scan`` never imports
DuckDB or the ingest pipeline, and ``--help``, an option first or an unknown word load every
module, so the full listing and Typer's own error messages are unchanged. That keeps start-up
short for every command and for the worker processes some of them start.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from distillwatch.commands._app import app

#: Command modules, in the order their commands appear in ``--help``.
COMMAND_MODULES = (
    "distillwatch.commands.demo",
    "distillwatch.commands.traffic",
    "distillwatch.commands.ingest",
    "distillwatch.commands.detection",
    "distillwatch.commands.proxy",
    "distillwatch.commands.stats",
    "distillwatch.commands.bench_ingest",
    "distillwatch.commands.bench_detection",
    "distillwatch.commands.bench_sharing",
    "distillwatch.commands.bench_hour",
    "distillwatch.commands.share",
    "distillwatch.commands.provenance",
    "distillwatch.commands.workspace",
)

_BENCH = ("bench_ingest", "bench_detection", "bench_sharing", "bench_hour")
#: A command line's first word (a command or a group) -> the modules that define it, relative
#: to ``distillwatch.commands`` (``tests/test_packaging.py`` checks it against what they register).
COMMANDS: dict[str, tuple[str, ...]] = {
    "demo": ("demo",),
    "simulate": ("traffic",),
    "ingest": ("ingest",),
    "detect": ("detection",),
    "proxy": ("proxy",),
    "mock-upstream": ("proxy",),
    "demo-proxy": ("proxy",),
    "stats": ("stats",),
    "serve": ("workspace",),
    "users": ("workspace",),
    "report": ("workspace",),
    "bench": _BENCH,
    "share": ("share",),
    "provenance": ("provenance",),
}


def load(args: Sequence[str]) -> None:
    """Import the command modules a command line needs (see the module docstring)."""
    wanted = COMMANDS.get(args[0]) if args else None
    modules = [f"distillwatch.commands.{m}" for m in wanted] if wanted else COMMAND_MODULES
    for module in modules:
        importlib.import_module(module)


def main() -> None:
    load(sys.argv[1:2])
    app()


if __name__ == "__main__":
    main()

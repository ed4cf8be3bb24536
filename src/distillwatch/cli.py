"""The ``distillwatch`` command line.

Each command lives in its own module under :mod:`distillwatch.commands` and registers itself on
the shared Typer apps in :mod:`distillwatch.commands._app`. Importing them here, and only here,
keeps ``import distillwatch`` cheap and each command's heavy dependencies out of the others.
"""

from __future__ import annotations

import importlib

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

for _module in COMMAND_MODULES:
    importlib.import_module(_module)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

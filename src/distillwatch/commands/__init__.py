"""CLI commands, one module each (see :mod:`distillwatch.cli`)."""

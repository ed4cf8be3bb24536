"""Shared fixtures: the real CLI as a subprocess, and the shared real-data folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillwatch.paths import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need real text skip with a reason when it is absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data not found: real corpora are needed for this test")
    return path


def run_cli(*args: str | os.PathLike[str], cwd: Path | None = None, timeout: float = 300):
    """Run the installed ``distillwatch`` CLI exactly as a user would, in a new process."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "distillwatch.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli

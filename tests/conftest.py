"""Shared fixtures: the real CLI as a subprocess, and the shared real-data folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distillwatch.enforce.processes import free_port, redis_server
from distillwatch.paths import shared_data_dir
from tests.gateway import ACCOUNTS, ADMIN, keys_file, start, stop, verdicts_file


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need real text skip with a reason when it is absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data not found: real corpora are needed for this test")
    return path


def run_cli(*args: str | os.PathLike[str], cwd: Path | None = None, timeout: float = 300,
            env: dict[str, str] | None = None):  # fmt: skip
    """Run the installed ``distillwatch`` CLI exactly as a user would, in a new process."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
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


# -- the gateway: a mock upstream, Redis and proxies as real processes -------------------
@pytest.fixture(scope="module")
def upstream():
    port = free_port()
    proc = start(
        ["mock-upstream", "--listen", f"127.0.0.1:{port}"], f"http://127.0.0.1:{port}/v1/models"
    )
    yield f"http://127.0.0.1:{port}"
    stop(proc)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is required in CI (.ci/run installs it)")
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    proc, url = redis_server(binary, tmp_path_factory.mktemp("redis"))
    yield url, proc
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def proxy(tmp_path, upstream):
    started = []

    def launch(
        *extra: str,
        verdicts: dict | None = None,
        store: Path | None = None,
        accounts: list[str] | None = None,
    ) -> tuple[str, Path]:
        port = free_port()
        vfile = verdicts_file(tmp_path / f"v{port}.json", verdicts or {
            "flagged": ("distillation", 0.99, "c-1"), "suspect": ("suspicious", 0.6, "c-9"),
            "shady": ("suspicious", 0.5, "c-9"), "lifted": ("distillation", 0.97, "c-1"),
            "good": ("benign", 0.01, None),
        })  # fmt: skip
        store = store or tmp_path / f"proxy{port}.duckdb"
        args = ["proxy", "--upstream", upstream, "--listen", f"127.0.0.1:{port}", "--store", str(store),
                "--verdicts", str(vfile), "--keys", str(keys_file(tmp_path / f"keys{port}.jsonl", ACCOUNTS + [f"new{i}" for i in range(5)] + (accounts or []))),
                "--admin-token", ADMIN, "--max-body-bytes", "65536", "--body-timeout", "1", *extra]  # fmt: skip
        proc = start(args, f"http://127.0.0.1:{port}/healthz")
        started.append(proc)
        return f"http://127.0.0.1:{port}", vfile

    launch.processes = started  # type: ignore[attr-defined]
    yield launch
    for proc in started:
        stop(proc)

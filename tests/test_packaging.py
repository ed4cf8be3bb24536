"""Every dependency a user installs earns its place: something under src/ imports it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Distribution name -> the module it provides, where the two differ.
MODULES = {"scikit-learn": "sklearn", "python-igraph": "igraph", "pyyaml": "yaml",
           "prometheus-client": "prometheus_client", "taxii2-client": "taxii2client",
           "argon2-cffi": "argon2"}  # fmt: skip
#: Installed for what they bring along, not imported by name.
INDIRECT = {
    "uvicorn": "its [standard] extra brings uvloop and httptools, which uvicorn loads",
    "python-multipart": "Starlette's form parser (the workspace's POSTs) imports it",
}
NOT_RUNTIME = {"test"}


def imported_modules() -> set[str]:
    found = set()
    for path in (ROOT / "src").rglob("*.py"):
        for match in re.finditer(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", path.read_text(), re.M):
            found.add(match.group(1))
    return found


def test_every_declared_dependency_is_imported():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra, deps in project["optional-dependencies"].items():
        if extra not in NOT_RUNTIME:
            declared += deps
    modules = imported_modules()
    unused = []
    for dependency in declared:
        name = re.split(r"[\[<>=!~; ]", dependency.strip(), maxsplit=1)[0].lower()
        module = MODULES.get(name, name.replace("-", "_"))
        if module not in modules and name not in INDIRECT:
            unused.append(name)
    assert not unused, f"declared but never imported under src/: {unused}"


def _loaded_by(args: list[str], modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported once the command line has loaded
    what ``distillwatch ARGS`` needs."""
    import subprocess
    import sys

    probe = (f"import sys; from distillwatch.cli import load; load({args!r}); "
             f"print(' '.join(m for m in {modules!r} if m in sys.modules))")  # fmt: skip
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.split()  # fmt: skip


def test_the_command_line_loads_no_command_s_heavy_dependencies():
    """``distillwatch --help`` (and so every command, scans and proxies included) must not
    pay for detection's imports: scikit-learn, igraph (which pulls in matplotlib), SciPy."""
    loaded = _loaded_by([], ("sklearn", "igraph", "matplotlib", "scipy"))
    assert loaded == [], f"imported at start-up: {loaded}"


def test_a_command_loads_only_its_own_module():
    """``distillwatch provenance ...`` (the scan, whose workers start the same way) loads none
    of the store's or ingest's dependencies; ``--help`` loads every command module."""
    heavy = ("duckdb", "pyarrow", "numpy", "distillwatch.commands.ingest")
    assert _loaded_by(["provenance"], heavy) == []
    assert _loaded_by(["--help"], heavy) == list(heavy)


def test_every_command_is_mapped_to_the_modules_that_define_it():
    """``cli.COMMANDS`` (first word -> modules) says exactly what the modules register."""
    from distillwatch import cli
    from distillwatch.commands._app import app

    cli.load([])
    found: dict[str, set[str]] = {}
    for command in app.registered_commands:
        name = command.name or command.callback.__name__.replace("_", "-")
        found.setdefault(name, set()).add(command.callback.__module__)
    for group in app.registered_groups:
        found[group.name] = {
            c.callback.__module__ for c in group.typer_instance.registered_commands
        }
    mapped = {name: {f"distillwatch.commands.{m}" for m in modules}
              for name, modules in cli.COMMANDS.items()}  # fmt: skip
    assert mapped == found

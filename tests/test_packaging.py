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


def test_the_command_line_loads_no_command_s_heavy_dependencies():
    """``distillwatch --help`` (and so every command, scans and proxies included) must not
    pay for detection's imports: scikit-learn, igraph (which pulls in matplotlib), SciPy."""
    import subprocess
    import sys

    probe = ("import sys, distillwatch.cli; print(' '.join(m for m in ('sklearn', 'igraph', "
             "'matplotlib', 'scipy') if m in sys.modules))")  # fmt: skip
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.split()  # fmt: skip
    assert loaded == [], f"imported at start-up: {loaded}"

"""Where distillwatch finds the shared real-data folder (``../shared/data`` beside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "DISTILLWATCH_SHARED_DATA"


def shared_data_dir() -> Path | None:
    """The real-corpora folder, or None when it is absent.

    Looked up in order: ``$DISTILLWATCH_SHARED_DATA``; ``../shared/data`` relative to the current
    directory; the same relative to the source checkout this package was imported from.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        return path if path.is_dir() else None
    candidates = [Path.cwd() / ".." / "shared" / "data"]
    here = Path(__file__).resolve()
    candidates += [parent / ".." / "shared" / "data" for parent in here.parents[:4]]
    for candidate in candidates:
        if candidate.is_dir() and (candidate / "README.md").exists():
            return candidate.resolve()
    return None

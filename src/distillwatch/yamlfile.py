"""Reading the project's YAML files (scenarios, policies) with one-line errors."""

from __future__ import annotations

from typing import Any

import yaml


def parse_yaml(text: str, source: str, error: type[Exception]) -> Any:
    """``yaml.safe_load`` that raises ``error("SOURCE: not valid YAML (first line)")``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None

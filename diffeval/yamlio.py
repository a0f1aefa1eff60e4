"""Reading the project's YAML data files (task presets, training recipes): values, never code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffeval.errors import UsageError


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file; UsageError naming `what` and the file otherwise."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UsageError(f"{what} {path}: not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{what} {path}: expected a mapping at the top level")
    return raw

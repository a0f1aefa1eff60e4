"""Paths derived from what files say (a run's figure names, a shard index's file names) stay
inside the folder they belong to."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from diffeval.errors import DiffevalError, UsageError


def confined(folder: Path, relative: str, what: str, error: type[DiffevalError] = UsageError) -> Path:
    """folder/relative, refused (as `error`, naming `what`) unless `relative` is a relative
    path that stays inside `folder`: no '..', not absolute, no symlink leading out."""
    text = str(relative)
    rel = PurePosixPath(text)
    if not text or rel.is_absolute() or ".." in rel.parts or "\\" in text or "\0" in text:
        raise error(f"{what} {text!r} must be a path inside {folder}")
    path = Path(folder) / rel
    try:
        inside = path.resolve().is_relative_to(Path(folder).resolve())
    except (OSError, RuntimeError, ValueError):
        inside = False
    if not inside:
        raise error(f"{what} {text!r} leads outside {folder}")
    return path

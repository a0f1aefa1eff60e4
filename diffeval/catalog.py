"""What the package ships for the examples to run anywhere: task presets (`presets/*.yaml`,
for `diffeval run NAME`), figure recipes (`recipes/*.yaml`, for `diffeval figures NAME`) and
training recipes (`train/recipes/*.yaml`, for `diffeval train --recipe NAME`).

A bare word (no folder, no .yaml / .yml suffix) names a shipped file; anything else is a path.
The registries are plain dicts, name -> file, read from the package folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffeval.errors import UsageError, did_you_mean

PACKAGE = Path(__file__).resolve().parent
PRESET_DIR = PACKAGE / "presets"
RECIPE_DIR = PACKAGE / "recipes"
TRAINING_DIR = PACKAGE / "train" / "recipes"
SUFFIXES = (".yaml", ".yml")


def _shipped(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        return {}
    return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix in SUFFIXES and p.is_file()}


def task_presets() -> dict[str, Path]:
    """name -> file, for every shipped task preset."""
    return _shipped(PRESET_DIR)


def figure_recipes() -> dict[str, Path]:
    """name -> file, for every shipped figure recipe."""
    return _shipped(RECIPE_DIR)


def training_recipes() -> dict[str, Path]:
    """name -> file, for every shipped training recipe (the zoo models')."""
    return _shipped(TRAINING_DIR)


def is_name(arg: str) -> bool:
    """True when `arg` is a bare name (no folder, no YAML suffix), not a path."""
    return "/" not in arg and "\\" not in arg and not arg.lower().endswith(SUFFIXES)


def _resolve(arg: str, shipped: dict[str, Path], what: str) -> Path:
    if is_name(arg):
        if arg not in shipped:
            raise UsageError(f"unknown {what} {arg!r} (a file needs a folder or a .yaml suffix); "
                             + did_you_mean(arg, shipped))
        return shipped[arg]
    path = Path(arg).expanduser()
    stem = path.stem
    if not path.exists() and not path.is_symlink() and stem in shipped:
        raise UsageError(f"{what} {arg}: no such file; the shipped {what} of that name is {stem!r}")
    return path


def resolve_task(arg: str) -> Path:
    """The file of a task preset given by name (`needle-paper-4k`) or by path."""
    return _resolve(arg, task_presets(), "task preset")


def resolve_recipe(arg: str) -> Path:
    """The file of a figure recipe given by name (`paper`) or by path."""
    return _resolve(arg, figure_recipes(), "figure recipe")


def resolve_training_recipe(arg: str) -> Path:
    """The file of a training recipe given by name (`transformer-tiny`) or by path."""
    return _resolve(arg, training_recipes(), "training recipe")


def listing() -> dict[str, list[dict[str, Any]]]:
    """The shipped presets (name, probe, description) and recipes (name, description, figures):
    read from the files' top-level keys, without loading a probe."""
    from diffeval.yamlio import read_yaml_mapping

    presets = []
    for name, path in task_presets().items():
        raw = read_yaml_mapping(path, "task preset")
        presets.append({"name": name, "probe": str(raw.get("probe", "")),
                        "description": str(raw.get("description", ""))})
    recipes = []
    for name, path in figure_recipes().items():
        raw = read_yaml_mapping(path, "figure recipe")
        recipes.append({"name": name, "description": str(raw.get("description", "")),
                        "figures": len(raw.get("figures") or [])})
    return {"presets": presets, "recipes": recipes}

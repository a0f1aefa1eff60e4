"""The zoo: tiny reference checkpoints shipped inside the package (diffeval/zoo/NAME/), with one
tokenizer (diffeval/zoo/tokenizer.json + tokenizer_config.json) that every model shares."""

from __future__ import annotations

import json
from pathlib import Path

from diffeval.errors import CheckpointError, did_you_mean

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


def zoo_models() -> dict[str, Path]:
    """name -> directory, for every shipped model."""
    if not ZOO_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(ZOO_DIR.iterdir()) if (p / "config.json").is_file()}


def tokenizer_dir(directory: Path) -> Path:
    """The folder holding a checkpoint directory's tokenizer files: the directory itself, or,
    for a zoo model without a tokenizer of its own, the zoo's shared one."""
    directory = Path(directory)
    if (directory / "tokenizer.json").exists() or directory.resolve().parent != ZOO_DIR:
        return directory
    return ZOO_DIR


def zoo_path(name: str) -> Path:
    models = zoo_models()
    if name not in models:
        if not models:
            raise CheckpointError(f"zoo:{name}: no zoo models are installed in this package")
        raise CheckpointError(f"unknown zoo model {name!r}; " + did_you_mean(name, models))
    return models[name]


def zoo_card(name: str) -> dict:
    """Metadata a zoo model carries beside its weights (zoo.json), if any."""
    path = zoo_path(name) / "zoo.json"
    return json.loads(path.read_text()) if path.exists() else {}

"""Run folders as the report commands read them: results.json (schema 2) and samples.jsonl."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from diffeval.errors import UsageError


@dataclass(frozen=True)
class RunFolder:
    path: Path
    results: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def probe(self) -> str:
        return self.results["probe"]

    def samples(self) -> list[dict]:
        file = self.path / "samples.jsonl"
        return [json.loads(x) for x in file.read_text().splitlines() if x.strip()] if file.is_file() else []


def read_run(path: Path, strict: bool = True) -> Optional[RunFolder]:
    """The run folder at `path`; errors name the file (strict), or None for other schemas."""
    file = Path(path) / "results.json"
    if not file.is_file():
        raise UsageError(f"{path}: not a run folder (no results.json)")
    try:
        results = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{file}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if results.get("schema_version") != 2:
        if strict:
            raise UsageError(f"{file}: schema_version {results.get('schema_version')!r}; this diffeval reads 2")
        return None
    return RunFolder(Path(path), results)

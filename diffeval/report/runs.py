"""Run folders as the report commands read them: results.json (schema 2) and samples.jsonl,
validated here once against the shipped schema so that compare, check and figures never
meet a shape they do not expect."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from diffeval.errors import UsageError
from diffeval.jsonshape import first_error
from diffeval.paths import confined


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
        if not file.is_file():
            return []
        schema = _schema()
        sample = {**schema["$defs"]["sample"], "$defs": schema["$defs"]}
        labels = {m["label"] for m in self.results["models"]}
        out = []
        for i, text in enumerate(_text(file).splitlines(), 1):
            if not text.strip():
                continue
            row = _json(text, f"{file}: line {i}")
            err = first_error(row, sample)
            if err is None and row["model"] not in labels:
                err = f"model {row['model']!r} is not one of the run's models"
            if err is not None:
                raise UsageError(f"{file}: line {i}: {err}")
            out.append(row)
        return out

    def file(self, relative: str) -> Path:
        """A file the run names (a figure, an array), confined to the run folder."""
        return confined(self.path, relative, f"{self.path / 'results.json'}: artifact")


@lru_cache(maxsize=1)
def _schema() -> dict:
    from diffeval.results import SCHEMA_FILE

    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def _text(file: Path) -> str:
    try:
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"{file}: cannot read ({exc.strerror})") from None


def _json(text: str, where: str) -> Any:
    def refuse(name: str) -> None:
        raise UsageError(f"{where}: {name} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise UsageError(f"{where}: nested too deeply") from None


def read_run(path: Path, strict: bool = True) -> Optional[RunFolder]:
    """The run folder at `path`; errors name the file and the place in it. Another schema
    version is an error (strict) or None."""
    file = Path(path) / "results.json"
    if not file.is_file():
        raise UsageError(f"{path}: not a run folder (no results.json)")
    results = _json(_text(file), str(file))
    version = results.get("schema_version") if isinstance(results, dict) else None
    if isinstance(results, dict) and version != 2:
        if strict:
            raise UsageError(f"{file}: schema_version {version!r}; this diffeval reads 2")
        return None
    err = first_error(results, _schema()) or _consistency_error(results)
    if err is not None:
        raise UsageError(f"{file}: {err}")
    run = RunFolder(Path(path), results)
    for fig in results["artifacts"]["figures"] + results["artifacts"].get("arrays", []):
        run.file(fig)
    return run


def _consistency_error(results: dict) -> Optional[str]:
    """What the schema cannot say: metrics, timing and cells name exactly the run's models."""
    labels = [m["label"] for m in results["models"]]
    if len(set(labels)) != len(labels):
        return f"models: two models share a label ({', '.join(labels)})"
    for key, names in (("metrics", results["metrics"]), ("timing.models", results["timing"]["models"])):
        if set(names) != set(labels):
            return f"{key}: names {', '.join(sorted(map(str, names))) or 'no model'}, the run's models are {', '.join(labels)}"
    for i, cell in enumerate(results["cells"]):
        if cell["model"] not in labels:
            return f"cells[{i}].model: {cell['model']!r} is not one of the run's models"
        missing = [k for k in results["cell_keys"] if k not in cell]
        if missing:
            return f"cells[{i}]: missing key {missing[0]!r}"
    return None

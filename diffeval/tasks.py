"""Task presets in YAML: a probe, its parameters, and optionally a grid of variants.

    name: needle-paper-4k
    probe: needle
    version: 1
    params: {lengths: [4k], depths: "0:100:5", samples: 50}
    grid:                      # optional; each variant overrides params and runs in its own folder
      - {n_needles: 1, n_queries: 1}
      - {n_needles: 2, n_queries: 2}

The probe is found through the registry (diffeval.probes.PROBES); its `config` validates the
parameters, so a preset holds values only, never code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffeval.errors import DiffevalError, UsageError, shown
from diffeval.hashing import file_sha256
from diffeval.probes import PROBES, get_probe
from diffeval.results import safe_name
from diffeval.yamlio import read_yaml_mapping

TOP_KEYS = {"name", "probe", "version", "description", "params", "grid"}


@dataclass(frozen=True)
class Task:
    name: str
    probe: str
    version: int
    params: dict[str, Any]
    grid: tuple[dict[str, Any], ...]
    path: str
    sha256: str

    def variants(self, overrides: dict[str, Any]) -> list[tuple[str, Any]]:
        """(folder name, validated probe config) per variant, overrides applied last. Generic
        override names (samples, lengths, depths, seed) map onto the probe's own names."""
        probe = get_probe(self.probe)
        overrides = {probe.aliases.get(k, k): v for k, v in overrides.items()}
        out = []
        for i, variant in enumerate(self.grid or ({},)):
            params = {**self.params, **variant, **overrides}
            name = safe_name("-".join(f"{k}{v}" for k, v in variant.items())) if variant else ""
            where = f"{self.path}: " + (f"grid[{i}]" if variant else "params")
            out.append((name, build_config(self.probe, params, where)))
        names = [n for n, _ in out]
        if len(set(names)) != len(names):
            raise UsageError(f"{self.path}: two grid variants have the same parameters")
        return out


def build_config(probe_name: str, params: dict[str, Any], where: str):
    """The probe's validated config from plain values; errors name `where` and the field."""
    probe = get_probe(probe_name)
    try:
        return probe.config(params)
    except DiffevalError as exc:
        field = f".{exc.field}" if exc.field else ""
        raise UsageError(f"{where}{field}: {exc}") from None
    except TypeError as exc:  # a missing field, or a value of the wrong type reaching a dataclass
        import re

        text = str(exc)
        if "required positional argument" in text:
            names = ", ".join(re.findall(r"'(\w+)'", text.split(":", 1)[-1]))
            raise UsageError(f"{where}: missing required parameter(s): {names}") from None
        raise UsageError(f"{where}: {text}") from None


def load_task(path: str | Path) -> Task:
    path = Path(path)
    raw = read_yaml_mapping(path, "task")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(TOP_KEYS))}")
    missing = [key for key in ("name", "probe", "version") if key not in raw]
    if missing:
        raise UsageError(f"{path}: missing key(s) {', '.join(map(repr, missing))}")
    if not isinstance(raw["probe"], str) or raw["probe"] not in PROBES:
        raise UsageError(f"{path}: unknown probe {shown(raw['probe'])}; valid: {', '.join(PROBES)}")
    if not isinstance(raw["version"], int) or isinstance(raw["version"], bool):
        raise UsageError(f"{path}: version must be an integer, not {shown(raw['version'])}")
    params = raw.get("params") or {}
    grid = raw.get("grid") or []
    if not isinstance(params, dict):
        raise UsageError(f"{path}: params must be a mapping")
    if not isinstance(grid, list) or not all(isinstance(g, dict) for g in grid):
        raise UsageError(f"{path}: grid must be a list of mappings")
    task = Task(str(raw["name"]), raw["probe"], raw["version"], params, tuple(grid), str(path), file_sha256(path))
    task.variants({})  # validate every variant now
    return task

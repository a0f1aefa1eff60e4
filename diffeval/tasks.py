"""Task presets in YAML: a probe, its parameters, and optionally a grid of variants.

    name: needle-paper-4k
    probe: needle
    version: 1
    params: {lengths: [4k], depths: "0:100:5", samples: 50}
    grid:                      # optional; each variant overrides params and runs in its own folder
      - {n_needles: 1, n_queries: 1}
      - {n_needles: 2, n_queries: 2}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffeval.errors import DiffevalError, UsageError

PROBES = ("needle", "attn-map", "outliers")
ATTN_MAP_KEYS = ("layers", "heads", "query", "sink", "arrays")
OUTLIER_NAMES = {"samples": "needle_samples", "lengths": "seq_len"}
TOP_KEYS = {"name", "probe", "version", "description", "params", "grid"}


@dataclass(frozen=True)
class Task:
    name: str
    probe: str
    version: int
    params: dict[str, Any]
    grid: tuple[dict[str, Any], ...]
    path: str

    def variants(self, overrides: dict[str, Any]) -> list[tuple[str, Any]]:
        """(folder name, validated probe config) per variant, overrides applied last. The
        command-line overrides (samples, lengths, depths, seed) map onto the outliers task's
        own names (needle_samples, seq_len)."""
        if self.probe == "outliers":
            overrides = {OUTLIER_NAMES.get(k, k): v for k, v in overrides.items()}
        out = []
        for variant in self.grid or ({},):
            params = {**self.params, **variant, **overrides}
            name = "-".join(f"{k}{v}" for k, v in variant.items()) if variant else ""
            out.append((name, build_config(self.probe, params, self.path)))
        return out


def build_config(probe: str, params: dict[str, Any], source: str):
    """The validated configuration of one variant: NeedleConfig for `needle`, (NeedleConfig,
    AttnMapOptions) for `attn-map`, OutliersConfig for `outliers`."""
    from dataclasses import fields

    try:
        if probe == "needle":
            from diffeval.probes.needle import NeedleConfig

            _check_keys(params, {f.name for f in fields(NeedleConfig)}, probe, source)
            return NeedleConfig(**_needle_values(params))
        if probe == "attn-map":
            from diffeval.attn_run import AttnMapOptions
            from diffeval.probes.needle import NeedleConfig

            allowed = ({f.name for f in fields(NeedleConfig)} - {"n_queries"}) | set(ATTN_MAP_KEYS)
            _check_keys(params, allowed, probe, source)
            needle = {k: v for k, v in params.items() if k not in ATTN_MAP_KEYS}
            amo = AttnMapOptions(**{k: (str(v) if k != "sink" else v) for k, v in params.items() if k in ATTN_MAP_KEYS})
            return NeedleConfig(**_needle_values(needle), n_queries=1), amo
        if probe == "outliers":
            from diffeval.probes.needle import parse_depths, parse_lengths
            from diffeval.probes.outliers import OutliersConfig, parse_bits, parse_tokens

            _check_keys(params, {f.name for f in fields(OutliersConfig)}, probe, source)
            values = dict(params)
            if "n_tokens" in values:
                values["n_tokens"] = parse_tokens(_as_text(values["n_tokens"]))
            if "seq_len" in values:
                values["seq_len"] = parse_lengths(_as_text(values["seq_len"]))[0]
            if "bits" in values:
                values["bits"] = parse_bits(_as_text(values["bits"]))
            if "depths" in values:
                values["depths"] = tuple(parse_depths(_as_text(values["depths"])))
            return OutliersConfig(**values)
    except DiffevalError as exc:
        raise UsageError(f"{source}: {exc}") from None
    except TypeError as exc:
        raise UsageError(f"{source}: {exc}") from None
    raise UsageError(f"{source}: unknown probe {probe!r}; valid: {', '.join(PROBES)}")


def _check_keys(params: dict[str, Any], allowed: set[str], probe: str, source: str) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise UsageError(f"{source}: unknown {probe} parameter {unknown[0]!r}; valid: {', '.join(sorted(allowed))}")


def _needle_values(params: dict[str, Any]) -> dict[str, Any]:
    from diffeval.probes.needle import parse_depths, parse_lengths

    values = dict(params)
    if "lengths" in values:
        values["lengths"] = tuple(parse_lengths(_as_text(values["lengths"])))
    if "depths" in values:
        values["depths"] = tuple(parse_depths(_as_text(values["depths"])))
    return values


def _as_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def load_task(path: str | Path) -> Task:
    from diffeval.yamlio import read_yaml_mapping

    path = Path(path)
    raw = read_yaml_mapping(path, "task")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise UsageError(f"{path}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(TOP_KEYS))}")
    for key in ("name", "probe", "version"):
        if key not in raw:
            raise UsageError(f"{path}: missing key {key!r}")
    if raw["probe"] not in PROBES:
        raise UsageError(f"{path}: unknown probe {raw['probe']!r}; valid: {', '.join(PROBES)}")
    if not isinstance(raw["version"], int):
        raise UsageError(f"{path}: version must be an integer, not {raw['version']!r}")
    params = raw.get("params") or {}
    grid = raw.get("grid") or []
    if not isinstance(params, dict):
        raise UsageError(f"{path}: params must be a mapping")
    if not isinstance(grid, list) or not all(isinstance(g, dict) for g in grid):
        raise UsageError(f"{path}: grid must be a list of mappings")
    task = Task(str(raw["name"]), raw["probe"], raw["version"], params, tuple(grid), str(path))
    task.variants({})  # validate every variant now
    return task

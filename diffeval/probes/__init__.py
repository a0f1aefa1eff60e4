"""Long-context probes. `PROBES` names every probe and the module that defines it (each
module exposes `PROBE`, a `diffeval.probes.base.Probe`); task YAML, `diffeval run` and the
commands find probes through it; a probe's command is generated from its declared options.
Shared pieces (no probe imports another probe): `assembly` (exact-length contexts, items at
depths, token spans), `retrieval` (the needle grid), `prompts` (token budgets, prompt formats),
`haystack`, `words`, `scoring`, `grounding`, `attention`, `activations` / `streams`, `icl_data`,
`ruler_tasks` / `ruler_words` (RULER's task generators and word list)."""

from __future__ import annotations

import importlib

from diffeval.errors import UsageError, did_you_mean

PROBES: dict[str, str] = {
    "needle": "diffeval.probes.needle",
    "attn-map": "diffeval.probes.attn_map",
    "outliers": "diffeval.probes.outliers",
    "nll": "diffeval.probes.nll",
    "icl": "diffeval.probes.icl",
    "halluc": "diffeval.probes.halluc",
    "passkey": "diffeval.probes.passkey",
    "ruler": "diffeval.probes.ruler",
}


def get_probe(name: str):
    """The Probe registered as `name` (imported on first use)."""
    if name not in PROBES:
        raise UsageError(f"unknown probe {name!r}: {did_you_mean(name, PROBES)}")
    return importlib.import_module(PROBES[name]).PROBE

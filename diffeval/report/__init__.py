"""Readers of run folders (never loading a model): `check` (regression against reference
scores) and `compare` (runs side by side, report.md / report.html)."""

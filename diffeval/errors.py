"""Error family. The CLI turns any DiffevalError into one line on stderr and its exit code."""

from __future__ import annotations


class DiffevalError(Exception):
    """Bad input from the user: options, files, checkpoints, task YAML. Exit code 2."""

    exit_code = 2


class ConfigError(DiffevalError):
    """A model or probe configuration value is invalid."""


class CheckpointError(DiffevalError):
    """A checkpoint directory, file or tensor cannot be loaded."""


class TokenizerError(DiffevalError):
    """A tokenizer file is missing or unreadable."""


class UsageError(DiffevalError):
    """A command-line option or task file is malformed."""


def did_you_mean(name: str, choices) -> str:
    """A 'did you mean X?' hint plus the valid choices, for unknown registry names."""
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}valid: {', '.join(choices)}"

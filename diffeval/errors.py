"""Error family. The CLI turns any DiffevalError into one line on stderr and its exit code.

These are for bad user input only, raised at the boundary. An error about one parameter
names it with `field` (the config field, e.g. "lengths"); the CLI shows the matching flag
(`--len`) and a task file shows `params.lengths`. Internal invariants are assertions or plain
exceptions and keep their traceback."""

from __future__ import annotations

from typing import Optional


class DiffevalError(Exception):
    """Bad input from the user: options, files, checkpoints, task YAML. Exit code 2."""

    exit_code = 2

    def __init__(self, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.field = field

    def located(self, where: str) -> "DiffevalError":
        """The same error with `where` (an option or a file location) in front."""
        out = type(self)(f"{where}: {self}")
        return out


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

"""Error family. The CLI turns any DiffevalError into one line on stderr and its exit code.

These are for bad user input only, raised at the boundary. An error about one parameter
names it with `field` (the config field, e.g. "lengths"); the CLI shows the matching flag
(`--len`) and a task file shows `params.lengths`. Internal invariants are assertions or plain
exceptions and keep their traceback."""

from __future__ import annotations

import re
from typing import Optional


class DiffevalError(Exception):
    """Bad input from the user: options, files, checkpoints, task YAML. Exit code 2."""

    exit_code = 2

    def __init__(self, message: str, field: Optional[str] = None) -> None:
        super().__init__(shorten(str(message)))
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


class Interrupted(Exception):
    """Ctrl-C during a run that writes into `out`: the CLI prints the command that resumes it."""

    def __init__(self, out) -> None:
        super().__init__(str(out))
        self.out = out


WORD_LIMIT = 60
MESSAGE_LIMIT = 480
_LONG_WORD = re.compile(r"\S{%d,}" % (2 * WORD_LIMIT))


def shorten(message: str) -> str:
    """The message with every run of more than 2 * WORD_LIMIT non-blank characters cut to its
    head and tail, and the whole cut to MESSAGE_LIMIT: no user value makes a long line."""
    def cut(m: re.Match) -> str:
        word = m.group(0)
        return f"{word[:WORD_LIMIT]}...{word[-12:]}"

    message = _LONG_WORD.sub(cut, message)
    return message if len(message) <= MESSAGE_LIMIT else message[:MESSAGE_LIMIT - 3] + "..."


def shown(value, limit: int = 60) -> str:
    """repr(value) cut to about `limit` characters, for error messages: user values can be
    arbitrarily long (a 5 MB option, a deeply nested YAML value), and containers are cut
    before their repr is built."""
    if isinstance(value, (list, tuple, dict)):
        if limit < 12:
            return "[...]" if not isinstance(value, dict) else "{...}"
        sub = limit // 3
        if isinstance(value, dict):
            parts = [f"{shown(k, sub)}: {shown(v, sub)}" for k, v in list(value.items())[:6]]
        else:
            parts = [shown(v, sub) for v in list(value[:6])]
        more = ", ..." if len(value) > len(parts) else ""
        open_, close = ("{", "}") if isinstance(value, dict) else ("(", ")") if isinstance(value, tuple) else ("[", "]")
        text = open_ + ", ".join(parts) + more + close
    elif isinstance(value, (str, bytes)) and len(value) > limit:
        text = repr(value[:limit])
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def did_you_mean(name: str, choices) -> str:
    """A 'did you mean X?' hint plus the valid choices, for unknown registry names."""
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}valid: {', '.join(choices)}"

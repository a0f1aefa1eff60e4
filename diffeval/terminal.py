"""How wide the command line draws help and tables. Output that goes to a pipe or a file (CI
logs, `| less`) is not cut at 80 columns but drawn 160 wide; a terminal, or a COLUMNS the user
set, keeps its own width. The CLI chooses once per command line and passes the choice down:
to click as the help formatter's width, to the commands in the click context (`ctx.obj`).
Nothing is written to the environment. Importing this module imports no rich."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, TextIO

PIPED_COLUMNS = 160


class Terminal(NamedTuple):
    """The width of this command line's output; `columns` None: measured where it is drawn
    (click and rich read the terminal's size, or COLUMNS)."""

    columns: Optional[int] = None

    @classmethod
    def for_output(cls, stream: TextIO, environ: Mapping[str, str]) -> "Terminal":
        """PIPED_COLUMNS for output that is not a terminal, unless `environ` has COLUMNS."""
        if "COLUMNS" in environ or _isatty(stream):
            return cls()
        return cls(PIPED_COLUMNS)

    def help_width(self, max_width: int) -> Optional[int]:
        """The help formatter's width: click's own rule (the columns, at most `max_width`,
        less 2, at least 50) applied to `columns`; None lets click measure."""
        return None if self.columns is None else max(min(self.columns, max_width) - 2, 50)

    def console(self, **options: Any):
        """A rich Console `columns` wide (rich measures when None)."""
        from rich.console import Console

        return Console(width=self.columns, **options)


def of(ctx: Any) -> Terminal:
    """The Terminal a command line put in its click context; one that measures elsewhere
    (a command invoked by a test's own Typer app)."""
    obj = getattr(ctx, "obj", None)
    return obj if isinstance(obj, Terminal) else Terminal()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

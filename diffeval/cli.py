"""The command surface: assembles the Typer app from diffeval/commands/ and maps errors to
exit codes (bad input 2 with one line on stderr, Ctrl-C 130)."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import Optional

import typer
from typer.core import TyperCommand

from diffeval.commands.check import check
from diffeval.commands.compare import compare
from diffeval.commands.figures import figures
from diffeval.commands.info import info
from diffeval.commands.options import probe_command
from diffeval.commands.run import run_task
from diffeval.commands.tasks import tasks
from diffeval.commands.train import train, zoo
from diffeval.errors import DiffevalError, Interrupted, shorten
from diffeval.launch import PeerFailed, rank_tag
from diffeval.probes import PROBES, get_probe
from diffeval.terminal import Terminal
from diffeval.version import __version__

HELP_WIDTH = 120  # help text is wrapped at most this wide, whatever the terminal's width

app = typer.Typer(
    name="diffeval",
    help="Long-context evaluation and attention analysis for Transformer, SHA and DIFF checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: values like 0:100:5 stay text (rich would draw an emoji)
    context_settings={"max_content_width": HELP_WIDTH},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffeval {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Long-context evaluation and attention analysis for Transformer, SHA and DIFF checkpoints."""


COMMANDS = {"info": info, "zoo": zoo, "train": train,
            **{name: probe_command(get_probe(name)) for name in PROBES},  # generated from each probe's options
            "tasks": tasks, "run": run_task, "check": check, "compare": compare, "figures": figures}
def _metavars(fn):
    """Help shows a word for each option's value (`--len LEN`, `--samples INT`) and nothing for
    flags, instead of typer's Python types (`<list[str]>`, `<bool>`)."""
    import inspect
    import typing

    from typer.models import OptionInfo

    hints = {**typing.get_type_hints(inspect.unwrap(fn)),
             **{k: v for k, v in fn.__annotations__.items() if not isinstance(v, str)}}
    for param in inspect.signature(fn).parameters.values():
        info = param.default
        if isinstance(info, OptionInfo) and info.metavar is None:
            kind = hints.get(param.name)
            name = (info.param_decls or ("--" + param.name,))[0].lstrip("-").split("/")[0]
            info.metavar = ("" if kind is bool else "INT" if kind in (int, Optional[int]) else
                            "NUM" if kind in (float, Optional[float]) else name.upper().replace("-", "_"))
    return fn


# Shown under each command's help. The first line of each runs as written on the shipped
# zoo models (no download, no --ckpt).
EXAMPLES = {
    "info": ["diffeval info --ckpt zoo:diff-tiny", "diffeval info --ckpt path/to/hf-dir --json"],
    "zoo": ["diffeval zoo"],
    "train": ["diffeval train --recipe transformer-tiny --out runs/my-tiny --max-minutes 5",
              "diffeval train --recipe my-recipe.yaml --out runs/mine"],
    "tasks": ["diffeval tasks"],
    "run": ["diffeval run outliers-paper --out runs/outliers",
            "diffeval run needle-paper-4k --ckpt path/to/model --samples 10",
            "diffeval run my-task.yaml --ckpt path/to/model"],
    "check": ["diffeval check tasks/ci/suite.yaml --junit ci.xml"],
    "compare": ["diffeval compare runs/needle-a runs/needle-b --out report/"],
    "figures": ["diffeval figures paper --results runs/ --out figures/",
                "diffeval figures my-recipe.yaml --results runs/needle-4k --out fig/"],
}


class _Command(TyperCommand):
    """Plain help with the arguments' value names as given (typer appends Python types such as
    `<list[str]>` and wraps required arguments in braces)."""

    def format_help(self, ctx, formatter) -> None:
        import re

        super().format_help(ctx, formatter)
        formatter.buffer[:] = [re.sub(r"\{([^{}\s]+)\}", r"\1", re.sub(r" <[\w\[\], |]+>", "", part))
                               for part in formatter.buffer]


def _epilog(name: str) -> str:
    lines = get_probe(name).examples if name in PROBES else EXAMPLES[name]
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


for _name, _fn in COMMANDS.items():
    app.command(_name, epilog=_epilog(_name), cls=_Command)(_metavars(_fn))


def _parser_errors() -> tuple[type, ...]:
    """The option-parser exception classes: typer's own (typer >= 0.26 vendors click) and click's."""
    kinds: list[type] = []
    try:
        from typer._click.exceptions import ClickException as TyperClick

        kinds.append(TyperClick)
    except ImportError:
        pass
    try:
        import click

        kinds.append(click.ClickException)
    except ImportError:
        pass
    return tuple(kinds)


def _exit_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    exits, aborts = [typer.Exit], [typer.Abort]
    try:
        import click

        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
    except ImportError:
        pass
    return tuple(exits), tuple(aborts)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _given(exc, args: list[str]) -> str:
    """The value the user gave to the option a parser error is about, when the message lacks it."""
    opts = getattr(getattr(exc, "param", None), "opts", None) or []
    for i, arg in enumerate(args[:-1]):
        if arg in opts and args[i + 1] not in exc.format_message():
            return f" (got {args[i + 1]!r})"
    return ""


def _resume_command(args: list[str], out) -> str:
    """The command line that resumes an interrupted run: the same one, with --out OUT (and
    without train's --no-resume)."""
    import shlex

    args = [a for a in args if a != "--no-resume"]
    given = any(a == "--out" or a.startswith("--out=") for a in args)
    return shlex.join(["diffeval", *args, *([] if given else ["--out", str(out)])])


def _warnings_to_stderr() -> None:
    """Library warnings (damaged resume records, ...) as one 'diffeval: warning:' line each."""
    import logging

    class ToStderr(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            print(self.format(record), file=sys.stderr)  # the stderr of now, not of the first call

    logger = logging.getLogger("diffeval")
    if not logger.handlers:
        handler = ToStderr()
        handler.setFormatter(logging.Formatter("diffeval: warning: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: bad input -> one line on stderr and exit 2; Ctrl-C -> exit 130."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        app(args=["--help"], standalone_mode=False)
        return
    closed = _prepare_streams()
    _warnings_to_stderr()
    terminal = Terminal.for_output(sys.stdout, os.environ)
    exits, aborts = _exit_classes()
    rc = 0
    try:
        rc = app(args=args, standalone_mode=False, terminal_width=terminal.help_width(HELP_WIDTH), obj=terminal)
        sys.stdout.flush()
        if closed and not rc:
            _fail("cannot write to standard output (it is closed); what the command wrote to files is kept")
    except exits as exc:
        sys.exit(exc.exit_code)
    except aborts:
        rc = 130
    except _parser_errors() as exc:
        hint = f" (see diffeval {args[0]} --help)" if args[0] in COMMANDS else " (see diffeval --help)"
        _fail(f"{_one_line(exc.format_message())}{_given(exc, args)}{hint}")
    except DiffevalError as exc:
        _fail(_one_line(exc), exc.exit_code)
    except Interrupted as exc:
        print(f"diffeval: interrupted{rank_tag()}; finished work is kept in {exc.out}; resume with: "
              f"{_resume_command(args, exc.out)}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        rc = 130
    except PeerFailed as exc:  # not this rank's failure: one line, no traceback
        print(f"diffeval: stopped{rank_tag()}: {_one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        if exc.filename is not None:  # a file or folder the user named (or one derived from it)
            _fail(f"{exc.filename}: {(exc.strerror or str(exc)).lower()}")
        if exc.errno not in (errno.ENOSPC, errno.EPIPE, errno.EIO, errno.EROFS):
            _name_rank(exc)
            raise
        _fail(f"cannot write to standard output ({exc.strerror})")
    except Exception as exc:  # a bug, or a failed file or device: keep the traceback, name the rank
        _name_rank(exc)
        raise
    if rc == 130:
        print(f"diffeval: interrupted{rank_tag()}; finished work is kept (rerun the same command to resume)",
              file=sys.stderr)
    if isinstance(rc, int) and rc:
        sys.exit(rc)


def _prepare_streams() -> bool:
    """Streams any locale can print to: characters the encoding lacks (a non-ASCII path under
    LANG=C) are escaped, not fatal. A closed stdout is replaced by a null device (the command
    still writes its files); -> whether it was closed."""
    closed = sys.stdout is None
    if closed:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="backslashreplace")
    return closed


def _name_rank(exc: BaseException) -> None:
    """Under torchrun, say which rank failed before the traceback."""
    if rank_tag():
        print(f"diffeval: failed{rank_tag()}: {type(exc).__name__}: {_one_line(exc)}; finished samples "
              "are kept (rerun the same command to resume)", file=sys.stderr)


def _fail(message: str, code: int = 2) -> None:
    """One error line on stderr, and stdout detached so that no failing flush follows at exit."""
    print(f"diffeval: error{rank_tag()}: {shorten(message)}", file=sys.stderr)
    try:
        sys.stdout.flush()
    except OSError:  # stdout itself is what failed (a full device, a closed pipe)
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(code)


if __name__ == "__main__":
    main()

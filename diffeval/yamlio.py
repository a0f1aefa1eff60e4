"""Reading user data files with one-line errors: text (UTF-8), JSON (checkpoint configs,
tokenizer configs) and YAML (task presets, training recipes, suites, figure recipes: values,
never code, and no aliases (`*name`), which let a few lines expand into gigabytes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffeval.errors import DiffevalError, UsageError


def _loader():
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        """SafeLoader that refuses aliases where the document uses them."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise UsageError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed "
                                 "in diffeval files; write the value out")
            return super().compose_node(parent, index)

    return NoAliasLoader


def read_text(path: Path, what: str, error: type[DiffevalError] = UsageError) -> str:
    """The UTF-8 text of a user file; `error` naming `what`, the file and the reason otherwise
    (a permission problem is reported as one, never as a missing file)."""
    where = f"{what} {path}" if what else str(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{where}: no such file") from None
    except IsADirectoryError:
        raise error(f"{where}: is a directory, not a file") from None
    except PermissionError:
        raise error(f"{where}: permission denied (cannot read it)") from None
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{where}: cannot read ({exc.strerror or exc})") from None


def read_json(path: Path, what: str = "", error: type[DiffevalError] = UsageError, kind: type = dict):
    """A JSON file whose top level is a `kind` (a dict by default); `error` otherwise."""
    import json

    where = f"{what} {path}" if what else str(path)
    try:
        raw = json.loads(read_text(path, what, error))
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(raw, kind):
        name = {dict: "an object", list: "a list"}.get(kind, kind.__name__)
        raise error(f"{where}: expected {name} at the top level, found {type(raw).__name__}")
    return raw



def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file; UsageError naming `what` and the file otherwise."""
    import yaml

    path = Path(path)
    text = read_text(path, what)
    if "\0" in text:
        raise UsageError(f"{what} {path}: a binary file, not YAML text")
    try:
        raw = yaml.load(text, Loader=_loader())
    except UsageError as exc:
        raise UsageError(f"{what} {path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UsageError(f"{what} {path}: not valid YAML{where}") from None
    except RecursionError:
        raise UsageError(f"{what} {path}: values nested too deeply (more than {MAX_DEPTH} levels)") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{what} {path}: expected a mapping at the top level")
    if _depth(raw) > MAX_DEPTH:
        raise UsageError(f"{what} {path}: values nested too deeply (more than {MAX_DEPTH} levels)")
    return raw


MAX_DEPTH = 32  # no task, suite, recipe or reference file nests deeper


def _depth(value: Any) -> int:
    """How deeply lists and mappings nest in `value`, counted without recursion (stops past
    MAX_DEPTH)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                todo += [(v, level + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest

"""Probe options, declared once: each config field carries its flag, help, parser and
default, and everything else is derived from the declaration — the probe's command-line
options, the names task YAML accepts, the results' parameter dict.

    @dataclass(frozen=True)
    class NeedleConfig(ProbeConfig):
        lengths: tuple[int, ...] = option(None, flag="--len", parse=parse_lengths, help="...",
                                          model_default=ModelDefault(grid=True))
        n_needles: int = option(1, flag="--needles", help="Needles in the context (N).")

A value reaches a field through its parser from command-line text or a YAML value; YAML and
`diffeval run` overrides accept the field name, the flag's name (`needles`) and the aliases.
`None` stands for "not given" (the field's default). Validation stays in `__post_init__`."""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any, Callable, ClassVar, Optional

import numpy as np

from diffeval.errors import ConfigError, did_you_mean, shown


@dataclass(frozen=True)
class ModelDefault:
    """A default the command derives from the models when the option is not given: the longest
    length <= `cap` that fits every model's position limit less `reserve` positions, and with
    `grid` the lengths L/4, L/2 and L. `unless`: another option that, when given, replaces it."""

    cap: int = 4096
    reserve: int = 0
    grid: bool = False
    unless: Optional[str] = None


@dataclass(frozen=True)
class Option:
    """One declared option (see the module doc)."""

    name: str
    flag: str  # "--len"; "--log-scale/--linear-scale" for a two-way switch
    help: str
    default: Any  # the field's default (MISSING: required)
    parse: Optional[Callable[[Any], Any]] = None
    cli_type: Any = str  # what the command line passes: str, int, float or bool
    aliases: tuple[str, ...] = ()
    model_default: Optional[ModelDefault] = None
    cli: bool = True  # False: task YAML only
    shown: Any = None  # the command line's default text, when not derived from the default

    @property
    def names(self) -> tuple[str, ...]:
        """Every name YAML accepts for this option."""
        flag = self.flag.split("/")[0].lstrip("-").replace("-", "_")
        return tuple(dict.fromkeys((self.name, flag, *self.aliases)))

    @property
    def cli_default(self) -> Any:
        """The default as the command line shows and passes it (text for parsed values)."""
        if self.shown is not None:
            return self.shown
        if self.default is MISSING or self.model_default is not None:
            return None
        if self.parse is not None and isinstance(self.default, tuple):
            return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self.default)
        return self.default


def option(default: Any = MISSING, *, help: str, flag: Optional[str] = None, parse=None, cli_type=None,
           aliases: tuple[str, ...] = (), model_default: Optional[ModelDefault] = None, cli: bool = True,
           shown: Any = None):
    """A config field with its option declaration (flag default: --name with dashes)."""
    meta = {"flag": flag, "help": help, "parse": parse, "cli_type": cli_type, "aliases": tuple(aliases),
            "model_default": model_default, "cli": cli, "shown": shown}
    return dataclasses.field(default=default, metadata={"option": meta})


def _cli_type(declared, default, parse):
    if declared is not None:
        return declared
    if parse is not None:
        return str
    for kind in (bool, int, float, str):
        if isinstance(default, kind):
            return kind
    return str


class ProbeConfig:
    """Base of every probe config (a frozen dataclass of `option` fields)."""

    PROBE: ClassVar[str] = ""

    @classmethod
    def options(cls) -> list[Option]:
        out = []
        for f in dataclasses.fields(cls):
            meta = dict(f.metadata.get("option", {}))
            if not meta:
                continue
            flag = meta.pop("flag") or "--" + f.name.replace("_", "-")
            declared = meta.pop("cli_type")
            out.append(Option(f.name, flag, default=f.default, cli_type=_cli_type(declared, f.default, meta["parse"]),
                              **meta))
        return out

    @classmethod
    def aliases(cls) -> dict[str, str]:
        """Every accepted name -> field name."""
        return {n: o.name for o in cls.options() for n in o.names}

    @classmethod
    def from_params(cls, params: dict) -> "ProbeConfig":
        """The validated config from plain values (task YAML, command options); errors name
        the field."""
        if not isinstance(params, dict):
            raise ConfigError(f"parameters must be a mapping, not {shown(params)}", field=None)
        by_name = {n: o for o in cls.options() for n in o.names}
        unknown = sorted(map(str, set(params) - set(by_name)))
        if unknown:
            names = ", ".join(map(shown, unknown[:4])) + (", ..." if len(unknown) > 4 else "")
            raise ConfigError(f"unknown {cls.PROBE} parameter(s) {names}: "
                              f"{did_you_mean(unknown[0], [o.name for o in cls.options()])}", field=None)
        values: dict[str, Any] = {}
        for key, value in params.items():
            opt = by_name[key]
            if opt.name in values:
                raise ConfigError(f"given twice (as {opt.name} and {key})", opt.name)
            if value is None:
                continue
            values[opt.name] = opt.parse(value) if opt.parse is not None else value
        return cls(**values)

    def to_dict(self) -> dict:
        """JSON-able parameters for results.json (and resume keys): every field, then `extra()`."""
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out.update(self.extra())
        return out

    def extra(self) -> dict:
        """Parameters a probe adds to (or rewrites in) its dict."""
        return {}


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value

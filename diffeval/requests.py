"""What probes ask of the engine, as data: one request type per kind of model computation,
and the JSON-able fingerprint of a request (part of resume keys). Light: no torch, so that
probes and the command line import it freely; `diffeval.engine` runs the requests.

    Generate(prompt, max_new_tokens, stop_text, hook)   greedy continuation -> list of token ids
    Choice(prompt, candidates, hook)                     log-likelihood of each candidate -> [ChoiceScore]
    TokenNLL(ids, hook, stats)                           NLL of ids[1:] given the prefix -> (T-1,) float32
    CaptureRows(prompt, positions, layers, layer_stats)  exact attention rows -> {layer: {name: tensor}};
                                                         with layer_stats -> (rows, models.inspect.LayerStats)
    Stats(ids, hook)                                     one forward pass feeding the activation statistics
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np


@dataclass(frozen=True)
class Hook:
    """A named attention-logit hook; the name goes into resume keys, the function does not."""

    name: str
    fn: Callable = field(compare=False, repr=False)  # models.inspect.LogitHook


@dataclass(frozen=True)
class Generate:
    prompt: tuple[int, ...]
    max_new_tokens: int
    stop_text: Optional[str] = "\n"  # end when the decoded continuation contains it; None: never
    hook: Optional[Hook] = None


@dataclass(frozen=True)
class Choice:
    prompt: tuple[int, ...]
    candidates: tuple[tuple[int, ...], ...]  # (K,) continuations, each >= 1 token
    hook: Optional[Hook] = None

    def __post_init__(self) -> None:
        if not self.prompt or not self.candidates or any(len(c) == 0 for c in self.candidates):
            raise ValueError("Choice needs a non-empty prompt and non-empty candidates")


@dataclass(frozen=True)
class ChoiceScore:
    logprob: float  # sum of log p(candidate token | prompt, earlier candidate tokens)
    n_tokens: int
    greedy: bool  # every candidate token is the argmax at its position

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.n_tokens


@dataclass(frozen=True)
class TokenNLL:
    ids: tuple[int, ...]
    hook: Optional[Hook] = None
    stats: bool = False  # also feed the engine's activation statistics


@dataclass(frozen=True)
class CaptureRows:
    prompt: tuple[int, ...]
    positions: tuple[int, ...]
    layers: Optional[tuple[int, ...]] = None
    layer_stats: Optional[tuple[int, int]] = None  # (position bin width, top-k): per-layer statistics too


@dataclass(frozen=True)
class Stats:
    ids: tuple[int, ...]
    hook: Optional[Hook] = None


Request = Union[Generate, Choice, TokenNLL, CaptureRows, Stats]


def ids_sha256(ids: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype="<i8").tobytes()).hexdigest()


def fingerprint(req: Request) -> dict:
    """What a request computes, as JSON-able data (token lists as sha256): part of resume keys."""
    out: dict = {"type": type(req).__name__}
    for name, value in vars(req).items():
        if isinstance(value, Hook):
            out[name] = value.name
        elif name in ("prompt", "ids"):
            out[name] = ids_sha256(value)
        elif name == "candidates":
            out[name] = [ids_sha256(c) for c in value]
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out

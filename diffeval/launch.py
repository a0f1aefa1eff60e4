"""This process's place in a torchrun job, read from the launcher's environment (RANK,
WORLD_SIZE, LOCAL_RANK, GROUP_WORLD_SIZE) once per process. Small and torch-free: the CLI
imports it for the rank in its one-line messages; diffeval/dist.py runs the job."""

from __future__ import annotations

import functools
import os
from typing import Mapping, NamedTuple, Optional, Union

from diffeval.errors import UsageError


class PeerFailed(RuntimeError):
    """A collective failed because another rank stopped (its own message names it) or timed out."""


class Launch(NamedTuple):
    """This process's place in a torchrun job, as the launcher's environment gives it; the
    default is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    nodes: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "Launch":
        """The Launch that `environ` describes; UsageError for values torchrun would not set."""
        try:
            size = int(environ.get("WORLD_SIZE", "1"))
            rank = int(environ.get("RANK", "0"))
            local = int(environ.get("LOCAL_RANK", str(rank)))
        except ValueError as exc:
            raise UsageError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({exc})") from None
        if size < 1 or not 0 <= rank < size:
            raise UsageError(f"RANK ({rank}) must lie in [0, WORLD_SIZE ({size}))")
        nodes = environ.get("GROUP_WORLD_SIZE", "1") if size > 1 else "1"
        if not nodes.isdigit():
            raise UsageError(f"GROUP_WORLD_SIZE ({nodes!r}) must be an integer")
        return cls(rank, size, local, int(nodes))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def tag(self) -> str:
        """' (rank k of N)' inside a multi-rank job, '' otherwise: for one-line messages."""
        return f" (rank {self.rank} of {self.size})" if self.size > 1 else ""


@functools.cache
def _launch_read_once() -> Union[Launch, UsageError]:
    try:
        return Launch.from_env(os.environ)
    except UsageError as exc:
        return exc


def launch() -> Launch:
    """This process's Launch, read from the environment at the first call and kept (the
    launcher sets it before the process starts); a malformed one is a UsageError at every call."""
    read = _launch_read_once()
    if isinstance(read, UsageError):
        raise UsageError(str(read))
    return read


def rank_tag(place: Optional[Launch] = None) -> str:
    """' (rank k of N)' inside a multi-rank job (this process's, or `place`), '' otherwise."""
    try:
        return (place or launch()).tag
    except UsageError:  # a malformed environment is reported where the job starts
        return ""


def is_main(place: Optional[Launch] = None) -> bool:
    """True on rank 0 (and in a single process): the rank that prints tables."""
    return (place or launch()).is_main

"""Answer scorers shared by the probes: RULER's string-match metrics, and the text of a
greedy answer that is scored."""

from __future__ import annotations

from typing import Sequence


def _check_expected(expected: Sequence[str]) -> None:
    if isinstance(expected, str):
        raise ValueError(f"expected must be a sequence of strings, not the string {expected!r}")
    if len(expected) == 0 or any(not isinstance(e, str) or not e for e in expected):
        raise ValueError(f"expected ({list(expected)!r}) must hold at least one non-empty string")


def string_match_all(expected: Sequence[str], prediction: str) -> float:
    """RULER string_match_all: the fraction of expected values found in `prediction` as
    case-insensitive substrings -> float in [0, 1]."""
    _check_expected(expected)
    low = prediction.lower()
    return sum(e.lower() in low for e in expected) / len(expected)


def string_match_part(expected: Sequence[str], prediction: str) -> float:
    """RULER string_match_part: 1.0 when any expected value occurs (case-insensitive), else 0.0."""
    _check_expected(expected)
    low = prediction.lower()
    return float(any(e.lower() in low for e in expected))


def answer_text(tok, generated: Sequence[int], decode: str) -> str:
    """The scored answer: the first line (default decoding), or the whole continuation (ruler)."""
    text = tok.decode(list(generated))
    return text.strip() if decode == "ruler" else text.split("\n")[0]

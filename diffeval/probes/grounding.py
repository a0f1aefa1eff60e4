"""Is an answer supported by its context? The labels of the hallucination probe: content
units (numbers, names, content words) of a text, their support in a source, and one outcome
per answer (correct / abstained / lookalike / confused / invented / wrong).

`outcome` decides in this order: a number the context does not hold (and that is not a cut
of the expected value) makes the answer `invented` whatever else it says; else the first
claim in the answer decides — the expected value (`correct`), the look-alike key's value
(`lookalike`), another key's value (`confused`), the abstain phrase (`abstained`); else a cut
of the expected value is `wrong`, other unsupported names or words are `invented`, and the
rest is `wrong` (for user data without other values: a supported answer that is not the
expected one is `confused`). Every outcome but the right one (correct; abstained on an
unanswerable question) is a hallucination in the DIFF paper's sense."""

from __future__ import annotations

import re

OUTCOMES = ("correct", "abstained", "lookalike", "confused", "invented", "wrong")
STOPWORDS = frozenset("""a about above after again against all also although among an and any are as at be because
been before being below between both but by can could did do does doing down during each either else
even ever every few for from further had has have having he her here hers herself him himself his how
however i if in into is it its itself just least less like made make many may me might more most much
must my myself neither never no nor not now of off often on once one only or other others our ours
ourselves out over own per perhaps rather same several she should since so some such than that the their
theirs them themselves then there therefore these they this those though through thus to too toward under
until up upon us very via was we well were what when where whether which while who whom whose why will
with within without would yet you your yours yourself yourselves text says said answer summary""".split())
_UNIT = re.compile(r"\d[\d,.]*\d|\d|[A-Za-z][A-Za-z'-]*")


def content_units(text: str) -> list[str]:
    """Numbers, capitalised names and content words (4+ letters, not stop words) of a text."""
    out = []
    for u in _UNIT.findall(text):
        if u[0].isdigit() or u[0].isupper() or (len(u) >= 4 and u.lower() not in STOPWORDS):
            out.append(u.strip(".,"))
    return out


def _in(unit: str, text_low: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(unit.lower())}(?![\w])", text_low) is not None


def support(output: str, source: str) -> tuple[float, list[str]]:
    """(fraction of the output's content units found in the source, the unsupported units)."""
    units = content_units(output)
    low = source.lower()
    missing = [u for u in units if not _in(u, low)]
    return (1.0 - len(missing) / len(units) if units else 1.0), missing


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _at(phrase: str, text: str) -> int:
    """Where the normalised `phrase` first occurs as whole words in `text` (-1: nowhere)."""
    phrase = _norm(phrase)
    m = re.search(rf"(?<![\w]){re.escape(phrase)}(?![\w])", text) if phrase else None
    return m.start() if m else -1


def first_claim(prediction: str, answers: tuple[str, ...], lookalike: tuple[str, ...], others: tuple[str, ...],
                abstain: str):
    """The outcome of the earliest claim in the answer: an expected value, the look-alike
    key's value, another key's value or the abstain phrase (None: no claim)."""
    p = _norm(prediction)
    found = [(_at(v, p), rank, label) for rank, (label, values) in enumerate(
        (("correct", answers), ("lookalike", lookalike), ("confused", others), ("abstained", (abstain,))))
        for v in values]
    found = [f for f in found if f[0] >= 0]
    return min(found)[2] if found else None


def outcome(prediction: str, answers: tuple[str, ...], others: tuple[str, ...], abstain: str, context: str,
            question: str = "", lookalike: tuple[str, ...] = ()) -> str:
    """One label for an answer (see the module doc); `answers` empty = the question is
    unanswerable; `lookalike` holds the value of the key that looks like the asked one
    (also in `others` or not); words of the question (the asked key, say) and of the
    abstain phrase count as supported."""
    given = f"{question} {abstain}".lower()
    units = [u for u in content_units(prediction) if not _in(u, given)]
    low = context.lower()
    unsupported = [u for u in units if not _in(u, low)]
    cuts = [u for u in unsupported if u[0].isdigit() and len(u) >= 3 and any(u in a for a in answers)]
    if any(u[0].isdigit() and u not in cuts for u in unsupported):
        return "invented"
    claim = first_claim(prediction, answers, tuple(lookalike), tuple(o for o in others if o not in lookalike),
                        abstain)
    if claim is not None:
        return claim
    if cuts:
        return "wrong"  # a partial answer
    if unsupported:
        return "invented"
    return "confused" if units and not others else "wrong"

"""Is an answer supported by its context? The labels of the hallucination probe: content
units (numbers, names, content words) of a text, their support in a source, and one outcome
per answer (correct / abstained / confused / hallucinated / wrong)."""

from __future__ import annotations

import re

OUTCOMES = ("correct", "abstained", "confused", "hallucinated", "wrong")
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


def outcome(prediction: str, answers: tuple[str, ...], others: tuple[str, ...], abstain: str, context: str,
            question: str = "") -> str:
    """One label for an answer (see the module doc); `answers` empty = the question is
    unanswerable; words of the question itself (the asked key, say) count as supported."""
    norm = lambda t: " ".join(re.sub(r"[^\w\s]", " ", t.lower()).split())  # noqa: E731
    p = norm(prediction)
    if answers and any(_in(norm(a), p) for a in answers):
        return "correct"
    if any(_in(norm(o), p) for o in others):
        return "confused"
    if _in(norm(abstain), p):
        return "abstained"
    units = [u for u in content_units(prediction) if not _in(u, question.lower())]
    if any(u[0].isdigit() and len(u) >= 3 and any(u in a for a in answers) for u in units):
        return "wrong"  # a partial answer
    if any(not _in(u, context.lower()) for u in units):
        return "hallucinated"
    return "confused" if units and not others else "wrong"

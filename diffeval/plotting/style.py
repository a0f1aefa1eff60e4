"""One style for every figure the project draws: fonts readable at a paper's column width, the
Okabe-Ito colour-blind-safe palette as the colour cycle (so `C0`, `C1`, ... are its colours),
light grids, and reproducible output bytes (no timestamps; fixed SVG ids)."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Optional

_COLOURS: ContextVar[Optional[dict]] = ContextVar("diffeval_model_colours", default=None)

# Okabe & Ito (2008), "Color Universal Design": safe for the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

RC = {
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.6,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "svg.hashsalt": "diffeval",  # deterministic element ids
    "pdf.fonttype": 42,  # TrueType in PDFs: editable text in papers
}


@contextmanager
def styled(models: Optional[list[str]] = None):
    """Figures created inside use the project style; `models` fixes one colour per model
    label for every figure drawn inside (a report's figures agree)."""
    import matplotlib as mpl
    from cycler import cycler

    token = _COLOURS.set({m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)} if models else None)
    try:
        with mpl.rc_context({**RC, "axes.prop_cycle": cycler(color=list(PALETTE))}):
            yield
    finally:
        _COLOURS.reset(token)


def model_colour(label: str, index: int) -> str:
    """The colour of a model: fixed by `styled(models=...)`, else the index-th of the cycle."""
    fixed = _COLOURS.get()
    if fixed and label in fixed:
        return fixed[label]
    return f"C{index % len(PALETTE)}"

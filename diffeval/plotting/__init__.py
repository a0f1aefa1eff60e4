"""Figure functions built on matplotlib's object-oriented API (Agg canvas, no pyplot state)."""

from __future__ import annotations

import os
from pathlib import Path


def save_figure(fig, stem: str | Path, dpi: int = 200) -> list[Path]:
    """Write `stem`.png and `stem`.pdf atomically (parent folder created; no timestamp in the
    PDF, so reruns give identical files) -> [png path, pdf path]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    for path in paths:
        fmt = path.suffix[1:]
        tmp = path.with_name(path.name + ".tmp")
        fig.savefig(tmp, format=fmt, dpi=dpi, metadata={"CreationDate": None} if fmt == "pdf" else {})
        os.replace(tmp, path)
    return paths

"""Figure functions built on matplotlib's object-oriented API (Agg canvas, no pyplot state)."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, stem: str | Path, dpi: int = 200, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Write `stem`.png and `stem`.pdf (and .svg when asked) atomically, parent folder created;
    no timestamps, so reruns give identical files -> the paths, in `formats` order."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from diffeval.results import atomic_path

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    paths = [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]
    meta = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}
    for path in paths:
        fmt = path.suffix[1:]
        with atomic_path(path) as tmp, _rc({"svg.hashsalt": "diffeval"}):
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=meta.get(fmt, {}))
    return paths


def _rc(values: dict):
    import matplotlib as mpl

    return mpl.rc_context(values)

"""Figure functions built on matplotlib's object-oriented API (Agg canvas, no pyplot state).

matplotlib is imported here first, with the environment's MPLBACKEND out of its sight: it
reads the variable at import and refuses a name it does not know, while these figures are
drawn on Agg canvases whatever backend the environment names for other tools."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

_IMPORTING = threading.Lock()


def import_matplotlib():
    """matplotlib, imported (once) without reading MPLBACKEND; the variable is left as it was."""
    with _IMPORTING:
        if "matplotlib" not in sys.modules:
            foreign = os.environ.pop("MPLBACKEND", None)
            try:
                import matplotlib  # noqa: F401
            finally:
                if foreign is not None:
                    os.environ["MPLBACKEND"] = foreign
    return sys.modules["matplotlib"]


import_matplotlib()  # before the figure modules of this package import from matplotlib


def prewarm() -> threading.Thread:
    """Import matplotlib and load its font list in a background thread (about a second that
    would otherwise come after the model loop): runs call it before the loop, join after."""

    def work() -> None:
        try:
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.backends.backend_pdf  # noqa: F401
            import matplotlib.backends.backend_svg  # noqa: F401
            import matplotlib.figure  # noqa: F401
            from matplotlib import font_manager

            font_manager.fontManager.findfont("DejaVu Sans")
        except Exception:  # only a head start: drawing the figures meets and reports any real problem
            pass

    thread = threading.Thread(target=work, name="diffeval-prewarm-plotting", daemon=True)
    thread.start()
    return thread


def save_figure(fig, stem: str | Path, dpi: int = 200, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Write `stem`.png and `stem`.pdf (and .svg when asked) atomically, parent folder created;
    no timestamps, so reruns give identical files -> the paths, in `formats` order."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from diffeval.results import atomic_path

    stem = Path(stem)
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

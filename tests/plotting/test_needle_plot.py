"""Needle heatmap: the drawn matrix equals the cells, the Avg row is the mean over depths, and
the PNG / PDF files are written."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffeval.errors import UsageError
from diffeval.plotting.needle import AVG_LABEL, heatmap_matrix, needle_figure, needle_heatmap
from diffeval.stats import average_by

LENGTHS = [4096, 8192, 16384, 65536]
DEPTHS = [0.0, 25.0, 50.0, 75.0, 100.0]


def _cells(models=("transformer", "diff")):
    rng = np.random.default_rng(3)
    return [{"model": m, "length": n, "depth": d, "mean": float(rng.integers(0, 51)) / 50, "n": 50}
            for m in models for n in reversed(LENGTHS) for d in DEPTHS]


def test_matrix_is_the_cells_plus_the_avg_row():
    cells = _cells()
    depths, lengths, grid = heatmap_matrix(cells, "diff")
    assert depths == DEPTHS and lengths == LENGTHS and grid.shape == (len(DEPTHS) + 1, len(LENGTHS))
    for c in cells:
        if c["model"] == "diff":
            assert grid[DEPTHS.index(c["depth"]), LENGTHS.index(c["length"])] == c["mean"]
    avg = {row["length"]: row["mean"] for row in average_by(cells, by=("model", "length")) if row["model"] == "diff"}
    assert grid[-1].tolist() == pytest.approx([avg[n] for n in LENGTHS], abs=1e-12)


def test_missing_cells_are_nan_and_skipped_by_the_average():
    cells = [c for c in _cells(("m",)) if not (c["length"] == 8192 and c["depth"] == 50.0)]
    cells = [c for c in cells if c["length"] != 16384] + [{"model": "m", "length": 16384, "depth": 0.0, "mean": 0.3}]
    _, _, grid = heatmap_matrix(cells, "m")
    assert math.isnan(grid[2, 1])
    present = [c["mean"] for c in cells if c["length"] == 8192]
    assert grid[-1, 1] == pytest.approx(sum(present) / len(present))
    assert grid[-1, 2] == pytest.approx(0.3) and np.isnan(grid[1:-1, 2]).all()


def test_figure_draws_the_matrix_in_each_panel():
    cells = _cells()
    fig = needle_figure(cells, ["transformer", "diff"], title="N=8, R=1")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["transformer", "diff"]
    for ax, model in zip(panels, ["transformer", "diff"]):
        depths, lengths, grid = heatmap_matrix(cells, model)
        drawn = ax.images[0].get_array()
        np.testing.assert_array_equal(np.ma.filled(drawn, np.nan), grid)
        assert ax.images[0].get_clim() == (0.0, 1.0)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["4K", "8K", "16K", "64K"]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "25", "50", "75", "100", AVG_LABEL]
        texts = sorted(t.get_text() for t in ax.texts)
        assert texts == sorted(f"{v:.2f}" for v in grid.ravel())
    # red at 0, green at 1
    cmap = panels[0].images[0].get_cmap()
    low, high = cmap(0.0), cmap(1.0)
    assert low[0] > low[1] and high[1] > high[0]


def test_heatmap_writes_png_and_pdf(tmp_path):
    paths = needle_heatmap(_cells(), ["transformer", "diff"], tmp_path / "figs" / "needle")
    assert [p.name for p in paths] == ["needle.png", "needle.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert not list((tmp_path / "figs").glob("*.tmp"))
    first = paths[1].read_bytes()
    needle_heatmap(_cells(), ["transformer", "diff"], tmp_path / "figs" / "needle")
    assert paths[1].read_bytes() == first  # no timestamps: reruns give the same file


def test_errors_name_the_model_and_cell():
    cells = _cells(("a",))
    with pytest.raises(UsageError, match=r"no cells for model 'b' \(have: a\)"):
        needle_figure(cells, ["a", "b"])
    twice = dict(cells[3])
    with pytest.raises(UsageError, match=rf"model 'a' has two cells for length {twice['length']}, depth {twice['depth']}"):
        heatmap_matrix(cells + [twice], "a")
    with pytest.raises(UsageError, match="no models"):
        needle_figure(cells, [])

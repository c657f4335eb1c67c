"""The figures: valid PNGs, and the heatmap's cells in the right place (depth rows x length columns)."""

from __future__ import annotations

import numpy as np
import pytest

from lmx.evals import plots

RED, GREEN = (0xF0, 0x49, 0x6E), (0x0C, 0xD7, 0x9F)  # the colours of 0 and 100


def _mask(pixels, colour, tolerance=6):
    return np.all(np.abs(pixels[..., :3].astype(int) - np.array(colour)) <= tolerance, axis=-1)


def _runs(flags):
    """[(start, stop)] of the runs of True in a 1-d boolean array."""
    runs, start = [], None
    for i, flag in enumerate(list(flags) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("n_depths,n_lengths", [(3, 2), (5, 4)])
def test_heatmap_cells(tmp_path, n_depths, n_lengths):
    from PIL import Image

    # a checkerboard: 100 where depth index + length index is even
    scores = [[100.0 if (i + j) % 2 == 0 else 0.0 for j in range(n_lengths)] for i in range(n_depths)]
    lengths = [1024 * (j + 1) for j in range(n_lengths)]
    depths = list(np.linspace(0, 100, n_depths))
    path = plots.niah_heatmap(scores, lengths, depths, tmp_path / "h.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = np.asarray(Image.open(path).convert("RGB"))
    coloured = _mask(pixels, RED) | _mask(pixels, GREEN)
    columns = _runs(coloured.any(axis=0))
    x0, x1 = max(columns, key=lambda r: r[1] - r[0])  # the heatmap is the widest coloured block (not the colorbar)
    y0, y1 = _runs(coloured[:, x0:x1].any(axis=1))[0]
    cell_w, cell_h = (x1 - x0) / n_lengths, (y1 - y0) / n_depths
    for i in range(n_depths):
        for j in range(n_lengths):
            # a quarter into the cell, away from the number written at its centre
            y, x = int(y0 + (i + 0.25) * cell_h), int(x0 + (j + 0.25) * cell_w)
            want = GREEN if scores[i][j] == 100 else RED
            assert _mask(pixels[y : y + 1, x : x + 1], want).all(), (i, j, pixels[y, x])


def test_heatmap_rejects_wrong_grid(tmp_path):
    with pytest.raises(ValueError, match=r"scores: expected shape \(2, 3\)"):
        plots.niah_heatmap([[0, 0], [0, 0]], [1, 2, 3], [0, 100], tmp_path / "h.png")


def test_line_plots(tmp_path):
    from PIL import Image

    curves = {"default": {1024: 10.0, 8192: 12.0, 16384: 900.0}, "dynamic:2": {1024: 10.0, 8192: 12.0, 16384: 13.0}}
    for fn in (plots.ppl_curves, plots.accuracy_curves):
        path = fn(curves, tmp_path / f"{fn.__name__}.png", trained_length=8192)
        with Image.open(path) as image:
            image.verify()


def test_short_length():
    assert [plots.short_length(n) for n in (900, 1024, 1536, 4000, 7680, 15360)] == [
        "900",
        "1k",
        "1.5k",
        "4k",
        "7.5k",
        "15k",
    ]

"""PNG figures of the evaluations (matplotlib, headless Agg backend).

- ``niah_heatmap``: depth on y (0 % at the top), context length on x, one colour scale 0-100 for every run, the
  mean per length under each column — the picture of Greg Kamradt's needle test.
- ``ppl_curves``: perplexity against context length, one line per RoPE setting, log-log, the trained length
  marked — default RoPE explodes past it, dynamic NTK stays flat.
- ``accuracy_curves``: passkey accuracy against length, one line per RoPE setting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def short_length(n: int) -> str:
    """4096 -> '4k', 1500 -> '1.5k', 900 -> '900'."""
    if n < 1000:
        return str(n)
    k = n / 1024 if n % 256 == 0 else n / 1000  # 7680 -> 7.5k, 4000 -> 4k
    return f"{k:.1f}".rstrip("0").rstrip(".") + "k"


def niah_heatmap(
    scores: Sequence[Sequence[float]],  # [len(depths)][len(lengths)], 0-100
    lengths: Sequence[int],
    depths: Sequence[float],
    path: str | os.PathLike,
    *,
    title: str = "Needle in a haystack",
) -> Path:
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    plt = _pyplot()
    grid = np.asarray(scores, dtype=float)
    if grid.shape != (len(depths), len(lengths)):
        raise ValueError(f"scores: expected shape ({len(depths)}, {len(lengths)}), got {grid.shape}")
    cmap = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])  # red, yellow, green
    fig, ax = plt.subplots(figsize=(1.3 * len(lengths) + 3.0, 0.5 * len(depths) + 2.2))
    image = ax.imshow(grid, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8, color="black")
    means = grid.mean(axis=0)
    ax.set_xticks(range(len(lengths)), [f"{short_length(n)}\nmean {m:.0f}" for n, m in zip(lengths, means)])
    ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(f"{title} (mean {grid.mean():.1f})")
    fig.colorbar(image, ax=ax, label="score")
    return _save(fig, plt, path)


def ppl_curves(
    curves: Mapping[str, Mapping[int, float]],  # setting -> {length: ppl}
    path: str | os.PathLike,
    *,
    trained_length: int | None = None,
    title: str = "Perplexity vs context length",
) -> Path:
    plt = _pyplot()
    fig, ax = _curves_figure(plt, curves)
    if trained_length:
        _mark_trained_length(ax, trained_length, ax.get_ylim()[1], va="top")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, plt, path)


def accuracy_curves(
    curves: Mapping[str, Mapping[int, float]],  # setting -> {length: accuracy in %}
    path: str | os.PathLike,
    *,
    trained_length: int | None = None,
    title: str = "Passkey retrieval",
) -> Path:
    plt = _pyplot()
    fig, ax = _curves_figure(plt, curves)
    if trained_length:
        _mark_trained_length(ax, trained_length, 103, va="bottom")
    ax.set_ylim(-5, 110)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, plt, path)


def _curves_figure(plt, curves: Mapping[str, Mapping[int, float]]):
    """One line with markers per setting, points sorted by length."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in curves.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=name)
    return fig, ax


def _mark_trained_length(ax, trained_length: int, y: float, *, va: str) -> None:
    ax.axvline(trained_length, color="gray", linestyle="--", linewidth=1)
    ax.text(trained_length, y, " trained length", color="gray", va=va, fontsize=8)


def _save(fig, plt, path: str | os.PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

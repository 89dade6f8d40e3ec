"""NIAH depth x length heatmap (needle depth on the y axis, context length on the x axis)."""

from __future__ import annotations

import os
from pathlib import Path

from longpo.files import save_figure


def plot_niah_heatmap(grid: dict, path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw `grid` (from `suites.ruler.depth_grid`: depths, lengths, scores[depth][length]) to a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    from longpo.eval.tables import length_label

    scores = np.array([[np.nan if v is None else v for v in row] for row in grid["scores"]], dtype=float)
    cmap = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(grid["lengths"]), 1.0 + 0.45 * len(grid["depths"])))
    image = ax.imshow(scores, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(grid["lengths"])), [length_label(n) for n in grid["lengths"]])
    ax.set_yticks(range(len(grid["depths"])), [f"{d:g}%" for d in grid["depths"]])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for (y, x), value in np.ndenumerate(scores):
        if not np.isnan(value):
            ax.text(x, y, f"{value:.0f}", ha="center", va="center", fontsize=8)
    ax.set_title(title or f"{grid['task']}: score by needle depth and length")
    fig.colorbar(image, ax=ax, label="score")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)

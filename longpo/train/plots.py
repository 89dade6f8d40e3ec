"""`training.png`: the training curves of one run, drawn from its `metrics.jsonl`.

    longpo plot runs/tiny          # redraw runs/tiny/training.png (a live or a finished run)

`longpo train` draws it once at the end. Panels: the loss and its two parts (NLL per token and
the preference loss, the latter with its ln 2 starting value marked: policy = reference), the chosen and rejected
rewards, the reward margin, and the reward accuracy (pairs whose chosen reward beats the rejected
one). An SFT run has no reward metrics: its figure shows the loss panel alone. matplotlib is an
optional dependency (`pip install longpo[demo]`); without it nothing is drawn and one line says so.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from longpo.errors import InputError
from longpo.files import save_figure

logger = logging.getLogger(__name__)

# (title, [(metric, label)], y-axis label) of each panel, in drawing order.
PANELS = [
    ("loss", [("loss", "loss (the optimised total)"), ("nll", "NLL per token")], "loss"),
    ("preference loss", [("pref_loss", "preference loss per pair")], "loss"),
    ("rewards", [("rewards/chosen", "chosen"), ("rewards/rejected", "rejected")], "reward (beta x log ratio)"),
    ("reward margin", [("rewards/margin", "chosen - rejected")], "margin"),
    ("reward accuracy", [("rewards/accuracy", "chosen > rejected")], "fraction of pairs"),
]


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of `run_dir/metrics.jsonl`; a partly written last line (a live run) is left out."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise InputError(f"{path} does not exist: give the output_dir of a `longpo train` run")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    # A resumed run rewrites the steps after its checkpoint: the last row of each step counts.
    by_step = {row["step"]: row for row in rows if "step" in row}
    return [by_step[s] for s in sorted(by_step)]


def metric_values(rows: list[dict], metric: str) -> list[float]:
    """One value per step; NaN (a gap in the line) where the step has none, e.g. a step skipped because
    every pair was over max_length (`"skipped": true`), which must not be drawn as a loss of 0."""
    return [float("nan") if row.get("skipped") or row.get(metric) is None else row[metric] for row in rows]


def plot_training(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path | None:
    """Draw `run_dir/training.png` (or `out`) from the run's metrics; None when matplotlib is missing."""
    rows = read_metrics(run_dir)
    if not rows:
        raise InputError(f"{Path(run_dir) / 'metrics.jsonl'} holds no step yet")
    try:
        import matplotlib
    except ImportError:
        logger.warning("matplotlib is not installed (pip install longpo[demo]): no training.png")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = {k for r in rows for k in r}  # a skipped first step holds no loss: look at every row
    panels = [p for p in PANELS if any(m in present for m, _ in p[1])]
    cols = min(len(panels), 3)
    n_rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.3 * cols, 3.2 * n_rows), squeeze=False)
    steps = [r["step"] for r in rows]
    marker = "o" if len(rows) <= 40 else None
    for ax, (title, series, ylabel) in zip(axes.flat, panels):
        # Distinct line styles and markers: the total loss and the NLL can lie on top of each other.
        for (metric, label), style, mark in zip(series, ("-", "--"), ("o", "s")):
            if metric in present:
                ax.plot(steps, metric_values(rows, metric), linestyle=style,
                        marker=mark if marker else None, markersize=4 if style == "-" else 3,
                        linewidth=1.6 if style == "-" else 1.2, label=label)
        if title == "preference loss":
            ax.axhline(math.log(2), color="grey", linestyle=":", linewidth=1, label="ln 2")
        if title == "reward accuracy":
            ax.set_ylim(-0.05, 1.05)
        if title in ("rewards", "reward margin"):
            ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1 or title == "preference loss":
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"training: {Path(run_dir).resolve().name} ({len(rows)} steps)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, Path(out) if out is not None else Path(run_dir) / "training.png", dpi=90)

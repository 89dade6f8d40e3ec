"""Summaries of `longpo eval` (summary.json, .csv, .md) and `longpo eval compare`.

Every table comes from the task suites in `TASK_SUITES` (longpo/eval/tasks/base.py), in their order:
each folds its own task results into its sections of summary.json (`summarise`), writes its part of
summary.md (`markdown`) and its rows of summary.csv beside the per-task ones (`csv_rows`), and gives the
flat `label -> score` that `compare` and `longpo evolve` show (`headline`). Nothing here names a suite.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from longpo.errors import InputError
from longpo.eval.tables import fmt
from longpo.eval.tasks import TASK_SUITES
from longpo.files import atomic_write_json, atomic_write_text


def summarize(results: list[dict], skipped: list[dict] | None = None, ran: dict[str, Any] | None = None) -> dict:
    """Fold per-task results (from `evaluate`) and what self-running suites returned (`ran`, by suite) into
    each suite's sections, after the task list and the skipped ones."""
    summary: dict = {"tasks": results, "skipped": list(skipped or [])}
    for name, suite in TASK_SUITES.items():
        summary.update(suite.summarise([r for r in results if r.get("suite") == name], (ran or {}).get(name)))
    return summary


def to_markdown(summary: dict, title: str = "") -> str:
    parts = [f"# {title}" if title else ""]
    for suite in TASK_SUITES.values():
        parts += suite.markdown(summary)
    if summary.get("skipped"):
        parts += ["## Skipped", "\n".join(f"- {s['task']}: {s['reason']}" for s in summary["skipped"])]
    return "\n\n".join(p for p in parts if p) + "\n"


def to_csv(summary: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["suite", "task", "length", "depth", "metric", "score", "n"])
    for r in summary["tasks"]:
        writer.writerow([r.get("suite", ""), r.get("task", r.get("name", "")), r.get("length", ""),
                         r.get("depth", ""), r.get("metric", ""), fmt(r["score"]), r.get("n", "")])
        for key, value in r.get("extra", {}).items():
            writer.writerow([r.get("suite", ""), f"{r.get('task', '')}_{key}", r.get("length", ""), "", key,
                             fmt(value), r.get("n", "")])
    for suite in TASK_SUITES.values():
        writer.writerows(suite.csv_rows(summary))
    return buf.getvalue()


def write_summary(summary: dict, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    out = Path(out_dir)
    return {
        "json": atomic_write_json(out / "summary.json", summary),
        "csv": atomic_write_text(out / "summary.csv", to_csv(summary)),
        "md": atomic_write_text(out / "summary.md", to_markdown(summary, title)),
    }


# ---------------------------------------------------------------------------------------------


def headline(summary: dict) -> dict[str, float | None]:
    """Flat `label -> score` of a summary's tables, in display order."""
    flat: dict[str, float | None] = {}
    for suite in TASK_SUITES.values():
        flat.update(suite.headline(summary))
    return flat


def compare(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> str:
    """Two summaries side by side with B - A deltas; rows present in either run."""
    ha, hb = headline(a), headline(b)
    digits = {label: suite.digits for suite in TASK_SUITES.values() for s in (a, b) for label in suite.headline(s)}
    labels = list(ha) + [k for k in hb if k not in ha]
    width = max([len(x) for x in labels] + [6])
    col = max(len(name_a), len(name_b), 8)
    lines = [f"{'':<{width}}  {name_a:>{col}}  {name_b:>{col}}  {'delta':>8}"]
    for label in labels:
        va, vb, d = ha.get(label), hb.get(label), digits[label]
        delta = f"{vb - va:+8.{d}f}" if va is not None and vb is not None else f"{'-':>8}"
        lines.append(f"{label:<{width}}  {fmt(va, d):>{col}}  {fmt(vb, d):>{col}}  {delta}")
    return "\n".join(lines)


def load_summary(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    if not p.is_file():
        raise InputError(f"{path}: no summary.json (is it the out_dir of a finished `longpo eval`?)")
    return json.loads(p.read_text(encoding="utf-8"))

"""RULER (config section `ruler`): 13 synthetic tasks per target length, the NIAH depth sweep, and the
paper's groups.

Groups (as in the LongPO paper): NIAH = mean of the 8 niah tasks, VT, AGG = mean(cwe, fwe),
QA = mean(qa_1, qa_2), AVG = plain mean of the 13 tasks; each per length and averaged over lengths.
A group with members missing (skipped for lack of data) is the mean of those present and is marked
with `*` in the Markdown table and a coverage entry in the JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longpo.eval.plots import plot_niah_heatmap
from longpo.eval.tables import fmt, length_label, md_table, mean
from longpo.eval.tasks.base import TaskSuite, attempt
from longpo.eval.tasks.ruler import RulerData, RulerTask

RULER_GROUPS = {
    "NIAH": ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
             "niah_multikey_3", "niah_multivalue", "niah_multiquery"],
    "VT": ["vt"],
    "AGG": ["cwe", "fwe"],
    "QA": ["qa_1", "qa_2"],
}
RULER_GROUPS["AVG"] = [t for members in RULER_GROUPS.values() for t in members]
HEATMAP = "niah_depth.png"


def depth_grid(results: list[dict]) -> dict:
    depths = sorted({r["depth"] for r in results})
    lengths = sorted({r["length"] for r in results})
    cell = {(r["depth"], r["length"]): r["score"] for r in results}
    return {"task": results[0]["task"], "depths": depths, "lengths": lengths,
            "scores": [[cell.get((d, n)) for n in lengths] for d in depths]}


class RulerSuite(TaskSuite):
    outputs = (HEATMAP,)

    def inputs(self, r: Any) -> dict[str, str | None]:
        return {"ruler.essays": r.essays, "ruler.squad": r.squad, "ruler.hotpotqa": r.hotpotqa}

    def lengths(self, r: Any) -> dict[str, int]:
        return {f"ruler.lengths={n}": n for n in (r.lengths if r.enabled else [])}

    def skip_beyond(self, r: Any, limit: int, reason: str) -> list[dict]:
        skipped = [{"task": f"ruler/{n}/{name}", "reason": reason}
                   for n in r.lengths if n > limit for name in r.tasks] if r.enabled else []
        r.lengths = [n for n in r.lengths if n <= limit]
        if r.enabled and not r.lengths:
            r.enabled = False
        return skipped

    def build(self, r: Any, fmt: Any) -> list:
        data = RulerData(essays=r.essays, squad=r.squad, hotpotqa=r.hotpotqa)
        return [attempt(f"ruler/{length}/{name}", lambda name=name, length=length: RulerTask(
            name, length, fmt, r.num_samples, r.seed, data)) for length in r.lengths for name in r.tasks]

    def build_after(self, r: Any, fmt: Any) -> list:
        if not r.depth_sweep:
            return []
        data = RulerData(essays=r.essays, squad=r.squad, hotpotqa=r.hotpotqa)
        return [attempt(f"ruler/{length}/{r.depth_task}_depth{depth:g}", lambda length=length, depth=depth: RulerTask(
            r.depth_task, length, fmt, r.depth_samples, r.seed, data, depth=depth))
            for length in r.lengths for depth in r.depths]

    def summarise(self, results: list[dict], ran: Any) -> dict[str, Any]:
        ruler = [r for r in results if "depth" not in r]
        depth = [r for r in results if "depth" in r]
        lengths = sorted({r["length"] for r in ruler})
        per_task: dict[str, dict[str, float]] = {}
        for r in ruler:
            per_task.setdefault(r["task"], {})[str(r["length"])] = r["score"]
        for scores in per_task.values():
            scores["avg"] = mean([scores.get(str(n)) for n in lengths])
        groups, coverage = {}, {}
        for group, members in RULER_GROUPS.items():
            present = [m for m in members if m in per_task]
            if not present:
                continue
            coverage[group] = f"{len(present)}/{len(members)}"
            row = {str(n): mean([per_task[m].get(str(n)) for m in present]) for n in lengths}
            row["avg"] = mean([row[str(n)] for n in lengths])
            groups[group] = row
        out: dict[str, Any] = {}
        if ruler:
            out["ruler"] = {"lengths": lengths, "tasks": per_task, "groups": groups, "coverage": coverage}
        if depth:
            out["niah_depth"] = depth_grid(depth)
        return out

    def markdown(self, summary: dict) -> list[str]:
        if "ruler" not in summary:
            return []
        r = summary["ruler"]
        header = ["RULER"] + [length_label(n) for n in r["lengths"]] + ["Avg"]
        rows = []
        for group, row in r["groups"].items():
            mark = "" if r["coverage"][group].split("/")[0] == r["coverage"][group].split("/")[1] else "*"
            rows.append([group + mark] + [fmt(row[str(n)]) for n in r["lengths"]] + [fmt(row["avg"])])
        parts = ["## RULER", md_table(header, rows)]
        if any(c.split("/")[0] != c.split("/")[1] for c in r["coverage"].values()):
            parts.append("`*` mean over the tasks that ran (coverage: "
                         + ", ".join(f"{g} {c}" for g, c in r["coverage"].items()) + ")")
        task_rows = [[t] + [fmt(s.get(str(n))) for n in r["lengths"]] + [fmt(s["avg"])]
                     for t, s in r["tasks"].items()]
        return parts + ["### RULER tasks", md_table(["task"] + header[1:], task_rows)]

    def csv_rows(self, summary: dict) -> list[list]:
        return [["ruler-group", group, key, "", "mean", fmt(value), ""]
                for group, row in summary.get("ruler", {}).get("groups", {}).items() for key, value in row.items()]

    def headline(self, summary: dict) -> dict[str, float | None]:
        flat: dict[str, float | None] = {}
        if "ruler" in summary:
            r = summary["ruler"]
            for group, row in r["groups"].items():
                for n in r["lengths"]:
                    flat[f"RULER {group} {length_label(n)}"] = row[str(n)]
                flat[f"RULER {group} avg"] = row["avg"]
        return flat

    def write_figures(self, summary: dict, out: Path) -> None:
        if "niah_depth" in summary:
            plot_niah_heatmap(summary["niah_depth"], out / HEATMAP)

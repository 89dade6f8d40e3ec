"""LongBench v2 (config section `longbench_v2`): the 0-shot multiple choice over the released data.json,
accuracy overall, by difficulty and by length, each rounded to 1 decimal as its result.py."""

from __future__ import annotations

from typing import Any

from longpo.eval.tables import fmt, md_table
from longpo.eval.tasks.base import TaskSuite, attempt
from longpo.eval.tasks.longbench_v2 import LongBenchV2Task

LABELS = {"overall": "Overall", "easy": "Easy", "hard": "Hard", "short": "Short", "medium": "Medium", "long": "Long"}


class LongBenchV2Suite(TaskSuite):
    def runs(self, lb: Any) -> bool:
        return lb.enabled and bool(lb.data)

    def inputs(self, lb: Any) -> dict[str, str | None]:
        return {"longbench_v2.data": lb.data}

    def lengths(self, lb: Any) -> dict[str, int]:
        return {f"longbench_v2.max_length={lb.max_length}": lb.max_length} if self.runs(lb) else {}

    def skip_beyond(self, lb: Any, limit: int, reason: str) -> list[dict]:
        if not (self.runs(lb) and lb.max_length > limit):
            return []
        lb.enabled = False
        return [{"task": "longbench_v2/0shot", "reason": f"longbench_v2.max_length={lb.max_length} is " + reason}]

    def build(self, lb: Any, fmt: Any) -> list:
        return [attempt("longbench_v2/0shot", lambda: LongBenchV2Task(lb.data, fmt, lb.max_length, lb.num_samples),
                        configured=True)]

    def summarise(self, results: list[dict], ran: Any) -> dict[str, Any]:
        if not results:
            return {}
        r = results[0]  # result.py's table: accuracy overall, by difficulty and by length, each rounded to 1 decimal
        return {"longbench_v2": {"overall": round(r["score"], 1), "n": r["n"],
                                 **{k: round(v, 1) for k, v in r.get("extra", {}).items()}}}

    def markdown(self, summary: dict) -> list[str]:
        if "longbench_v2" not in summary:
            return []
        lb = summary["longbench_v2"]
        keys = [k for k in LABELS if k in lb]
        return ["## LongBench v2", md_table([LABELS[k] for k in keys], [[fmt(lb[k]) for k in keys]]),
                f"{lb['n']} questions, accuracy (%) as THUDM/LongBench result.py"]

    def headline(self, summary: dict) -> dict[str, float | None]:
        lb = summary.get("longbench_v2", {})
        return {f"LongBench v2 {label}": lb[key] for key, label in LABELS.items() if key in lb}

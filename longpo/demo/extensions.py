"""The toy, plugged into the engine through its extension points like any user's code would be.

- `longpo train model=tiny` (`--config tiny`): the built run `tiny` (`longpo.train.runs.BUILT_RUNS`), the
  tiny original model and its records (longpo/toy/run.py);
- `longpo eval toy.enabled=true`: the task suite `toy` (`longpo.eval.tasks.TASK_SUITES`), the toy world's
  fact lookup (longpo/toy/task.py).

`register()` is called by the CLI before a stage runs and by `longpo demo`; the engine (train, eval,
data, backends) imports nothing of the toy. The toy's modules load only when a run or suite is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longpo.eval.config import toy_length_label
from longpo.eval.tables import fmt, md_table
from longpo.eval.tasks import TASK_SUITES
from longpo.eval.tasks.base import TaskSuite
from longpo.train.config import TINY
from longpo.train.runs import BUILT_RUNS


class TinyRun:
    def prepare(self, output_dir: str, num_records: int) -> None:
        from longpo.toy.run import prepare_tiny_run

        prepare_tiny_run(output_dir, num_records)

    def paths(self, output_dir: str) -> tuple[Path, Path]:
        from longpo.toy.run import tiny_run_paths

        return tiny_run_paths(output_dir)


class ToySuite(TaskSuite):
    """The toy's fact lookup (config section `toy`): one task per length, and its accuracy per length."""

    def build(self, section: Any, fmt: Any) -> list:
        """One fact-lookup task per length (the short one first, when `toy.short`)."""
        from longpo.toy.task import SHORT, FactQA

        lengths = ([SHORT] if section.short else []) + section.lengths
        return [FactQA(fmt.tokenizer, length, section.num_samples, section.seed) for length in lengths]

    def summarise(self, results: list[dict], ran: Any) -> dict[str, Any]:
        toy = {toy_length_label(r["length"]): r["score"] for r in results}
        return {"toy": toy} if toy else {}

    def markdown(self, summary: dict) -> list[str]:
        if "toy" not in summary:
            return []
        return ["## Toy fact lookup", md_table(list(summary["toy"]), [[fmt(v) for v in summary["toy"].values()]])]

    def headline(self, summary: dict) -> dict[str, float | None]:
        return {f"fact QA {key}": value for key, value in summary.get("toy", {}).items()}


def register() -> None:
    BUILT_RUNS[TINY] = TinyRun()
    TASK_SUITES["toy"] = ToySuite()

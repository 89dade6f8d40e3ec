"""Short-context tasks (config section `short`) through lm-evaluation-harness: MMLU, ARC-C, HellaSwag and
Winogrande with the paper's few-shot counts by default, and their plain mean. lm-eval loads the model
itself, so it runs after the generation backend is closed, once, in the summary run of sharded jobs."""

from __future__ import annotations

from typing import Any

from longpo.eval.tables import fmt, md_table, mean
from longpo.eval.tasks.base import EvalContext, TaskSuite

LABELS = {"mmlu": "MMLU", "arc_challenge": "ARC-C", "hellaswag": "HellaSwag", "winogrande": "Winogrande"}


class ShortSuite(TaskSuite):
    once = True
    own_model = True
    needs_format = False
    inputs_checked = False  # lm-eval reads them; run_short_tasks names a bad one
    outputs = ("short",)    # short/<task>.json: lm-eval's raw results, read back by a rerun
    exempt = ("device",)    # where it runs, not what it predicts

    def inputs(self, s: Any) -> dict[str, str | None]:
        return {"short.include_path": s.include_path, **{f"short.dataset_paths.{k}": v for k, v in s.dataset_paths.items()}}

    def run(self, s: Any, ctx: EvalContext) -> dict[str, float]:
        from longpo.eval.lm_eval import run_short_tasks

        return run_short_tasks(ctx.cfg.model, dict(s.tasks), ctx.out, s.include_path, dict(s.dataset_paths),
                               s.batch_size, s.limit, s.dtype, s.device, offline=s.offline)

    def summarise(self, results: list[dict], ran: Any) -> dict[str, Any]:
        return {"short": {**ran, "avg": mean(list(ran.values()))}} if ran else {}

    def markdown(self, summary: dict) -> list[str]:
        if "short" not in summary:
            return []
        sh = summary["short"]
        keys = [k for k in sh if k != "avg"]
        return ["## Short context", md_table([LABELS.get(k, k) for k in keys] + ["Avg"],
                                             [[fmt(sh[k]) for k in keys] + [fmt(sh["avg"])]])]

    def csv_rows(self, summary: dict) -> list[list]:
        return [["short", key, "", "", "accuracy", fmt(value), ""] for key, value in summary.get("short", {}).items()]

    def headline(self, summary: dict) -> dict[str, float | None]:
        return {f"short {LABELS.get(key, key)}": value for key, value in summary.get("short", {}).items()}

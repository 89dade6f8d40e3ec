"""InfiniteBench (config section `infinitebench`): En.Sum, En.QA, En.MC from its released files, their
plain mean, and the lenient En.MC parser beside the official numbers (left out of the mean)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longpo.eval.tables import fmt, md_table, mean
from longpo.eval.tasks.base import Skipped, TaskSuite, attempt
from longpo.eval.tasks.infinitebench import DEFAULT_FILES, InfiniteBenchTask

LABELS = {"en_sum": "En.Sum", "en_qa": "En.QA", "en_mc": "En.MC"}
# secondary metrics (`extra` of a task result), shown beside the official ones and left out of every average
EXTRA_LABELS = {"en_mc_lenient": "En.MC (lenient parser)"}


def _data_given(ib: Any) -> bool:
    return ib.data_dir is not None or bool(ib.files)


class InfiniteBenchSuite(TaskSuite):
    def inputs(self, ib: Any) -> dict[str, str | None]:
        return {"infinitebench.data_dir": ib.data_dir, **{f"infinitebench.files.{k}": v for k, v in ib.files.items()}}

    def lengths(self, ib: Any) -> dict[str, int]:
        return {f"infinitebench.max_length={ib.max_length}": ib.max_length} if ib.enabled and _data_given(ib) else {}

    def skip_beyond(self, ib: Any, limit: int, reason: str) -> list[dict]:
        if not (ib.enabled and ib.max_length > limit and _data_given(ib)):
            return []
        ib.enabled = False
        return [{"task": f"infinitebench/{name}", "reason": f"infinitebench.max_length={ib.max_length} is " + reason}
                for name in ib.tasks]

    def build(self, ib: Any, fmt: Any) -> list:
        out = []
        for name in ib.tasks:
            path = ib.files.get(name) or (Path(ib.data_dir) / DEFAULT_FILES[name] if ib.data_dir else None)
            if path is None:
                out.append(Skipped(f"infinitebench/{name}", "no data: set infinitebench.data_dir or infinitebench.files"))
                continue
            out.append(attempt(f"infinitebench/{name}", lambda name=name, path=path: InfiniteBenchTask(
                name, path, fmt, ib.max_length, ib.num_samples, ib.rouge_stemmer, ib.truncation, ib.system_prompt),
                configured=True))
        return out

    def summarise(self, results: list[dict], ran: Any) -> dict[str, Any]:
        scores = {r["task"]: r["score"] for r in results}
        if not scores:
            return {}
        extra = {f"{r['task']}_{k}": v for r in results for k, v in r.get("extra", {}).items()}
        return {"infinitebench": {**scores, "avg": mean(list(scores.values())), **extra}}

    def markdown(self, summary: dict) -> list[str]:
        if "infinitebench" not in summary:
            return []
        ib = summary["infinitebench"]
        keys = [k for k in LABELS if k in ib]
        parts = ["## InfiniteBench", md_table([LABELS[k] for k in keys] + ["Avg"],
                                              [[fmt(ib[k]) for k in keys] + [fmt(ib["avg"])]])]
        extras = [k for k in EXTRA_LABELS if k in ib]
        if extras:
            parts.append("Beside the official numbers (not in Avg): "
                         + ", ".join(f"{EXTRA_LABELS[k]} {fmt(ib[k])}" for k in extras))
        return parts

    def headline(self, summary: dict) -> dict[str, float | None]:
        ib = summary.get("infinitebench", {})
        flat = {f"InfiniteBench {label}": ib[key] for key, label in LABELS.items() if key in ib}
        if "infinitebench" in summary:
            flat["InfiniteBench avg"] = ib["avg"]
        flat.update({f"InfiniteBench {label}": ib[key] for key, label in EXTRA_LABELS.items() if key in ib})
        return flat

"""The LLM-judged benchmarks of `longpo eval` (MT-Bench, LongBench-Chat): one judge client, skips with reasons.

Each benchmark answers with the evaluated model (through `get_backend()`, called only when answers are
missing) and judges through `cfg.judge`. A benchmark whose files are missing is skipped with the reason,
as RULER and InfiniteBench tasks are; a judge endpoint that fails stops the run (saved work resumes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from longpo.eval.haystack import DataMissing
from longpo.eval.judge import JudgeClient
from longpo.eval.tasks import longbench_chat, mtbench


def run_judged(cfg: Any, fmt: Any, get_backend: Callable[[], Any], out_dir: str | Path, sampling: Any,
               skipped: list[dict]) -> dict:
    """{"mt_bench": summary, "longbench_chat": summary} for the enabled ones; appends to `skipped`."""
    client = JudgeClient(cfg.judge)
    results = {}
    for name, sub, module in (("mt_bench", cfg.mt_bench, mtbench), ("longbench_chat", cfg.longbench_chat,
                                                                   longbench_chat)):
        if not sub.enabled:
            continue
        try:
            results[name] = module.run(sub, client, get_backend, fmt, out_dir, sampling, cfg.batch_size,
                                       cfg.progress)
        except DataMissing as e:
            skipped.append({"task": name, "reason": str(e)})
    return results

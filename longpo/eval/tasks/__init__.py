"""Evaluation tasks, one small file per family, and `TASK_SUITES`, the registry of the suites that bring
them into `longpo eval` (the protocol: longpo/eval/tasks/base.py).

A task is any object with `name`, `metadata` (labels copied into its result; `suite` names its suite),
`max_new_tokens`, `num_examples()`, a deterministic `get_example(i) -> {"id", "prompt", ...}` whose prompt
is fully rendered, and `score(example, prediction) -> float` on a 0-100 scale. The runner knows nothing else.
"""

from __future__ import annotations

from longpo.eval.suites import helmet, infinitebench, judged, longbench_v2, ruler, short
from longpo.eval.tasks.base import TASK_SUITES, TaskSuite

# The built-in suites (longpo/eval/suites/, one file each), in the order of summary.md; users register theirs
# after these (the toy's `toy`: longpo/demo/extensions.py).
TASK_SUITES.update({
    "ruler": ruler.RulerSuite(),
    "infinitebench": infinitebench.InfiniteBenchSuite(),
    "helmet": helmet.HelmetSuite(),
    "longbench_v2": longbench_v2.LongBenchV2Suite(),
    "short": short.ShortSuite(),
    "mt_bench": judged.MTBenchSuite(),
    "longbench_chat": judged.LongBenchChatSuite(),
})

__all__ = ["TASK_SUITES", "TaskSuite"]

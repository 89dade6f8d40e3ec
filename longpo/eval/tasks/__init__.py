"""Evaluation tasks, one small file per family.

A task is any object with `name`, `metadata` (labels copied into the summary), `max_new_tokens`,
`num_examples()`, a deterministic `get_example(i) -> {"id", "prompt", ...}` whose prompt is fully
rendered, and `score(example, prediction) -> float` on a 0-100 scale. The runner knows nothing else.
"""

from __future__ import annotations

from typing import Any, Protocol


class TaskSuite(Protocol):
    def build(self, section: Any, fmt: Any) -> list:
        """The tasks of an enabled config section (`cfg.<name>`), prompts rendered with `fmt`."""
        ...


# Suites registered by the engine's users, by the name of their config section (the toy's `toy`:
# longpo/demo/extensions.py); the runner imports none of their code.
TASK_SUITES: dict[str, TaskSuite] = {}

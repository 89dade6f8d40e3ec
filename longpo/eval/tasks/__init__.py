"""Evaluation tasks, one small file per family.

A task is any object with `name`, `metadata` (labels copied into the summary), `max_new_tokens`,
`num_examples()`, a deterministic `get_example(i) -> {"id", "prompt", ...}` whose prompt is fully
rendered, and `score(example, prediction) -> float` on a 0-100 scale. The runner knows nothing else.
"""

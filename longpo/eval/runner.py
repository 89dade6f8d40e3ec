"""Run tasks against a backend: predictions that resume where they stopped, and per-task scores.

`evaluate(backend, tasks, out_dir)` knows nothing of any task beyond the small interface in
`longpo.eval.tasks`: it asks for examples, sends their rendered prompts to `backend.generate`, asks
the task to score each prediction, and appends one JSON line per example to
`out_dir/predictions/<task name>.jsonl`. A rerun reads those files and generates only what is
missing; a torn last line (a kill mid-write) is dropped and redone.

Two optional task hooks: `aggregate(scores) -> float` (the task's reported score from its per-example
scores; the plain mean when absent - RULER rounds it to 2 decimals as the official evaluator does) and
`extra_scores(example, prediction) -> {name: score}` (secondary metrics reported beside the main one,
e.g. a lenient letter reader next to the official En.MC parser).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from longpo.backends.base import Sampling
from longpo.errors import InputError
from longpo.eval.fitting import PromptTooLong
from longpo.files import append_jsonl, read_jsonl


def prompt_digest(prompt: str) -> str:
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]


def predictions_path(out_dir: str | os.PathLike, task_name: str) -> Path:
    safe = task_name.replace("\\", "/").strip("/")
    if ".." in safe.split("/"):
        raise ValueError(f"task name {task_name!r} must not contain '..'")
    return Path(out_dir) / "predictions" / f"{safe}.jsonl"


def _load_done(path: Path) -> dict[int, dict]:
    if not path.exists():
        return {}
    done = {}
    for row in read_jsonl(path, tolerate_torn_tail=True):
        if "index" not in row or "prediction" not in row:
            raise InputError(f"{path}: a row lacks 'index' or 'prediction'; it was not written by this runner")
        done[int(row["index"])] = row
    return done


def _drop_torn_tail(path: Path) -> None:
    """Cut an unterminated last line so that appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.seek(0)
        f.truncate(data.rfind(b"\n") + 1)


def run_task(backend: Any, task: Any, out_dir: str | os.PathLike, sampling: Any, batch_size: int = 8,
             progress: bool = True) -> dict:
    """Generate and score every example of `task` not yet in its predictions file; return its summary."""
    path = predictions_path(out_dir, task.name)
    _drop_torn_tail(path)
    done = _load_done(path)
    n = task.num_examples()
    todo = [i for i in range(n) if i not in done]
    if done and todo:
        # Resuming: make sure the saved rows were made from the same prompts (same tokenizer, seed, config).
        first = min(done)
        if done[first].get("prompt_sha1") != prompt_digest(task.get_example(first)["prompt"]):
            raise InputError(
                f"{path}: saved predictions were made from different prompts than this run builds "
                f"(example {first}); use a new out_dir or delete the file"
            )
    bar = None
    if progress and todo:
        bar = tqdm(total=n, initial=n - len(todo), desc=task.name, unit="ex", dynamic_ncols=True)
    started = time.perf_counter()
    too_long: list[int] = []  # examples that do not fit the task's length: skipped and counted, not fatal
    for start in range(0, len(todo), batch_size):
        indices, examples = [], []
        for i in todo[start:start + batch_size]:
            try:
                examples.append(task.get_example(i))
                indices.append(i)
            except PromptTooLong:
                too_long.append(i)
        if bar is not None:
            bar.update(len(todo[start:start + batch_size]))
        if not examples:
            continue
        params = _sampling_for(sampling, task.max_new_tokens)
        predictions = backend.generate([ex["prompt"] for ex in examples], params)
        if len(predictions) != len(examples):
            raise RuntimeError(f"backend returned {len(predictions)} completions for {len(examples)} prompts")
        for i, ex, pred in zip(indices, examples, predictions):
            row = {"index": i, "id": ex.get("id", i), "prediction": pred, "score": float(task.score(ex, pred)),
                   "prompt_sha1": prompt_digest(ex["prompt"])}
            extra = task.extra_scores(ex, pred) if hasattr(task, "extra_scores") else {}
            if extra:
                row["extra"] = {k: float(v) for k, v in extra.items()}
            row.update({k: v for k, v in ex.items() if k not in ("prompt", "id") and k not in row})
            append_jsonl(path, row)
            done[i] = row
    if bar is not None:
        bar.close()
    rows = [done[i] for i in range(n) if i in done]
    scores = [r["score"] for r in rows]
    aggregate = getattr(task, "aggregate", _mean)
    result = {
        "task": task.name,
        **dict(getattr(task, "metadata", {})),
        "score": aggregate(scores) if scores else float("nan"),
        "n": len(scores),
        "skipped_too_long": len(too_long),
        "seconds": round(time.perf_counter() - started, 3),
        "predictions": str(path),
    }
    extra_names = sorted({k for r in rows for k in r.get("extra", {})})
    if extra_names:
        result["extra"] = {k: _mean([r["extra"][k] for r in rows if k in r.get("extra", {})]) for k in extra_names}
    return result


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _sampling_for(sampling: Any, max_new_tokens: int) -> Any:
    """The run's sampling settings with the task's generation length."""
    return dataclasses.replace(sampling, max_new_tokens=max_new_tokens)


def evaluate(backend: Any, tasks: Iterable[Any], out_dir: str | os.PathLike, sampling: Any = None,
             batch_size: int = 8, progress: bool = True) -> list[dict]:
    """Run every task (resuming saved predictions) and return one summary dict per task.

    `sampling` is a `longpo.backends.base.Sampling` (greedy when None); its `max_new_tokens` is
    replaced by each task's own generation length.
    """
    if sampling is None:
        sampling = Sampling(temperature=0.0)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [run_task(backend, task, out_dir, sampling, batch_size, progress) for task in tasks]

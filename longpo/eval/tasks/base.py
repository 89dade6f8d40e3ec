"""The task-suite protocol of `longpo eval`, and `TASK_SUITES`, the one registry of suites.

A suite is one benchmark family (RULER, InfiniteBench, ...) registered in `TASK_SUITES` under the name of
its config section (`cfg.<name>`, or `cfg.suites.<name>` for one that has no section of its own). The
stage (longpo/eval/run.py) and the report (longpo/eval/report.py) iterate the dict and ask each suite
what they need; neither names a suite. Every hook has a default here, so a suite states only what it
uses; adding one is one file that subclasses `TaskSuite` and registers an instance (docs/stages/eval.md).

Two kinds:
- task suites: `build(section, fmt)` returns task objects (see longpo/eval/tasks/__init__.py) that the
  runner generates and scores; each job of a sharded run takes its share;
- self-running suites (`once = True`: LLM-judged benchmarks, lm-eval): `run(section, ctx)` does the work
  and returns the suite's summary, once, in the summary run of sharded jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longpo.eval.fitting import PromptTooLong
from longpo.eval.haystack import DataMissing


class Skipped(dict):
    """A task that cannot run, as listed in summary.json's `skipped`: {"task", "reason"[, "missing"]}.
    `missing`: its data was configured but cannot be read - the run then exits non-zero."""

    def __init__(self, task: str, reason: str, missing: bool | None = None):
        super().__init__(task=task, reason=reason, **({} if missing is None else {"missing": missing}))


def attempt(name: str, make: Callable[[], Any], configured: bool = False) -> Any:
    """`make()` a task and size it now (`fitted_size`, when it has one), so that a length too short for it
    shows up before anything runs; a task whose data or length does not work comes back as `Skipped`.
    `configured`: the suite reads only configured paths, so missing data is an error (not "not installed")."""
    try:
        task = make()
        if hasattr(task, "fitted_size"):
            task.fitted_size()
        return task
    except (DataMissing, PromptTooLong) as e:
        return Skipped(name, str(e), missing=isinstance(e, DataMissing) and configured)


@dataclass
class EvalContext:
    """What the run-time hooks (`after_evaluate`, `run`) get from the stage."""

    cfg: Any             # the whole eval config (judge endpoint, model, batch size, progress)
    fmt: Any             # the prompt format (None when no active suite needs one)
    out: Path            # the run's out_dir
    sampling: Any        # the stage's Sampling
    backend: Any         # the generation backend, loaded on first use
    skipped: list[dict]  # append Skipped entries here


class TaskSuite:
    """One benchmark family in `longpo eval`; `section` is its config section (a dataclass, or a dict
    under `suites.<name>`)."""

    once = False          # self-running: `run()` instead of `build()`, once, in the summary run
    own_model = False     # `run()` loads the model itself: the generation backend is closed first
    needs_format = True   # wants the prompt format (the evaluated model's tokenizer)
    inputs_checked = True  # its `inputs` must exist when set (checked before anything loads)
    exempt: tuple[str, ...] = ()   # its keys that do not change predictions (kept out of the run fingerprint)
    outputs: tuple[str, ...] = ()  # what it writes in out_dir besides predictions/ (removed by overwrite=true)
    digits = 1            # decimals in `longpo eval compare`

    def runs(self, section: Any) -> bool:
        """Whether it has anything to run (enabled, and its data given where it needs some)."""
        return bool(section.get("enabled", False) if isinstance(section, dict) else section.enabled)

    def inputs(self, section: Any) -> dict[str, str | None]:
        """Config key -> the file or folder it reads: part of the run fingerprint (a changed file refuses a
        resume) and, with `inputs_checked`, refused at once when set but absent."""
        return {}

    def lengths(self, section: Any) -> dict[str, int]:
        """Config key (as shown in the error) -> a length in tokens the model must hold."""
        return {}

    def skip_beyond(self, section: Any, limit: int, reason: str) -> list[dict]:
        """Drop from `section` (in place) what is longer than `limit` tokens; the Skipped entries (`reason`
        says why: longer than the model's max_position_embeddings)."""
        return []

    def build(self, section: Any, fmt: Any) -> list:
        """Its tasks, prompts rendered with `fmt`, and a `Skipped` for each that cannot run (`attempt`)."""
        return []

    def build_after(self, section: Any, fmt: Any) -> list:
        """Tasks that go after every suite's `build` tasks (RULER's depth sweep)."""
        return []

    def after_evaluate(self, section: Any, results: list[dict], ctx: EvalContext) -> None:
        """Once, in the summary run, after the runner: add to its results (HELMET's NarrativeQA judge)."""

    def run(self, section: Any, ctx: EvalContext) -> Any:
        """A self-running suite's work; what it returns reaches `summarise` as `ran` (None: nothing ran)."""
        return None

    def summarise(self, results: list[dict], ran: Any) -> dict[str, Any]:
        """Its sections of summary.json from its task results (those whose metadata `suite` is its name)
        or from what `run` returned; {} when it has nothing."""
        return {}

    def markdown(self, summary: dict) -> list[str]:
        """Its parts of summary.md (a heading, tables, notes), read from its summary sections."""
        return []

    def csv_rows(self, summary: dict) -> list[list]:
        """Rows of summary.csv beside the per-task ones: [suite, task, length, depth, metric, score, n]."""
        return []

    def headline(self, summary: dict) -> dict[str, float | None]:
        """Label -> score for `longpo eval compare` and `longpo evolve`, in display order."""
        return {}

    def write_figures(self, summary: dict, out: Path) -> None:
        """Figures beside the summary (RULER's needle-depth heatmap)."""


# Suites by the name of their config section. The built-in ones are registered when longpo.eval.tasks
# is imported (its __init__); users register theirs (the toy's `toy`: longpo/demo/extensions.py).
TASK_SUITES: dict[str, TaskSuite] = {}

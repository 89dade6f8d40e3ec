"""`longpo eval`: every enabled task suite of `TASK_SUITES` on one model - the built-in benchmarks
(docs/stages/eval.md lists them; `--help` below shows their sections) and any a user registers.

    longpo eval --config eval_tiny model=runs/ckpt out_dir=runs/eval/ckpt
    longpo eval compare runs/eval/base runs/eval/longpo

Outputs in `out_dir`: `predictions/<suite>/.../<task>.jsonl` (one line per example; a rerun resumes
from them), `summary.{json,csv,md}` (each suite's tables), `resolved_config.yaml`, and what a suite
writes beside them (its figures, an outside harness's raw results, a judged benchmark's answers).

The stage asks each suite (longpo/eval/tasks/base.py) what it reads, which lengths it needs, which tasks
it builds or what it runs; it names none of them.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from longpo import backends
from longpo.backends import backend_spec
from longpo.backends.base import Sampling
from longpo.config import write_resolved_config
from longpo.errors import InputError
from longpo.eval.config import Config  # there, `longpo eval` checks its config before torch loads
from longpo.eval.fitting import PromptFormat
from longpo.eval.report import summarize, write_summary
from longpo.eval.runner import evaluate
from longpo.eval.tasks import TASK_SUITES
from longpo.eval.tasks.base import EvalContext, Skipped
from longpo.families import check_model_folder
from longpo.fingerprint import guard, identity, remove
from longpo.models import load_tokenizer as load_local_tokenizer
from longpo.models import max_positions

# Keys that do not change the predictions (a rerun with other values resumes), besides each suite's `exempt`.
FINGERPRINT_EXEMPT = ("out_dir", "progress", "judge.concurrency", "judge.timeout", "judge.max_retries", "judge.backoff")
OUTPUTS = ("predictions", "summary.json", "summary.csv", "summary.md", "resolved_config.yaml")


def section(cfg: Config, name: str) -> Any:
    """A suite's settings: its own section of the config, else `suites.<name>` (a dict; {} when not set)."""
    return getattr(cfg, name) if hasattr(cfg, name) else cfg.suites.get(name, {})


def suite_inputs(cfg: Config, checked_only: bool = False) -> dict[str, str | None]:
    """Config key -> the file or folder each suite reads (with `checked_only`, of the suites that want it
    checked to exist before anything loads)."""
    return {k: v for name, suite in TASK_SUITES.items() if suite.inputs_checked or not checked_only
            for k, v in suite.inputs(section(cfg, name)).items()}


def check_rerun(cfg: Config) -> None:
    """A rerun into out_dir resumes only with the same settings and inputs (longpo.fingerprint)."""
    paths = suite_inputs(cfg)
    if backend_spec(cfg.backend).local_model:
        paths |= {"model": cfg.model}
    inputs = {k: identity(v) for k, v in paths.items()} | {"tokenizer": identity(cfg.tokenizer)}
    exempt = FINGERPRINT_EXEMPT + tuple(f"{name}.{key}" for name, suite in TASK_SUITES.items() for key in suite.exempt)
    if not cfg.suites:  # absent from runs made before the key existed: they still resume
        exempt += ("suites",)
    outputs = OUTPUTS + tuple(o for suite in TASK_SUITES.values() for o in suite.outputs)
    guard("eval", cfg.out_dir, cfg, exempt, inputs, cfg.overwrite, lambda: remove(cfg.out_dir, outputs))


def check_ran(cfg: Config, results: list[dict], skipped: list[dict], ran: dict) -> None:
    """Exit non-zero (after the summary is written) when a task whose data was given could not read it
    (`Skipped(missing=True)`: a file missing from a configured folder), or when nothing at all ran. Tasks
    whose data is neither configured nor installed are only listed as skipped (docs/stages/eval.md)."""
    missing = [s["task"] for s in skipped if s.get("missing")]
    if missing:
        raise InputError(f"{cfg.out_dir}: requested task(s) {missing} could not run: their data files are "
                         f"missing (see the Skipped section of summary.md); fix the paths and rerun")
    if not results and not ran and cfg.num_shards == 1:  # a shard may hold no task
        raise InputError(f"{cfg.out_dir}: no task ran ({len(skipped)} skipped: "
                         f"{'; '.join(s['task'] + ': ' + s['reason'] for s in skipped)[:400]}); enable a task "
                         f"or give its data")


# ---------------------------------------------------------------------------------------------


def check_registered(cfg: Config) -> None:
    """An enabled section, or a `suites.<name>`, needs a suite registered under its name."""
    own = [name for name in cfg.suites if hasattr(cfg, name)]
    if own:
        raise InputError(f"suites.{own[0]}: {own[0]!r} has a section of its own; set {own[0]}.* instead")
    enabled = [f.name for f in dataclasses.fields(cfg) if getattr(getattr(cfg, f.name), "enabled", False) is True]
    for key, name in [(f"{n}.enabled=true", n) for n in enabled] + [(f"suites.{n}", n) for n in cfg.suites]:
        if name not in TASK_SUITES:
            raise InputError(f"{key}: no task suite {name!r} is registered here ({sorted(TASK_SUITES)}); a suite "
                             "registers itself in longpo.eval.tasks.TASK_SUITES (the demo's: longpo.demo.extensions)")


def check_inputs(cfg: Config) -> None:
    """Fail before loading anything when the checkpoint, a suite's input or a target length is wrong."""
    check_model_folder(cfg.model, cfg.backend)  # the folder and its family (nothing for an OpenAI server)
    if cfg.tokenizer and not Path(cfg.tokenizer).exists():
        raise InputError(f"tokenizer: {cfg.tokenizer} does not exist")
    check_registered(cfg)
    given = suite_inputs(cfg, checked_only=True)
    absent = [f"{k}={v}" for k, v in given.items() if v and not Path(v).expanduser().exists()]
    if absent:
        raise InputError(f"{', '.join(absent)}: no such file or folder; fix the path, or unset it to skip the task")
    limit = max_positions(cfg.model) if backend_spec(cfg.backend).local_model else None
    if limit is None or cfg.allow_beyond_max_positions:
        return
    wanted = {k: n for name, suite in TASK_SUITES.items() for k, n in suite.lengths(section(cfg, name)).items()}
    too_long = [k for k, n in wanted.items() if n > limit]
    if too_long:
        raise InputError(f"{', '.join(too_long)}: the model at {cfg.model} holds at most {limit} tokens "
                         "(max_position_embeddings); lower them, or set allow_beyond_max_positions=true "
                         "if the model extrapolates")


def skip_beyond_max_positions(cfg: Config) -> list[dict]:
    """Remove the target lengths the model cannot hold (in place); returns them as skipped entries."""
    limit = max_positions(cfg.model) if backend_spec(cfg.backend).local_model else None
    if limit is None:
        return []
    reason = f"longer than the model's max_position_embeddings ({limit})"
    return [s for name, suite in TASK_SUITES.items() for s in suite.skip_beyond(section(cfg, name), limit, reason)]


class LazyBackend:
    """The backend, built on first use: a run whose predictions are all on disk (the summary after sharded
    eval jobs) loads no model."""

    def __init__(self, cfg: Config):
        self.cfg, self.backend = cfg, None

    def __getattr__(self, name: str) -> Any:
        if self.backend is None:
            self.backend = make_backend(self.cfg)
        return getattr(self.backend, name)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def eval_tokenizer(cfg: Config) -> Any:
    """The evaluated model's tokenizer, from a local folder: prompts are fitted with it before any model loads."""
    path = cfg.tokenizer or cfg.model
    if not backend_spec(cfg.backend).local_model and not cfg.tokenizer:
        raise InputError(f"backend={cfg.backend}: set tokenizer= to a local copy of the served model's tokenizer "
                         "(prompts are fitted to the target lengths with it)")
    return load_local_tokenizer(path)


def make_backend(cfg: Config) -> Any:
    """The generation backend by name, from the lookup the generation stage uses."""
    return backends.make_backend(cfg.backend, model=cfg.model, tokenizer=cfg.tokenizer, **cfg.backend_args)


def active_suites(cfg: Config) -> dict[str, Any]:
    """The suites with something to run in this job (a self-running one only in the summary run)."""
    return {name: suite for name, suite in TASK_SUITES.items()
            if suite.runs(section(cfg, name)) and (not suite.once or cfg.num_shards == 1)}


def build_tasks(cfg: Config, fmt: Any) -> tuple[list, list, list[dict]]:
    """(main tasks, tasks that go after them, skipped) of the task suites that run; a task whose data or
    length does not work is skipped with its reason."""
    tasks, after, skipped = [], [], []
    for name, suite in active_suites(cfg).items():
        if suite.once:
            continue
        settings = section(cfg, name)
        for into, built in ((tasks, suite.build(settings, fmt)), (after, suite.build_after(settings, fmt))):
            for item in built:
                (skipped if isinstance(item, Skipped) else into).append(item)
    return tasks, after, skipped


def report_skipped(skipped: list[dict]) -> None:
    for s in skipped:
        print(f"longpo eval: skipped {s['task']}: {s['reason']}", file=sys.stderr)


def main(cfg: Config) -> int:
    beyond = skip_beyond_max_positions(cfg) if cfg.skip_beyond_max_positions else []
    check_inputs(cfg)
    check_rerun(cfg)
    out = Path(cfg.out_dir)
    write_resolved_config(cfg, out)
    results: list[dict] = []
    skipped: list[dict] = list(beyond)
    ran: dict[str, Any] = {}  # what each self-running suite returned
    active = active_suites(cfg)
    backend = LazyBackend(cfg)  # loaded once, and only when something needs generating
    sampling = Sampling(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.sampling_seed)
    fmt = PromptFormat(eval_tokenizer(cfg), cfg.chat_template, cfg.system_prompt) \
        if any(s.needs_format for s in active.values()) else None
    ctx = EvalContext(cfg=cfg, fmt=fmt, out=out, sampling=sampling, backend=backend, skipped=skipped)

    def run_own(name: str) -> None:
        before = len(skipped)
        value = active[name].run(section(cfg, name), ctx)
        if value is not None:
            ran[name] = value
        report_skipped(skipped[before:])

    try:
        if any(not s.once for s in active.values()):
            tasks, after, built_skipped = build_tasks(cfg, fmt)
            skipped += built_skipped
            report_skipped(skipped)
            mine = (tasks + after)[cfg.shard_index::cfg.num_shards]  # this job's share of the tasks
            if mine:
                results = evaluate(backend, mine, out, sampling, cfg.batch_size, cfg.progress)
            if cfg.num_shards == 1:  # once, in the summary run of sharded jobs
                for name, suite in active.items():
                    suite.after_evaluate(section(cfg, name), [r for r in results if r.get("suite") == name], ctx)
        for name in [n for n, s in active.items() if s.once and not s.own_model]:
            run_own(name)
    finally:
        backend.close()
    for name in [n for n, s in active.items() if s.once and s.own_model]:
        run_own(name)
    summary = summarize(results, skipped, ran)
    summary["model"] = cfg.model
    paths = write_summary(summary, out, title=f"longpo eval: {cfg.model}")
    for suite in TASK_SUITES.values():
        suite.write_figures(summary, out)
    print(paths["md"].read_text(encoding="utf-8"))
    check_ran(cfg, results, skipped, ran)
    return 0

"""`longpo eval`: RULER, InfiniteBench, HELMET recall / RAG, LongBench v2, short-context tasks and LLM-judged
MT-Bench / LongBench-Chat.

    longpo eval --config eval_tiny model=runs/ckpt out_dir=runs/eval/ckpt
    longpo eval compare runs/eval/base runs/eval/longpo

Outputs in `out_dir`: `predictions/<suite>/.../<task>.jsonl` (one line per example; a rerun resumes
from them), `summary.{json,csv,md}` in the paper's layout, `niah_depth.png` when the depth sweep is
on, `short/<task>.json` (raw lm-eval results), `mt_bench/` and `longbench_chat/` (answers.jsonl and
judgements.jsonl, both resumable; summary.json) and `resolved_config.yaml`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from longpo import backends
from longpo.backends import backend_spec
from longpo.backends.base import Sampling
from longpo.config import write_resolved_config
from longpo.errors import InputError
from longpo.eval.config import (  # noqa: F401 (re-exported; there, `longpo eval` checks it before torch loads)
    PAPER_LENGTHS,
    RULER_TASKS,
    Config,
    HelmetConfig,
    InfiniteBenchConfig,
    LongBenchV2Config,
    RulerConfig,
    ShortConfig,
    ToyConfig,
)
from longpo.eval.fitting import PromptFormat, PromptTooLong
from longpo.eval.haystack import DataMissing
from longpo.eval.judge import JudgeClient
from longpo.eval.judged import run_judged
from longpo.eval.plots import plot_niah_heatmap
from longpo.eval.report import summarize, write_summary
from longpo.eval.runner import evaluate
from longpo.eval.tasks import TASK_SUITES, helmet
from longpo.eval.tasks.helmet_icl import ICLTask
from longpo.eval.tasks.helmet_longqa import LongQATask
from longpo.eval.tasks.helmet_narrativeqa import NarrativeQATask
from longpo.eval.tasks.helmet_narrativeqa import judge_result as narrativeqa_judge
from longpo.eval.tasks.helmet_rerank import RerankTask
from longpo.eval.tasks.infinitebench import DEFAULT_FILES, InfiniteBenchTask
from longpo.eval.tasks.longbench_v2 import LongBenchV2Task
from longpo.eval.tasks.ruler import RulerData, RulerTask
from longpo.families import check_model_folder
from longpo.fingerprint import guard, identity, remove
from longpo.models import load_tokenizer as load_local_tokenizer
from longpo.models import max_positions

# Keys that do not change the predictions (a rerun with other values resumes; helmet.judge=true on a finished
# run judges its saved NarrativeQA predictions).
FINGERPRINT_EXEMPT = ("out_dir", "progress", "judge.concurrency", "judge.timeout", "judge.max_retries", "judge.backoff",
                      "helmet.judge")
OUTPUTS = ("predictions", "short", "summary.json", "summary.csv", "summary.md", "niah_depth.png",
           "resolved_config.yaml", "helmet_narrativeqa_judge.jsonl")


def check_rerun(cfg: Config) -> None:
    """A rerun into out_dir resumes only with the same settings and inputs (longpo.fingerprint)."""
    r, ib, s = cfg.ruler, cfg.infinitebench, cfg.short
    paths = {"ruler.essays": r.essays, "ruler.squad": r.squad, "ruler.hotpotqa": r.hotpotqa,
             "infinitebench.data_dir": ib.data_dir, "short.include_path": s.include_path,
             "longbench_v2.data": cfg.longbench_v2.data, "helmet.data_dir": cfg.helmet.data_dir,
             **{f"helmet.files.{k}": v for k, v in cfg.helmet.files.items()},
             **{f"helmet.demos.{k}": v for k, v in cfg.helmet.demos.items()},
             **{f"infinitebench.files.{k}": v for k, v in ib.files.items()},
             **{f"short.dataset_paths.{k}": v for k, v in s.dataset_paths.items()}}
    if backend_spec(cfg.backend).local_model:
        paths |= {"model": cfg.model}
    inputs = {k: identity(v) for k, v in paths.items()} | {"tokenizer": identity(cfg.tokenizer)}
    guard("eval", cfg.out_dir, cfg, FINGERPRINT_EXEMPT, inputs, cfg.overwrite, lambda: remove(cfg.out_dir, OUTPUTS))


def check_ran(cfg: Config, results: list[dict], skipped: list[dict], short: Any, judged: dict) -> None:
    """Exit non-zero (after the summary is written) when a task whose data was given could not read it
    (an InfiniteBench file missing from data_dir), or when nothing at all ran. RULER tasks whose data is
    neither configured nor installed are only listed as skipped (docs/stages/eval.md, Offline data)."""
    missing = [s["task"] for s in skipped if s.get("missing")]
    if missing:
        raise InputError(f"{cfg.out_dir}: requested task(s) {missing} could not run: their data files are "
                         f"missing (see the Skipped section of summary.md); fix the paths and rerun")
    if not results and short is None and not judged and cfg.num_shards == 1:  # a shard may hold no task
        raise InputError(f"{cfg.out_dir}: no task ran ({len(skipped)} skipped: "
                         f"{'; '.join(s['task'] + ': ' + s['reason'] for s in skipped)[:400]}); enable a task "
                         f"or give its data")


# ---------------------------------------------------------------------------------------------


def check_inputs(cfg: Config) -> None:
    """Fail before loading anything when the checkpoint or the target lengths are wrong."""
    check_model_folder(cfg.model, cfg.backend)  # the folder and its family (nothing for an OpenAI server)
    if cfg.tokenizer and not Path(cfg.tokenizer).exists():
        raise InputError(f"tokenizer: {cfg.tokenizer} does not exist")
    r, ib = cfg.ruler, cfg.infinitebench
    given = {"ruler.essays": r.essays, "ruler.squad": r.squad, "ruler.hotpotqa": r.hotpotqa,
             "infinitebench.data_dir": ib.data_dir, **{f"infinitebench.files.{k}": v for k, v in ib.files.items()},
             "longbench_v2.data": cfg.longbench_v2.data, "helmet.data_dir": cfg.helmet.data_dir,
             **{f"helmet.files.{k}": v for k, v in cfg.helmet.files.items()},
             **{f"helmet.demos.{k}": v for k, v in cfg.helmet.demos.items()}}
    absent = [f"{k}={v}" for k, v in given.items() if v and not Path(v).expanduser().exists()]
    if absent:
        raise InputError(f"{', '.join(absent)}: no such file or folder; fix the path, or unset it to skip the task")
    limit = max_positions(cfg.model) if backend_spec(cfg.backend).local_model else None
    if limit is None or cfg.allow_beyond_max_positions:
        return
    wanted = {f"ruler.lengths={n}": n for n in (cfg.ruler.lengths if cfg.ruler.enabled else [])}
    if cfg.infinitebench.enabled and (cfg.infinitebench.data_dir is not None or cfg.infinitebench.files):
        wanted[f"infinitebench.max_length={cfg.infinitebench.max_length}"] = cfg.infinitebench.max_length
    if helmet_files(cfg):
        wanted[f"helmet.max_length={cfg.helmet.max_length}"] = cfg.helmet.max_length
    if cfg.longbench_v2.enabled and cfg.longbench_v2.data:
        wanted[f"longbench_v2.max_length={cfg.longbench_v2.max_length}"] = cfg.longbench_v2.max_length
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
    skipped = [{"task": f"ruler/{n}/{name}", "reason": reason}
               for n in cfg.ruler.lengths if n > limit for name in cfg.ruler.tasks] if cfg.ruler.enabled else []
    cfg.ruler.lengths = [n for n in cfg.ruler.lengths if n <= limit]
    if cfg.ruler.enabled and not cfg.ruler.lengths:
        cfg.ruler.enabled = False
    ib = cfg.infinitebench
    if ib.enabled and ib.max_length > limit and (ib.data_dir is not None or ib.files):
        skipped += [{"task": f"infinitebench/{name}", "reason": f"infinitebench.max_length={ib.max_length} is "
                     + reason} for name in ib.tasks]
        ib.enabled = False
    if helmet_files(cfg) and cfg.helmet.max_length > limit:
        skipped += [{"task": f"helmet/{name}", "reason": f"helmet.max_length={cfg.helmet.max_length} is " + reason}
                    for name in helmet_files(cfg)]
        cfg.helmet.enabled = False
    lb = cfg.longbench_v2
    if lb.enabled and lb.data and lb.max_length > limit:
        skipped.append({"task": "longbench_v2/0shot", "reason": f"longbench_v2.max_length={lb.max_length} is " + reason})
        lb.enabled = False
    return skipped


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


GIVEN_DATA = ("infinitebench/", "longbench_v2/", "helmet/")
# a HELMET category (or a task whose class differs from its category's) -> its task class, each built from the
# helmet.* keys by its own `from_config`
HELMET_KINDS = {"recall": helmet.HelmetTask, "rag": helmet.HelmetTask, "rerank": RerankTask, "icl": ICLTask,
                "longqa": LongQATask, "narrativeqa": NarrativeQATask}


def helmet_files(cfg: Config) -> dict[str, tuple[Path, Path | None]]:
    """HELMET task -> (test file, demo file) for the enabled tasks whose test file is given; the rest do not run."""
    h = cfg.helmet
    if not h.enabled:
        return {}
    root = Path(h.data_dir) if h.data_dir else None
    out = {}
    for name in h.tasks:
        path = h.files.get(name) or (root / helmet.DEFAULT_FILES[name] if root else None)
        if path is None:
            continue
        demo = h.demos.get(name) or (root / helmet.DEFAULT_DEMOS[name] if root and name in helmet.DEFAULT_DEMOS else None)
        out[name] = (Path(path), Path(demo) if demo else None)
    return out


def build_tasks(cfg: Config, fmt: Any) -> tuple[list, list, list[dict]]:
    """(main tasks, depth-sweep tasks, skipped) - a task whose data or length does not work is skipped with its reason."""
    tasks, sweep, skipped = [], [], []

    def add(into: list, name: str, make) -> None:
        try:
            task = make()
            if hasattr(task, "fitted_size"):
                task.fitted_size()  # size the haystack now: a length too short for a task shows up here
            into.append(task)
        except (DataMissing, PromptTooLong) as e:
            # these suites read only configured paths (unset: skipped or not run, never "missing")
            skipped.append({"task": name, "reason": str(e),
                            "missing": isinstance(e, DataMissing) and name.startswith(GIVEN_DATA)})

    r = cfg.ruler
    data = RulerData(essays=r.essays, squad=r.squad, hotpotqa=r.hotpotqa)
    if r.enabled:
        for length in r.lengths:
            for name in r.tasks:
                add(tasks, f"ruler/{length}/{name}",
                    lambda name=name, length=length: RulerTask(name, length, fmt, r.num_samples, r.seed, data))
        if r.depth_sweep:
            for length in r.lengths:
                for depth in r.depths:
                    add(sweep, f"ruler/{length}/{r.depth_task}_depth{depth:g}",
                        lambda length=length, depth=depth: RulerTask(r.depth_task, length, fmt, r.depth_samples,
                                                                      r.seed, data, depth=depth))
    ib = cfg.infinitebench
    if ib.enabled:
        for name in ib.tasks:
            path = ib.files.get(name) or (Path(ib.data_dir) / DEFAULT_FILES[name] if ib.data_dir else None)
            if path is None:
                skipped.append({"task": f"infinitebench/{name}",
                                "reason": "no data: set infinitebench.data_dir or infinitebench.files"})
                continue
            add(tasks, f"infinitebench/{name}",
                lambda name=name, path=path: InfiniteBenchTask(
                    name, path, fmt, ib.max_length, ib.num_samples, ib.rouge_stemmer, ib.truncation, ib.system_prompt))
    h = cfg.helmet
    for name, (path, demo) in helmet_files(cfg).items():
        kind = HELMET_KINDS.get(name) or HELMET_KINDS[helmet.CATEGORY[name]]
        add(tasks, f"helmet/{name}", lambda name=name, path=path, demo=demo, kind=kind: kind.from_config(
            name, path, demo, fmt, h))
    lb = cfg.longbench_v2
    if lb.enabled and lb.data:
        add(tasks, "longbench_v2/0shot", lambda: LongBenchV2Task(lb.data, fmt, lb.max_length, lb.num_samples))
    if cfg.toy.enabled:
        if "toy" not in TASK_SUITES:
            raise InputError("toy.enabled=true: no task suite 'toy' is registered here (the demo registers it: "
                             "longpo.demo.extensions.register())")
        tasks += TASK_SUITES["toy"].build(cfg.toy, fmt)
    return tasks, sweep, skipped


def judge_narrativeqa(cfg: Config, fmt: Any, results: list[dict], out: Path) -> None:
    """helmet.judge: HELMET's GPT-4o rubric over the NarrativeQA predictions, put in its result as extra["judge"]."""
    for result in results:
        if result.get("suite") == "helmet" and result["task"] == "narrativeqa" and result["n"]:
            score = narrativeqa_judge(result, JudgeClient(cfg.judge), fmt.chat_template,
                                      out / "helmet_narrativeqa_judge.jsonl", cfg.progress)
            if score is not None:
                result.setdefault("extra", {})["judge"] = score


def main(cfg: Config) -> int:
    beyond = skip_beyond_max_positions(cfg) if cfg.skip_beyond_max_positions else []
    check_inputs(cfg)
    check_rerun(cfg)
    out = Path(cfg.out_dir)
    write_resolved_config(cfg, out)
    results: list[dict] = []
    skipped: list[dict] = list(beyond)
    judged: dict = {}
    backend = LazyBackend(cfg)  # loaded once, and only when something needs generating
    try:
        sampling = Sampling(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.ruler.seed)
        generative = (cfg.ruler.enabled, cfg.infinitebench.enabled, cfg.toy.enabled,
                      cfg.longbench_v2.enabled and bool(cfg.longbench_v2.data), bool(helmet_files(cfg)))
        judged_on = (cfg.mt_bench.enabled or cfg.longbench_chat.enabled) and cfg.num_shards == 1
        if any(generative) or judged_on:
            fmt = PromptFormat(eval_tokenizer(cfg), cfg.chat_template, cfg.system_prompt)
        if any(generative):
            tasks, sweep, built_skipped = build_tasks(cfg, fmt)
            skipped += built_skipped
            for s in skipped:
                print(f"longpo eval: skipped {s['task']}: {s['reason']}", file=sys.stderr)
            mine = (tasks + sweep)[cfg.shard_index::cfg.num_shards]  # this job's share of the tasks
            if mine:
                results = evaluate(backend, mine, out, sampling, cfg.batch_size, cfg.progress)
            if cfg.helmet.judge and cfg.num_shards == 1:  # once, in the summary run of sharded jobs
                judge_narrativeqa(cfg, fmt, results, out)
        if judged_on:  # judged benchmarks run once, in the summary run of sharded jobs
            before = len(skipped)
            judged = run_judged(cfg, fmt, lambda: backend, out, sampling, skipped)
            for s in skipped[before:]:
                print(f"longpo eval: skipped {s['task']}: {s['reason']}", file=sys.stderr)
    finally:
        backend.close()
    short = None
    if cfg.short.enabled and cfg.num_shards == 1:  # lm-eval runs once, in the summary run of sharded jobs
        from longpo.eval.lm_eval import run_short_tasks

        s = cfg.short
        short = run_short_tasks(cfg.model, dict(s.tasks), out, s.include_path, dict(s.dataset_paths),
                                s.batch_size, s.limit, s.dtype, offline=s.offline)
    summary = summarize(results, skipped, short, judged)
    summary["model"] = cfg.model
    paths = write_summary(summary, out, title=f"longpo eval: {cfg.model}")
    if "niah_depth" in summary:
        plot_niah_heatmap(summary["niah_depth"], out / "niah_depth.png")
    print(paths["md"].read_text(encoding="utf-8"))
    check_ran(cfg, results, skipped, short, judged)
    return 0

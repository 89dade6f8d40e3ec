"""`longpo evolve`: the paper's self-evolution loop over growing context lengths, as a driver process.

    longpo evolve --config configs/evolve_mistral-7b.yaml devices=8
    longpo evolve --config configs/evolve_mistral-7b.yaml --dry-run      # plan and validate, run nothing

Iteration i generates short-to-long pairs with the current model, adds its reference log-probs
(the current model with its own config), trains from it with the iteration's length and RoPE
base, and evaluates the result; the trained model is the next iteration's generator and base
(128K -> 256K -> 512K in the paper). The driver holds no model: every stage runs as processes
with the topology it needs (`longpo.launcher`), over the node's `devices`:

    generate    one shard worker per device group, then `generate merge` (records sorted by id); with
                a RoPE override two waves, phase=short (the ORIGINAL model: questions, chosen answers)
                then phase=long (the RoPE-raised generator: rejected answers), each engine alone on its
                GPUs; the reference log-probs then come from the reference stage
    reference   one shard worker per device group (records split by a hash of the id), concatenated
    train       torchrun (or `accelerate launch` with the iteration's accelerate_config) over every
                device, through `launcher` (e.g. srun) on several nodes
    eval        one worker per device group, each a share of the tasks, then one summary process over
                the merged predictions (it loads no model)

Folders:

    output_dir/base/eval                  the starting model, evaluated at the lengths it holds
    output_dir/<name>/generate            merged records (shards/<k>: each worker's output, logs/)
    output_dir/<name>/pairs.jsonl         with reference log-probs (when generate left them out)
    output_dir/<name>/train/final         the trained model (train/logs/train.log: the launch's output)
    output_dir/<name>/eval                summary.json / .md / .csv (shards/<k>, logs/)
    output_dir/evolve.md, evolve.json     every model side by side, every headline score

A stage is marked done (`<stage>.done`) only after all its workers and its merge succeed, each wave
of workers too (`<stage>/logs/<wave>.done`), so a rerun skips what finished and reruns the rest,
which resumes by itself (generate from its manifests, train from its newest checkpoint, eval from
its prediction files, reference from its partial output).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from longpo.config import build_config, config_to_dict, help_field, write_resolved_config
from longpo.data import generate, reference
from longpo.errors import InputError
from longpo.eval import run as eval_run
from longpo.eval.report import headline
from longpo.files import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from longpo.launcher import (
    StageFailed,
    Worker,
    device_groups,
    normalize_devices,
    run_workers,
    stage_argv,
    train_argv,
)
from longpo.launcher import wrap as wrap_launcher
from longpo.models import check_local, max_positions
from longpo.train import trainer

STAGE_ORDER = ("generate", "reference", "train", "eval")
STAGES = {"generate": generate, "reference": reference, "train": trainer, "eval": eval_run}
LAUNCH = ("processes", "inline")


@dataclass(kw_only=True)
class Iteration:
    name: str = help_field(help="folder name of the iteration, e.g. 256k")
    generate: dict = help_field({}, "`longpo generate` keys (model and output_dir are set here)")
    reference: dict = help_field({}, "`longpo reference` keys, used when generate has reference: false")
    train: dict = help_field({}, "`longpo train` keys (model, train_file, output_dir are set here)")
    eval: dict = help_field({}, "`longpo eval` keys (model and out_dir are set here)")
    accelerate_config: str | None = help_field(None, "train with `accelerate launch --config_file` this file "
                                                     "(e.g. configs/accelerate/zero3.yaml); None: torchrun (DDP)")


@dataclass(kw_only=True)
class Config:
    base_model: str = help_field(help="the starting short-context model (a local folder)")
    output_dir: str = help_field("runs/evolve", "one folder per iteration, plus evolve.md / evolve.json")
    eval_base: bool = help_field(True, "evaluate the starting model with the first iteration's eval keys, at the "
                                       "lengths it holds (the rest listed as skipped)")
    iterations: list = help_field([], "list of iterations: {name, generate, reference, train, eval, "
                                      "accelerate_config}")
    devices: Any = help_field(1, "GPUs of one node: a count (8) or ids ([0, 1, 2, 3]); on a machine without GPUs "
                                 "the same number of CPU worker processes (gloo for train)")
    nodes: int = help_field(1, "nodes of the train stage (generate / reference / eval use the driver's node)")
    launcher: str = help_field("", "template that starts the per-node train command on every node, e.g. "
                                   "'srun --nodes={nodes} --ntasks-per-node=1 {command}'; empty: run it here")
    rdzv_endpoint: str = help_field("", "host:port of the rendezvous when nodes > 1, e.g. $MASTER_ADDR:29500")
    master_port: int = help_field(0, "port of a one-node train launch; 0: torchrun --standalone picks a free one")
    launch: str = help_field("processes", "processes: every stage as its own processes (the driver); inline: in "
                                          "this process, one device (library use, the CPU demo)")
    dry_run: bool = help_field(False, "resolve and validate every stage's config, topology and command lines; "
                                      "print the plan and run nothing")

    def __post_init__(self) -> None:
        if not self.base_model:
            raise ValueError("base_model= is required")
        if not self.iterations:
            raise ValueError("iterations: give at least one {name, generate, train, eval}")
        self.iterations = [it if isinstance(it, Iteration) else build_config(Iteration, it, f"iterations[{i}]")
                           for i, it in enumerate(self.iterations)]
        names = [it.name for it in self.iterations]
        if len(set(names)) != len(names) or "base" in names:
            raise ValueError(f"iteration names must be unique and not 'base': {names}")
        if self.launch not in LAUNCH:
            raise ValueError(f"launch={self.launch!r}: choose one of {list(LAUNCH)}")
        self.devices = normalize_devices(self.devices)
        if self.nodes < 1:
            raise ValueError(f"nodes={self.nodes} must be at least 1")
        if self.nodes > 1 and not (self.launcher and self.rdzv_endpoint):
            raise ValueError(f"nodes={self.nodes}: set launcher= (e.g. 'srun --nodes={{nodes}} --ntasks-per-node=1 "
                             "{command}') and rdzv_endpoint=<head node>:29500")
        if self.launch == "inline" and (len(self.devices) > 1 or self.nodes > 1):
            raise ValueError("launch=inline runs every stage in this process on one device; use launch=processes")


def run_once(marker: Path, fn: Any, cfg: Any) -> bool:
    """Run `fn(cfg)` unless `marker` exists; write the marker atomically after it succeeds."""
    if marker.exists():
        return False
    result = fn(cfg)
    if result not in (None, 0):
        raise RuntimeError(f"{marker.stem} stage failed with status {result}")
    atomic_write_json(marker, {"finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    return True


def _needs_two_phases(values: dict) -> bool:
    """A RoPE override with the original model for the short steps: two models, so two processes."""
    rope = values.get("rope_theta") is not None or values.get("max_position_embeddings") is not None
    return rope and values.get("backend", "hf") != "openai" and values.get("original_for_short_steps", True)


def _stage_configs(it: Iteration, model: str, folder: Path) -> dict[str, Any]:
    """Each stage's config: the iteration's keys, then the wiring between stages. A generation in two
    phases leaves the reference log-probs to the reference stage (they need the rejected answers)."""
    values = {**it.generate, "model": model, "output_dir": str(folder / "generate")}
    if _needs_two_phases(values):
        values.update(reference=False, phase="long")
    gen = build_config(generate.Config, values, f"{it.name}.generate")
    pairs = folder / "generate"
    cfgs: dict[str, Any] = {"generate": gen}
    if not gen.reference:
        pairs = folder / "pairs.jsonl"
        cfgs["reference"] = build_config(reference.Config, {
            "tokenizer": gen.tokenizer, "backend": gen.backend,
            "backend_args": {**gen.backend_args, **gen.short_backend_args},
            **it.reference, "input": str(folder / "generate"), "output": str(pairs), "model": model},
            f"{it.name}.reference")
    cfgs["train"] = build_config(trainer.Config, {**it.train, "model": model, "train_file": str(pairs),
                                                  "output_dir": str(folder / "train")}, f"{it.name}.train")
    final = cfgs["train"].export_dir or str(folder / "train" / "final")
    cfgs["eval"] = build_config(eval_run.Config, {**it.eval, "model": final, "out_dir": str(folder / "eval")},
                                f"{it.name}.eval")
    return cfgs


# ------------------------------------------------------------------------------------------ the plan


@dataclass
class Wave:
    """Workers that run together (or a merge the driver does itself), done once."""

    name: str
    workers: list[Worker] = field(default_factory=list)
    configs: dict[str, Any] = field(default_factory=dict)  # worker name -> its stage config
    merge: Callable[[], None] | None = None


@dataclass
class Stage:
    label: str
    folder: Path
    marker: Path
    waves: list[Wave]
    topology: str
    inline: tuple[Any, Any] | None = None  # (stage module, config) for launch=inline


def _tp(backend: str, args: dict) -> int:
    return int(args.get("tensor_parallel_size", 1)) if backend == "vllm" else 1


def _workers(stage: str, folder: Path, name: str, configs: list[Any], groups: list[list[str]]) -> Wave:
    wave = Wave(name)
    for k, (cfg, devices) in enumerate(zip(configs, groups)):
        worker = f"{name}-{k}" if len(configs) > 1 or name != stage else name
        path = folder / "configs" / f"{worker}.yaml"
        wave.workers.append(Worker(worker, stage_argv(stage, path), {"CUDA_VISIBLE_DEVICES": ",".join(devices)},
                                   folder / "logs" / f"{worker}.log"))
        wave.configs[worker] = cfg
    return wave


def _replace(cfg: Any, where: str, **values: Any) -> Any:
    return build_config(type(cfg), {**config_to_dict(cfg), **values}, where)


def plan_generate(cfg: Config, label: str, gen: Any, folder: Path) -> Stage:
    two = gen.phase == "long"
    size = max(_tp(gen.backend, gen.backend_args), _tp(gen.backend, {**gen.backend_args, **gen.short_backend_args}))
    groups = device_groups(cfg.devices, size, f"{label}.generate")
    n = len(groups)
    shards = [folder / "shards" / str(k) for k in range(n)]
    waves = []
    for phase in (("short", "long") if two else ("all",)):
        configs = [_replace(gen, f"{label}.generate", phase=phase, num_shards=n, shard_index=k,
                            output_dir=str(shards[k])) for k in range(n)]
        waves.append(_workers("generate", folder, phase, configs, groups))
    merge = Wave("merge", merge=lambda: merge_generate(shards, folder))
    waves.append(merge)
    engines = "phase=short (original model) then phase=long (RoPE-raised)" if two else "one pass"
    return Stage(f"{label}: generate", folder, folder.parent / "generate.done", waves,
                 f"{n} shard worker(s) x {size} device(s), {gen.backend}, {engines}, then merge")


def merge_generate(shards: list[Path], folder: Path) -> None:
    generate.merge([str(s) for s in shards], str(folder))


def plan_reference(cfg: Config, label: str, ref: Any, folder: Path) -> Stage:
    groups = device_groups(cfg.devices, _tp(ref.backend, ref.backend_args), f"{label}.reference")
    n = len(groups)
    parts = [folder / "shards" / f"{k}.jsonl" for k in range(n)]
    configs = [_replace(ref, f"{label}.reference", num_shards=n, shard_index=k, output=str(parts[k]))
               for k in range(n)]
    output = Path(ref.output)
    waves = [_workers("reference", folder, "reference", configs, groups),
             Wave("merge", merge=lambda: atomic_write_jsonl(output, sorted(
                 (row for p in parts for row in read_jsonl(p)), key=lambda r: r["id"])))]
    return Stage(f"{label}: reference", folder, folder.parent / "reference.done", waves,
                 f"{n} shard worker(s), {ref.backend}, then concatenated by id")


def plan_train(cfg: Config, label: str, tcfg: Any, folder: Path, accelerate_config: str | None) -> Stage:
    nproc, world = len(cfg.devices), len(cfg.devices) * cfg.nodes
    if world % tcfg.sp_size:
        raise InputError(f"{label}.train: sp_size={tcfg.sp_size} must divide the {world} process(es) "
                         f"({cfg.nodes} node(s) x {nproc} device(s)); change sp_size or devices")
    if accelerate_config and not Path(accelerate_config).is_file():
        raise InputError(f"{label}.accelerate_config: {accelerate_config} does not exist")
    path = folder / "configs" / "train.yaml"
    argv = train_argv(path, nproc, cfg.nodes, cfg.master_port, cfg.rdzv_endpoint, accelerate_config)
    argv = wrap_launcher(cfg.launcher, argv, nodes=cfg.nodes, nproc=nproc, world=world)
    wave = Wave("train", [Worker("train", argv, {"CUDA_VISIBLE_DEVICES": ",".join(cfg.devices)},
                                 folder / "logs" / "train.log")], {"train": tcfg})
    shape = trainer.step_shape(tcfg, world)
    return Stage(f"{label}: train", folder, folder.parent / "train.done", [wave],
                 f"{world} process(es) ({cfg.nodes} node(s) x {nproc}), sp_size {tcfg.sp_size}, "
                 f"{shape['pairs_per_step']} pairs per step, {shape['tokens_per_step']} tokens per step at most, "
                 f"{'accelerate ' + accelerate_config if accelerate_config else 'torchrun'}")


def plan_eval(cfg: Config, label: str, ecfg: Any, folder: Path, marker: Path) -> Stage:
    groups = device_groups(cfg.devices, _tp(ecfg.backend, ecfg.backend_args), f"{label}.eval")
    n = len(groups)
    if n == 1:
        return Stage(f"{label}: eval", folder, marker, [_workers("eval", folder, "eval", [ecfg], groups)],
                     f"1 worker x {len(groups[0])} device(s), {ecfg.backend}")
    shards = [folder / "shards" / str(k) for k in range(n)]
    configs = [_replace(ecfg, f"{label}.eval", num_shards=n, shard_index=k, out_dir=str(shards[k]))
               for k in range(n)]
    waves = [_workers("eval", folder, "eval", configs, groups),
             Wave("merge", merge=lambda: merge_predictions(shards, folder)),
             _workers("eval", folder, "summary", [ecfg], groups[:1])]
    return Stage(f"{label}: eval", folder, marker, waves,
                 f"{n} worker(s) x {len(groups[0])} device(s), tasks split, then one summary process")


def merge_predictions(shards: list[Path], folder: Path) -> None:
    """Each shard ran other tasks, so their prediction files are disjoint: put them side by side."""
    for shard in shards:
        for path in sorted((shard / "predictions").rglob("*.jsonl")):
            target = folder / "predictions" / path.relative_to(shard / "predictions")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".jsonl.tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(target)


def check_eval_lengths(label: str, ecfg: Any, limit: int | None) -> None:
    """The trained model does not exist at planning time: check the eval lengths against what it will hold."""
    if limit is None or ecfg.allow_beyond_max_positions or ecfg.skip_beyond_max_positions:
        return
    too_long = [n for n in (ecfg.ruler.lengths if ecfg.ruler.enabled else []) if n > limit]
    if too_long:
        raise InputError(f"{label}.eval: ruler.lengths {too_long} exceed the trained model's max_position_embeddings "
                         f"({limit}); lower them or raise train.max_position_embeddings")


def base_eval_config(cfg: Config) -> Any:
    return build_config(eval_run.Config, {**cfg.iterations[0].eval, "model": cfg.base_model,
                                          "out_dir": str(Path(cfg.output_dir) / "base" / "eval"),
                                          "skip_beyond_max_positions": True}, "base.eval")


def plan(cfg: Config) -> list[Stage]:
    """Every stage of the run, resolved and validated (configs, topology, command lines), in order."""
    out = Path(cfg.output_dir)
    stages = []
    if cfg.eval_base:
        ecfg = base_eval_config(cfg)
        stages.append(plan_eval(cfg, "base", ecfg, out / "base" / "eval", out / "base" / "eval.done"))
        stages[-1].inline = (eval_run, ecfg)
        beyond = eval_run.skip_beyond_max_positions(_replace(ecfg, "base.eval"))
        if beyond:
            stages[-1].topology += (f"; {len(beyond)} task(s) skipped, {beyond[0]['reason']}: "
                                    f"{', '.join(b['task'] for b in beyond)}")
    model = cfg.base_model
    for it in cfg.iterations:
        folder = out / it.name
        cfgs = _stage_configs(it, model, folder)
        stages.append(plan_generate(cfg, it.name, cfgs["generate"], folder / "generate"))
        one_process = cfg.launch == "inline" and cfgs["generate"].phase == "long"  # both models here (hf only)
        stages[-1].inline = (generate, _replace(cfgs["generate"], f"{it.name}.generate", phase="all")
                             if one_process else cfgs["generate"])
        if "reference" in cfgs:
            stages.append(plan_reference(cfg, it.name, cfgs["reference"], folder / "reference"))
            stages[-1].inline = (reference, cfgs["reference"])
        stages.append(plan_train(cfg, it.name, cfgs["train"], folder / "train", it.accelerate_config))
        stages[-1].inline = (trainer, cfgs["train"])
        check_eval_lengths(it.name, cfgs["eval"], cfgs["train"].max_position_embeddings or max_positions(model))
        stages.append(plan_eval(cfg, it.name, cfgs["eval"], folder / "eval", folder / "eval.done"))
        stages[-1].inline = (eval_run, cfgs["eval"])
        model = cfgs["eval"].model
    return stages


def describe(stages: list[Stage]) -> str:
    lines = []
    for stage in stages:
        lines.append(f"{stage.label}: {stage.topology}")
        for wave in stage.waves:
            if wave.merge is not None:
                lines.append(f"  [{wave.name}] in the driver")
            for w in wave.workers:
                lines.append(f"  [{wave.name}] {w.line()}  > {w.log}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ running


def run_stage(stage: Stage) -> None:
    if stage.marker.exists():
        return
    print(f"longpo evolve: {stage.label} ({stage.topology})", flush=True)
    for wave in stage.waves:
        done = stage.folder / "logs" / f"{wave.name}.done"
        if done.exists():
            continue
        for name, wcfg in wave.configs.items():
            path = stage.folder / "configs" / f"{name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, yaml.safe_dump(config_to_dict(wcfg), sort_keys=False))
        if wave.merge is not None:
            wave.merge()
        run_workers(f"{stage.label} [{wave.name}]", wave.workers)
        atomic_write_json(done, {"finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    atomic_write_json(stage.marker, {"finished": time.strftime("%Y-%m-%d %H:%M:%S")})


def rows_of(cfg: Config) -> list[dict]:
    out = Path(cfg.output_dir)
    rows = [{"model": "base", "path": cfg.base_model, "eval": str(out / "base" / "eval")}] if cfg.eval_base else []
    model = cfg.base_model
    for it in cfg.iterations:
        model = _stage_configs(it, model, out / it.name)["eval"].model
        rows.append({"model": it.name, "path": model, "eval": str(out / it.name / "eval")})
    return rows


def evolve(cfg: Config) -> list[dict]:
    """Run (or resume) every iteration; returns one row per evaluated model."""
    if cfg.launch == "processes" or cfg.dry_run:
        check_local(cfg.base_model)
    stages = plan(cfg)
    if cfg.dry_run:
        print(describe(stages))
        return []
    out = Path(cfg.output_dir)
    write_resolved_config(cfg, out)
    for stage in stages:
        if cfg.launch == "inline":
            print(f"longpo evolve: {stage.label}", flush=True)
            module, scfg = stage.inline
            run_once(stage.marker, module.main, scfg)
        else:
            run_stage(stage)
    rows = rows_of(cfg)
    write_report(rows, out)
    return rows


def write_report(rows: list[dict], out: Path) -> None:
    """evolve.json and evolve.md: every model's headline scores side by side ("-": not evaluated, e.g. a
    length beyond the base model's max_position_embeddings, listed under the table with its reason)."""
    scores = []
    for row in rows:
        summary = json.loads((Path(row["eval"]) / "summary.json").read_text())
        scores.append({**row, "scores": headline(summary), "skipped": summary.get("skipped", [])})
    atomic_write_json(out / "evolve.json", scores)
    labels = list(dict.fromkeys(k for s in scores for k in s["scores"]))
    lines = ["| metric | " + " | ".join(s["model"] for s in scores) + " |",
             "|---|" + "---:|" * len(scores)]
    for label in labels:
        cells = [s["scores"].get(label) for s in scores]
        lines.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in cells) + " |")
    for s in scores:
        reasons: dict[str, list[str]] = {}
        for entry in s["skipped"]:
            reasons.setdefault(entry["reason"], []).append(entry["task"])
        for reason, tasks in reasons.items():
            lines.append(f"\n{s['model']}: skipped {len(tasks)} task(s), {reason}: {', '.join(tasks)}")
    atomic_write_text(out / "evolve.md", "\n".join(lines) + "\n")


def main(cfg: Config) -> int:
    try:
        evolve(cfg)
    except StageFailed as e:
        print(f"longpo evolve: {e}", file=sys.stderr)
        return 1
    if not cfg.dry_run:
        print((Path(cfg.output_dir) / "evolve.md").read_text())
    return 0

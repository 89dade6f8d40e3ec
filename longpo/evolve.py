"""`longpo evolve`: the paper's self-evolution loop over growing context lengths.

    longpo evolve --config configs/evolve_mistral-7b.yaml

Iteration i generates short-to-long pairs with the current model, adds its reference log-probs
(the current model with its own config), trains from it with the iteration's length and RoPE
base, and evaluates the result; the trained model is the next iteration's generator and base
(128K -> 256K -> 512K in the paper). Every stage runs through the same library call as its CLI,
with the iteration's overrides on top of the wiring below, and writes into its own folder:

    output_dir/base/eval                  the starting model, evaluated (eval_base: true)
    output_dir/<name>/generate            records, manifest, stats
    output_dir/<name>/pairs.jsonl         with reference log-probs (when generate left them out)
    output_dir/<name>/train/final         the trained model
    output_dir/<name>/eval                summary.json / .md / .csv
    output_dir/evolve.md, evolve.json     one row per model, every headline score

A stage is marked done (`<stage>.done`, written atomically) only after it returns, so a rerun
skips finished stages and reruns an unfinished one, which resumes by itself (generate from its
manifest, train from its newest checkpoint, eval from its prediction files).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longpo.config import build_config, help_field, write_resolved_config
from longpo.data import generate, reference
from longpo.eval import run as eval_run
from longpo.eval.report import headline
from longpo.files import atomic_write_json, atomic_write_text
from longpo.fingerprint import guard, identity, remove, settings
from longpo.train import trainer

STAGE_ORDER = ("generate", "reference", "train", "eval")
STAGES = {"generate": generate, "reference": reference, "train": trainer, "eval": eval_run}


@dataclass(kw_only=True)
class Iteration:
    name: str = help_field(help="folder name of the iteration, e.g. 256k")
    generate: dict = help_field({}, "`longpo generate` keys (model and output_dir are set here)")
    reference: dict = help_field({}, "`longpo reference` keys, used when generate has reference: false")
    train: dict = help_field({}, "`longpo train` keys (model, train_file, output_dir are set here)")
    eval: dict = help_field({}, "`longpo eval` keys (model and out_dir are set here)")


@dataclass(kw_only=True)
class Config:
    base_model: str = help_field(help="the starting short-context model (a local folder)")
    output_dir: str = help_field("runs/evolve", "one folder per iteration, plus evolve.md / evolve.json")
    eval_base: bool = help_field(True, "evaluate the starting model with the first iteration's eval keys")
    iterations: list = help_field([], "list of iterations: {name, generate, reference, train, eval}")
    overwrite: bool = help_field(False, "start over in output_dir: remove every iteration's folders there first; "
                                        "without it a rerun must use the same settings")

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


def run_once(marker: Path, fn: Any, cfg: Any) -> bool:
    """Run `fn(cfg)` unless `marker` exists; write the marker atomically after it succeeds."""
    if marker.exists():
        return False
    result = fn(cfg)
    if result not in (None, 0):
        raise RuntimeError(f"{marker.stem} stage failed with status {result}")
    atomic_write_json(marker, {"finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    return True


def _stage_configs(it: Iteration, model: str, folder: Path) -> dict[str, Any]:
    """Each stage's config: the iteration's keys, then the wiring between stages."""
    gen = build_config(generate.Config, {**it.generate, "model": model, "output_dir": str(folder / "generate")},
                       f"{it.name}.generate")
    pairs = folder / "generate"
    cfgs: dict[str, Any] = {"generate": gen}
    if not gen.reference:
        pairs = folder / "pairs.jsonl"
        cfgs["reference"] = build_config(reference.Config, {
            "tokenizer": gen.tokenizer, "backend": gen.backend, "backend_args": dict(gen.backend_args),
            **it.reference, "input": str(folder / "generate"), "output": str(pairs), "model": model},
            f"{it.name}.reference")
    cfgs["train"] = build_config(trainer.Config, {**it.train, "model": model, "train_file": str(pairs),
                                                  "output_dir": str(folder / "train")}, f"{it.name}.train")
    final = cfgs["train"].export_dir or str(folder / "train" / "final")
    cfgs["eval"] = build_config(eval_run.Config, {**it.eval, "model": final, "out_dir": str(folder / "eval")},
                                f"{it.name}.eval")
    return cfgs


def outputs(cfg: Config) -> list[str]:
    return ["base", *[it.name for it in cfg.iterations], "evolve.json", "evolve.md", "resolved_config.yaml"]


def check_rerun(cfg: Config) -> None:
    """Before any stage runs: every stage's settings (without its exempt keys), wired as below, and the
    base model and corpora match the run in output_dir (a finished stage is skipped by its marker, so
    its own check would never see a changed key)."""
    keys: dict = {"base_model": cfg.base_model, "eval_base": cfg.eval_base}  # output_dir: the folder itself
    inputs = {"base_model": identity(cfg.base_model)}
    model, out = cfg.base_model, Path(cfg.output_dir)
    for it in cfg.iterations:
        cfgs = _stage_configs(it, model, out / it.name)
        for stage, c in cfgs.items():
            keys[f"{it.name}.{stage}"] = settings(c, STAGES[stage].FINGERPRINT_EXEMPT)
        inputs[f"{it.name}.corpus"] = identity(cfgs["generate"].corpus)
        model = cfgs["eval"].model
    guard("evolve", out, keys, (), inputs, cfg.overwrite, lambda: remove(out, outputs(cfg)))


def evolve(cfg: Config) -> list[dict]:
    """Run (or resume) every iteration; returns one row per evaluated model."""
    out = Path(cfg.output_dir)
    check_rerun(cfg)
    write_resolved_config(cfg, out)
    rows = []
    if cfg.eval_base:
        base_eval = build_config(eval_run.Config, {**cfg.iterations[0].eval, "model": cfg.base_model,
                                                   "out_dir": str(out / "base" / "eval")}, "base.eval")
        run_once(out / "base" / "eval.done", eval_run.main, base_eval)
        rows.append({"model": "base", "path": cfg.base_model, "eval": str(out / "base" / "eval")})
    model = cfg.base_model
    for it in cfg.iterations:
        folder = out / it.name
        cfgs = _stage_configs(it, model, folder)
        for stage in STAGE_ORDER:
            if stage in cfgs:
                print(f"longpo evolve: {it.name}: {stage}", flush=True)
                run_once(folder / f"{stage}.done", STAGES[stage].main, cfgs[stage])
        model = cfgs["eval"].model
        rows.append({"model": it.name, "path": model, "eval": str(folder / "eval")})
    write_report(rows, out)
    return rows


def write_report(rows: list[dict], out: Path) -> None:
    """evolve.json and evolve.md: every model's headline scores side by side."""
    scores = []
    for row in rows:
        summary = json.loads((Path(row["eval"]) / "summary.json").read_text())
        scores.append({**row, "scores": headline(summary)})
    atomic_write_json(out / "evolve.json", scores)
    labels = [k for k in scores[0]["scores"]] if scores else []
    lines = ["| metric | " + " | ".join(s["model"] for s in scores) + " |",
             "|---|" + "---:|" * len(scores)]
    for label in labels:
        cells = [s["scores"].get(label) for s in scores]
        lines.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in cells) + " |")
    atomic_write_text(out / "evolve.md", "\n".join(lines) + "\n")


def main(cfg: Config) -> int:
    evolve(cfg)
    print((Path(cfg.output_dir) / "evolve.md").read_text())
    return 0

"""`longpo demo`: the whole method on the built-in toy, on a laptop CPU.

    longpo demo                                  # = longpo demo --config demo
    longpo demo output_dir=runs/demo2 seed=1

1. The base model: the tiny chat model shipped in `longpo/demo/base_model` (trained on SHORT toy
   documents by `python -m longpo.demo.pretrain`), or trained here with `pretrain=true`.
2. Long toy documents per iteration (`corpus/<name>.jsonl`, seeded).
3. `longpo evolve` with the toy evaluation: the base model is evaluated; then per iteration
   `generate` (HF backend) -> `reference` -> `train` (LongPO, new RoPE base) -> `eval`, the
   trained model generating the next iteration's pairs (two iterations: 512 -> 1024 tokens).
4. The paper's baselines from the same start, on the first iteration's pairs, with the same
   training keys: SFT on the chosen answers and DPO (reference = the initial policy on the long
   prompt); each evaluated the same way.
5. `report/`: `table.md` / `table.json` (accuracy per document length and on short documents),
   `accuracy.png`, every stage's resolved config, the training metrics and `training.png` of every
   training run, the generation stats, and `timings.json` (wall time of the demo and of each stage,
   date, versions, cores). `longpo.demo.progress` prints where the demo is, with an ETA.

Every stage is the library call behind its CLI (`longpo generate`, `reference`, `train`, and the
runner of `longpo eval` with the toy task); only the configs are tiny. A rerun skips finished
stages and resumes an unfinished one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from longpo import evolve
from longpo.config import build_config, write_resolved_config
from longpo.data import generate, reference
from longpo.demo.config import Config  # there, so `longpo demo` checks it before torch loads
from longpo.demo.corpus import write_corpus
from longpo.demo.extensions import register
from longpo.demo.pretrain import PretrainConfig, train
from longpo.demo.progress import DemoProgress
from longpo.demo.table import markdown_table
from longpo.errors import InputError
from longpo.eval import run as eval_run
from longpo.evolve import run_once
from longpo.files import atomic_write_json, atomic_write_text, save_figure
from longpo.fingerprint import guard, identity, remove
from longpo.toy.world import ASK_TEMPLATE
from longpo.train import trainer

SHIPPED = Path(__file__).parent / "base_model"


def toy_generate_keys(corpus: str, seed: int) -> dict:
    """`longpo generate` keys for toy documents (their sizes follow the iteration's target_length). The toy
    model as it is writes the rejected answers (no RoPE override: it holds 4096 positions, more than any document)."""
    return {"corpus": corpus, "backend": "hf", "backend_args": {"dtype": "float32", "device": "cpu"},
            "rope_theta": None, "max_position_embeddings": None, "min_chunk_tokens": 40, "max_chunk_tokens": 96, "num_questions": 2, "num_turns": 2, "question_template": ASK_TEMPLATE,
            "question_prefix": "", "question_sampling": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 40},
            "answer_sampling": {"temperature": 0.0, "max_new_tokens": 8},
            # The pre-issue-18 rules: the toy's rejected answers babble to max_new_tokens (kept, without an
            # end-of-turn label), its questions name people a chunk may not hold, its answers repeat.
            "question_parser": "lines", "min_questions": 2,
            "filters": {"min_words": 1, "truncated": "keep", "require_specific_question": False,
                        "drop_copied_answers": False, "max_repeated_ngram_ratio": 1.0},
            "reference": False, "documents_per_group": 16, "seed": seed}


# Keys that do not change the demo's results (torch CPU threads: the same maths on more cores; the stages'
# progress bars, on by default: longpo.demo.progress says where the demo is, they say where a stage is).
FINGERPRINT_EXEMPT = ("output_dir", "threads", "generate.progress", "train.progress_bar", "eval.progress")


def check_rerun(cfg: Config) -> None:
    """A rerun into output_dir resumes only with the same settings and base model (longpo.fingerprint)."""
    out = Path(cfg.output_dir)
    names = ["corpus", "baselines", "report", "base_model", "pretrain.done", "demo_config.yaml", "base",
             "evolve.json", "evolve.md", "resolved_config.yaml", "evolve.fingerprint.json",
             *[it["name"] for it in cfg.iterations]]
    inputs = {} if cfg.pretrain else {"base_model": identity(cfg.base_model or SHIPPED)}
    guard("demo", out, cfg, FINGERPRINT_EXEMPT, inputs, cfg.overwrite, lambda: remove(out, names))


def evolve_config(cfg: Config, base: str) -> Any:
    out = Path(cfg.output_dir)
    iterations = []
    for it in cfg.iterations:
        corpus = write_corpus(out / "corpus" / f"{it['name']}.jsonl", cfg.documents, int(it["length"]), cfg.seed)
        iterations.append({
            "name": it["name"], "target_length": int(it["length"]), "rope_theta": float(it["rope_theta"]),
            "beyond_target": ["train.max_length"],  # the questions and answers need 64 positions past a document
            "generate": {**toy_generate_keys(str(corpus), cfg.seed), **cfg.generate},
            "reference": {"backend_args": {"dtype": "float32", "device": "cpu"}},
            "train": {**cfg.train, "max_length": int(it["length"]) + 64, "seed": cfg.seed},
            "eval": dict(cfg.eval),
        })
    return build_config(evolve.Config, {"base_model": base, "output_dir": str(out), "eval_base": True,
                                        "launch": "inline", "iterations": iterations}, "demo.evolve")


def baseline_labels(cfg: Config) -> list[str]:
    return [f"{loss}: {stage}" for loss in cfg.baselines for stage in ("train", "eval")]


def first_pairs(cfg: Config, first: Any) -> Path:
    """The first iteration's records with their reference log-probs: what the baselines train on."""
    return Path(cfg.output_dir) / first.name / "pairs.jsonl"


def first_iteration(cfg: Config, base: str) -> tuple[Any, list]:
    """The demo's first iteration alone: its evolve config, and its data stages (generate -> reference)
    as `longpo evolve` plans and runs them in the demo, each with its marker and inline (module, config)."""
    ecfg = evolve_config(dataclasses.replace(cfg, iterations=cfg.iterations[:1]), base)
    return ecfg, [s for s in evolve.plan(ecfg) if s.inline[0] in (generate, reference)]


def baseline_configs(train: dict, ev: dict, base: str, pairs: Path, folder: Path, where: str) -> tuple[Any, Any]:
    """A run from the base model on `pairs` with the `longpo train` keys `train` (into folder/train), and
    the evaluation of its final model with the `longpo eval` keys `ev` (into folder/eval)."""
    tcfg = build_config(trainer.Config, {**train, "model": base, "train_file": str(pairs),
                                         "output_dir": str(folder / "train")}, f"{where}.train")
    ecfg = build_config(eval_run.Config, {**ev, "model": str(folder / "train" / "final"),
                                          "out_dir": str(folder / "eval")}, f"{where}.eval")
    return tcfg, ecfg


def train_and_eval(name: str, tcfg: Any, ecfg: Any, folder: Path, progress: DemoProgress) -> None:
    """Train, then evaluate (stages `NAME: train`, `NAME: eval`); each is skipped when its marker in
    `folder` says an earlier run finished it."""
    with progress.stage(f"{name}: train", (folder / "train.done").exists()):
        run_once(folder / "train.done", trainer.main, tcfg)
    with progress.stage(f"{name}: eval", (folder / "eval.done").exists()):
        run_once(folder / "eval.done", eval_run.main, ecfg)


def run_baselines(cfg: Config, ecfg: Any, progress: DemoProgress) -> list[dict]:
    """SFT and DPO from the base model on the first iteration's pairs, same keys as LongPO's run."""
    first = ecfg.iterations[0]
    rows = []
    for loss in cfg.baselines:
        folder = Path(cfg.output_dir) / "baselines" / loss
        tcfg, ev = baseline_configs({**first.train, "loss": loss}, first.eval, ecfg.base_model,
                                    first_pairs(cfg, first), folder, f"baselines.{loss}")
        train_and_eval(loss, tcfg, ev, folder, progress)
        rows.append({"model": loss, "path": ev.model, "eval": str(folder / "eval")})
    return rows


def label(row: dict, first: str) -> str:
    names = {"base": "base", "sft": "SFT", "dpo": "DPO", first: "LongPO"}
    return names.get(row["model"], f"LongPO ({row['model']})")


def write_report(cfg: Config, rows: list[dict], first: str) -> dict:
    """report/: the table (Markdown and JSON), the plot, resolved configs, metrics and generation stats."""
    out = Path(cfg.output_dir)
    report = out / "report"
    table = []
    for row in rows:
        summary = json.loads((Path(row["eval"]) / "summary.json").read_text())
        table.append({"model": label(row, first), "run": row["model"], "path": row["path"],
                      "accuracy": summary["toy"]})
    order = {"base": 0, "SFT": 1, "DPO": 2, "LongPO": 3}
    table.sort(key=lambda r: order.get(r["model"], 4))
    text = markdown_table(table)
    atomic_write_text(report / "table.md", text)
    atomic_write_json(report / "table.json", table)
    plot_accuracy(table, report / "accuracy.png")
    for path in sorted(out.rglob("resolved_config.yaml")) + sorted(out.rglob("*reference_config.yaml")):
        if report not in path.parents:
            target = report / "configs" / (str(path.parent.relative_to(out)).replace("/", "__") + "__" + path.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    for name in ("metrics.jsonl", "training.png", "stats.json"):
        for path in sorted(out.rglob(name)):
            if report not in path.parents:
                target = report / "metrics" / (str(path.parent.relative_to(out)).replace("/", "__") + "__" + name)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    return {"table": table, "markdown": text}


MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", "-.", ":")


def length_axis(ax: Any, lengths: list) -> None:
    """The long-documents panel: one step per length, accuracy from 0 to 100, the legend low on the left."""
    ax.set_xticks(range(len(lengths)), [str(k) for k in lengths])
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("fact lookup accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title("long documents", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")


def plot_accuracy(table: list[dict], path: Path) -> Path | None:
    """Two panels: accuracy against document length, one line per model (distinct markers and line
    styles, each model shifted a little sideways so that equal values stay visible); and accuracy
    on short documents (the base model's own training length), one dot per model, value written."""
    try:
        import matplotlib
    except ImportError:
        print("longpo demo: matplotlib is not installed (pip install longpo[demo]); no plot", flush=True)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [k for k in table[0]["accuracy"] if k != "short"]
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(9.5, 4.0), gridspec_kw={"width_ratios": [2.2, 1]})
    width = 0.08  # sideways shift between models, in units of one length step
    for i, r in enumerate(table):
        shift = (i - (len(table) - 1) / 2) * width
        ax.plot([j + shift for j in range(len(lengths))], [r["accuracy"][k] for k in lengths],
                marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)], markersize=6,
                linewidth=1.5, label=r["model"], color=f"C{i}")
    length_axis(ax, lengths)
    if all("short" in r["accuracy"] for r in table):
        # Dots, not bars: the models differ by a few points near 100, which bars from 0 would hide.
        ys = list(range(len(table)))[::-1]
        values = [r["accuracy"]["short"] for r in table]
        for i, (y, v) in enumerate(zip(ys, values)):
            bars.plot([v], [y], marker=MARKERS[i % len(MARKERS)], markersize=8, color=f"C{i}", linestyle="")
            bars.annotate(f"{v:.1f}", (v, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
        bars.set_yticks(ys, [r["model"] for r in table], fontsize=8)
        bars.set_ylim(-0.7, len(table) - 0.3)
        bars.set_xlim(max(0.0, min(values) - 5), 101)
        bars.set_xlabel("accuracy (%)")
        bars.set_title("short documents", fontsize=10)
        bars.grid(alpha=0.3)
    else:
        bars.set_visible(False)
    fig.suptitle("longpo demo: toy fact lookup after LongPO, SFT and DPO", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def environment(cfg: Config) -> dict:
    """What the numbers of a run depend on besides its config: the date, the libraries, the cores."""
    return {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "threads": cfg.threads}


def demo(cfg: Config) -> dict:
    """Run (or resume) the whole demo; returns the report."""
    register()  # its evaluation is the toy's task suite
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    check_rerun(cfg)
    write_resolved_config(cfg, out, name="demo_config.yaml")
    start = time.perf_counter()
    base = str(out / "base_model") if cfg.pretrain else cfg.base_model or str(SHIPPED)
    if not cfg.pretrain and not (Path(base) / "model.safetensors").exists():
        raise InputError(f"base model {base}: no model.safetensors (train one with "
                         f"`python -m longpo.demo.pretrain --out {base}` or set pretrain=true)")
    # The plan's stage labels depend on the configs only: with pretrain=true the shipped model stands in.
    stages = evolve.plan(evolve_config(cfg, str(SHIPPED) if cfg.pretrain else base))
    labels = [s.label for s in stages] + baseline_labels(cfg)
    progress = DemoProgress(["base: pretrain", *labels] if cfg.pretrain else labels)
    if cfg.pretrain:
        with progress.stage("base: pretrain", (out / "pretrain.done").exists()):
            run_once(out / "pretrain.done", lambda c: train(c, base) and None,
                     PretrainConfig(seed=cfg.seed, threads=cfg.threads))
    ecfg = evolve_config(cfg, base)
    rows = evolve.evolve(ecfg, progress.stage)
    rows += run_baselines(cfg, ecfg, progress)
    report = write_report(cfg, rows, ecfg.iterations[0].name)
    timings = progress.summary() | {"total_seconds": round(time.perf_counter() - start, 2),
                                    "environment": environment(cfg)}
    atomic_write_json(out / "report" / "timings.json", timings)
    print(f"longpo demo: {timings['total_seconds']:.0f} s", flush=True)
    return report | {"timings": timings}


def main(cfg: Config) -> int:
    report = demo(cfg)
    print(report["markdown"])
    print(f"-> {Path(cfg.output_dir) / 'report'}")
    return 0

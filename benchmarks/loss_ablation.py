"""Every loss mode on the demo's first-iteration data, over several training seeds: does the loss matter?

    python benchmarks/loss_ablation.py                          # 6 modes x seeds 0 1 2 into runs/loss_ablation
    python benchmarks/loss_ablation.py --docs                   # then docs/loss_ablation.png and the table in docs/benchmarks.md
    python benchmarks/loss_ablation.py --modes longpo dpo --seeds 0 --out runs/la -- documents=16 eval.toy.num_samples=40

The data is made once, as `longpo demo` makes its first iteration (same corpus, generator and
reference stage; keys after `--` are `longpo demo` keys, e.g. `documents=16`). Then one cell per
(mode, seed): `longpo train` from the demo's base model on those pairs with the demo's training keys
(`loss` = the mode, `seed` = the seed), then the demo's evaluation (toy fact lookup at each length and
on short documents; the same questions for every cell). The modes the demo trains (longpo, sft, dpo)
keep the demo's loss keys (beta, lam, nll_mode), so their seed-0 cells are the demo's own runs; the
other modes take their own defaults for the loss keys (`LOSS_KEYS`), as `longpo train loss=MODE` does.

The seed sets the order of the records and torch's RNG, nothing else: the spread over seeds is the
spread of training order on fixed data and fixed questions, not the questions' sampling error.

Output folder: `data/` (the demo's first iteration), `cells/MODE/seedK/` (train, eval) and
`cells/MODE/seedK.json` (the cell's accuracy, written atomically when it is finished), `table.md`,
`table.json` (mean and sample standard deviation over seeds per mode, per length and on short
documents) and `loss_ablation.png` (accuracy against length per mode, error bars one standard
deviation). A rerun skips finished cells and resumes an unfinished one; adding modes or seeds adds
cells. Any other key changed is refused (longpo.fingerprint): rerun with the same keys, with
`-- overwrite=true` (removes the folder's ablation outputs first), or use a new `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from longpo.config import config_to_dict, load_config, write_resolved_config
from longpo.demo.config import BASELINES, TRAIN_KEYS
from longpo.demo.config import Config as DemoConfig
from longpo.demo.table import replace_block
from longpo.errors import InputError
from longpo.files import atomic_write_json, atomic_write_text, save_figure
from longpo.fingerprint import guard, identity, remove, settings
from longpo.train.losses import MODES

ROOT = Path(__file__).resolve().parents[1]
DOCS_PLOT = ROOT / "docs" / "loss_ablation.png"
DOCS_PAGE = ROOT / "docs" / "benchmarks.md"
MARKERS = ("<!-- loss-ablation:start -->", "<!-- loss-ablation:end -->")
LOSS_KEYS = ("beta", "lam", "nll_weight", "nll_mode", "margin")
DEMO_MODES = (TRAIN_KEYS["loss"], *BASELINES)  # trained by the demo, with its loss keys
OUTPUTS = ("data", "cells", "table.md", "table.json", "loss_ablation.png", "demo_config.yaml",
           "loss_ablation.fingerprint.json")
# Demo keys that do not change a cell (beside the demo's own exempt keys): the later iterations, the
# demo's baselines (every mode is a cell here) and pretrain (refused).
NOT_USED = ("baselines", "pretrain")


def demo_config(out: Path, keys: list[str]) -> DemoConfig:
    """The demo recipe with `keys` over it, its outputs (the data) in out/data."""
    given = {k.split("=", 1)[0] for k in keys}
    if "output_dir" in given:
        raise InputError("output_dir: the data goes to --out's data/ folder; set --out instead")
    cfg = load_config(DemoConfig, "demo", [*keys, f"output_dir={out / 'data'}"], keys_help="longpo demo --help")
    if cfg.pretrain:
        raise InputError("pretrain=true: not in the ablation; give base_model=DIR of a base model trained with "
                         "`python -m longpo.demo.pretrain --out DIR`")
    return cfg


def train_keys(first_train: dict, mode: str, seed: int) -> dict:
    """A cell's `longpo train` keys: the first iteration's, with `loss` and `seed`; a mode the demo does
    not train takes its own defaults for the loss keys."""
    keys = {**first_train, "loss": mode, "seed": seed}
    if mode not in DEMO_MODES:
        keys = {k: v for k, v in keys.items() if k not in LOSS_KEYS}
    return keys


def check_rerun(cfg: DemoConfig, out: Path, base: str) -> None:
    """Before anything is written: a rerun into `out` uses the same demo keys (first iteration) and base model."""
    from longpo.demo.run import FINGERPRINT_EXEMPT

    tree = {**config_to_dict(cfg), "iterations": cfg.iterations[:1]}
    keys = settings(tree, (*FINGERPRINT_EXEMPT, *NOT_USED))  # an empty section compares as absent (guard)
    guard("loss_ablation", out, keys, (), {"base_model": identity(base)}, cfg.overwrite, lambda: remove(out, OUTPUTS))


def check_cell(folder: Path, tcfg: Any, ecfg: Any) -> None:
    """A finished or started cell was made with these train and eval settings (paths aside: the folder's
    own fingerprint covers the base model and the data)."""
    from longpo.eval import run as eval_run
    from longpo.train import trainer

    keys = {"train": settings(tcfg, (*trainer.FINGERPRINT_EXEMPT, "model", "train_file")),
            "eval": settings(ecfg, (*eval_run.FINGERPRINT_EXEMPT, "model"))}
    guard("cell", folder, keys)


def cell_result(out: Path, mode: str, seed: int) -> Path:
    return out / "cells" / mode / f"seed{seed}.json"


def run_cells(out: Path, cells: list[tuple[str, int]], run_cell: Any) -> list[dict]:
    """Each cell's result: read when its file exists, else `run_cell(mode, seed)` and written atomically."""
    results = []
    for mode, seed in cells:
        path = cell_result(out, mode, seed)
        if not path.is_file():
            atomic_write_json(path, run_cell(mode, seed))
        results.append(json.loads(path.read_text()))
    return results


def summarise(results: list[dict], modes: list[str]) -> list[dict]:
    """One row per mode: mean and sample standard deviation over its seeds (None for one seed), per
    length and on short documents, in %, with each seed's values."""
    rows = []
    for mode in modes:
        cells = sorted((r for r in results if r["mode"] == mode), key=lambda r: r["seed"])
        if not cells:
            continue
        columns = list(cells[0]["accuracy"])
        values = {c: [r["accuracy"][c] for r in cells] for c in columns}
        rows.append({"mode": mode, "reference": cells[0]["reference"], "loss_keys": cells[0]["loss_keys"],
                     "seeds": [r["seed"] for r in cells],
                     "mean": {c: statistics.fmean(v) for c, v in values.items()},
                     "std": {c: statistics.stdev(v) if len(v) > 1 else None for c, v in values.items()},
                     "values": values})
    return rows


def describe_keys(keys: dict, preference: bool) -> str:
    """The loss keys that matter for the mode: `beta 0.1, lam 1, margin 3, NLL responses x1`."""
    nll = "NLL off" if keys["nll_mode"] == "off" or keys["nll_weight"] == 0 else \
        f"NLL {keys['nll_mode']} x{keys['nll_weight']:g}"
    if not preference:
        return nll
    margin = f", margin {keys['margin']:g}" if keys["margin"] else ""
    return f"beta {keys['beta']:g}, lam {keys['lam']:g}{margin}, {nll}"


def markdown(rows: list[dict]) -> str:
    """Mode, reference, loss keys, then mean ± std (%) per length and on short documents."""
    columns = [c for c in rows[0]["mean"] if c != "short"] + ["short"]

    def cell(row: dict, c: str) -> str:
        std = row["std"][c]
        return f"{row['mean'][c]:.1f}" + (f" ± {std:.1f}" if std is not None else "")

    lines = ["| mode | reference | loss keys | " + " | ".join(f"{c} tokens" if c != "short" else "short docs"
                                                             for c in columns) + " |",
             "|---|---|---|" + "---:|" * len(columns)]
    for r in rows:
        preference = MODES[r["mode"]].preference
        lines.append(f"| {r['mode']} | {r['reference']} | {describe_keys(r['loss_keys'], preference)} | "
                     + " | ".join(cell(r, c) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def header(env: dict, command: str, samples: int) -> str:
    seeds = sorted(env["seeds"])
    return (f"`{command}`, {env['date']}: load average (1 / 5 / 15 min) {env['load_before']} before, "
            f"{env['load_after']} after; {env['threads']} torch threads on {env['cpu_count']} CPU cores; torch "
            f"{env['torch']}, transformers {env['transformers']}. Toy fact-lookup accuracy (%), mean ± sample "
            f"standard deviation over seeds {', '.join(map(str, seeds))} ({samples} questions per length, the "
            f"same for every cell).\n")


def plot(rows: list[dict], path: Path) -> Path:
    """Accuracy against document length per mode (error bars: one standard deviation over seeds, modes
    shifted sideways so that equal values stay visible), and on short documents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from longpo.demo.run import LINESTYLES, length_axis
    from longpo.demo.run import MARKERS as DOTS

    lengths = [c for c in rows[0]["mean"] if c != "short"]
    fig, (ax, short) = plt.subplots(1, 2, figsize=(9.5, 4.0), gridspec_kw={"width_ratios": [2.2, 1]})
    width = 0.06
    for i, r in enumerate(rows):
        shift = (i - (len(rows) - 1) / 2) * width
        ax.errorbar([j + shift for j in range(len(lengths))], [r["mean"][c] for c in lengths],
                    yerr=[r["std"][c] or 0.0 for c in lengths], marker=DOTS[i % len(DOTS)],
                    linestyle=LINESTYLES[i % len(LINESTYLES)], markersize=5, linewidth=1.3, capsize=3,
                    label=r["mode"], color=f"C{i}")
    length_axis(ax, lengths)
    ys = list(range(len(rows)))[::-1]
    for i, (y, r) in enumerate(zip(ys, rows)):
        short.errorbar([r["mean"]["short"]], [y], xerr=[r["std"]["short"] or 0.0], marker=DOTS[i % len(DOTS)],
                       markersize=7, color=f"C{i}", linestyle="", capsize=3)
    short.set_yticks(ys, [r["mode"] for r in rows], fontsize=8)
    short.set_ylim(-0.7, len(rows) - 0.3)
    low = min(r["mean"]["short"] - (r["std"]["short"] or 0.0) for r in rows)
    short.set_xlim(max(0.0, low - 3), 101)
    short.set_xlabel("accuracy (%)")
    short.set_title("short documents", fontsize=10)
    short.grid(alpha=0.3)
    seeds = max(len(r["seeds"]) for r in rows)
    fig.suptitle(f"loss ablation on the demo's first-iteration data: mean ± std over {seeds} seed(s)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def ablation(out: Path, modes: list[str], seeds: list[int], keys: list[str], command: str) -> dict:
    """Run (or resume) the data step and every cell; write and return the table."""
    import torch

    from longpo.demo import run as demo
    from longpo.demo.extensions import register
    from longpo.demo.progress import DemoProgress
    from longpo.evolve import run_once

    cfg = demo_config(out, keys)
    base = cfg.base_model or str(demo.SHIPPED)
    check_rerun(cfg, out, base)
    register()  # the toy's evaluation task
    torch.set_num_threads(cfg.threads)
    write_resolved_config(cfg, out, name="demo_config.yaml")
    load_before = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    ecfg, data_stages = demo.first_iteration(cfg, base)
    first = ecfg.iterations[0]
    cells = [(m, s) for m in modes for s in seeds]
    labels = [st.label for st in data_stages] + [f"{m} seed {s}: {k}" for m, s in cells for k in ("train", "eval")]
    progress = DemoProgress(labels, name="loss ablation")
    for st in data_stages:
        with progress.stage(st.label, st.marker.exists()):
            run_once(st.marker, st.inline[0].main, st.inline[1])
    pairs = demo.first_pairs(cfg, first)

    def configs(mode: str, seed: int) -> tuple[Path, Any, Any]:
        folder = out / "cells" / mode / f"seed{seed}"
        tcfg, ev = demo.baseline_configs(train_keys(first.train, mode, seed), first.eval, base, pairs, folder,
                                         f"{mode}.seed{seed}")
        return folder, tcfg, ev

    def run_cell(mode: str, seed: int) -> dict:
        folder, tcfg, ev = configs(mode, seed)
        start = time.perf_counter()
        demo.train_and_eval(f"{mode} seed {seed}", tcfg, ev, folder, progress)
        summary = json.loads((folder / "eval" / "summary.json").read_text())
        return {"mode": mode, "seed": seed, "accuracy": summary["toy"], "reference": MODES[mode].reference,
                "loss_keys": {k: getattr(tcfg, k) for k in LOSS_KEYS}, "seconds": round(time.perf_counter() - start, 1),
                "finished": time.strftime("%Y-%m-%d %H:%M:%S")}

    for mode, seed in cells:  # every cell's settings before any cell runs
        folder, tcfg, ev = configs(mode, seed)
        check_cell(folder, tcfg, ev)
        if cell_result(out, mode, seed).is_file():
            for k in ("train", "eval"):
                with progress.stage(f"{mode} seed {seed}: {k}", True):
                    pass
    results = run_cells(out, cells, run_cell)
    rows = summarise(results, modes)
    env = {**demo.environment(cfg), "seeds": seeds, "load_before": load_before,
           "load_after": " / ".join(f"{x:.2f}" for x in os.getloadavg()), "command": command}
    text = header(env, command, first.eval["toy"]["num_samples"]) + "\n" + markdown(rows)
    atomic_write_text(out / "table.md", text)
    atomic_write_json(out / "table.json", {"environment": env, "rows": rows, "cells": results})
    plot(rows, out / "loss_ablation.png")
    return {"rows": rows, "markdown": text, "seconds": progress.summary()}


def write_docs(out: Path, plot_path: Path = DOCS_PLOT, page: Path = DOCS_PAGE) -> None:
    """docs/loss_ablation.png := the run's plot; the lines between the loss-ablation markers of
    docs/benchmarks.md := the run's table.md."""
    shutil.copyfile(out / "loss_ablation.png", plot_path)
    text = page.read_text(encoding="utf-8")
    page.write_text(replace_block(text, (out / "table.md").read_text(), str(page), MARKERS), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/loss_ablation"), help="output folder")
    ap.add_argument("--modes", nargs="+", default=list(MODES), help=f"loss modes (default: all, {' '.join(MODES)})")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    ap.add_argument("--docs", action="store_true",
                    help=f"then copy the plot to {DOCS_PLOT.relative_to(ROOT)} and the table into "
                         f"{DOCS_PAGE.relative_to(ROOT)} (between its loss-ablation markers)")
    ap.add_argument("keys", nargs="*", help="`longpo demo` keys (after --), e.g. documents=16 overwrite=true")
    args = ap.parse_args(argv)
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        ap.error(f"--modes: unknown {unknown}; choose from {list(MODES)}")
    if len(set(args.seeds)) != len(args.seeds) or len(set(args.modes)) != len(args.modes):
        ap.error("--modes / --seeds: each at most once")
    command = "python benchmarks/loss_ablation.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        report = ablation(args.out, args.modes, args.seeds, args.keys, command.strip())
        if args.docs:
            write_docs(args.out)
    except InputError as e:
        print(f"loss_ablation: {e}", file=sys.stderr)
        return 2
    print(report["markdown"])
    print(f"-> {args.out}" + (f"; {DOCS_PLOT.relative_to(ROOT)} and {DOCS_PAGE.relative_to(ROOT)}" if args.docs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

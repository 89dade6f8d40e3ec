"""`longpo <stage> [--config FILE.yaml] [key=value ...]`: all argument parsing, one error policy.

Stages are plain modules, each with a `Config` dataclass and `main(cfg)`; they never parse argv.
Sub-commands (`longpo generate merge ...`, `longpo eval compare A B`) and the two helper commands
(`longpo recipes [copy NAME [DEST]]`, `longpo plot RUN_DIR`) are parsed here too and call library
functions. Logs: longpo's own at INFO, third-party libraries' at WARNING and their progress bars
off; `-v` / `--verbose` shows everything. Errors: a bad config, or an `InputError` raised by a stage (a bad
record, a missing file or model folder), prints one line `longpo <stage>: <message>` and exits 2
(`--debug` shows the traceback as well); any other exception keeps its traceback. A config error
names where the value came from (`command line: ...` or `FILE:LINE: ...`).

A stage's `Config` lives in a module that imports neither torch nor transformers; the stage module is
imported only after the config is parsed and validated (and a local model folder found), so `--help`
and every config error take well under a second, and `longpo --help` loads no stage at all.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import importlib.util
import logging
import os
import re
import sys
import traceback
from pathlib import Path
from typing import NamedTuple

from longpo import recipes
from longpo.backends import BACKENDS, DEFAULT_BACKEND
from longpo.config import ConfigRuleError, build_config, config_help, read_config, source_of
from longpo.demo.extensions import register as register_toy
from longpo.errors import InputError
from longpo.paths import ModelPathError, check_local
from longpo.train.config import TINY
from longpo.train.plots import plot_training


class Stage(NamedTuple):
    config: str  # module holding the stage's `Config`; imports neither torch nor transformers
    module: str  # module holding `main(cfg)` (and the docstring `--help` shows); imported to run
    text: str


STAGES = {
    "generate": Stage("longpo.data.generate", "longpo.data.generate",
                      "self-generate short-to-long preference pairs from long documents"),
    "reference": Stage("longpo.data.reference", "longpo.data.reference",
                       "add short-prompt reference log-probs to preference records"),
    "train": Stage("longpo.train.config", "longpo.train.trainer",
                   "train a policy with the LongPO loss (or the SFT / DPO baselines)"),
    "eval": Stage("longpo.eval.config", "longpo.eval.run",
                  "RULER, InfiniteBench and short-context evaluation; `eval compare A B`"),
    "demo": Stage("longpo.demo.config", "longpo.demo.run",
                  "the built-in tiny end-to-end run (base -> generate -> train -> eval)"),
    "evolve": Stage("longpo.evolve_config", "longpo.evolve",
                    "iterate generate -> train -> eval over growing context lengths"),
}
# Stages whose `model` is a local folder (unless backend=openai, where it is a served name): checked
# right after parsing, so a wrong path is named before any other rule (e.g. train's "needs train_file").
MODEL_FOLDER_STAGES = ("generate", "reference", "train", "eval")


COMMANDS = {
    "recipes": "list the packaged recipes; `recipes copy NAME [DEST]` writes one out to edit",
    "plot": "redraw RUN_DIR/training.png from a (live or finished) training run's metrics.jsonl",
    "plan": "the training layout (sp_size, checkpointing, tiled MLP, offload, accumulation) that fits a length on "
            "N GPUs, with the predicted peak per GPU (estimate; reads MODEL_DIR/config.json only)",
}
USAGE = "longpo <stage> [--config FILE.yaml | --config RECIPE] [key=value ...] [-v] [--debug]"
# Libraries whose INFO lines (accelerate: five per checkpoint) and bars drown the stage's own output.
QUIET_LOGGERS = ("accelerate", "datasets", "transformers", "torch", "huggingface_hub", "urllib3", "filelock",
                 "httpx", "deepspeed", "vllm", "lm_eval")
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
             "TRANSFORMERS_VERBOSITY": "warning", "DATASETS_VERBOSITY": "warning"}


def usage() -> str:
    lines = [f"usage: {USAGE}", "", "stages:"]
    lines += [f"  {name:<10} {stage.text}" for name, stage in STAGES.items()]
    lines += ["", "commands:"] + [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
    lines += ["", "sub-commands:", "  longpo generate merge --inputs DIR [DIR ...] --output DIR",
              "  longpo generate inspect DIR [--n N] [--seed S]",
              "  longpo eval compare RUN_A RUN_B", "  longpo recipes copy NAME [DEST]", "  longpo plot RUN_DIR [--out FILE]",
              "  longpo plan MODEL_DIR --length TOKENS --gpus N --gpu-gib GIB",
              "", "--config takes a YAML file or a packaged recipe's name (`longpo recipes` lists them).",
              "`longpo <stage> --help` lists every config key of a stage with its default and meaning.",
              "-v / --verbose: third-party INFO logs and progress bars too; --debug: tracebacks of input errors."]
    return "\n".join(lines)


def module_doc(name: str) -> str:
    """The docstring of module `name`, read from its source without importing it (nor torch)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, f"no source for module {name}"
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8")), clean=False) or ""


def stage_help(stage: str, config_cls: type, doc: str) -> str:
    """Usage and examples first (the docstring's summary and its first indented blocks), then every
    config key with its real default, then the rest of the docstring (how the stage works)."""
    paragraphs = doc.strip("\n").split("\n\n")
    head = 1
    while head < len(paragraphs) and paragraphs[head].startswith("    "):
        head += 1
    out = [f"usage: {USAGE.replace('<stage>', stage)}", "", "\n\n".join(paragraphs[:head]), "",
           "config keys (key=value on the command line; nested keys with dots):", *config_help(config_cls)]
    if paragraphs[head:]:
        out += ["", "how it works:", "\n\n".join(paragraphs[head:])]
    return "\n".join(out)


def setup_logging(verbose: bool) -> None:
    """longpo at INFO; third-party loggers and progress bars quiet unless `verbose`. Environment
    variables reach the libraries not yet imported and the processes a launcher starts."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("longpo").setLevel(logging.INFO)
    if not verbose:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def split_args(argv: list[str]) -> tuple[str | None, list[str], bool]:
    """Return (config path, key=value overrides, wants help) from a stage's arguments."""
    config, overrides, wants_help = None, [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            wants_help = True
        elif arg in ("-c", "--config"):
            if i + 1 >= len(argv):
                raise InputError(f"{arg} needs a file path")
            config = argv[i + 1]
            i += 1
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            overrides.append(f"{key.replace('-', '_')}={value}")
        elif arg.startswith("--") and (i + 1 >= len(argv) or argv[i + 1].startswith("--")
                                       or re.match(r"[A-Za-z_][\w.]*=", argv[i + 1])):
            overrides.append(f"{arg[2:].replace('-', '_')}=true")  # a bare flag: --dry-run
        elif arg.startswith("--"):
            overrides.append(f"{arg[2:].replace('-', '_')}={argv[i + 1]}")
            i += 1
        else:
            overrides.append(arg)
        i += 1
    return config, overrides, wants_help


# ------------------------------------------------------------------------------------- sub-commands


def generate_merge(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="longpo generate merge",
                                 description="combine shard jobs' outputs: records deduplicated and sorted by id, stats summed")
    ap.add_argument("--inputs", nargs="+", required=True, help="output folders of the shard jobs")
    ap.add_argument("--output", required=True, help="folder of the merged records")
    args = ap.parse_args(argv)
    from longpo.data import generate

    print(generate.summary(generate.merge(args.inputs, args.output)))
    return 0


def generate_inspect(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="longpo generate inspect",
                                 description="stats and random pairs of a `longpo generate` output folder")
    ap.add_argument("dir", help="output folder of `longpo generate` (or of `generate merge`), or a records file")
    ap.add_argument("--n", type=int, default=3, help="pairs to print")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draw")
    ap.add_argument("--width", type=int, default=100, help="characters per line")
    ap.add_argument("--chunk-chars", type=int, default=600, help="characters of the chunk shown (0: all)")
    args = ap.parse_args(argv)
    from longpo.data import inspect

    print(inspect.inspect_pairs(args.dir, args.n, args.seed, args.width, args.chunk_chars))
    return 0


def eval_compare(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="longpo eval compare",
                                 description="the headline scores of two `longpo eval` runs side by side")
    ap.add_argument("run_a", help="out_dir of the first `longpo eval` run (holds summary.json)")
    ap.add_argument("run_b", help="out_dir of the second")
    args = ap.parse_args(argv)
    from longpo.eval import report

    a, b = report.load_summary(args.run_a), report.load_summary(args.run_b)
    print(report.compare(a, b, Path(args.run_a).name or args.run_a, Path(args.run_b).name or args.run_b))
    return 0


SUBCOMMANDS = {("generate", "merge"): generate_merge, ("generate", "inspect"): generate_inspect,
               ("eval", "compare"): eval_compare}


def recipes_command(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="longpo recipes", description=COMMANDS["recipes"])
    actions = ap.add_subparsers(dest="action", metavar="[copy]")
    copy = actions.add_parser("copy", help="write a packaged recipe out to edit (never overwrites)",
                              description="write a packaged recipe out to edit (never overwrites)")
    copy.add_argument("name", help="the recipe's name, as `longpo recipes` lists it (e.g. tiny, accelerate/zero3)")
    copy.add_argument("dest", nargs="?", help="a file, or a folder to put it in (default: here)")
    args = ap.parse_args(argv)
    if args.action is None:
        print(recipes.listing())
        return 0
    target = recipes.copy(args.name, args.dest)
    print(f"wrote {target} (edit it, then: --config {target})")
    return 0


def plot_command(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="longpo plot", description=COMMANDS["plot"])
    ap.add_argument("run_dir", help="output_dir of a `longpo train` run (holds metrics.jsonl)")
    ap.add_argument("--out", help="image path (default: RUN_DIR/training.png)")
    args = ap.parse_args(argv)
    figure = plot_training(args.run_dir, args.out)
    if figure is not None:
        print(figure)
    return 0 if figure is not None else 1


def plan_command(argv: list[str]) -> int:
    from longpo.train import plan

    ap = argparse.ArgumentParser(prog="longpo plan", description=COMMANDS["plan"])
    ap.add_argument("model_dir", help="a model folder with a config.json (Llama / Mistral / Qwen2-style; no weights needed)")
    ap.add_argument("--length", type=int, required=True, help="tokens of one packed row (prompt + both answers)")
    ap.add_argument("--gpus", type=int, default=1, help="GPUs in all (a power of two)")
    ap.add_argument("--gpu-gib", type=float, default=80.0, help="memory per GPU, GiB")
    ap.add_argument("--optimizer", choices=sorted(plan.OPTIMIZER_BYTES), default="rmsprop")
    ap.add_argument("--tile", type=int, default=4096, help="mlp_tile_tokens when the tiled MLP is used")
    ap.add_argument("--pairs-per-step", type=int, default=8, help="pairs per optimizer step (sets the accumulation)")
    args = ap.parse_args(argv)
    if args.length < 1 or args.gpus < 1 or args.gpus & (args.gpus - 1):
        raise InputError(f"--length {args.length} --gpus {args.gpus}: the length must be positive and the GPU count "
                         f"a power of two")
    shape = plan.read_model_shape(args.model_dir)
    chosen, tried = plan.plan_layout(shape, args.length, args.gpus, args.gpu_gib, optimizer=args.optimizer,
                                     tile=args.tile, pairs_per_step=args.pairs_per_step)
    print(plan.describe(args.model_dir, shape, args.length, args.gpus, args.gpu_gib, args.optimizer, chosen, tried))
    return 0 if chosen is not None else 1


RUN_COMMANDS = {"recipes": recipes_command, "plot": plot_command, "plan": plan_command}


# ------------------------------------------------------------------------------------- stages


def check_model_path(stage: str, values: dict, sources: dict[str, str]) -> None:
    """A stage's local model folder exists (and holds a config.json), named with where it was given."""
    model = values.get("model")
    backend = BACKENDS.get(values.get("backend", DEFAULT_BACKEND))  # an unknown name: the config refuses it next
    if (stage not in MODEL_FOLDER_STAGES or not isinstance(model, str) or not model
            or (stage == "train" and model == TINY) or (backend is not None and not backend.local_model)):
        return
    try:
        check_local(model)
    except ModelPathError as e:
        raise InputError(f"{source_of(sources, 'model') or 'config'}: {e}") from None


def parse_config(stage: str, config_cls: type, path: str | None, overrides: list[str]) -> object:
    """The stage's config from a YAML file / recipe and overrides, validated; imports no torch."""
    values, sources, where = read_config(path, overrides)
    try:
        cfg = build_config(config_cls, values, where, sources=sources, keys_help=f"longpo {stage} --help")
    except ConfigRuleError as e:  # a wrong model path first: rules such as train's "needs train_file" assume one
        check_model_path(stage, values, sources)
        raise InputError(str(e)) from e
    except ValueError as e:  # an unknown key or a value of the wrong type
        raise InputError(str(e)) from e
    check_model_path(stage, values, sources)
    return cfg


def run_stage(stage: str, argv: list[str]) -> int:
    """Parse a stage's config from argv, then import the stage and run its `main(cfg)` (or a sub-command)."""
    register_toy()  # the toy's tiny run and eval suite, through the engine's extension points (`eval compare` too)
    if argv and (stage, argv[0]) in SUBCOMMANDS:
        return SUBCOMMANDS[stage, argv[0]](argv[1:])
    config_cls = importlib.import_module(STAGES[stage].config).Config
    config, overrides, wants_help = split_args(argv)
    if wants_help:
        print(stage_help(stage, config_cls, module_doc(STAGES[stage].module)))
        return 0
    cfg = parse_config(stage, config_cls, config, overrides)
    return int(importlib.import_module(STAGES[stage].module).main(cfg) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    verbose = any(a in ("-v", "--verbose") for a in argv)
    argv = [a for a in argv if a not in ("--debug", "-v", "--verbose")]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from longpo import __version__

        print(__version__)
        return 0
    stage = argv[0]
    if stage not in STAGES and stage not in RUN_COMMANDS:
        close = difflib.get_close_matches(stage, [*STAGES, *RUN_COMMANDS], n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        print(f"longpo: unknown stage {stage!r}{hint} (`longpo --help` lists the stages and commands)", file=sys.stderr)
        return 2
    setup_logging(verbose)
    try:
        if stage in RUN_COMMANDS:
            return RUN_COMMANDS[stage](argv[1:])
        return run_stage(stage, argv[1:])
    except InputError as e:
        if debug:
            traceback.print_exc()
        print(f"longpo {stage}: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # a sub-command's argparse: --help (0) or a usage error (2), as a return code
        return e.code if isinstance(e.code, int) else int(e.code is not None)


if __name__ == "__main__":
    sys.exit(main())

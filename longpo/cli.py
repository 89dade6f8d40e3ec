"""`longpo <stage> [--config FILE.yaml] [key=value ...]`: all argument parsing, one error policy.

Stages are plain modules, each with a `Config` dataclass and `main(cfg)`; they never parse argv.
Sub-commands (`longpo generate merge ...`, `longpo eval compare A B`) are parsed here too and call
the stage's library functions. Errors: a bad config, or an `InputError` raised by a stage (a bad
record, a missing file or model folder), prints one line `longpo <stage>: <message>` and exits 2
(`--debug` shows the traceback as well); any other exception keeps its traceback. Stage modules
are imported only when run, so `longpo --help` does not load torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import traceback
from pathlib import Path

from longpo.config import config_help, load_config
from longpo.errors import InputError

STAGES = {
    "generate": ("longpo.data.generate", "self-generate short-to-long preference pairs from long documents"),
    "reference": ("longpo.data.reference", "add short-prompt reference log-probs to preference records"),
    "train": ("longpo.train.trainer", "train a policy with the LongPO loss (or the SFT / DPO baselines)"),
    "eval": ("longpo.eval.run", "RULER, InfiniteBench and short-context evaluation; `eval compare A B`"),
    "demo": ("longpo.demo", "the built-in tiny end-to-end run (base -> generate -> train -> eval)"),
    "evolve": ("longpo.evolve", "iterate generate -> train -> eval over growing context lengths"),
}


def usage() -> str:
    lines = ["usage: longpo <stage> [--config FILE.yaml] [key=value ...] [--debug]", "", "stages:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in STAGES.items()]
    lines += ["", "sub-commands:", "  longpo generate merge --inputs DIR [DIR ...] --output DIR",
              "  longpo eval compare RUN_A RUN_B",
              "", "`longpo <stage> --help` lists every config key of a stage with its default and meaning."]
    return "\n".join(lines)


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
    from longpo.data import generate

    ap = argparse.ArgumentParser(prog="longpo generate merge",
                                 description="combine shard jobs' outputs: records deduplicated and sorted by id, stats summed")
    ap.add_argument("--inputs", nargs="+", required=True, help="output folders of the shard jobs")
    ap.add_argument("--output", required=True, help="folder of the merged records")
    args = ap.parse_args(argv)
    print(generate.summary(generate.merge(args.inputs, args.output)))
    return 0


def eval_compare(argv: list[str]) -> int:
    from longpo.eval import report

    if len(argv) != 2 or any(a.startswith("-") for a in argv):
        raise InputError("usage: longpo eval compare RUN_A RUN_B   (out_dirs of two `longpo eval` runs)")
    a, b = (report.load_summary(p) for p in argv)
    print(report.compare(a, b, Path(argv[0]).name or argv[0], Path(argv[1]).name or argv[1]))
    return 0


SUBCOMMANDS = {("generate", "merge"): generate_merge, ("eval", "compare"): eval_compare}


# ------------------------------------------------------------------------------------- stages


def run_stage(stage: str, argv: list[str]) -> int:
    """Parse a stage's config from argv and run its `main(cfg)` (or one of its sub-commands)."""
    if argv and (stage, argv[0]) in SUBCOMMANDS:
        return SUBCOMMANDS[stage, argv[0]](argv[1:])
    module = importlib.import_module(STAGES[stage][0])
    config, overrides, wants_help = split_args(argv)
    if wants_help:
        print(f"{module.__doc__ or ''}\nconfig keys:")
        print("\n".join(config_help(module.Config)))
        return 0
    try:
        cfg = load_config(module.Config, config, overrides)
    except ValueError as e:  # ConfigError, and the stage config's own __post_init__ checks
        raise InputError(str(e)) from e
    return int(module.main(cfg) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from longpo import __version__

        print(__version__)
        return 0
    stage = argv[0]
    if stage not in STAGES:
        print(f"longpo: unknown stage {stage!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_stage(stage, argv[1:])
    except InputError as e:
        if debug:
            traceback.print_exc()
        print(f"longpo {stage}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`longpo <stage> [--config FILE.yaml] [key=value ...]`: parse the stage's config, call its `main(cfg)`.

Stages are plain modules, each with a `Config` dataclass and `main(cfg)`; a stage with sub-commands
(`longpo eval compare A B`, `longpo generate merge ...`) exposes `cli(argv)` instead and parses itself.
Heavy libraries are imported inside the stages, so `longpo --help` is instant.
"""

from __future__ import annotations

import importlib
import sys

STAGES = {
    "generate": ("longpo.data.generate", "self-generate short-to-long preference pairs from long documents"),
    "reference": ("longpo.data.reference", "add short-prompt reference log-probs to preference records"),
    "train": ("longpo.train.trainer", "train a policy with the LongPO loss (or the SFT / DPO baselines)"),
    "eval": ("longpo.eval.run", "RULER, InfiniteBench and short-context evaluation; `eval compare A B`"),
    "demo": ("longpo.demo", "the built-in tiny end-to-end run (base -> generate -> train -> eval)"),
    "evolve": ("longpo.evolve", "iterate generate -> train -> eval over growing context lengths"),
}


def usage() -> str:
    lines = ["usage: longpo <stage> [--config FILE.yaml] [key=value ...]", "", "stages:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in STAGES.items()]
    lines += ["", "`longpo <stage> --help` lists every config key of a stage with its default and meaning."]
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
                raise SystemExit(f"{arg} needs a file path")
            config = argv[i + 1]
            i += 1
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            overrides.append(f"{key.replace('-', '_')}={value}")
        elif arg.startswith("--"):
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise SystemExit(f"option {arg} needs a value (or write it as key=value)")
            overrides.append(f"{arg[2:].replace('-', '_')}={argv[i + 1]}")
            i += 1
        else:
            overrides.append(arg)
        i += 1
    return config, overrides, wants_help


def run_stage(module_name: str, argv: list[str]) -> int | None:
    from longpo.config import ConfigError, config_help, load_config

    module = importlib.import_module(module_name)
    if hasattr(module, "cli"):
        return module.cli(argv)
    config, overrides, wants_help = split_args(argv)
    if wants_help:
        print(f"{module.__doc__ or ''}\nconfig keys:")
        print("\n".join(config_help(module.Config)))
        return 0
    try:
        cfg = load_config(module.Config, config, overrides)
    except (ConfigError, ValueError) as e:
        print(f"longpo: {e}", file=sys.stderr)
        return 2
    return module.main(cfg)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    result = run_stage(STAGES[stage][0], argv[1:])
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

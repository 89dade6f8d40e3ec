"""How long `longpo demo` takes from scratch, in all and per stage, and on what machine under what load.

    python benchmarks/demo_time.py                       # the default demo in a temporary folder
    python benchmarks/demo_time.py --keep runs/demo      # keep the run (then: python benchmarks/demo_table.py runs/demo)
    python benchmarks/demo_time.py -- seed=1             # keys after -- go to `longpo demo`

Runs `longpo demo` as its own process (as a user does: CLI start-up and imports included) in an
empty folder, then prints a Markdown table of the wall time of the whole command and of each stage
(from the demo's `report/timings.json`), with each stage's share, and the machine: cores, load
averages (os.getloadavg) before and after, Python / torch / transformers versions, date. A timing is
only comparable at the same load: on a shared machine say so next to the number. The last line is
the `REFERENCE_SECONDS` dict of `longpo/demo/progress.py` (the demo's ETA uses the shares) from this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_demo(out: Path, keys: list[str]) -> float:
    """Seconds `longpo demo output_dir=OUT` took; its output goes to this terminal."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "longpo.cli", "demo", f"output_dir={out}", *keys], check=True)
    return time.perf_counter() - start


def table(wall: float, timings: dict, load_before: tuple, load_after: tuple) -> str:
    import torch
    import transformers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env = timings["environment"]
    lines = [f"`longpo demo` from scratch, {time.strftime('%Y-%m-%d %H:%M')}: {cores} cores usable "
             f"({os.cpu_count()} on the machine), {env['threads']} torch threads; Python {platform.python_version()}, "
             f"torch {torch.__version__}, transformers {transformers.__version__}",
             f"load average (1 / 5 / 15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}, "
             f"after: {' / '.join(f'{x:.2f}' for x in load_after)}",
             "",
             "| stage | seconds | share |",
             "|---|---:|---:|"]
    stages = timings["stages"]
    for label, seconds in stages.items():
        lines.append(f"| {label} | {seconds:.1f} | {100 * seconds / wall:.0f}% |")
    inside = max(timings["total_seconds"] - sum(stages.values()), 0.0)
    lines.append(f"| the demo's own work (corpora, plan, report) | {inside:.1f} | {100 * inside / wall:.0f}% |")
    start_up = wall - timings["total_seconds"]
    lines.append(f"| process start-up and imports | {start_up:.1f} | {100 * start_up / wall:.0f}% |")
    lines.append(f"| **total (wall)** | **{wall:.1f}** | 100% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="run in this (new or empty) folder and keep it; default: a temporary one")
    ap.add_argument("keys", nargs="*", help="`longpo demo` keys (after --), e.g. seed=1")
    args = ap.parse_args(argv)
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        ap.error(f"--keep {args.keep}: not empty; the demo must run from scratch")
    with tempfile.TemporaryDirectory(prefix="demo_time_") as tmp:
        out = args.keep or Path(tmp) / "demo"
        load_before = os.getloadavg()
        wall = run_demo(out, args.keys)
        load_after = os.getloadavg()
        timings = json.loads((out / "report" / "timings.json").read_text())
        print()
        print(table(wall, timings, load_before, load_after))
        print()
        print("REFERENCE_SECONDS = " + repr({k: round(v, 1) for k, v in timings["stages"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wall time of `longpo` answering `--help` and config errors, against importing torch + transformers.

    python benchmarks/cli_startup.py                 # median of 5 fresh processes per row
    python benchmarks/cli_startup.py --runs 9

Run it from the checkout's root: `python -m` puts the current folder first on sys.path, so the rows
time the longpo found there.

Each row runs its command in a fresh interpreter (`python -m longpo.cli ...`, the same code as the
`longpo` script) and reports the median, min and max wall time and the exit code. The last row,
`python -c "import torch, transformers"`, is what any of them would cost if the stage were imported
before the config is parsed (issue 24: 4.1-4.5 s on 2 idle cores). The 1-minute load average is
printed before and after: on a shared machine it explains most of the spread. Target: `--help` and
a bad key under 2 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

ROWS = [
    ("longpo --help", ["-m", "longpo.cli", "--help"]),
    ("longpo train --help", ["-m", "longpo.cli", "train", "--help"]),
    ("longpo train max_lenght=4096 (bad key)", ["-m", "longpo.cli", "train", "max_lenght=4096"]),
    ("longpo train max_length=abc (bad value)", ["-m", "longpo.cli", "train", "max_length=abc"]),
    ('python -c "import torch, transformers"', ["-c", "import torch, transformers"]),
]


def time_runs(args: list[str], runs: int) -> tuple[list[float], int]:
    """Wall seconds of `runs` fresh `python args` processes, and the last exit code."""
    times, code = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        code = subprocess.run([sys.executable, *args], capture_output=True).returncode
        times.append(time.perf_counter() - start)
    return times, code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per row (the median is reported)")
    args = ap.parse_args()
    load_before = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  {os.cpu_count()} CPU cores  "
          f"python {platform.python_version()}  load average (1/5/15 min) before: "
          + " / ".join(f"{x:.2f}" for x in load_before))
    print("\n| command | median s | min s | max s | exit code |\n|---|---:|---:|---:|---:|")
    for name, row in ROWS:
        times, code = time_runs(row, args.runs)
        print(f"| `{name}` | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} | {code} |",
              flush=True)
    print("\nload average after: " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()

"""Write (or check) README.md's demo table from a finished `longpo demo`.

    longpo demo output_dir=runs/demo overwrite=true     # a full demo from scratch
    python benchmarks/demo_table.py runs/demo            # README.md: the lines between the demo-table markers
    python benchmarks/demo_table.py runs/demo --check    # exit 1 (and show both) when README.md's table differs

The block written holds the run's date, torch / transformers versions and cores (from the run's
`report/timings.json`) and its table (`report/table.json`, rendered by `longpo.demo.table`); nothing
else in the README changes. `--check` compares the table rows only, to the digit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from longpo.demo.table import readme_block, replace_block, rows_of, table_rows

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="output_dir of a finished `longpo demo`")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 when the tables differ")
    args = ap.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    block = readme_block(args.run_dir)
    if args.check:
        fresh = rows_of(block)
        old = table_rows(text, str(args.readme))
        if old != fresh:
            print(f"{args.readme}'s demo table differs from {args.run_dir}'s:", file=sys.stderr)
            print("\n".join(["README:", *old, "", "run:", *fresh]), file=sys.stderr)
            return 1
        print(f"{args.readme}: the demo table matches {args.run_dir}")
        return 0
    args.readme.write_text(replace_block(text, block, str(args.readme)), encoding="utf-8")
    print(f"{args.readme}: demo table written from {args.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The demo's accuracy table as Markdown, and the README's copy of it between two marker lines.

    python benchmarks/demo_table.py runs/demo           # README.md's table := that finished demo's table
    python benchmarks/demo_table.py runs/demo --check   # exit 1 when README.md's table differs from it

The README's numbers are written by this code from a demo's `report/table.json`, with the date,
library versions and cores of the run that made them (`report/timings.json`), never typed.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import yaml

from longpo.errors import InputError

START, END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"


def markdown_table(table: list[dict]) -> str:
    """One row per model, one column per document length, then short documents (accuracy in %)."""
    columns = [k for k in table[0]["accuracy"] if k != "short"] + ["short"]
    lines = ["| model | " + " | ".join(f"{c} tokens" if c != "short" else "short docs" for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for r in table:
        lines.append(f"| {r['model']} | " + " | ".join(f"{r['accuracy'][c]:.1f}" for c in columns) + " |")
    return "\n".join(lines) + "\n"


def readme_block(run_dir: str | Path) -> str:
    """The lines between the markers: what was measured, when, with what; then the table."""
    run_dir = Path(run_dir)
    report = run_dir / "report"
    if not (report / "table.json").is_file() or not (report / "timings.json").is_file():
        raise InputError(f"{report}: no table.json / timings.json; give the output_dir of a finished `longpo demo`")
    table = json.loads((report / "table.json").read_text())
    env = json.loads((report / "timings.json").read_text())["environment"]
    samples = yaml.safe_load((run_dir / "demo_config.yaml").read_text())["eval"]["toy"]["num_samples"]
    head = (f"Measured {env['date']} by `longpo demo` from scratch ({samples} questions per cell; torch "
            f"{env['torch']}, transformers {env['transformers']}, {env['threads']} threads on {env['cpu_count']} "
            f"CPU cores); written into this file by `python benchmarks/demo_table.py runs/demo`:")
    return textwrap.fill(head, width=100, break_on_hyphens=False) + "\n\n" + markdown_table(table)


def _span(text: str, where: str, markers: tuple[str, str] = (START, END)) -> tuple[int, int]:
    begin, finish = markers
    start, end = text.find(begin), text.find(finish)
    if start < 0 or end < start or text.count(begin) != 1 or text.count(finish) != 1:
        raise InputError(f"{where}: needs the lines {begin} and {finish} once each, in that order, around the table")
    return start + len(begin), end


def replace_block(text: str, block: str, where: str = "README.md", markers: tuple[str, str] = (START, END)) -> str:
    """`text` with the lines between the markers (the demo's, unless given) replaced by `block`."""
    start, end = _span(text, where, markers)
    return text[:start] + "\n" + block.strip("\n") + "\n" + text[end:]


def rows_of(markdown: str) -> list[str]:
    """The table lines (`| ...`) of a Markdown text."""
    return [line.strip() for line in markdown.splitlines() if line.strip().startswith("|")]


def table_rows(text: str, where: str = "README.md", markers: tuple[str, str] = (START, END)) -> list[str]:
    """The table lines between the markers: what a fresh run must reproduce to the digit."""
    start, end = _span(text, where, markers)
    return rows_of(text[start:end])

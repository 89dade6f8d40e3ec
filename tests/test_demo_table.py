"""README.md's demo table is what the current code's `longpo demo` produces, written by
`benchmarks/demo_table.py`, not typed.

Why a full demo and an exact comparison (`test_readme_table_is_what_a_fresh_demo_gives`, slow): the
demo is deterministic (two runs from scratch give the same table to the digit), so any difference
is a change of code or libraries. A demo small enough to be cheap (fewer documents, steps or
questions) trains other models and gives other numbers, and a tolerance wide enough for that
(several points at 100 questions per cell) would let a hand-edited digit through. So the test runs
the README's own command from scratch (about 1.5 minutes on 2 idle cores; marked slow, CI runs it)
and compares every row exactly. The fast tests check the writing and the checking on a stored
report, including that a digit changed by hand fails the check.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from longpo.demo.table import END, START, markdown_table, readme_block, replace_block, rows_of, table_rows
from longpo.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "demo_table.py"


def fake_run(tmp_path: Path) -> Path:
    """A finished demo's report: table.json, timings.json and the demo config the block reads."""
    run = tmp_path / "run"
    (run / "report").mkdir(parents=True)
    table = [{"model": "base", "accuracy": {"256": 64.0, "512": 14.0, "short": 100.0}},
             {"model": "LongPO", "accuracy": {"256": 95.66666, "512": 77.7, "short": 99.7}}]
    (run / "report" / "table.json").write_text(json.dumps(table))
    env = {"date": "2026-12-06", "torch": "2.13.0", "transformers": "5.24.0", "python": "3.12", "cpu_count": 2,
           "threads": 2}
    (run / "report" / "timings.json").write_text(json.dumps({"total_seconds": 91.0, "stages": {},
                                                              "environment": env}))
    (run / "demo_config.yaml").write_text("eval:\n  toy: {num_samples: 300}\n")
    return run


def check(run: Path, readme: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(run), "--readme", str(readme), "--check"],
                          capture_output=True, text=True, cwd=ROOT)


def test_the_script_writes_the_block_and_its_check_fails_on_a_digit_changed_by_hand(tmp_path):
    run = fake_run(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\ntext before\n{START}\nold table\n{END}\n\ntext after\n")
    assert check(run, readme).returncode == 1
    subprocess.run([sys.executable, str(SCRIPT), str(run), "--readme", str(readme)], check=True, cwd=ROOT)
    text = readme.read_text()
    assert text.startswith("# title\n\ntext before\n") and text.endswith(f"{END}\n\ntext after\n")
    assert "Measured 2026-12-06" in text and "torch 2.13.0, transformers 5.24.0" in " ".join(text.split())
    assert table_rows(text) == ["| model | 256 tokens | 512 tokens | short docs |", "|---|---:|---:|---:|",
                                "| base | 64.0 | 14.0 | 100.0 |", "| LongPO | 95.7 | 77.7 | 99.7 |"]
    assert check(run, readme).returncode == 0
    readme.write_text(text.replace("| 95.7 |", "| 95.8 |"))
    failed = check(run, readme)
    assert failed.returncode == 1 and "95.8" in failed.stderr and "95.7" in failed.stderr


def test_markers_must_be_there_once_and_in_order():
    for text in ("no markers", f"{END}\n{START}\n", f"{START}\n{START}\n{END}\n"):
        with pytest.raises(InputError, match="demo-table:start"):
            replace_block(text, "block")


def test_the_readme_table_sits_between_the_markers():
    rows = table_rows((ROOT / "README.md").read_text(encoding="utf-8"))
    assert rows[0].startswith("| model |") and [r.split("|")[1].strip() for r in rows[2:]] == [
        "base", "SFT", "DPO", "LongPO", "LongPO (it2)"]


@pytest.mark.slow
def test_readme_table_is_what_a_fresh_demo_gives(tmp_path):
    from longpo.config import load_config
    from longpo.demo.run import Config, demo

    cfg = load_config(Config, "demo", [f"output_dir={tmp_path / 'demo'}"])  # the README's `longpo demo`, from scratch
    report = demo(cfg)
    fresh = rows_of(readme_block(cfg.output_dir))
    assert fresh == rows_of(markdown_table(report["table"]))
    readme = table_rows((ROOT / "README.md").read_text(encoding="utf-8"))
    assert readme == fresh, ("README.md's demo table is not today's; rewrite it with "
                             f"`python benchmarks/demo_table.py {cfg.output_dir}` after a full demo")

"""Runs that build their own original model and records (`longpo train model=NAME`), by name.

The trainer asks this dict and imports no run's code; a run's user registers it (the toy's `tiny`:
longpo/demo/extensions.py, for `longpo train --config tiny`). Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class BuiltRun(Protocol):
    def prepare(self, output_dir: str, num_records: int) -> None:
        """Build the original model folder and its records in `output_dir` unless already there (one process)."""
        ...

    def paths(self, output_dir: str) -> tuple[Path, Path]:
        """(model folder, records file) of the run in `output_dir`."""
        ...


BUILT_RUNS: dict[str, BuiltRun] = {}

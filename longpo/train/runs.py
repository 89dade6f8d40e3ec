"""Runs that build their own original model and records (`longpo train model=NAME`), by name.

The trainer asks this dict and imports no run's code; a run's user registers it (the toy's `tiny`:
longpo/demo/extensions.py, for `longpo train --config tiny`). Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from longpo.errors import InputError
from longpo.train.config import Config


class BuiltRun(Protocol):
    def prepare(self, output_dir: str, num_records: int) -> None:
        """Build the original model folder and its records in `output_dir` unless already there (one process)."""
        ...

    def paths(self, output_dir: str) -> tuple[Path, Path]:
        """(model folder, records file) of the run in `output_dir`."""
        ...


BUILT_RUNS: dict[str, BuiltRun] = {}


def prepare_tiny(cfg: Config, accelerator: Any) -> Config:
    """model=tiny: the tiny original model and records in output_dir (built once, by the main process), by the
    run its user registered (`longpo.train.runs.BUILT_RUNS`)."""
    if cfg.model not in BUILT_RUNS:
        raise InputError(f"model={cfg.model}: no built run of that name is registered here ({sorted(BUILT_RUNS)}; "
                         "the demo registers tiny: longpo.demo.extensions.register())")
    from longpo.train.launch import plain_init  # torch: only when a built run is prepared

    run = BUILT_RUNS[cfg.model]
    if accelerator.is_main_process:
        with plain_init(accelerator):  # the original model is built whole, not as ZeRO-3 shards
            run.prepare(cfg.output_dir, cfg.tiny_records)
    accelerator.wait_for_everyone()
    model_dir, records_file = run.paths(cfg.output_dir)
    return replace(cfg, model=str(model_dir), train_file=str(records_file))

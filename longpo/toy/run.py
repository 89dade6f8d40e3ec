"""The tiny training run (`longpo train` with model=tiny): a tiny original model and its records, built once.

The records get their reference log-probs the way `longpo reference` computes them: the original
model scoring the SHORT prompts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from longpo.backends.hf import HFBackend
from longpo.data.reference import add_reference_logps
from longpo.files import atomic_write_jsonl
from longpo.toy.records import make_tiny_records
from longpo.toy.tiny import build_tiny_model, build_tiny_tokenizer


def tiny_run_paths(output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(model folder, records file) of the tiny run in `output_dir`."""
    out = Path(output_dir)
    return out / "original_model", out / "tiny_records.jsonl"


def prepare_tiny_run(output_dir: str | os.PathLike, num_records: int) -> tuple[Path, Path]:
    """Build the tiny original model, tokenizer and records in `output_dir` unless already there."""
    model_dir, records_file = tiny_run_paths(output_dir)
    if (model_dir / "config.json").is_file() and records_file.is_file():
        return model_dir, records_file
    tokenizer, model = build_tiny_tokenizer(), build_tiny_model("llama", seed=0, max_position_embeddings=2048)
    tmp = model_dir.with_name(".tmp-original_model")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)
    records = add_reference_logps(HFBackend(model, tokenizer), tokenizer, make_tiny_records(num_records, seed=0))
    atomic_write_jsonl(records_file, records)
    return model_dir, records_file

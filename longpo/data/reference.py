"""`longpo reference`: add short-prompt reference log-probs to preference records.

    longpo reference input=pairs.jsonl output=pairs.ref.jsonl model=/models/Mistral-7B-Instruct-v0.2

For every turn, the frozen ORIGINAL model (its own config: no RoPE override) scores the chosen and
the rejected answer given the SHORT prompt [chunk; question] alone:

    ref_chosen_logp   = log pi_S(chosen   | [chunk; question])   (summed over response tokens)
    ref_rejected_logp = log pi_S(rejected | [chunk; question])

Computed once here, training needs no reference model. Records already holding both values are
kept as they are unless `overwrite=true`. Output rows are appended as they are computed; after a
crash the same command continues after the last complete row, and the final file replaces the
output atomically.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from longpo.backends import make_backend
from longpo.config import config_to_dict, help_field, write_resolved_config
from longpo.data.records import read_records, tokenize_short
from longpo.files import append_jsonl, atomic_write_jsonl, read_jsonl
from longpo.fingerprint import guard, identity, remove
from longpo.models import check_local


@dataclass(kw_only=True)
class Config:
    input: str = help_field(help="preference records: a JSONL / Parquet file or a folder of them")
    output: str = help_field(help="output JSONL file with the reference fields filled")
    model: str = help_field(help="the ORIGINAL (short-context) model: a local folder, or the served name for "
                                 "backend=openai")
    tokenizer: str | None = help_field(None, "tokenizer folder; default: the model folder")
    backend: str = help_field("hf", "scoring backend: hf, vllm or openai")
    backend_args: dict = help_field({}, "extra keyword arguments of the backend (dtype, device, base_url, ...)")
    records_per_call: int = help_field(16, "records scored per backend call (and per flush to disk)")
    overwrite: bool = help_field(False, "recompute values that are already present")
    progress: bool = help_field(True, "show a progress bar")

    def __post_init__(self) -> None:
        for name in ("input", "output", "model"):
            if not getattr(self, name):
                raise ValueError(f"{name}= is required")
        if self.records_per_call < 1:
            raise ValueError(f"records_per_call={self.records_per_call} must be at least 1")


# Keys that do not change the values (a rerun with other values resumes); each record is scored alone.
FINGERPRINT_EXEMPT = ("output", "progress", "records_per_call")


def check_rerun(cfg: Config, local_model: bool) -> None:
    """A rerun resumes `output`'s partial file only with the same settings and inputs (longpo.fingerprint).
    overwrite=true starts over; it is recorded as `recompute_present`, as it changes the values."""
    out = Path(cfg.output)
    inputs = {"input": identity(cfg.input, (".jsonl", ".parquet"))}
    if local_model:
        inputs |= {"model": identity(cfg.model), "tokenizer": identity(cfg.tokenizer)}
    names = [out.name, f"{out.name}.partial", f"{out.name}.reference_config.yaml"]
    guard("reference", out.parent, {**config_to_dict(cfg), "recompute_present": cfg.overwrite}, FINGERPRINT_EXEMPT,
          inputs, cfg.overwrite, lambda: remove(out.parent, names), target=out.with_name(f"{out.name}.fingerprint.json"))


def reference_requests(tokenizer: Any, records: list[dict], overwrite: bool = False
                       ) -> tuple[list[tuple[int, int, str]], list[list[int]], list[list[bool]]]:
    """(record, turn, field) slots to fill and their short sequences / response masks."""
    slots, sequences, masks = [], [], []
    for r, record in enumerate(records):
        for t, turn in enumerate(record["turns"]):
            for branch in ("chosen", "rejected"):
                field = f"ref_{branch}_logp"
                if turn.get(field) is not None and not overwrite:
                    continue
                ids, mask = tokenize_short(tokenizer, turn["chunk"], turn["question"], turn[branch])
                slots.append((r, t, field))
                sequences.append(ids)
                masks.append(mask)
    return slots, sequences, masks


def add_reference_logps(backend: Any, tokenizer: Any, records: list[dict], overwrite: bool = False) -> list[dict]:
    """Fill `ref_chosen_logp` / `ref_rejected_logp` of every turn (in place; returns the records)."""
    slots, sequences, masks = reference_requests(tokenizer, records, overwrite)
    if slots:
        for (r, t, field), value in zip(slots, backend.score(sequences, masks)):
            records[r]["turns"][t][field] = float(value)
    return records


def _completed_rows(partial: Path) -> list[dict]:
    """Complete rows of an interrupted run; a torn last line is dropped and the file rewritten."""
    if not partial.exists():
        return []
    rows = list(read_jsonl(partial, tolerate_torn_tail=True))
    atomic_write_jsonl(partial, rows)
    return rows


def run(cfg: Config, backend_factory: Callable[[], Any] | None = None) -> dict:
    """Library entry: score `cfg.input` into `cfg.output`; returns counts."""
    if backend_factory is None and cfg.backend != "openai":
        check_local(cfg.model)  # before reading anything
    check_rerun(cfg, local_model=backend_factory is None and cfg.backend != "openai")
    records = read_records(cfg.input)
    output = Path(cfg.output)
    write_resolved_config(cfg, output.parent, name=f"{output.name}.reference_config.yaml")
    partial = output.with_name(output.name + ".partial")
    done = _completed_rows(partial)
    done_ids = {row["id"] for row in done}
    todo = [rec for rec in records if rec["id"] not in done_ids]
    backend = backend_factory() if backend_factory else make_backend(
        cfg.backend, model=cfg.model, tokenizer=cfg.tokenizer, **cfg.backend_args)
    start, tokens = time.perf_counter(), 0
    try:
        bar = tqdm(total=len(records), initial=len(done), desc="reference", unit="rec", disable=not cfg.progress)
        for i in range(0, len(todo), cfg.records_per_call):
            group = todo[i : i + cfg.records_per_call]
            _, sequences, _ = reference_requests(backend.tokenizer, group, cfg.overwrite)
            tokens += sum(len(s) for s in sequences)
            add_reference_logps(backend, backend.tokenizer, group, cfg.overwrite)
            for rec in group:
                append_jsonl(partial, rec)
            bar.update(len(group))
            bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - start, 1e-9):.0f}")
        bar.close()
    finally:
        backend.close()
    os.replace(partial, output)
    return {"records": len(records), "resumed": len(done), "scored": len(todo), "tokens": tokens}


def main(cfg: Config) -> int:
    counts = run(cfg)
    print(f"reference: {counts['scored']} records scored ({counts['resumed']} from an earlier run), "
          f"{counts['tokens']} tokens -> {cfg.output}")
    return 0

"""`longpo reference`: add short-prompt reference log-probs to preference records.

    longpo reference input=pairs.jsonl output=pairs.ref.jsonl model=/models/Mistral-7B-Instruct-v0.2

For every turn, the frozen ORIGINAL model (its own config: no RoPE override) scores the chosen and
the rejected answer(s) given the SHORT prompt [chunk; question] alone:

    ref_chosen_logp   = log pi_S(chosen   | [chunk; question])   (summed over response tokens)
    ref_rejected_logp = log pi_S(rejected | [chunk; question])   (a list of M for M rejected answers)

Computed once here, training needs no reference model. Records already holding both values are
kept as they are unless `overwrite=true`. Output rows are appended as they are computed; after a
crash the same command continues after the last complete row, and the final file replaces the
output atomically.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from longpo.backends import BACKENDS, DEFAULT_BACKEND, backend_names, backend_spec, make_backend
from longpo.config import config_to_dict, help_field, write_resolved_config
from longpo.data.record_table import RecordTable
from longpo.data.records import per_answer, tokenize_short
from longpo.data.released import is_released
from longpo.data.released_reference import run_released
from longpo.errors import InputError
from longpo.families import check_model_folder
from longpo.files import append_jsonl, atomic_write_jsonl, read_jsonl, truncate_torn_tail
from longpo.fingerprint import guard, identity, remove


@dataclass(kw_only=True)
class Config:
    input: str = help_field(help="preference records: a JSONL / Parquet file or a folder of them; or a released "
                                 "tokenized set (save_to_disk folder / Parquet, found by its columns)")
    output: str = help_field(help="output JSONL file with the reference fields filled (for a released set: "
                                  "a save_to_disk folder, a copy with ref_chosen_logp / ref_rejected_logp)")
    model: str = help_field(help="the ORIGINAL (short-context) model: a local folder, or the served name for "
                                 "backend=openai")
    tokenizer: str | None = help_field(None, "tokenizer folder; default: the model folder")
    backend: str = help_field(DEFAULT_BACKEND, f"scoring backend: {backend_names()}")
    backend_args: dict = help_field({}, "extra keyword arguments of the backend (dtype, device, base_url, ...)")
    records_per_call: int = help_field(16, "records scored per backend call (and per flush to disk)")
    overwrite: bool = help_field(False, "recompute values that are already present")
    num_shards: int = help_field(1, "split the records over this many independent jobs (by a hash of the id)")
    shard_index: int = help_field(0, "which of them this job is (0-based); concatenate the jobs' outputs")
    progress: bool = help_field(True, "show a progress bar")

    def __post_init__(self) -> None:
        for name in ("input", "output", "model"):
            if not getattr(self, name):
                raise ValueError(f"{name}= is required")
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"shard_index={self.shard_index} must lie in [0, num_shards={self.num_shards})")
        if self.records_per_call < 1:
            raise ValueError(f"records_per_call={self.records_per_call} must be at least 1")
        if not backend_spec(self.backend).scores:
            raise ValueError(f"backend={self.backend} gives no log-probs; choose one that scores: "
                             f"{[n for n, b in BACKENDS.items() if b.scores]}")


def in_shard(record_id: str, num_shards: int, shard_index: int) -> bool:
    """The split `longpo generate` uses for documents (a hash of the id), applied to records."""
    return int(hashlib.sha1(record_id.encode()).hexdigest(), 16) % num_shards == shard_index


# Keys that do not change the values (a rerun with other values resumes); each record is scored alone.
FINGERPRINT_EXEMPT = ("output", "progress", "records_per_call")


def check_rerun(cfg: Config, local_model: bool) -> None:
    """A rerun resumes `output`'s partial file only with the same settings and inputs (longpo.fingerprint).
    overwrite=true starts over; it is recorded as `recompute_present`, as it changes the values."""
    out = Path(cfg.output)
    inputs = {"input": identity(cfg.input, None if is_released(cfg.input) else (".jsonl", ".parquet"))}
    if local_model:
        inputs |= {"model": identity(cfg.model), "tokenizer": identity(cfg.tokenizer)}
    names = [out.name, f"{out.name}.partial", f"{out.name}.reference_config.yaml"]
    guard("reference", out.parent, {**config_to_dict(cfg), "recompute_present": cfg.overwrite}, FINGERPRINT_EXEMPT,
          inputs, cfg.overwrite, lambda: remove(out.parent, names), target=out.with_name(f"{out.name}.fingerprint.json"))


def reference_requests(tokenizer: Any, records: list[dict], overwrite: bool = False
                       ) -> tuple[list[tuple[int, int, str, int | None]], list[list[int]], list[list[bool]]]:
    """(record, turn, field, answer) slots to fill and their short sequences / response masks; answer is
    j for rejected answer j of a list, None for a single answer."""
    slots, sequences, masks = [], [], []
    for r, record in enumerate(records):
        for t, turn in enumerate(record["turns"]):
            for branch in ("chosen", "rejected"):
                field = f"ref_{branch}_logp"
                if turn.get(field) is not None and not overwrite:
                    continue
                answers = per_answer(turn[branch])
                cuts = per_answer(turn.get(f"{branch}_cut"))
                for j, text in enumerate(answers):
                    cut = bool(cuts[j] if len(cuts) == len(answers) else cuts[0])
                    ids, mask = tokenize_short(tokenizer, turn["chunk"], turn["question"], text, cut)
                    slots.append((r, t, field, j if isinstance(turn[branch], list) else None))
                    sequences.append(ids)
                    masks.append(mask)
    return slots, sequences, masks


def add_reference_logps(backend: Any, tokenizer: Any, records: list[dict], overwrite: bool = False) -> list[dict]:
    """Fill `ref_chosen_logp` / `ref_rejected_logp` of every turn, every rejected answer (in place; returns the records)."""
    slots, sequences, masks = reference_requests(tokenizer, records, overwrite)
    if slots:
        for (r, t, field, j), value in zip(slots, backend.score(sequences, masks)):
            turn = records[r]["turns"][t]
            if j is None:
                turn[field] = float(value)
            else:
                if j == 0:
                    turn[field] = [None] * len(turn["rejected"])
                turn[field][j] = float(value)
    return records


def _completed_ids(partial: Path) -> set[str]:
    """Ids of the complete rows of an interrupted run; a torn last line is cut off the file."""
    if not partial.exists():
        return set()
    ids = {row["id"] for row in read_jsonl(partial, tolerate_torn_tail=True)}
    truncate_torn_tail(partial)
    return ids


def run(cfg: Config, backend_factory: Callable[[], Any] | None = None) -> dict:
    """Library entry: score `cfg.input` into `cfg.output`; returns counts."""
    if backend_factory is None:  # before reading anything: the folder and its family
        check_model_folder(cfg.model, cfg.backend)
    check_rerun(cfg, local_model=backend_factory is None and backend_spec(cfg.backend).local_model)
    make = backend_factory or (lambda: make_backend(cfg.backend, model=cfg.model, tokenizer=cfg.tokenizer,
                                                     **cfg.backend_args))
    if is_released(cfg.input):  # tokenized already: scored from its stored short sequences
        if cfg.num_shards > 1:
            raise InputError(f"{cfg.input}: a released tokenized data set is scored by one job (num_shards=1)")
        return run_released(cfg, make)
    records = RecordTable(cfg.input)  # memory-mapped: a group of records is read at a time
    mine = [i for i, rid in enumerate(records.ids) if in_shard(rid, cfg.num_shards, cfg.shard_index)]
    output = Path(cfg.output)
    write_resolved_config(cfg, output.parent, name=f"{output.name}.reference_config.yaml")
    partial = output.with_name(output.name + ".partial")
    done_ids = _completed_ids(partial)
    todo = [i for i in mine if records.ids[i] not in done_ids]
    backend = make()
    start, tokens = time.perf_counter(), 0
    try:
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="reference", unit="rec",
                   disable=not cfg.progress)
        for i in range(0, len(todo), cfg.records_per_call):
            group = [records[k] for k in todo[i : i + cfg.records_per_call]]
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
    if not partial.exists():  # a shard without records still leaves its (empty) output
        atomic_write_jsonl(partial, [])
    os.replace(partial, output)
    return {"records": len(mine), "resumed": len(mine) - len(todo), "scored": len(todo), "tokens": tokens}


def main(cfg: Config) -> int:
    counts = run(cfg)
    print(f"reference: {counts['scored']} records scored ({counts['resumed']} from an earlier run), "
          f"{counts['tokens']} tokens -> {cfg.output}")
    return 0

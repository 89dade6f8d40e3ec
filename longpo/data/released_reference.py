"""`longpo reference` on the released tokenized format: one reference sum per branch and row.

    ref_chosen_logp   = sum_i log pi_S(y_w,i | [C_S,i; I_i])   over the row's n short chosen sequences
    ref_rejected_logp = sum_i log pi_S(y_l,i | [C_S,i; I_i])   over its n short rejected sequences

scored by the ORIGINAL model (`backend.score` on the stored ids and their label masks; no
tokenizer is involved, so the backend's model must be the one whose tokenizer made the ids).
The output is a copy of the dataset (a `save_to_disk` folder) with the two columns added (replaced
with `overwrite=true`; a dataset that already holds them is refused otherwise).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from longpo.data.records import REF_FIELDS
from longpo.data.released import SHORT_COLUMNS, ReleasedFormatError, open_released, short_sequences


def released_reference_logps(backend: Any, dataset: Any, rows_per_call: int = 16, source: str = "released data",
                             progress: bool = False) -> tuple[list[float], list[float], int]:
    """Per-row reference sums (chosen, rejected) and the number of tokens scored."""
    short = dataset.select_columns(list(SHORT_COLUMNS))
    chosen, rejected, tokens = [], [], 0
    for start in tqdm(range(0, len(short), rows_per_call), desc="reference", unit="call", disable=not progress):
        sequences, masks, owners = [], [], []
        for index in range(start, min(start + rows_per_call, len(short))):
            seqs = short_sequences(short[index], index, source)
            for branch in ("chosen", "rejected"):
                for ids, mask in seqs[branch]:
                    sequences.append(ids)
                    masks.append(mask)
                    owners.append((index - start, branch))
        sums = [[0.0, 0.0] for _ in range(min(rows_per_call, len(short) - start))]
        for (row, branch), value in zip(owners, backend.score(sequences, masks)):
            sums[row][branch == "rejected"] += float(value)
        tokens += sum(len(s) for s in sequences)
        chosen += [c for c, _ in sums]
        rejected += [r for _, r in sums]
    return chosen, rejected, tokens


def run_released(cfg: Any, make_backend: Callable[[], Any]) -> dict:
    """Score `cfg.input` (released format) into the dataset folder `cfg.output`; returns counts."""
    dataset = open_released(cfg.input)
    present = [c for c in REF_FIELDS if c in dataset.column_names]
    if present and not cfg.overwrite:
        raise ReleasedFormatError(f"{cfg.input}: already holds {present}; set overwrite=true to recompute them")
    output = Path(cfg.output)
    if output.resolve() == Path(cfg.input).resolve():
        raise ReleasedFormatError(f"output={cfg.output} is the input folder; write the copy somewhere else")
    backend = make_backend()
    try:
        chosen, rejected, tokens = released_reference_logps(backend, dataset, cfg.records_per_call, cfg.input,
                                                            cfg.progress)
    finally:
        backend.close()
    out = dataset.remove_columns(present).add_column(REF_FIELDS[0], chosen).add_column(REF_FIELDS[1], rejected)
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    out.save_to_disk(str(partial))
    if output.exists():
        shutil.rmtree(output)
    partial.rename(output)
    return {"records": len(dataset), "resumed": 0, "scored": len(dataset), "tokens": tokens}

"""The released LongPO training sets (tokenized) as input of `longpo train` and `longpo reference`.

The released data (e.g. Mistral-7B-LongPO-128K-tokenized) is a `datasets.save_to_disk` folder
(or Parquet) with one row per sample and these columns:
    chosen_input_ids / chosen_attention_mask / chosen_labels        the long chosen sequence
    rejected_input_ids / rejected_attention_mask / rejected_labels  the long rejected sequence
    ref_chosen_* / ref_rejected_*      n short sequences [C_S,i; I_i] -> y_i, one per turn

Each long sequence is stored as one row of a batch of one (`[[...]]`) or flat (`[...]`); the
short ones as n rows, right-padded to the longest. Labels are the input ids themselves (not
shifted) on response tokens and -100 on the prompt, on later user turns and on padding.

A row becomes our shared-prefix pair directly from the ids, with no tokenizer involved:
    p        = index of the first label (the same in both branches: their prompt is one prompt)
    prefix   = ids[:p]                    (chosen and rejected must agree there)
    chosen   = chosen_ids[p:],   chosen_mask   = chosen_labels[p:]   != -100
    rejected = rejected_ids[p:], rejected_mask = rejected_labels[p:] != -100

`longpo reference` scores the short sequences with the original model and writes a copy with
`ref_chosen_logp` / `ref_rejected_logp` (summed over the n turns). The ids were made by the
released tokenizer and chat template (Mistral's `[INST]` for the Mistral set): train with that
tokenizer and model family, or the ids mean nothing to the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq

from longpo.data.records import REF_FIELDS, TokenizedPair
from longpo.errors import InputError

IGNORE = -100
BRANCHES = ("chosen", "rejected")
PARTS = ("input_ids", "attention_mask", "labels")
LONG_COLUMNS = tuple(f"{b}_{k}" for b in BRANCHES for k in PARTS)
SHORT_COLUMNS = tuple(f"ref_{c}" for c in LONG_COLUMNS)
RELEASED_COLUMNS = LONG_COLUMNS + SHORT_COLUMNS


class ReleasedFormatError(InputError):
    """A released-format row that cannot be used; the message names the dataset, the row and the column."""


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file() and path.suffix == ".parquet":
        return [path]
    if path.is_dir():
        return sorted(path.glob("*.parquet"))
    return []


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("state.json", "dataset_dict.json"))


def columns_of(path: str | Path) -> list[str]:
    """Column names of a save_to_disk folder or Parquet file(s), read from metadata only ([] otherwise)."""
    path = Path(path)
    if _is_saved_dataset(path):
        return list(open_released(path).column_names)
    files = _parquet_files(path)
    return list(pq.read_schema(files[0]).names) if files else []


def is_released(path: str | Path) -> bool:
    """True when `path` holds the released tokenized columns (detected by its columns, not its name)."""
    return set(RELEASED_COLUMNS) <= set(columns_of(path))


def open_released(path: str | Path) -> datasets.Dataset:
    """The dataset, memory-mapped from its Arrow files (nothing is read into memory here)."""
    path = Path(path)
    if _is_saved_dataset(path):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise ReleasedFormatError(f"{path}: a DatasetDict without a 'train' split (has {list(ds)})")
            ds = ds["train"]
        return ds
    files = _parquet_files(path)
    if not files:
        raise ReleasedFormatError(f"{path}: neither a datasets.save_to_disk folder nor Parquet file(s)")
    return datasets.Dataset.from_parquet([str(f) for f in files])


def _rows(value: Any, where: str, column: str) -> list[list[int]]:
    """A column value as a list of sequences: `[[...], ...]` as is, a flat `[...]` as one sequence."""
    if not isinstance(value, list) or not value:
        raise ReleasedFormatError(f"{where}: column {column!r} is empty or not a list")
    return value if isinstance(value[0], list) else [value]


def _sequence(ids: list[int], attention: list[int], labels: list[int], where: str, column: str
              ) -> tuple[list[int], list[bool]]:
    """One right-padded sequence -> (ids without padding, response mask from the labels)."""
    if not len(ids) == len(attention) == len(labels):
        raise ReleasedFormatError(
            f"{where}: column lengths mismatch in {column}: input_ids {len(ids)}, attention_mask {len(attention)}, "
            f"labels {len(labels)} (each must hold one entry per token)")
    n = sum(1 for a in attention if a)
    if any(not a for a in attention[:n]):
        raise ReleasedFormatError(f"{where}: {column}attention_mask is not right padding (a 0 before the last 1)")
    mask = [label != IGNORE for label in labels[:n]]
    bad = next((j for j in range(n) if mask[j] and labels[j] != ids[j]), None)
    if bad is not None:
        raise ReleasedFormatError(f"{where}: {column}labels[{bad}]={labels[bad]} differs from input_ids[{bad}]="
                                  f"{ids[bad]}; labels must be the (unshifted) ids on response tokens, else -100")
    if not any(mask):
        raise ReleasedFormatError(f"{where}: {column}labels has no label (every entry is -100): no response to train on")
    if mask[0]:
        raise ReleasedFormatError(f"{where}: {column}labels[0] is a label; the first token has no context to predict it")
    return list(ids[:n]), mask


def _branch(row: dict, prefix: str, branch: str, where: str) -> list[tuple[list[int], list[bool]]]:
    column = f"{prefix}{branch}_"
    ids, attention, labels = (_rows(row[column + k], where, column + k) for k in PARTS)
    if not len(ids) == len(attention) == len(labels):
        raise ReleasedFormatError(f"{where}: column lengths mismatch in {column}*: {len(ids)} input_ids rows, "
                                  f"{len(attention)} attention_mask rows, {len(labels)} labels rows")
    return [_sequence(i, a, lab, f"{where}" if len(ids) == 1 else f"{where} sequence {s}", column)
            for s, (i, a, lab) in enumerate(zip(ids, attention, labels))]


def row_id(row: dict, index: int) -> str:
    rid = row.get("id")
    return str(rid) if rid is not None else f"row-{index}"


def released_pair(row: dict, index: int, source: str = "released data") -> TokenizedPair:
    """One released row as a shared-prefix pair (see the module docstring); raises naming the row."""
    where = f"{source} row {index}"
    (chosen, c_mask), = _one(_branch(row, "", "chosen", where), where, "chosen")
    (rejected, r_mask), = _one(_branch(row, "", "rejected", where), where, "rejected")
    p_c, p_r = c_mask.index(True), r_mask.index(True)
    differ = next((j for j in range(min(p_c, p_r)) if chosen[j] != rejected[j]), None)
    if differ is not None or p_c != p_r:
        at = differ if differ is not None else min(p_c, p_r)
        raise ReleasedFormatError(
            f"{where}: chosen and rejected prompts differ (at token {at}; prompt lengths {p_c} and {p_r}); "
            f"a pair needs one long prompt shared by both branches")
    refs = [row.get(k) for k in REF_FIELDS]
    has_ref = all(v is not None for v in refs)
    return TokenizedPair(id=row_id(row, index), prefix=chosen[:p_c], chosen=chosen[p_c:], chosen_mask=c_mask[p_c:],
                         rejected=rejected[p_c:], rejected_mask=r_mask[p_c:],
                         ref_chosen_logp=float(refs[0]) if has_ref else None,
                         ref_rejected_logp=float(refs[1]) if has_ref else None)


def _one(seqs: list, where: str, branch: str) -> list:
    if len(seqs) != 1:
        raise ReleasedFormatError(f"{where}: {branch}_input_ids holds {len(seqs)} sequences; a long branch is one")
    return seqs


def short_sequences(row: dict, index: int, source: str = "released data"
                    ) -> dict[str, list[tuple[list[int], list[bool]]]]:
    """The n short reference sequences of each branch: {"chosen": [(ids, mask)] * n, "rejected": ...}."""
    where = f"{source} row {index}"
    out = {b: _branch(row, "ref_", b, where) for b in BRANCHES}
    if len(out["chosen"]) != len(out["rejected"]):
        raise ReleasedFormatError(f"{where}: column lengths mismatch: {len(out['chosen'])} ref_chosen sequences but "
                                  f"{len(out['rejected'])} ref_rejected sequences (one per turn in each)")
    return out


class ReleasedRecords:
    """A memory-mapped released dataset as a sequence of pairs: `records[i]` builds pair i on demand."""

    def __init__(self, path: str | Path, require_reference: bool = False):
        self.path = str(path)
        dataset = open_released(path)
        self.dataset = dataset.select_columns(
            [c for c in (*LONG_COLUMNS, *REF_FIELDS, "id") if c in dataset.column_names])
        if require_reference and not set(REF_FIELDS) <= set(self.dataset.column_names):
            raise ReleasedFormatError(
                f"{path}: released data without {list(REF_FIELDS)}; run `longpo reference input={path} "
                f"output=<folder> model=<original model>` first, or train with loss=sft")

    def __len__(self) -> int:
        return len(self.dataset)

    def rejected_counts(self) -> dict[int, str]:
        """M (rejected answers per turn) -> where the first record with it is: the released sets hold one."""
        return {1: f"{self.path} row 0"}

    def __getitem__(self, index: int) -> TokenizedPair:
        return released_pair(self.dataset[index], index, self.path)

    def check(self) -> None:
        """Build every pair once (nothing kept), so a bad row stops the run before training."""
        for i in range(len(self)):
            self[i]

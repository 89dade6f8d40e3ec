"""Text records that stay on disk: a memory-mapped Arrow table indexed by position.

`datasets` converts each JSONL / Parquet file once into Arrow files in its cache and maps them
into memory; `RecordTable(path)[i]` reads record i from there when a step needs it, so a rank's
private memory holds the current step's records and the ids, not the corpus (the released 128K
set is about 20 GB of text per rank as Python strings). Positions are those of `read_records`
(files in name order, rows in file order), so `epoch_order` / `rank_share` and checkpoints mean
the same records whichever reader built them.

Every record is validated once when the table opens (a bad record stops the run before
training, naming its file and line) and again, cheaply, when it is read. Whole passes (the check,
`iter(table)`) read the Arrow files with plain reads instead of through the map: the kernel's page
cache holds what they read, not this process, so they leave no mapped page of the corpus resident.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import pyarrow as pa

from longpo.data.records import (
    RecordError,
    _strip_nulls,
    load_record_file,
    num_rejected,
    record_files,
    validate_record,
)


class RecordTable(Sequence):
    """Validated records of a file or folder, read on demand: `len(table)`, `table[i]`, `table.ids`."""

    def __init__(self, path: str | Path, require_reference: bool = False):
        self.path, self.require_reference = str(path), require_reference
        self.files, tables, self.kinds, self.starts = [], [], [], []
        for file in record_files(path):
            kind, ds = load_record_file(file)
            self.starts.append(sum(len(t) for t in tables))
            self.files.append(file)
            self.kinds.append(kind)
            tables.append(ds)
        # One table per file, not concatenated: files of one folder may infer different features (a turn
        # with optional keys such as chosen_cut in one shard only), which datasets cannot align.
        self.tables = tables
        self.total = sum(len(t) for t in tables)
        self.ids: list[str] = []
        self.first_with: dict[int, int] = {}  # M (rejected answers per turn) -> first record holding it
        seen: dict[str, int] = {}
        for i, row in enumerate(self._rows()):
            record = validate_record(_strip_nulls(row), self.where(i), require_reference)
            self.first_with.setdefault(num_rejected(record), i)
            rid = record["id"]
            if rid in seen:
                raise RecordError(f"{self.where(i)}: id {rid!r} repeats the record at {self.where(seen[rid])}; give "
                                  f"every record its own id (or drop the duplicate)")
            seen[rid] = i
            self.ids.append(rid)

    def where(self, index: int) -> str:
        """`file:line` (JSONL) or `file row k` (Parquet) of record `index`, for error messages."""
        f = bisect.bisect_right(self.starts, index) - 1
        local = index - self.starts[f]
        return f"{self.files[f]}:{local + 1}" if self.kinds[f] == "json" else f"{self.files[f]} row {local}"

    def rejected_counts(self) -> dict[int, str]:
        """M (rejected answers per turn) -> where the first record with it is."""
        return {m: self.where(i) for m, i in sorted(self.first_with.items())}

    def _rows(self) -> Iterator[dict]:
        for table in self.tables:
            yield from streamed_rows(table)

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> dict:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        f = bisect.bisect_right(self.starts, index) - 1
        row = self.tables[f][index - self.starts[f]]
        return validate_record(_strip_nulls(row), self.where(index), self.require_reference)

    def __iter__(self) -> Iterator[dict]:
        for index, row in enumerate(self._rows()):
            yield validate_record(_strip_nulls(row), self.where(index), self.require_reference)


def streamed_rows(table: datasets.Dataset) -> Iterator[dict]:
    """The rows of a `datasets` table, in order, read batch by batch from its Arrow cache files with
    plain reads (decoded as `table[i]` would be); a table without cache files is iterated as it is."""
    files = [c["filename"] for c in table.cache_files]
    if not files:
        yield from table
        return
    count = 0
    for name in files:
        with pa.OSFile(name) as f:
            for batch in pa.ipc.open_stream(f):
                for row in batch.to_pylist():
                    count += 1
                    yield table.features.decode_example(row)
    if count != len(table):  # a view (select / shuffle) of its files: not what load_record_file returns
        raise RuntimeError(f"{files}: read {count} rows, the table has {len(table)}")

"""Open a training set by what it holds: our text records, or the released tokenized columns.

`open_records(path)` returns a sequence (`len`, `[i]`) that the trainer indexes by position
(`longpo.train.data.epoch_order` / `rank_share`), so the resume guarantees do not depend on the
format. An item is a record dict (tokenised at the step that uses it) or a ready
`TokenizedPair` (the released format holds ids already).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from longpo.data.record_table import RecordTable
from longpo.data.released import ReleasedRecords, is_released


def open_records(path: str | Path, require_reference: bool = False) -> Sequence:
    """Records or released pairs at `path`, every row checked before training starts."""
    if is_released(path):
        records = ReleasedRecords(path, require_reference)
        records.check()
        return records
    return RecordTable(path, require_reference)

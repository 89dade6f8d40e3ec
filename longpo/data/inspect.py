"""`longpo generate inspect DIR`: read a data set before training on it.

    longpo generate inspect runs/generate_tiny --n 3 --seed 0

Prints the run's stats (`stats.json`, see longpo.data.stats) and N pairs (turns) drawn at random:
the question, the chunk it is about, and the chosen and rejected answers side by side with their
reference log-probs (summed and per token where known) and whether an answer was cut at max_new_tokens.
"""

from __future__ import annotations

import json
import random
import textwrap
from itertools import zip_longest
from pathlib import Path

from longpo.data.records import read_records
from longpo.data.stats import add_reference_stats, new_stats, summary


def _column(title: str, text: str, width: int) -> list[str]:
    lines = textwrap.wrap(title, width) + ["-" * min(len(title), width)]
    for paragraph in text.splitlines() or [""]:
        lines += textwrap.wrap(paragraph, width) or [""]
    return lines


def side_by_side(left: list[str], right: list[str], width: int, gap: str = " | ") -> str:
    return "\n".join(f"{a:<{width}}{gap}{b}".rstrip() for a, b in zip_longest(left, right, fillvalue=""))


def _score(name: str, logp: float | None, cut: bool | None, tokens: int | None) -> str:
    cut_note = ", cut at max_new_tokens" if cut else ""
    if logp is None:
        return f"{name} (no reference log-prob{cut_note})"
    per_token = f", {logp / tokens:.3f}/token over {tokens}" if tokens else ""
    return f"{name} (ref log-prob {logp:.2f}{per_token}{cut_note})"


def _rejected_column(turn: dict, tokens: int | list | None, width: int) -> list[str]:
    """The rejected answer, or the M of them one under the other (rejected 1, 2, ...)."""
    answers = turn["rejected"] if isinstance(turn["rejected"], list) else [turn["rejected"]]
    m = len(answers)

    def each(value):  # a per-answer field as M values
        return value if isinstance(value, list) else [value] * m

    lines = []
    for j, (text, logp, cut, n) in enumerate(zip(answers, each(turn.get("ref_rejected_logp")),
                                                 each(turn.get("rejected_cut")), each(tokens))):
        lines += ([""] if j else []) + _column(_score("rejected" if m == 1 else f"rejected {j + 1} of {m}", logp,
                                                      cut, n), text, width)
    return lines


def shorten(text: str, chars: int) -> str:
    """The text, or its head and tail around a marker when longer than `chars` (0: all of it)."""
    if not chars or len(text) <= chars:
        return text
    half = chars // 2
    return f"{text[:half]} [... {len(text) - 2 * half} characters ...] {text[-half:]}"


def inspect_pairs(folder: str | Path, n: int = 3, seed: int = 0, width: int = 100, chunk_chars: int = 600) -> str:
    """The report `longpo generate inspect` prints, for an output folder (with its stats.json) or a records
    file (e.g. the output of `longpo reference`: stats from its records alone)."""
    folder = Path(folder)
    stats_file = (folder if folder.is_dir() else folder.parent) / "stats.json"
    if folder.is_dir() and not any(folder.glob("*.jsonl")) and not any(folder.glob("*.parquet")):
        head = summary(json.loads(stats_file.read_text())) if stats_file.exists() else ""
        return f"{head}\n\n{folder}: no records (no pair was kept)".strip()
    records = read_records(folder)
    stats = json.loads(stats_file.read_text()) if stats_file.exists() and folder.is_dir() else None
    if stats is None or not stats.get("reference", {}).get("pairs"):  # e.g. reference added later
        ref = new_stats()
        add_reference_stats(ref, records)
        head = summary({**(stats or new_stats()), "reference": ref["reference"]})
        if stats is None:  # a records file: only what the records tell
            head = "\n".join(line for line in head.splitlines() if line.startswith("reference log-prob"))
    else:
        head = summary(stats)
    turns = [(r, i) for r in records for i in range(len(r["turns"]))]
    picked = random.Random(seed).sample(turns, min(n, len(turns)))
    column = (width - 3) // 2
    parts = [head, f"\n{len(turns)} pairs in {len(records)} records; {len(picked)} drawn with seed {seed}"]
    for record, i in picked:
        turn = record["turns"][i]
        counts = ((record.get("meta") or {}).get("answer_tokens") or [])
        n_chosen, n_rejected = counts[i] if i < len(counts) else (None, None)
        parts += [
            "=" * width,
            f"{record['id']}, turn {i + 1} of {len(record['turns'])} (document {len(record['document'])} characters, "
            f"chunk {len(turn['chunk'])})",
            "question: " + turn["question"],
            "chunk: " + shorten(turn["chunk"], chunk_chars).replace("\n", " / "),
            side_by_side(_column(_score("chosen", turn.get("ref_chosen_logp"), turn.get("chosen_cut"), n_chosen),
                                 turn["chosen"], column), _rejected_column(turn, n_rejected, column), column),
        ]
    return "\n".join(parts)

"""The preference record: one long document, n >= 1 turns, optional reference log-probs.

One record per JSON line (or Parquet row); `longpo generate` writes them, `longpo reference`
fills the reference fields, `longpo train` reads them:
    {
      "id": "doc-00017",                 # stable, unique; used for dedup and error messages
      "document": "<the long context C_L>",
      "turns": [                         # n >= 1; turn i is asked after turns < i of its own branch
        {
          "question": "According to the passage above, ...",
          "chunk": "<the short context C_S of this turn, a substring of the document>",
          "chosen": "<answer given only the chunk: y_w>",
          "rejected": "<answer given the whole document: y_l>",   # or a list of M such answers
          "ref_chosen_logp": -41.2,      # optional: log pi_S(chosen | [chunk; question]), summed
          "ref_rejected_logp": -57.9,    # optional: log pi_S(rejected | [chunk; question]), summed (a list of M)
          "chosen_cut": true             # optional (also rejected_cut): the answer hit max_new_tokens and was
        }                                #   trimmed; its end-of-turn token is not a response token
      ],
      "meta": {...}                      # optional, free-form (source, lengths, generator)
    }

Several rejected answers: `rejected` may be a list of M >= 1 answers (`ref_rejected_logp` and
`rejected_cut` then lists of M too); a string is M = 1. Every turn of a record holds the same M,
and rejected branch j answers with answer j at every turn. A record is then M pairs sharing the
chosen answer (or one term over all M, as the loss mode declares).

Prompts: the first user message is `user_content(document, question_1)`; later turns carry only
their question. The short (reference) prompt of turn i is `user_content(chunk_i, question_i)`
alone, without earlier turns. Labels cover assistant tokens only, found by rendering the model's
own chat template turn by turn (no `{% generation %}` markers needed); the end-of-turn token of an
answer marked `*_cut` is left out of them, since the model never generated it there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from longpo.errors import InputError
from longpo.files import read_jsonl

REQUIRED_TURN_FIELDS = ("question", "chunk", "chosen", "rejected")
REF_FIELDS = ("ref_chosen_logp", "ref_rejected_logp")
CUT_FIELDS = ("chosen_cut", "rejected_cut")


class RecordError(InputError):
    """A record that cannot be used; the message names the file, record and field."""


def user_content(context: str, question: str) -> str:
    """The user message that puts a question after its context (long document or short chunk)."""
    return f"{context}\n\n{question}"


def per_answer(value: Any) -> list:
    """A rejected-answer field as a list of M values: a single value (string, number, bool) is M = 1."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def num_rejected(record: dict) -> int:
    """M: how many rejected answers each turn of a (validated) record holds."""
    return len(per_answer(record["turns"][0]["rejected"]))


def answer(turn: dict, branch: str, j: int = 0) -> str:
    """The answer of `branch` in `turn`: the chosen one, or rejected answer j."""
    return turn[branch] if branch == "chosen" else per_answer(turn[branch])[j]


def conversation(context: str, turns: list[dict], branch: str, j: int = 0) -> list[dict]:
    """Chat messages of one branch ("chosen", or "rejected" answer j) of a multi-turn record over `context`."""
    messages = []
    for i, turn in enumerate(turns):
        content = user_content(context, turn["question"]) if i == 0 else turn["question"]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": answer(turn, branch, j)})
    return messages


def validate_record(record: Any, where: str, require_reference: bool = False) -> dict:
    """Check one record's shape and values; raise `RecordError` naming `where` and the field."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    rid = record.get("id")
    label = f"{where} (id={rid!r})" if rid is not None else where
    if not isinstance(rid, str) or not rid:
        raise RecordError(f"{label}: field 'id' must be a non-empty string")
    if not isinstance(record.get("document"), str) or not record["document"]:
        raise RecordError(f"{label}: field 'document' must be a non-empty string")
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"{label}: field 'turns' must be a non-empty list")
    m = None  # rejected answers per turn, the same in every turn
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"{label}: field 'turns[{i}]' must be an object")
        for key in REQUIRED_TURN_FIELDS:
            value = turn.get(key)
            if key == "rejected" and isinstance(value, list):
                if not value:
                    raise RecordError(f"{label}: field 'turns[{i}].rejected' is an empty list; give M >= 1 answers")
                m_turn = len(value)
                if m is not None and m_turn != m:
                    raise RecordError(f"{label}: field 'turns[{i}].rejected' holds {m_turn} answers, turn 0 holds "
                                      f"{m}; every turn of a record needs the same number of rejected answers")
                m = m_turn
                values = [(f"turns[{i}].rejected[{j}]", v) for j, v in enumerate(value)]
            else:
                if key == "rejected":
                    if m not in (None, 1):
                        raise RecordError(f"{label}: field 'turns[{i}].rejected' holds 1 answer, turn 0 holds {m}; "
                                          f"every turn of a record needs the same number of rejected answers")
                    m = 1
                values = [(f"turns[{i}].{key}", value)]
            for name, v in values:
                if not isinstance(v, str):
                    raise RecordError(f"{label}: field '{name}' is missing or not a string")
                if not v.strip():
                    raise RecordError(f"{label}: field '{name}' is empty")
        for key in REF_FIELDS:
            value = turn.get(key)
            if value is None:
                if require_reference:
                    raise RecordError(
                        f"{label}: field 'turns[{i}].{key}' is missing; run `longpo reference` on this "
                        f"file first, or train with a loss that needs no reference (loss=sft)"
                    )
                continue
            for v in _rejected_values(value, key, m, f"{label}: field 'turns[{i}].{key}'"):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise RecordError(f"{label}: field 'turns[{i}].{key}' must be a finite number, got {v!r}")
        for key in CUT_FIELDS:
            if turn.get(key) is None:
                continue
            for v in _rejected_values(turn[key], key, m, f"{label}: field 'turns[{i}].{key}'"):
                if not isinstance(v, bool):
                    raise RecordError(f"{label}: field 'turns[{i}].{key}' must be true or false, got {v!r}")
    return record


def _rejected_values(value: Any, key: str, m: int, where: str) -> list:
    """The values of a per-answer field: one for a chosen field, M for a rejected one (a list of M, or one value for M = 1)."""
    if not key.startswith(("rejected", "ref_rejected")):
        if isinstance(value, list):
            raise RecordError(f"{where} must be a single value, got a list")
        return [value]
    if isinstance(value, list) and len(value) != m:
        raise RecordError(f"{where} holds {len(value)} values for {m} rejected answers; give one per answer")
    if not isinstance(value, list) and m != 1:
        raise RecordError(f"{where} must be a list of {m} values, one per rejected answer")
    return per_answer(value)


def has_reference(record: dict) -> bool:
    return all(turn.get(k) is not None for turn in record["turns"] for k in REF_FIELDS)


RECORD_SUFFIXES = (".jsonl", ".parquet")


def read_records(path: str | Path, require_reference: bool = False) -> list[dict]:
    """Read and validate records from a JSONL or Parquet file (or a folder of them) with `datasets`."""
    records, wheres = [], []
    for file in record_files(path):
        kind, ds = load_record_file(file)
        for i, row in enumerate(ds):
            where = f"{file}:{i + 1}" if kind == "json" else f"{file} row {i}"
            records.append(validate_record(_strip_nulls(row), where, require_reference))
            wheres.append(where)
    _check_unique_ids(records, wheres)
    return records


def record_files(path: str | Path) -> list[Path]:
    """The record files at `path`: the file itself, or the .jsonl / .parquet files of a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in RECORD_SUFFIXES)
        if not files:
            raise RecordError(f"{path}: folder holds no .jsonl or .parquet files")
        return files
    if path.is_file():
        return [path]
    raise RecordError(f"{path}: no such file or folder")


def load_record_file(file: Path) -> tuple[str, datasets.Dataset]:
    """("json" | "parquet", the file as a memory-mapped Arrow table); row numbers of `where` follow the kind."""
    kind = "parquet" if file.suffix == ".parquet" else "json"
    if kind == "json":
        _check_json_lines(file)
    try:
        return kind, datasets.load_dataset(kind, data_files=str(file), split="train")
    except Exception as e:  # datasets wraps parser errors in many types
        raise RecordError(f"{file}: cannot be read as {kind}: {e}") from e


def _check_json_lines(file: Path) -> None:
    """Name the exact line of a JSON error before `datasets` reports it without one, and refuse an empty file."""
    if sum(1 for _ in read_jsonl(file)) == 0:
        raise RecordError(f"{file}: the file is empty (0 records); regenerate it, or remove it from the folder")


def _strip_nulls(row: dict) -> dict:
    # datasets fills absent nested keys with None when schemas differ between rows.
    out = dict(row)
    if out.get("meta") is None:
        out.pop("meta", None)
    return out


def _check_unique_ids(records: list[dict], wheres: list[str]) -> None:
    seen: dict[str, str] = {}
    for rec, where in zip(records, wheres):
        if rec["id"] in seen:
            raise RecordError(f"{where}: id {rec['id']!r} repeats the record at {seen[rec['id']]}; give every "
                              f"record its own id (or drop the duplicate)")
        seen[rec["id"]] = where


# --------------------------------------------------------------------------------------------
# Tokenisation with the model's own chat template


@dataclass
class TokenizedPair:
    """One record as token ids: the shared long prefix, then each branch after it.

    `chosen_mask` / `rejected_mask` mark response (assistant) tokens inside each branch; the
    prefix holds no response token. `prefix + chosen` is the long chosen sequence, token for
    token what the chat template renders for the chosen conversation. `chosen_unproduced` marks
    the end-of-turn tokens of chosen answers cut at max_new_tokens (None: there are none): the model
    never generated them, so not even the whole-sequence NLL (nll_mode=full) trains them.

    One rejected answer (M = 1): `rejected` / `rejected_mask` are one branch's ids / mask and
    `ref_rejected_logp` a number. M > 1: each is a list of M of those (`rejected_branches()`).
    """

    id: str
    prefix: list[int]
    chosen: list[int]
    chosen_mask: list[bool]
    rejected: list[int] | list[list[int]]
    rejected_mask: list[bool] | list[list[bool]]
    ref_chosen_logp: float | None = None
    ref_rejected_logp: float | list[float] | None = None
    chosen_unproduced: list[bool] | None = None

    @property
    def num_rejected(self) -> int:
        return len(self.rejected) if self.rejected and isinstance(self.rejected[0], list) else 1

    def rejected_branches(self) -> list[tuple[list[int], list[bool]]]:
        """(ids, response mask) of each rejected branch, M of them."""
        if self.num_rejected == 1 and not isinstance(self.rejected[0], list):
            return [(self.rejected, self.rejected_mask)]
        return list(zip(self.rejected, self.rejected_mask))

    def ref_rejected(self) -> list[float] | None:
        """The M rejected answers' reference log-probs (None: not computed)."""
        return None if self.ref_rejected_logp is None else per_answer(self.ref_rejected_logp)


def render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def tokenize_conversation(tokenizer: Any, messages: list[dict], cut: frozenset[int] = frozenset()
                          ) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation and a mask that is True on assistant-message tokens (see `tokenize_turns`)."""
    ids, mask, _ = tokenize_turns(tokenizer, messages, cut)
    return ids, mask


def tokenize_turns(tokenizer: Any, messages: list[dict], cut: frozenset[int] = frozenset()
                   ) -> tuple[list[int], list[bool], list[bool]]:
    """Token ids of a conversation, a mask that is True on assistant-message tokens, and one that is
    True on the end-of-turn tokens of the answers in `cut` (never generated: no target of any loss).

    The assistant span of message k is the text between the template rendered up to k with a
    generation prompt and the template rendered through k, cut after its last end-of-sequence
    token when it holds one: ChatML templates write "<|im_end|>\n", and the newline after the
    token generation stops at is never generated, so it is no response token. A token is a
    response token when its first character lies in such a span (the turn's end-of-turn token
    included, except for the messages in `cut`, answers that never generated it: their span ends
    with their content).
    """
    text = render(tokenizer, messages)
    eos = getattr(tokenizer, "eos_token", None)
    spans, unproduced = [], []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:k], add_generation_prompt=True)
        through = render(tokenizer, messages[: k + 1])
        if not text.startswith(through) or not through.startswith(before):
            raise RecordError(
                "the chat template does not render conversations as growing prefixes; "
                "cannot locate assistant tokens (is it a template that rewrites earlier turns?)"
            )
        end = through.rfind(eos, len(before)) + len(eos) if eos and eos in through[len(before):] else len(through)
        if k in cut:
            at = text.find(message["content"], len(before), end)
            if at < 0:
                raise RecordError(f"message {k}: the chat template does not render the answer text verbatim; "
                                  "cannot find where its end-of-turn tokens start")
            unproduced.append((at + len(message["content"]), end))
            end = at + len(message["content"])
        spans.append((len(before), end))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask, never = [], []
    for start, end in enc["offset_mapping"]:
        mask.append(any(a <= start < b for a, b in spans) and end > start)
        never.append(any(a <= start < b for a, b in unproduced) and end > start)
    return ids, mask, never


def tokenize_short(tokenizer: Any, chunk: str, question: str, answer: str, cut: bool = False
                   ) -> tuple[list[int], list[bool]]:
    """The short (reference) sequence [chunk; question] -> answer of one turn (`cut`: no end-of-turn label)."""
    messages = [{"role": "user", "content": user_content(chunk, question)},
                {"role": "assistant", "content": answer}]
    return tokenize_conversation(tokenizer, messages, frozenset({1}) if cut else frozenset())


def cut_messages(turns: list[dict], branch: str, j: int = 0) -> frozenset[int]:
    """Indices, in `conversation(...)`, of the branch's answers marked cut (turn i's answer is message 2i+1);
    for "rejected", those of answer j."""
    key = f"{branch}_cut"
    return frozenset(2 * i + 1 for i, turn in enumerate(turns)
                     if turn.get(key) is not None and per_answer(turn[key])[j])


def tokenize_pair(tokenizer: Any, record: dict) -> TokenizedPair:
    """Tokenise the chosen branch and the M rejected ones of a record and split off their common prefix.

    The prefix ends at the first response token (or earlier, where the renderings differ), so
    every response token of every branch lies in its branch.
    """
    turns, m = record["turns"], num_rejected(record)
    chosen_ids, chosen_mask, chosen_never = tokenize_turns(
        tokenizer, conversation(record["document"], turns, "chosen"), cut_messages(turns, "chosen"))
    rejected = [tokenize_conversation(tokenizer, conversation(record["document"], turns, "rejected", j),
                                      cut_messages(turns, "rejected", j)) for j in range(m)]
    branches = [(chosen_ids, chosen_mask), *rejected]
    limit = min(mask.index(True) if True in mask else len(ids) for ids, mask in branches)
    p = 0
    while p < limit and all(ids[p] == chosen_ids[p] for ids, _ in rejected):
        p += 1
    if p == 0:
        raise RecordError(f"record {record['id']!r}: chosen and rejected share no prompt tokens")
    if not all(any(mask[p:]) for _, mask in branches):
        raise RecordError(f"record {record['id']!r}: an answer tokenises to no response token")
    ref_c = ref_r = None
    if has_reference(record):
        ref_c = sum(t["ref_chosen_logp"] for t in turns)
        ref_r = [sum(per_answer(t["ref_rejected_logp"])[j] for t in turns) for j in range(m)]
    single = m == 1  # one rejected answer keeps the flat fields, as before lists were allowed
    return TokenizedPair(
        id=record["id"],
        prefix=chosen_ids[:p],
        chosen=chosen_ids[p:],
        chosen_mask=chosen_mask[p:],
        chosen_unproduced=chosen_never[p:] if any(chosen_never) else None,
        rejected=rejected[0][0][p:] if single else [ids[p:] for ids, _ in rejected],
        rejected_mask=rejected[0][1][p:] if single else [mask[p:] for _, mask in rejected],
        ref_chosen_logp=ref_c,
        ref_rejected_logp=(None if ref_r is None else ref_r[0] if single else ref_r),
    )

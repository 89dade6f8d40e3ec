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
          "rejected": "<answer given the whole document: y_l>",
          "ref_chosen_logp": -41.2,      # optional: log pi_S(chosen | [chunk; question]), summed
          "ref_rejected_logp": -57.9,    # optional: log pi_S(rejected | [chunk; question]), summed
          "chosen_cut": true             # optional (also rejected_cut): the answer hit max_new_tokens and was
        }                                #   trimmed; its end-of-turn token is not a response token
      ],
      "meta": {...}                      # optional, free-form (source, lengths, generator)
    }

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


def conversation(context: str, turns: list[dict], branch: str) -> list[dict]:
    """Chat messages of one branch ("chosen" or "rejected") of a multi-turn record over `context`."""
    messages = []
    for i, turn in enumerate(turns):
        content = user_content(context, turn["question"]) if i == 0 else turn["question"]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": turn[branch]})
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
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"{label}: field 'turns[{i}]' must be an object")
        for key in REQUIRED_TURN_FIELDS:
            value = turn.get(key)
            if not isinstance(value, str):
                raise RecordError(f"{label}: field 'turns[{i}].{key}' is missing or not a string")
            if not value.strip():
                raise RecordError(f"{label}: field 'turns[{i}].{key}' is empty")
        for key in REF_FIELDS:
            value = turn.get(key)
            if value is None:
                if require_reference:
                    raise RecordError(
                        f"{label}: field 'turns[{i}].{key}' is missing; run `longpo reference` on this "
                        f"file first, or train with a loss that needs no reference (loss=sft)"
                    )
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RecordError(f"{label}: field 'turns[{i}].{key}' must be a finite number, got {value!r}")
        for key in CUT_FIELDS:
            if turn.get(key) is not None and not isinstance(turn[key], bool):
                raise RecordError(f"{label}: field 'turns[{i}].{key}' must be true or false, got {turn[key]!r}")
    return record


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
    """

    id: str
    prefix: list[int]
    chosen: list[int]
    chosen_mask: list[bool]
    rejected: list[int]
    rejected_mask: list[bool]
    ref_chosen_logp: float | None = None
    ref_rejected_logp: float | None = None
    chosen_unproduced: list[bool] | None = None


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


def cut_messages(turns: list[dict], branch: str) -> frozenset[int]:
    """Indices, in `conversation(...)`, of the branch's answers marked cut (turn i's answer is message 2i+1)."""
    return frozenset(2 * i + 1 for i, turn in enumerate(turns) if turn.get(f"{branch}_cut"))


def tokenize_pair(tokenizer: Any, record: dict) -> TokenizedPair:
    """Tokenise both branches of a record and split off their common prefix.

    The prefix ends at the first response token (or earlier, where the two renderings differ),
    so every response token of both branches lies in its branch.
    """
    turns = record["turns"]
    chosen_ids, chosen_mask, chosen_never = tokenize_turns(
        tokenizer, conversation(record["document"], turns, "chosen"), cut_messages(turns, "chosen"))
    rejected_ids, rejected_mask = tokenize_conversation(
        tokenizer, conversation(record["document"], turns, "rejected"), cut_messages(turns, "rejected"))
    limit = min(chosen_mask.index(True) if True in chosen_mask else len(chosen_ids),
                rejected_mask.index(True) if True in rejected_mask else len(rejected_ids))
    p = 0
    while p < limit and chosen_ids[p] == rejected_ids[p]:
        p += 1
    if p == 0:
        raise RecordError(f"record {record['id']!r}: chosen and rejected share no prompt tokens")
    if not any(chosen_mask[p:]) or not any(rejected_mask[p:]):
        raise RecordError(f"record {record['id']!r}: an answer tokenises to no response token")
    ref_c = sum(t["ref_chosen_logp"] for t in turns) if has_reference(record) else None
    ref_r = sum(t["ref_rejected_logp"] for t in turns) if has_reference(record) else None
    return TokenizedPair(
        id=record["id"],
        prefix=chosen_ids[:p],
        chosen=chosen_ids[p:],
        chosen_mask=chosen_mask[p:],
        chosen_unproduced=chosen_never[p:] if any(chosen_never) else None,
        rejected=rejected_ids[p:],
        rejected_mask=rejected_mask[p:],
        ref_chosen_logp=ref_c,
        ref_rejected_logp=ref_r,
    )

"""The released tokenized format: the same samples as our text records give the same pairs, the
same reference sums and the same training, and bad rows are refused naming the row.

The fixture is written here in the released schema from text records, with a tiny tokenizer
whose chat template is Mistral's `[INST] ... [/INST]` layout: long branches as a batch of one
(`[[...]]`, right-padded by 2 tokens), the n = 2 or 4 short reference sequences per row
right-padded to the longest, labels = ids on response tokens and -100 elsewhere.
"""

from __future__ import annotations

import json
import math

import datasets
import pytest
import torch
from torch.testing import assert_close

from longpo.data.records import (
    conversation,
    read_records,
    tokenize_conversation,
    tokenize_pair,
    tokenize_short,
)
from longpo.data.reference import Config as RefConfig
from longpo.data.reference import run as run_reference
from longpo.data.released import ReleasedFormatError, ReleasedRecords, is_released
from longpo.data.sources import open_records
from longpo.toy.tiny import build_tiny_model, build_tiny_tokenizer
from longpo.train.logps import forward_pairs
from longpo.train.packing import pack_pairs
from longpo.train.trainer import Config as TrainConfig
from longpo.train.trainer import Trainer
from tests.conftest import make_record

MISTRAL_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
IGNORE = -100


def padded(seqs: list[tuple[list[int], list[bool]]], pad: int, extra: int = 0) -> dict:
    """Right-pad sequences to the longest (+ extra): input_ids, attention_mask, labels (-100 off responses)."""
    width = max(len(ids) for ids, _ in seqs) + extra
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, mask in seqs:
        n = width - len(ids)
        out["input_ids"].append(ids + [pad] * n)
        out["attention_mask"].append([1] * len(ids) + [0] * n)
        out["labels"].append([t if m else IGNORE for t, m in zip(ids, mask)] + [IGNORE] * n)
    return out


def released_row(tokenizer, record: dict) -> dict:
    row = {"id": record["id"]}
    pad = tokenizer.pad_token_id
    for branch in ("chosen", "rejected"):
        long = tokenize_conversation(tokenizer, conversation(record["document"], record["turns"], branch))
        short = [tokenize_short(tokenizer, t["chunk"], t["question"], t[branch]) for t in record["turns"]]
        for key, value in padded([long], pad, extra=2).items():
            row[f"{branch}_{key}"] = value
        for key, value in padded(short, pad).items():
            row[f"ref_{branch}_{key}"] = value
    return row


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("released")
    tok = build_tiny_tokenizer()
    tok.chat_template = MISTRAL_TEMPLATE
    model = build_tiny_model("mistral", dtype=torch.float64, seed=7)
    model_dir = tmp / "original"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    records = [make_record(f"r{i}", n_turns=(2, 4)[i % 2], seed=i) for i in range(4)]
    (tmp / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = [released_row(tok, r) for r in records]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp / "released"))
    for name, out in (("released", "released_ref"), ("text.jsonl", "text_ref.jsonl")):
        run_reference(RefConfig(input=str(tmp / name), output=str(tmp / out), model=str(model_dir),
                                backend_args={"dtype": "float64"}, progress=False))
    return tmp, tok, model, model_dir, rows


def test_detected_by_columns(setup):
    tmp = setup[0]
    assert is_released(tmp / "released") and is_released(tmp / "released_ref")
    assert not is_released(tmp / "text.jsonl")
    assert [len(r["ref_chosen_input_ids"]) for r in setup[4]] == [2, 4, 2, 4]


def test_pairs_and_reference_equal_text_records(setup):
    """Pair i of the released rows == tokenize_pair of text record i (ids, masks), and

        ref_chosen_logp(row i) = sum over turns t of ref_chosen_logp(record i, turn t)   (same for rejected)

    Then on packed batches of both, forward_pairs gives the same per-pair log-probs and gradients.
    """
    tmp, tok, model, _, _ = setup
    released = ReleasedRecords(tmp / "released_ref", require_reference=True)
    text = read_records(tmp / "text_ref.jsonl", require_reference=True)
    ours = [tokenize_pair(tok, r) for r in text]
    theirs = [released[i] for i in range(len(released))]
    for a, b in zip(ours, theirs):
        assert (a.id, a.prefix, a.chosen, a.chosen_mask, a.rejected, a.rejected_mask) == \
               (b.id, b.prefix, b.chosen, b.chosen_mask, b.rejected, b.rejected_mask)
        assert_close(b.ref_chosen_logp, a.ref_chosen_logp, rtol=1e-12, atol=1e-9)
        assert_close(b.ref_rejected_logp, a.ref_rejected_logp, rtol=1e-12, atol=1e-9)
    results = []
    for pairs in (ours, theirs):
        model.zero_grad()
        out = forward_pairs(model, pack_pairs(pairs, "full"))
        (out.policy.chosen.sum() - 0.5 * out.policy.rejected.sum() + out.nll_sum).backward()
        results.append((out.policy.chosen.detach(), out.policy.rejected.detach(),
                        [p.grad.clone() for p in model.parameters()]))
    (c1, r1, g1), (c2, r2, g2) = results
    assert_close(c2, c1, rtol=0, atol=0)
    assert_close(r2, r1, rtol=0, atol=0)
    for x, y in zip(g1, g2):
        assert_close(y, x, rtol=0, atol=0)


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def train(tmp, model_dir, train_file, name) -> list[dict]:
    reset_accelerate()
    cfg = TrainConfig(model=str(model_dir), train_file=str(train_file), output_dir=str(tmp / name), loss="longpo",
                      dtype="float64", optimizer="adamw", learning_rate=1e-3, warmup_ratio=0.0, beta=0.1, lam=0.1,
                      pairs_per_micro_batch=1, gradient_accumulation_steps=2, max_length=4096, seed=3,
                      progress_bar=False)
    Trainer(cfg).train()
    return [json.loads(line) for line in (tmp / name / "metrics.jsonl").read_text().splitlines()]


def test_trains_with_longpo_like_text_records(setup):
    """Released rows (after `longpo reference`) and the same text records: the same losses, step by step."""
    tmp, _, _, model_dir, _ = setup
    released = train(tmp, model_dir, tmp / "released_ref", "run_released")
    text = train(tmp, model_dir, tmp / "text_ref.jsonl", "run_text")
    assert len(released) == len(text) == 2
    for a, b in zip(released, text):
        assert math.isfinite(a["loss"])
        assert_close(a["loss"], b["loss"], rtol=1e-10, atol=1e-12)


def test_longpo_needs_the_reference_columns(setup):
    with pytest.raises(ReleasedFormatError, match="run `longpo reference"):
        open_records(setup[0] / "released", require_reference=True)


def _bad(tmp, rows, index, change, name):
    rows = [dict(r) for r in rows]
    rows[index] = change(json.loads(json.dumps(rows[index])))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp / name))
    return tmp / name


def _prompt_differs(row):
    row["rejected_input_ids"][0][3] += 1
    return row


def _no_label(row):
    row["chosen_labels"][0] = [IGNORE] * len(row["chosen_labels"][0])
    return row


def _short_lengths(row):
    row["chosen_attention_mask"][0] = row["chosen_attention_mask"][0][:-1]
    return row


def _ref_count(row):
    row["ref_rejected_input_ids"] = row["ref_rejected_input_ids"][:1]
    row["ref_rejected_attention_mask"] = row["ref_rejected_attention_mask"][:1]
    row["ref_rejected_labels"] = row["ref_rejected_labels"][:1]
    return row


@pytest.mark.parametrize("change, message", [
    (_prompt_differs, "row 2: chosen and rejected prompts differ"),
    (_no_label, "row 2: chosen_labels has no label"),
    (_short_lengths, "row 2: column lengths mismatch in chosen_"),
])
def test_bad_rows_are_refused_naming_the_row(setup, change, message):
    tmp, rows = setup[0], setup[4]
    path = _bad(tmp, rows, 2, change, f"bad_{change.__name__}")
    with pytest.raises(ReleasedFormatError, match=message):
        open_records(path)


def test_reference_refuses_mismatched_turn_counts(setup):
    tmp, _, _, model_dir, rows = setup
    path = _bad(tmp, rows, 1, _ref_count, "bad_ref_count")
    cfg = RefConfig(input=str(path), output=str(tmp / "bad_ref_out"), model=str(model_dir),
                    backend_args={"dtype": "float64"}, progress=False)
    with pytest.raises(ReleasedFormatError, match="row 1: column lengths mismatch: 4 ref_chosen sequences but 1"):
        run_reference(cfg)

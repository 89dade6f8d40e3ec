"""Record validation, reading and chat-template tokenisation (labels on assistant tokens only)."""

import json

import pytest

from longpo.data.records import RecordError, conversation, read_records, tokenize_conversation, tokenize_pair
from tests.conftest import make_record


def test_tokenize_pair_shares_exactly_the_prompt(tokenizer):
    rec = make_record(n_turns=2)
    pair = tokenize_pair(tokenizer, rec)
    for branch, ids, mask in (("chosen", pair.chosen, pair.chosen_mask), ("rejected", pair.rejected, pair.rejected_mask)):
        full_ids, full_mask = tokenize_conversation(tokenizer, conversation(rec["document"], rec["turns"], branch))
        assert pair.prefix + ids == full_ids
        assert [False] * len(pair.prefix) + mask == full_mask
        # Masked tokens decode to the answers plus their end-of-turn tokens, nothing else.
        text = tokenizer.decode([t for t, m in zip(ids, mask) if m])
        assert text == "".join(turn[branch] + "<|end|>" for turn in rec["turns"])
    assert rec["document"] in tokenizer.decode(pair.prefix)


def test_reference_logps_are_summed_over_turns(tokenizer):
    rec = make_record(n_turns=2)
    for i, turn in enumerate(rec["turns"]):
        turn["ref_chosen_logp"], turn["ref_rejected_logp"] = -1.5 - i, -2.0 - i
    pair = tokenize_pair(tokenizer, rec)
    assert (pair.ref_chosen_logp, pair.ref_rejected_logp) == (-4.0, -5.0)
    assert tokenize_pair(tokenizer, make_record()).ref_chosen_logp is None


def _write(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_read_records_jsonl_and_parquet(tmp_path):
    import datasets

    rows = [make_record(f"r{i}", n_turns=1 + i % 2, seed=i) for i in range(4)]
    assert [r["id"] for r in read_records(_write(tmp_path, rows))] == ["r0", "r1", "r2", "r3"]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "pairs.parquet"))
    assert read_records(tmp_path / "pairs.parquet")[3]["turns"] == rows[3]["turns"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["turns"][0].pop("chosen"), r"pairs.jsonl:2 \(id='r1'\): field 'turns\[0\].chosen' is missing"),
        (lambda r: r["turns"][0].update(rejected="  "), r"pairs.jsonl:2 \(id='r1'\): field 'turns\[0\].rejected' is empty"),
        (lambda r: r.update(turns=[]), r"pairs.jsonl:2 \(id='r1'\): field 'turns' must be a non-empty list"),
        (lambda r: r["turns"][0].update(ref_chosen_logp="x"), r"'turns\[0\].ref_chosen_logp' must be a finite number"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, mutate, message):
    bad = make_record("r1")
    mutate(bad)
    with pytest.raises(RecordError, match=message):
        read_records(_write(tmp_path, [make_record("r0"), bad]))


def test_invalid_json_line_and_duplicate_ids(tmp_path):
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: invalid JSON"):
        read_records(_write(tmp_path, [make_record("r0"), "{not json"]))
    with pytest.raises(RecordError, match=r"pairs.jsonl:2: id 'r0' repeats the record at .*pairs.jsonl:1"):
        read_records(_write(tmp_path, [make_record("r0"), make_record("r0")]))


def test_missing_reference_is_named_when_required(tmp_path):
    with pytest.raises(RecordError, match=r"'turns\[0\].ref_chosen_logp' is missing; run `longpo reference`"):
        read_records(_write(tmp_path, [make_record("r0")]), require_reference=True)


def _several(rid: str, m: int = 3, n_turns: int = 2, seed: int = 0) -> dict:
    record = make_record(rid, n_turns=n_turns, seed=seed)
    for t, turn in enumerate(record["turns"]):
        turn["rejected"] = [turn["rejected"]] + [f"Maybe {j} or {t}." for j in range(1, m)]
        turn["ref_rejected_logp"] = [-1.0 - j - t for j in range(m)]
        turn["ref_chosen_logp"] = -0.5 - t
        turn["rejected_cut"] = [j == m - 1 for j in range(m)]
    return record


def test_records_with_m_rejected_answers_round_trip_jsonl_and_parquet(tmp_path, tokenizer):
    """Lists of M rejected answers (and their reference values and cut flags) read back unchanged from
    JSONL and Parquet; rejected branch j answers with answer j at every turn, its references summed."""
    import datasets

    rows = [_several(f"r{i}", seed=i) for i in range(3)]
    assert read_records(_write(tmp_path, rows)) == rows
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "pairs.parquet"))
    back = read_records(tmp_path / "pairs.parquet")
    assert back == rows
    pair = tokenize_pair(tokenizer, back[0])
    assert pair.num_rejected == 3 and pair.ref_rejected() == [-3.0, -5.0, -7.0]
    for j, (ids, mask) in enumerate(pair.rejected_branches()):
        full_ids, _ = tokenize_conversation(tokenizer, conversation(rows[0]["document"], rows[0]["turns"], "rejected", j))
        assert pair.prefix + ids == full_ids
        answers = tokenizer.decode([t for t, m in zip(ids, mask) if m])
        end = "" if j == 2 else "<|end|>"  # answer 2 is cut: no end-of-turn label
        assert answers == "".join(turn["rejected"][j] + end for turn in rows[0]["turns"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["turns"][1].update(rejected=["a b c", "d e f"]),
         r"pairs.jsonl:2 \(id='r1'\): field 'turns\[1\].rejected' holds 2 answers, turn 0 holds 3"),
        (lambda r: r["turns"][0]["rejected"].__setitem__(1, " "), r"field 'turns\[0\].rejected\[1\]' is empty"),
        (lambda r: r["turns"][0].update(ref_rejected_logp=[-1.0, -2.0]),
         r"pairs.jsonl:2 \(id='r1'\): field 'turns\[0\].ref_rejected_logp' holds 2 values for 3 rejected answers"),
        (lambda r: r["turns"][0].update(rejected_cut=True), r"field 'turns\[0\].rejected_cut' must be a list of 3"),
        (lambda r: r["turns"][0].update(rejected=[]), r"field 'turns\[0\].rejected' is an empty list"),
    ],
)
def test_bad_lists_of_rejected_answers_name_file_line_and_field(tmp_path, mutate, message):
    bad = _several("r1")
    mutate(bad)
    with pytest.raises(RecordError, match=message):
        read_records(_write(tmp_path, [_several("r0"), bad]))

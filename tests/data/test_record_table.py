"""Records read through a memory-mapped table: the same records at the same positions as
`read_records`, the same checks, torn-tail repair that reads only the end, one corpus pass."""

from __future__ import annotations

import json

import pytest
import torch

from longpo.config import build_config
from longpo.data import corpus
from longpo.data.generate import Config, generate
from longpo.data.record_table import RecordTable, streamed_rows
from longpo.data.records import RecordError, read_records
from longpo.files import read_jsonl, truncate_torn_tail
from longpo.toy.tiny import build_tiny_model
from tests.conftest import make_record
from tests.data.ending import end_answers
from tests.data.test_generate import ScriptedQuestions, small, write_corpus


def _folder(tmp_path):
    import datasets

    folder = tmp_path / "recs"
    folder.mkdir()
    rows = [make_record(f"r{i}", n_turns=1 + i % 2, seed=i) for i in range(5)]
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    datasets.Dataset.from_list(rows[3:]).to_parquet(str(folder / "b.parquet"))
    return folder


def test_same_records_at_the_same_positions(tmp_path):
    folder = _folder(tmp_path)
    table, listed = RecordTable(folder), read_records(folder)
    assert len(table) == len(listed) == 5
    assert table.ids == [r["id"] for r in listed]
    assert [table[i] for i in range(5)] == listed == list(table)
    assert table.where(1) == f"{folder / 'a.jsonl'}:2" and table.where(4) == f"{folder / 'b.parquet'} row 1"
    with pytest.raises(IndexError):
        table[5]


def test_whole_passes_read_the_files_not_the_memory_map(tmp_path, monkeypatch):
    import datasets

    folder = _folder(tmp_path)
    rows = [make_record("r5", n_turns=2, seed=5), make_record("r6", n_turns=1, seed=6)]
    rows[0]["turns"][1]["chosen_cut"] = True  # an optional key in one turn only (a Json feature)
    (folder / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = [[dict(r) for r in t] for t in RecordTable(folder).tables]  # datasets' own decoding
    listed = read_records(folder)
    mapped = []
    monkeypatch.setattr(datasets.Dataset, "__iter__", lambda self: mapped.append("iter") or iter(()))
    table = RecordTable(folder)
    assert list(table) == listed and len(listed) == 7 and mapped == []
    assert [list(streamed_rows(t)) for t in table.tables] == expected
    assert table[5]["turns"][1]["chosen_cut"] is True  # one row, read through the map


def test_bad_and_repeated_records_stop_at_open(tmp_path):
    bad = make_record("r1")
    bad["turns"][0]["chosen"] = " "
    (tmp_path / "x.jsonl").write_text(json.dumps(make_record("r0")) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"x.jsonl:2 \(id='r1'\): field 'turns\[0\].chosen' is empty"):
        RecordTable(tmp_path / "x.jsonl")
    (tmp_path / "y.jsonl").write_text(json.dumps(make_record("r0")) + "\n" + json.dumps(make_record("r0")) + "\n")
    with pytest.raises(RecordError, match=r"y.jsonl:2: id 'r0' repeats the record at .*y.jsonl:1; give every"):
        RecordTable(tmp_path / "y.jsonl")


@pytest.mark.parametrize("tail, kept", [('{"id": "b", "x', ["a"]), ('{"id": "b"}', ["a", "b"]), ("", ["a"])])
def test_truncate_torn_tail(tmp_path, tail, kept):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a"}\n' + tail)
    truncate_torn_tail(path, block=4)  # a block shorter than a line: the search steps back
    assert [r["id"] for r in read_jsonl(path)] == kept
    assert path.read_text().endswith("\n")


def test_generate_reads_the_corpus_once(tmp_path, tokenizer, monkeypatch):
    calls = []
    real = corpus.iter_documents
    monkeypatch.setattr(corpus, "iter_documents", lambda *a, **k: calls.append(1) or real(*a, **k))
    # A random model never ends an answer, and an answer cut at max_new_tokens is dropped: end them.
    model = end_answers(build_tiny_model("llama", dtype=torch.float64, seed=7), tokenizer.eos_token_id)
    backend = ScriptedQuestions(model, tokenizer)
    cfg = build_config(Config, small(corpus=str(write_corpus(tmp_path / "c.jsonl", 3)), output_dir=str(tmp_path / "o")))
    stats = generate(cfg, backend=backend, ref_backend=backend)
    assert calls == [1] and stats["records"] == 3

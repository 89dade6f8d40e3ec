"""Corpus readers: every format, and bad input named by file and line (or skipped and counted)."""

import json

import pytest

from longpo.data.corpus import CorpusError, iter_documents, stable_id


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_formats_give_the_same_documents(tmp_path):
    import datasets

    rows = [{"id": "a", "body": "first document"}, {"body": "second document"}]
    docs = list(iter_documents(write_jsonl(tmp_path / "c.jsonl", rows), text_field="body"))
    assert [d.id for d in docs] == ["a", stable_id("second document")]
    assert docs[1].where.endswith("c.jsonl:2")
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "c.parquet"))
    assert [d.text for d in iter_documents(tmp_path / "c.parquet", text_field="body")] == ["first document",
                                                                                          "second document"]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    assert [d.id for d in iter_documents(tmp_path / "saved", text_field="body")] == [d.id for d in docs]


def test_text_folder_skips_undecodable_files_and_counts_them(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha text")
    (folder / "b.md").write_text("beta text")
    (folder / "c.txt").write_bytes(b"\xff\xfe\x00binary")
    skipped = {}
    docs = list(iter_documents(folder, skipped=skipped))
    assert [d.id for d in docs] == ["a.txt", "b.md"] and skipped == {"undecodable_file": 1}


@pytest.mark.parametrize("bad, message", [
    ("{not json", r"c.jsonl:2: invalid JSON"),
    (json.dumps({"content": "x"}), r"c.jsonl:2: field 'text' is missing \(fields: \['content'\]\); set text_field="),
    (json.dumps({"text": 5}), r"c.jsonl:2: field 'text' is int, not a string"),
    (json.dumps([1, 2]), r"c.jsonl:2: expected a JSON object"),
])
def test_bad_jsonl_lines_are_named(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "fine"}, bad])
    with pytest.raises(CorpusError, match=message):
        list(iter_documents(path))


def test_non_utf8_line_missing_file_and_unknown_format(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"c.jsonl:2: not valid UTF-8"):
        list(iter_documents(path))
    with pytest.raises(CorpusError, match="no such file or folder"):
        list(iter_documents(tmp_path / "missing.jsonl"))
    (tmp_path / "c.csv").write_text("a,b\n")
    with pytest.raises(CorpusError, match="unknown format"):
        list(iter_documents(tmp_path / "c.csv"))

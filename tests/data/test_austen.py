"""The Austen corpus reader: paragraphs, documents of a token budget, the real package when present."""

import json

import pytest

from longpo.data.austen import NOVELS, corpus_rows, find_data_dir, paragraphs, read_novels, split_documents
from longpo.data.corpus import iter_documents


def _count(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_paragraphs_join_printed_lines():
    lines = ["CHAPTER 1", "", "It is a truth universally", "acknowledged, that a man", "", "", "Next one.", ""]
    assert paragraphs(lines) == ["CHAPTER 1", "It is a truth universally acknowledged, that a man", "Next one."]


def test_documents_are_consecutive_paragraphs_within_the_budget(tokenizer):
    paras = [f"Paragraph {i} is about the river city and its {i % 7} long books." for i in range(200)]
    docs = split_documents(tokenizer, paras, doc_tokens=300)
    assert len(docs) > 5
    for doc in docs:
        assert 150 <= _count(tokenizer, doc) <= 300
        parts = doc.split("\n\n")
        start = paras.index(parts[0])
        assert parts == paras[start : start + len(parts)], "a document is a run of consecutive paragraphs"
    assert split_documents(tokenizer, paras, doc_tokens=300, max_docs=2) == docs[:2]


@pytest.mark.skipif(find_data_dir() is None,
                    reason="optional real data: r-cran-janeaustenr not found; python -m longpo.data.austen fetch "
                           "(apt-get download; apt-get update needs root)")
def test_real_novels_become_a_corpus(tokenizer, tmp_path):
    novels = read_novels()
    assert list(novels)[:1] and set(NOVELS) <= set(novels)
    text = " ".join(paragraphs(novels["prideprejudice"]))
    assert "It is a truth universally acknowledged, that a single man in possession of a good fortune" in text
    assert sum(len(line) for lines in novels.values() for line in lines) > 3_000_000
    rows = corpus_rows(tokenizer, doc_tokens=2000, docs_per_novel=1, skip_paragraphs=20)
    assert [r["novel"] for r in rows] == list(NOVELS)
    path = tmp_path / "austen.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = list(iter_documents(path))
    assert [d.id for d in docs] == [r["id"] for r in rows]
    for doc, row in zip(docs, rows):
        assert 1000 <= _count(tokenizer, doc.text) <= 2000
        assert doc.text.split("\n\n")[3] in paragraphs(novels[row["novel"]])

"""Chunks are exact substrings of the long context, in order, within their token bounds."""

import random

import pytest

from longpo.data.chunking import chunk_document, detect_format, split_blocks

WORDS = "the river city book value number code name magic secret vault long short paper".split()


def prose(seed: int, paragraphs: int = 30) -> str:
    rng = random.Random(seed)
    return "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 80))) + "." for _ in range(paragraphs))


def count(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bounds", [(40, 120), (100, 300), (10, 64)])
def test_chunks_are_ordered_substrings_within_bounds(tokenizer, seed, bounds):
    lo, hi = bounds
    text = prose(seed) + "\n\n" + " ".join(["averyveryverylongparagraph"] * 200)  # one block over any limit
    out = chunk_document(tokenizer, text, lo, hi)
    assert out.context == "\n\n".join(out.chunks)
    position = 0
    for chunk, n in zip(out.chunks, out.chunk_tokens):
        found = out.context.find(chunk, position)
        assert found == position, "chunks must appear in order, back to back"
        position = found + len(chunk) + 2
        assert n == count(tokenizer, chunk) and n <= hi
    assert out.eligible == [i for i, n in enumerate(out.chunk_tokens) if lo <= n <= hi]
    # Greedy packing: a chunk ends short only when the next one would not have fitted into it.
    for i, n in enumerate(out.chunk_tokens[:-1]):
        assert n >= lo or n + out.chunk_tokens[i + 1] > hi, f"chunk {i} ({n} tokens) could have taken the next"
    # Nothing of the document is lost or reordered (only whitespace between blocks changes).
    assert "".join(out.context.split()) == "".join(text.split())


def test_latex_splits_at_sections_and_code_at_blank_lines():
    latex = "\\documentclass{article}\n\\begin{document}\nIntro text.\n\\section{One}\nA.\n\n B.\n\\section*{Two}\nC."
    assert detect_format(latex) == "latex"
    assert [b.split("\n")[0] for b in split_blocks(latex)] == ["\\documentclass{article}", "\\section{One}",
                                                               "\\section*{Two}"]
    code = "import os\n\ndef f():\n    return 1\n\n\nclass A:\n    pass\n"
    assert split_blocks(code, "code") == ["import os", "def f():\n    return 1", "class A:\n    pass"]
    with pytest.raises(ValueError, match="unknown document format"):
        split_blocks("x", "poetry")


def test_blocks_and_chunks_have_their_own_separators(tokenizer):
    """The released scripts join paragraphs by one space inside a chunk and chunks by three newlines."""
    text = prose(5, paragraphs=20)
    paragraphs = split_blocks(text, "prose")
    out = chunk_document(tokenizer, text, 40, 200, separator="\n\n\n", block_separator=" ")
    assert len(out.chunks) > 2 and out.context == "\n\n\n".join(out.chunks)
    assert all("\n" not in chunk for chunk in out.chunks)
    assert " ".join(out.chunks) == " ".join(paragraphs)  # every paragraph, in order, inside one chunk
    assert all(n == count(tokenizer, c) and n <= 200 for c, n in zip(out.chunks, out.chunk_tokens))
    assert chunk_document(tokenizer, text, 40, 200, block_separator="\n\n") == chunk_document(tokenizer, text, 40, 200)

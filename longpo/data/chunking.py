"""Token-aware chunking: blocks (paragraphs / LaTeX sections / code blocks) packed into chunks.

A document is split into blocks at its natural boundaries, blocks are packed greedily into chunks
of at most `max_tokens` tokens (blocks joined by `block_separator`, by default `separator`), and the
long context is the chunks joined by `separator`, so every chunk is an exact substring of the long
context. Only chunks of at least `min_tokens` tokens are eligible for questions (the last chunk of a
document is often shorter).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

FORMATS = ("auto", "prose", "latex", "code")
_SECTION = re.compile(r"(?=\\(?:sub)*section\*?\{)")
_BLANK = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n")


@dataclass
class Chunked:
    context: str  # the long context: chunks joined by the separator
    chunks: list[str]
    chunk_tokens: list[int]
    eligible: list[int]  # indices of chunks within [min_tokens, max_tokens]


def detect_format(text: str) -> str:
    if "\\section" in text or "\\begin{document}" in text:
        return "latex"
    code_lines = sum(1 for line in text.splitlines()[:400] if re.match(r"\s*(def |class |import |#include|"
                                                                      r"function |public |fn |\}|\{)", line))
    return "code" if code_lines > 20 else "prose"


def split_blocks(text: str, fmt: str = "auto") -> list[str]:
    """Natural blocks of a document, stripped, without empty ones."""
    fmt = detect_format(text) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown document format {fmt!r}; choose one of {FORMATS}")
    if fmt == "latex":
        pieces = _SECTION.split(text)
    else:  # prose paragraphs and code blocks are both separated by blank lines
        pieces = _BLANK.split(text)
    return [p.strip() for p in pieces if p.strip()]


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _split_long(tokenizer: Any, block: str, max_tokens: int) -> list[str]:
    """A block over the limit: split on paragraphs, then sentences / lines, then token windows."""
    pieces = [p for p in _BLANK.split(block) if p.strip()]
    if len(pieces) <= 1:
        pieces = [p for p in _SENTENCE.split(block) if p.strip()]
    if len(pieces) <= 1:
        ids = tokenizer(block, add_special_tokens=False)["input_ids"]
        step = max(1, max_tokens - 8)  # decoding/re-encoding can shift a few tokens
        return [tokenizer.decode(ids[i : i + step]).strip() for i in range(0, len(ids), step)]
    out = []
    for piece in pieces:
        piece = piece.strip()
        out += _split_long(tokenizer, piece, max_tokens) if _count(tokenizer, piece) > max_tokens else [piece]
    return [p for p in out if p]


def chunk_document(tokenizer: Any, text: str, min_tokens: int, max_tokens: int, separator: str = "\n\n",
                   fmt: str = "auto", block_separator: str | None = None) -> Chunked:
    """Pack a document's blocks into chunks of <= max_tokens tokens (exact counts, checked)."""
    assert 0 < min_tokens <= max_tokens, f"need 0 < min_tokens ({min_tokens}) <= max_tokens ({max_tokens})"
    inner = separator if block_separator is None else block_separator
    blocks = []
    for block in split_blocks(text, fmt):
        blocks += _split_long(tokenizer, block, max_tokens) if _count(tokenizer, block) > max_tokens else [block]
    sep_tokens = _count(tokenizer, inner) if inner else 0
    sizes = [_count(tokenizer, b) for b in blocks]
    groups: list[list[int]] = []
    current: list[int] = []
    estimate = 0
    for i, size in enumerate(sizes):
        extra = size + (sep_tokens if current else 0)
        if current and estimate + extra > max_tokens:
            groups.append(current)
            current, estimate = [], 0
            extra = size
        current.append(i)
        estimate += extra
    if current:
        groups.append(current)
    chunks, counts = [], []
    while groups:
        group = groups.pop(0)
        chunk = inner.join(blocks[i] for i in group)
        n = _count(tokenizer, chunk)
        if n > max_tokens and len(group) > 1:  # merges across a boundary made it longer: move a block on
            if groups:
                groups[0].insert(0, group[-1])
            else:
                groups.append(group[-1:])
            groups.insert(0, group[:-1])
            continue
        chunks.append(chunk)
        counts.append(n)
    # A short last chunk joins the one before when both fit together.
    if len(chunks) > 1 and counts[-1] < min_tokens:
        merged = chunks[-2] + inner + chunks[-1]  # one chunk: its blocks joined as inside any chunk
        n = _count(tokenizer, merged)
        if n <= max_tokens:
            chunks[-2:], counts[-2:] = [merged], [n]
    eligible = [i for i, n in enumerate(counts) if min_tokens <= n <= max_tokens]
    return Chunked(context=separator.join(chunks), chunks=chunks, chunk_tokens=counts, eligible=eligible)

"""The toy world: seeded, fully covered by its word-level tokenizer, and its skills in the package's formats."""

import random

from longpo.data.chunking import chunk_document
from longpo.data.filters import FilterConfig, drop_reason
from longpo.data.prompts import parse_questions, question_prompt
from longpo.data.records import tokenize_conversation, user_content
from longpo.toy.world import (
    ASK_TEMPLATE,
    NAMES,
    answer,
    answer_value,
    ask_messages,
    ask_reply,
    build_tokenizer,
    make_doc,
    make_long_doc,
    n_tokens,
    qa_messages,
    question,
    repeat_messages,
    short_doc,
)


def question_name(text: str) -> str | None:
    """The name a question asks about ("... the code of Name ?"), or None."""
    words = text.split()
    for i in range(len(words) - 1):
        if words[i] == "of" and words[i + 1].lower() in NAMES:
            return words[i + 1].lower()
    return None


def test_world_is_seeded_and_facts_are_in_the_text():
    a, b = make_doc(random.Random(5), 6), make_doc(random.Random(5), 6)
    assert a == b and a != make_doc(random.Random(6), 6)
    assert len({name for name, _ in a.facts}) == 6
    for name, value in a.facts:
        assert f"{name} {value} ." in a.text


def test_tokenizer_covers_every_word_and_masks_only_the_answer():
    tok = build_tokenizer()
    rng = random.Random(0)
    for _ in range(20):
        doc = short_doc(rng)
        names = [n for n, _ in doc.facts][:3]
        for messages in (qa_messages(doc, doc.facts[:2]), ask_messages(doc, names), repeat_messages(doc)):
            ids, mask = tokenize_conversation(tok, messages)
            assert tok.unk_token_id not in ids, tok.convert_ids_to_tokens(ids)
            answers = [m["content"] for m in messages if m["role"] == "assistant"]
            decoded = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)
            assert decoded.split() == " ".join(answers).split()


def test_lengths_are_token_counts_and_long_documents_fit():
    tok = build_tokenizer()
    rng = random.Random(2)
    for length in (128, 512, 1024):
        doc = make_long_doc(rng, length)
        count = len(tok(doc.text, add_special_tokens=False)["input_ids"])
        assert count == n_tokens(doc.text) and length - 16 <= count <= length, (length, count)
    assert max(n_tokens(short_doc(rng).text) for _ in range(500)) < 128


def test_skills_pass_the_generation_stage_parsers_and_filters():
    """Question replies parse with `longpo generate`'s parser; answers pass its filters (min_words=1 for
    the toy's two-token answers); chunks of a long document hold whole facts."""
    tok = build_tokenizer()
    doc = make_doc(random.Random(1), 5)
    names = [n for n, _ in doc.facts[:4]]
    assert parse_questions(ask_reply(names), 4) == [question(n) for n in names]
    assert [question_name(q) for q in parse_questions(ask_reply(names), 4)] == names
    assert question_prompt(ASK_TEMPLATE, doc.text, 4) == ask_messages(doc, names)[0]["content"]
    assert qa_messages(doc, doc.facts[:1])[0]["content"] == user_content(doc.text, question(doc.facts[0][0]))
    name, value = doc.facts[0]
    assert drop_reason(answer(name, value), FilterConfig(min_words=1)) is None
    assert answer_value(answer(name, value), name) == value
    long = make_long_doc(random.Random(3), 512)
    chunked = chunk_document(tok, long.text, 40, 96)
    assert chunked.eligible and chunked.context == long.text
    for name, value in long.facts:  # every fact lies whole in exactly one chunk
        assert sum(f"{name} {value} ." in chunk for chunk in chunked.chunks) == 1

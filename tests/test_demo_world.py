"""The toy world: seeded, fully covered by its word-level tokenizer, and its skills in the package's formats."""

import random

from longpo.data.prompts import parse_questions
from longpo.data.records import tokenize_conversation
from longpo.demo.world import ask_messages, ask_reply, build_tokenizer, make_doc, qa_messages


def test_world_is_seeded_and_facts_are_in_the_text():
    a, b = make_doc(random.Random(5), 6), make_doc(random.Random(5), 6)
    assert a == b and a != make_doc(random.Random(6), 6)
    assert len({name for name, _ in a.facts}) == 6
    for name, value in a.facts:
        assert f"the code of {name} is {value} ." in a.text


def test_tokenizer_covers_every_word_and_masks_only_the_answer():
    tok = build_tokenizer()
    rng = random.Random(0)
    for _ in range(20):
        doc = make_doc(rng, rng.randint(1, 12))
        for messages in (qa_messages(doc, *doc.facts[0]), ask_messages(doc, min(3, len(doc.facts)))):
            ids, mask = tokenize_conversation(tok, messages)
            assert tok.unk_token_id not in ids, tok.convert_ids_to_tokens(ids)
            answer = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)
            assert answer.split() == messages[-1]["content"].split()


def test_question_replies_parse_with_the_generation_parser():
    doc = make_doc(random.Random(1), 5)
    assert parse_questions(ask_reply(doc.facts, 4), 4) == [f"what is the code of {n} ?" for n, _ in doc.facts[:4]]

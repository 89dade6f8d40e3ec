"""Question-reply parsing (at least min_questions, default k, else None), picking, and the answer filters."""

import random

import pytest

from longpo.data.filters import FilterConfig, chosen_drop_reason, drop_reason, repeat_ratio
from longpo.data.prompts import QUESTION_TEMPLATE, parse_questions, pick_question, question_prompt

Q = ["What does the river carry?", "Why was the city founded?", "How are the two ideas linked?",
     "Which number opens the vault?"]


@pytest.mark.parametrize("reply", [
    "\n".join(f"{i + 1}. {q}" for i, q in enumerate(Q)),
    "Here are the questions:\n" + "\n".join(f"{i + 1}) {q}" for i, q in enumerate(Q)),
    "\n".join(f"Q{i + 1}: {q}" for i, q in enumerate(Q)),
    "\n".join(f"**{i + 1}.** {q}" for i, q in enumerate(Q)),
    "\n".join(f"- {q}" for q in Q),
    "\n".join(Q),
    "1. What does the river\ncarry?\n2. Why was the city founded?\n3. How are the two ideas linked?\n"
    "4. Which number opens the vault?",
])
def test_well_formed_replies_parse(reply):
    parsed = parse_questions(reply, 4)
    assert parsed is not None and len(parsed) == 4
    assert parsed[1] == Q[1] and parsed[3] == Q[3]
    assert parsed[0] in (Q[0], "What does the river carry?")


@pytest.mark.parametrize("reply", [
    "\n".join(f"{i + 1}. {q}" for i, q in enumerate(Q[:3])),          # too few
    "",                                                                # empty
    "I'm sorry, I cannot write questions about this text.",           # a refusal, one line
    "1.\n2.\n3.\n4.",                                                  # numbers without questions
])
def test_malformed_or_miscounted_replies_give_none(reply):
    assert parse_questions(reply, 4) is None


def test_more_questions_than_asked_give_the_first_k():
    """Issue 18: a reply is usable when it holds enough questions; extra ones are not a reason to drop it."""
    reply = "\n".join(f"{i + 1}. {q}" for i, q in enumerate(Q + ["Where does the road end?"]))
    assert parse_questions(reply, 4) == Q


def test_pick_question_is_seeded_and_prefixed():
    a = pick_question(Q, random.Random(3))
    assert a == pick_question(Q, random.Random(3))
    assert a.startswith("According to the passage above, ") and a[len("According to the passage above, ")].islower()
    assert pick_question(["NASA launched what?"], random.Random(0)).endswith("NASA launched what?")
    assert "{chunk}" in QUESTION_TEMPLATE and "CHUNK" in question_prompt(QUESTION_TEMPLATE, "CHUNK", 4)
    with pytest.raises(ValueError, match="chunk"):
        question_prompt("no placeholder", "x", 4)


def test_filters_name_their_reason():
    cfg = FilterConfig()
    assert drop_reason("   ", cfg) == "empty_answer"
    assert drop_reason("I'm sorry, but I cannot help with that.", cfg) == "refusal"
    assert drop_reason("42 17", cfg) == "too_few_words"
    assert drop_reason("the " * 50, cfg) == "repetition"
    assert repeat_ratio("a b c d") == 0.0 and repeat_ratio("a a a a") == 0.75
    assert drop_reason("The river carries silt to the sea.", cfg) is None
    assert chosen_drop_reason("The river carries silt.", 40000, cfg) == "short_prompt_too_long"


def test_a_chunk_reaches_the_question_request_as_written():
    latex = r"\sum_{k} a_{k} = {chunk}"  # placeholders inside the text are text, not placeholders
    assert question_prompt("{chunk}\n\nWrite {k} questions", latex, 4) == latex + "\n\nWrite 4 questions"

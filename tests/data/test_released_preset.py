"""The `released` generation rules on hand-made replies: prompt layout, prefix choice, parser, filters."""

from __future__ import annotations

import random

from longpo.data import released_preset as rp

REPLY = ("Here are the questions:\n\n**1:** How does Elizabeth Bennet's view of Mr. Darcy change?\n"
         "2: What role does Pemberley play in the story?\n3. Why is the Netherfield ball a turning point?!\n"
         "4 - How do letters move the plot?")


def test_question_request_layout():
    text = rp.question_request("CHUNK")
    assert text.startswith("Context:\nCHUNK\n\n\nBased on the content presented above, generate 4 comprehensive")
    assert text.endswith("format the 4 questions numerically from “1:” to “4:”.\n")


def test_parser_numbered_items_and_markdown():
    assert rp.parse_questions(REPLY) == [
        "How does Elizabeth Bennet's view of Mr. Darcy change?",
        "What role does Pemberley play in the story?",
        "Why is the Netherfield ball a turning point?",
        "How do letters move the plot?",
    ]
    assert rp.pick_question("1: Only one?\n2: And two?", random.Random(0)) is None  # not exactly 4


def test_prefix_is_one_of_20_and_keeps_proper_nouns():
    """rng draws the question first, then the phrase: the same draws as random.choice twice."""
    assert len(rp.PREFIX_PHRASES) == 20 and len(set(rp.PREFIX_PHRASES)) == 20
    rng, twin = random.Random(3), random.Random(3)
    questions = rp.parse_questions(REPLY)
    expected_q = twin.choice(questions)
    expected = f"{twin.choice(rp.PREFIX_PHRASES)} {expected_q}"
    assert rp.pick_question(REPLY, rng) == expected
    picked = {rp.pick_question(REPLY, random.Random(s)).split(" ", 4)[-1] for s in range(200)}
    assert any("Elizabeth Bennet" in q for q in picked)  # proper nouns and the first capital kept
    phrases = {next(p for p in rp.PREFIX_PHRASES if rp.pick_question(REPLY, random.Random(s)).startswith(p))
               for s in range(400)}
    assert phrases == set(rp.PREFIX_PHRASES)


def test_separators():
    assert rp.join_chunk(["a b.", "c d."]) == "a b. c d."
    assert rp.join_document(["one", "two"]) == "one\n\n\ntwo"


def test_repetition_counts_every_occurrence():
    """ratio = sum of counts of words seen more than once / words: an answer said twice is 1.0 (dropped);
    'the cat saw the dog' = 2/5."""
    twice = "The city is Paris, by the river. The city is Paris, by the river."
    assert rp.repetition_ratio(twice) == 1.0
    assert rp.drop_reason(chosen=twice, rejected="Paris lies on the Seine river.") == "meaningless_chosen"
    assert rp.drop_reason(chosen="Paris lies on the Seine.", rejected=twice) == "meaningless_rejected"
    assert rp.repetition_ratio("the cat saw the dog") == 2 / 5


def test_thresholds_differ_between_chosen_and_rejected():
    # 19 of 20 words repeated: 0.95, above chosen's 0.9, not above rejected's 0.95
    text = " ".join(["alpha", "beta"] * 9 + ["gamma"] * 1 + ["alpha"])
    assert rp.repetition_ratio(text) == 0.95
    assert rp.drop_reason(chosen="Paris lies on the Seine.", rejected=text) is None
    assert rp.drop_reason(chosen=text, rejected="Paris lies on the Seine.") == "meaningless_chosen"


def test_refusal_from_the_released_list_in_either_answer():
    assert len(rp.REFUSAL_PHRASES) == 37
    refusal = "Unfortunately this query is beyond my capabilities, sadly."
    assert rp.drop_reason(chosen="Paris lies on the Seine.", rejected=refusal) == "refusal"
    assert rp.drop_reason(chosen=refusal, rejected="Paris lies on the Seine.") == "refusal"
    assert rp.drop_reason(chosen="Paris lies on the Seine.", rejected="The Seine crosses Paris.") is None


def test_empty_and_short_answers():
    assert rp.drop_reason(chosen="", rejected="The Seine crosses Paris.") == "empty"
    assert rp.drop_reason(chosen="Paris lies on the Seine.", rejected="Yes, ok.") == "meaningless_rejected"


def test_chosen_checks_agree_with_the_pair_checks_on_a_sound_rejected_answer():
    """`chosen_drop_reason` is `drop_reason` with a rejected answer that passes: the same reason, decided
    before the rejected answer exists."""
    sound = "The Seine crosses Paris from east to west."
    for chosen, expected in (("", "empty"), ("the cat sat. the cat sat.", "meaningless_chosen"),
                             ("As an AI assistant, I have no opinion here.", "refusal"),
                             ("Paris lies on the Seine.", None)):
        assert rp.chosen_drop_reason(chosen) == rp.drop_reason(chosen=chosen, rejected=sound) == expected
    assert rp.DROP_REASONS == ("empty", "meaningless_rejected", "meaningless_chosen", "refusal")

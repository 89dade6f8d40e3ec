"""Small-model question prompt and the lenient parser; the paper's prompt and exact parser stay the default."""

import pytest

from longpo.data.generate import Config
from longpo.data.presets import EXAMPLE_QUESTIONS, SMALL_QUESTION_TEMPLATE, parse_lenient, question_template
from longpo.data.prompts import QUESTION_TEMPLATE, question_prompt

# Replies SmolLM2-135M-Instruct wrote (sampled, T=0.7) on Austen chunks.
MIXED = ("1. Why did Mr. Brown leave the town?\n\nThe answer to this question is that he left because of his duty.\n\n"
         "2. What did Anna say to her sister?\n\nThe answer to this question is that Anna told her sister to rest.\n\n"
         "3. What did Anna say to her sister?\n\nThe answer is that Anna said, \"What can I do for you?\"")
LETTERED = ("A: 1.  What is the meaning of the text?\nB: 2.  Why should the lady be allowed to change the estate?\n"
            "C: 3.  How can the lady change the estate?\n\nThe main ideas are: 1.  She takes a long view.")


def test_lenient_parser_skips_answers_repeats_and_copied_examples():
    two = ["Why did Mr. Brown leave the town?", "What did Anna say to her sister?"]
    assert parse_lenient(MIXED, 2) == two
    assert parse_lenient(MIXED, 3) == two  # the third is a repeat; fewer than k still count
    assert parse_lenient(MIXED, 1) == two[:1]
    copied = (f"1. {EXAMPLE_QUESTIONS[0]}\n2. How did Tom miss the train?\n3. Who wrote the letter to Emma?\n"
              "4. Why was Emma angry? Because.")
    assert parse_lenient(copied, 3) == ["Who wrote the letter to Emma?", "Why was Emma angry?"]
    assert parse_lenient("Who is Emma? Why is she here? What did she do?", 1) == ["Who is Emma?"]
    assert parse_lenient("No questions here.\nJust text.", 1) is None
    assert parse_lenient(LETTERED, 3) == ["What is the meaning of the text?",
                                          "Why should the lady be allowed to change the estate?",
                                          "How can the lady change the estate?"]


def test_presets_are_named_and_the_default_is_unchanged(tmp_path):
    base = {"model": "m", "corpus": "c"}
    default = Config(**base)
    assert default.question_template == QUESTION_TEMPLATE and default.question_parser == "questions"
    small = Config(**base, question_template="small", question_parser="lenient")
    assert small.question_template == SMALL_QUESTION_TEMPLATE == question_template("small")
    prompt = question_prompt(small.question_template, "CHUNK TEXT", 3)
    assert "CHUNK TEXT" in prompt and "from 1 to 3" in prompt and "{" not in prompt
    with pytest.raises(ValueError, match="neither a preset"):
        Config(**base, question_template="tiny")
    with pytest.raises(ValueError, match="question_parser='loose'"):
        Config(**base, question_parser="loose")

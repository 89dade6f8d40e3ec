"""Scorers against worked examples: case, punctuation, partial matches, empty predictions."""

import pytest

from longpo.eval.haystack import split_sentences
from longpo.eval.scoring import (
    choice_accuracy,
    extract_choice,
    normalize_answer,
    qa_f1,
    rouge_lsum,
    string_match_all,
    string_match_part,
    token_f1,
)


def test_string_match_all_counts_each_reference():
    """3 of 4 values present -> 75; matching ignores case; empty prediction -> 0."""
    refs = ["1234567", "7654321", "Apple-Pie", "9999999"]
    pred = "The numbers are 1234567, 7654321 and apple-pie."
    assert string_match_all(pred, refs) == pytest.approx(75.0)
    assert string_match_all("", refs) == 0.0
    assert string_match_all("APPLE-PIE", ["apple-pie"]) == 100.0


def test_string_match_part_is_any_reference():
    assert string_match_part("It was in North Africa.", ["South America", "north africa"]) == 100.0
    assert string_match_part("It was in Asia.", ["South America", "north africa"]) == 0.0
    assert string_match_part("", ["x"]) == 0.0


def test_normalize_and_token_f1_worked_example():
    """pred 'The Eiffel tower, Paris!' vs ref 'Eiffel Tower': tokens {eiffel, tower, paris} vs {eiffel, tower}.

    precision = 2/3, recall = 2/2, F1 = 2 * (2/3) * 1 / (2/3 + 1) = 0.8
    """
    assert normalize_answer("The Eiffel tower, Paris!") == "eiffel tower paris"
    assert token_f1("The Eiffel tower, Paris!", "Eiffel Tower") == pytest.approx(0.8)
    assert qa_f1("The Eiffel tower, Paris!", ["London", "Eiffel Tower"]) == pytest.approx(80.0)
    assert qa_f1("", ["Eiffel Tower"]) == 0.0
    assert qa_f1("a the an", ["Eiffel"]) == 0.0


def test_rouge_lsum_identity_partial_and_empty():
    ref = "Alice leaves home. She finds a dragon."
    assert rouge_lsum(ref, [ref]) == pytest.approx(100.0)
    assert rouge_lsum("", [ref]) == 0.0
    partial = rouge_lsum("Alice leaves home.", [ref])
    assert 0.0 < partial < 100.0
    # max over references
    assert rouge_lsum("Alice leaves home.", ["Something else entirely.", "Alice leaves home."]) == pytest.approx(100.0)


@pytest.mark.parametrize("prediction,letter", [
    ("B", "B"), ("(C)", "C"), ("D. green", "D"), ("A) red", "A"), ("The answer is B.", "B"),
    ("answer: (c)", "C"), ("I choose option D", "D"), ("**A**", "A"), ("It is blue, clearly.", "B"),
    ("", None), ("I do not know", None), ("red or blue", None),
])
def test_extract_choice(prediction, letter):
    assert extract_choice(prediction, ["red", "blue", "green", "gold"]) == letter


def test_choice_accuracy():
    assert choice_accuracy("B", "B") == 100.0
    assert choice_accuracy("A", "B") == 0.0
    assert choice_accuracy("", "B") == 0.0


def test_scorers_refuse_empty_references():
    for fn in (string_match_all, string_match_part, qa_f1, rouge_lsum):
        with pytest.raises(ValueError, match="reference"):
            fn("x", [])


def test_sentence_splitter():
    text = "Dr. Smith met Mr. J. Doe at 5 p.m. in the U.S. office. It rained! Did it? Yes. 3.14 is pi."
    assert split_sentences(text) == [
        "Dr. Smith met Mr. J. Doe at 5 p.m. in the U.S. office.", "It rained!", "Did it?", "Yes.", "3.14 is pi.",
    ]
    assert split_sentences("") == []
    assert split_sentences("no boundary here") == ["no boundary here"]

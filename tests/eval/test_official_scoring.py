"""Scores worked out by hand from the official scorers' code; each test names the function it follows.

RULER: NVIDIA/RULER scripts/eval/evaluate.py (`postprocess_pred`) and scripts/eval/synthetic/constants.py
(`string_match_all`, `string_match_part`, both `round(score, 2)`).
InfiniteBench: OpenBMB/InfiniteBench src/compute_scores.py (`qa_f1_score` with `normalize_answer`,
`get_score_one_longbook_sum_eng` = evaluate's "rouge" = rouge_score rougeLsum, `get_score_one_longbook_choice_eng`
with the labels of eval_utils.py `get_answer`: [option text, letter]).
"""

import pytest

from longpo.eval.scoring import (
    choice_accuracy,
    choice_accuracy_lenient,
    choice_correct,
    postprocess_pred,
    qa_f1,
    rouge_lsum,
    ruler_task_score,
    string_match_all,
    string_match_part,
)

# --------------------------------------------------------------------------------------------- RULER


def test_postprocess_pred_strips_and_turns_control_characters_into_newlines():
    """evaluate.py postprocess_pred: strip, re.sub('[\\x00-\\x1f]', '\\n'), strip."""
    assert postprocess_pred("  \t1234567\x00 89\x1f\n ") == "1234567\n 89"
    assert postprocess_pred("\x00\x01\t") == ""
    assert postprocess_pred("a\tb") == "a\nb"  # a tab inside becomes a newline too
    assert postprocess_pred("") == ""


def test_string_match_all_worked_cases():
    """constants.py string_match_all, per example: sum(r.lower() in pred.lower()) / len(refs) x 100."""
    refs = ["1234567", "7654321", "Apple-Pie", "9999999"]
    assert string_match_all("", refs) == 0.0                                       # empty prediction
    assert string_match_all(postprocess_pred(" \x00 1234567\t"), refs) == 25.0     # whitespace / control chars
    assert string_match_all("APPLE-pie", ["apple-PIE"]) == 100.0                    # case
    assert string_match_all("1234567, 7654321 and apple-pie.", refs) == 75.0       # several references: 3 of 4
    assert string_match_all("I think the number is 1234567 for sure", ["1234567"]) == 100.0  # inside a sentence
    assert string_match_all(postprocess_pred("1234567\n7654321\n"), refs[:2]) == 100.0  # one per line
    assert string_match_all("apple pie", ["apple-pie"]) == 0.0                     # no normalisation at all


def test_string_match_part_worked_cases():
    """constants.py string_match_part, per example: max(r.lower() in pred.lower()) x 100."""
    refs = ["South America", "north africa"]
    assert string_match_part("", refs) == 0.0
    assert string_match_part(postprocess_pred("\tNORTH AFRICA\x00"), refs) == 100.0
    assert string_match_part("It was somewhere in North Africa, I believe.", refs) == 100.0
    assert string_match_part("Asia\nEurope", refs) == 0.0
    assert string_match_part("Asia\nnorth africa", refs) == 100.0   # newline-separated guesses: any counts


def test_ruler_task_score_rounds_the_mean_to_two_decimals():
    """constants.py: round(sum(per example) / n x 100, 2).  (25 + 50 + 100) / 3 = 58.333... -> 58.33."""
    assert ruler_task_score([25.0, 50.0, 100.0]) == 58.33
    assert ruler_task_score([100.0, 100.0, 0.0]) == 66.67
    assert ruler_task_score([0.0]) == 0.0


def test_public_ruler_scorers_clean_up_and_round_as_the_official_evaluator():
    """evaluate.py postprocess_pred runs before constants.py's metric, and the metric returns round(score, 2):
    the bare scorer must do both. ' paris' is stripped to 'paris', which no longer holds the reference ' paris';
    the tab of 'x\tY' becomes a newline, so 'x\ty' is not in 'x\ny' - official score 0, not 100. Two of three
    references found is 66.6667 exactly and 66.67 officially, in string_match_all per example and in a task's
    string_match_part mean over three examples."""
    assert string_match_all(" paris", [" paris"]) == 0.0
    assert string_match_part(" paris", [" paris"]) == 0.0
    assert string_match_all("x\tY", ["x\ty"]) == 0.0
    assert string_match_part("x\tY", ["x\ty"]) == 0.0
    assert string_match_all("a and b", ["a", "b", "z"]) == 66.67
    assert string_match_all("a and b", ["a", "b", "z"], rounded=False) == pytest.approx(200 / 3, abs=1e-12)
    part = [string_match_part(p, ["paris"], rounded=False) for p in ("Paris", " paris\n", "Rome")]
    assert ruler_task_score(part) == 66.67


def test_ruler_task_rounds_once_after_the_mean():
    """constants.py rounds the task mean, not each example: examples scoring 2/3 and 0 give round(33.333, 2) =
    33.33; rounding each first would give mean(66.67, 0) = 33.335 -> 33.34 (or 33.33 by float luck)."""
    scores = [string_match_all(p, ["a", "b", "c"], rounded=False) for p in ("a b", "none")]
    assert ruler_task_score(scores) == 33.33


# --------------------------------------------------------------------------------------------- En.QA


def test_qa_f1_worked_cases():
    """compute_scores.py qa_f1_score: normalize_answer (lower -> drop string.punctuation -> drop a/an/the ->
    collapse whitespace), token F1 = 2PR / (P + R), best over the references, x 100 here."""
    assert qa_f1("", ["Eiffel Tower"]) == 0.0                                      # empty prediction
    assert qa_f1("  Eiffel\tTower\n\x0b", ["Eiffel Tower"]) == 100.0              # whitespace / control chars split
    assert qa_f1("EIFFEL TOWER", ["eiffel tower"]) == 100.0                        # case
    # punctuation is deleted, not replaced by a space: "Eiffel-Tower" -> "eiffeltower", no common token
    assert qa_f1("The Eiffel-Tower!", ["Eiffel Tower"]) == 0.0
    # "An answer: the tower." -> [answer, tower] vs [tower]: P = 1/2, R = 1, F1 = 2/3
    assert qa_f1("An answer: the tower.", ["tower"]) == pytest.approx(200 / 3)
    # several references: the best; "Gustave Eiffel" vs ["Paris", "Gustave Eiffel"] -> 100
    assert qa_f1("Gustave Eiffel", ["Paris", "Gustave Eiffel"]) == 100.0
    # inside a longer sentence: 8 tokens, 2 shared with a 2-token reference: P = 1/4, R = 1, F1 = 0.4
    assert qa_f1("It was built by Gustave Eiffel in Paris", ["Gustave Eiffel"]) == pytest.approx(40.0)
    assert qa_f1("Gustave\nEiffel", ["gustave eiffel"]) == 100.0                  # newline-separated
    assert qa_f1("the a an", ["an"]) == 0.0                                        # articles only -> no tokens


# --------------------------------------------------------------------------------------------- En.Sum


def test_rouge_lsum_on_raw_texts_worked_cases():
    """get_score_one_longbook_sum_eng -> rouge_score rougeLsum, no stemmer; "sentences" are lines, the
    tokeniser lower-cases and keeps [a-z0-9]+ runs; summary-level LCS; several references -> best F."""
    assert rouge_lsum("", ["Alice leaves home."]) == 0.0                           # empty prediction
    assert rouge_lsum("  ALICE,\tleaves home!!  ", ["alice leaves home"]) == pytest.approx(100.0)  # case, spaces
    assert rouge_lsum("alice\x00leaves\x1fhome", ["alice leaves home"]) == pytest.approx(100.0)  # control chars split
    # two sentences on one line, swapped: tokens [c d a b] vs [a b c d], LCS 2 -> P = R = 1/2 -> 50
    # (splitting into sentences first, as this project did before, gives 100)
    assert rouge_lsum("C d. A b.", ["A b. C d."]) == pytest.approx(50.0)
    # the same sentences on separate lines: each reference line finds its match -> 100
    assert rouge_lsum("c d\na b", ["a b\nc d"]) == pytest.approx(100.0)
    # inside a longer text: 4 predicted tokens, the 2 reference tokens in order: P = 1/2, R = 1 -> F = 2/3
    assert rouge_lsum("so alice leaves today", ["alice leaves"]) == pytest.approx(200 / 3)
    # several references: the best one
    assert rouge_lsum("alice leaves", ["bob stays", "alice leaves"]) == pytest.approx(100.0)


# --------------------------------------------------------------------------------------------- En.MC

OPTIONS = ["a dog", "a cat", "a bird", "a fish"]


@pytest.mark.parametrize("prediction,gold,official", [
    ("", "B", False),                                # empty prediction (upstream returns False after strip)
    ("  B\n", "B", True),                            # whitespace stripped, then the first character decides
    ("\x00B", "B", False),                           # a control character is not stripped and not split on
    ("b", "B", False),                               # case: only capital letters count
    ("The answer is a cat.", "B", True),             # text after "answer is" starts with the gold option text
    ("The correct option is D.", "D", True),         # "option is" prefix
    ("(B)", "B", False),                             # no rule reads a parenthesised letter
    ("**B**", "B", False),
    ("Answer: B", "B", False),                       # the first character "A" is taken as the answer
    ("Answer: A", "A", True),
    ("The Answer is B", "B", True),                  # no lower-case prefix: the first word in "ABCD" is "B"
    ("I think it is A or B", "B", False),            # first such word is A
    ("a cat", "B", True),                            # the whole prediction equals a label
    ("From the book, the answer is: C, because", "C", True),  # inside a longer sentence, after "answer is:"
    ("Based on the book, the answer is: C", "C", False),     # ... unless it starts with a capital A-D ("B")
    ("Let me think.\nThe answer is C", "C", True),   # newline-separated reasoning then the answer
])
def test_choice_official_parser(prediction, gold, official):
    """compute_scores.py get_score_one_longbook_choice_eng with labels [options[gold], gold]."""
    assert choice_accuracy(prediction, gold, OPTIONS) == (100.0 if official else 0.0)


def test_choice_official_does_not_match_an_option_inside_another_word():
    """get_score_one_longbook_choice_eng: option text is only compared after an answer prefix, so
    "It was concatenated" (gold A = "cat") is wrong; words "It", "was", "concatenated" are not in "ABCD"."""
    assert not choice_correct("It was concatenated", ["cat", "A"])
    assert choice_accuracy_lenient("It was concatenated", "A", ["cat", "dog", "cow", "pig"]) == 100.0


def test_lenient_parser_is_a_separate_number():
    """The lenient reader accepts forms the official parser rejects; it never replaces the official score."""
    for pred in ("(B)", "**B**", "Answer: B"):
        assert choice_accuracy(pred, "B", OPTIONS) == 0.0
        assert choice_accuracy_lenient(pred, "B", OPTIONS) == 100.0

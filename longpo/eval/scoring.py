"""Metrics of RULER and InfiniteBench as their official scorers compute them; each score is on a 0-100 scale.

Official behaviour followed (read from the public code; re-implemented here):

- RULER (NVIDIA/RULER `scripts/eval/evaluate.py`, `scripts/eval/synthetic/constants.py`): every
  prediction first goes through `postprocess_pred` (strip, control characters \\x00-\\x1f turned
  into newlines, strip again). `string_match_all` (niah, vt, cwe, fwe) is the share of references
  found in the prediction, `string_match_part` (qa) is 1 when any reference is found; both
  compare lower-cased strings. The public functions take one example and apply the clean-up and the
  official rounding themselves, so `string_match_all(p, refs)` equals the official
  `string_match_all([postprocess_pred(p)], [refs])`; a task's score is the mean of the unrounded
  per-example scores, rounded to two decimals once (`ruler_task_score`), as `evaluate.py` does.
- InfiniteBench (OpenBMB/InfiniteBench `src/compute_scores.py`):
  En.Sum `get_score_one_longbook_sum_eng`: ROUGE-Lsum F1 of the `evaluate` "rouge" metric on the raw
  texts, i.e. `rouge_score` without stemming, where a "sentence" is a line (text between newlines);
  several references give the best one (`score_multi`).
  En.QA `qa_f1_score`: SQuAD token F1 after `normalize_answer` (lower case, punctuation dropped,
  articles a/an/the dropped, whitespace collapsed), the best over references.
  En.MC `get_score_one_longbook_choice_eng`: the first character if it is A-D; else the whole
  prediction equal to a label; else the text after the first "answer is:", "answer:", "answer is"
  or "option is" must start with the gold option text or letter; else the first word that is a
  substring of "ABCD". The labels are [gold option text, gold letter].

`extract_choice` / `choice_accuracy_lenient` are this project's own, more forgiving letter reader
("(B)", "**B**", "Answer: B"); they are reported beside the official En.MC number, never instead of it.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter

# ---------------------------------------------------------------------------------------------
# RULER

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess_pred(prediction: str) -> str:
    """RULER's `postprocess_pred`: strip, control characters (\\x00-\\x1f, newline and tab included) -> newline, strip."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: list[str], *, rounded: bool = True) -> float:
    """RULER's `string_match_all` of one example: the prediction goes through `postprocess_pred`, then
    100 x (references found in it, case-insensitive) / (references), rounded to 2 decimals as
    `string_match_all([prediction], [references])` returns it. `rounded=False` gives the exact share, for a
    task's mean (`ruler_task_score` rounds once, after averaging, as the official evaluator does)."""
    if not references:
        raise ValueError("string_match_all needs at least one reference")
    pred = postprocess_pred(prediction).lower()
    score = 100.0 * sum(r.lower() in pred for r in references) / len(references)
    return round(score, 2) if rounded else score


def string_match_part(prediction: str, references: list[str], *, rounded: bool = True) -> float:
    """RULER's `string_match_part` of one example: 100 if any reference is in the `postprocess_pred`-ed
    prediction (case-insensitive). Always 0 or 100, so `rounded` only mirrors `string_match_all`."""
    if not references:
        raise ValueError("string_match_part needs at least one reference")
    pred = postprocess_pred(prediction).lower()
    score = 100.0 * max(r.lower() in pred for r in references)
    return round(score, 2) if rounded else score


def ruler_task_score(scores: list[float]) -> float:
    """A RULER task's reported score: the mean of the unrounded per-example scores (0-100), rounded to 2 decimals."""
    return round(sum(scores) / len(scores), 2) if scores else float("nan")


# ---------------------------------------------------------------------------------------------
# InfiniteBench En.QA

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation as `normalize_answer`: lower case, drop punctuation, drop articles, collapse whitespace."""
    text = text.lower().translate(_NO_PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, references: list[str]) -> float:
    if not references:
        raise ValueError("qa_f1 needs at least one reference")
    return 100.0 * max(token_f1(prediction, r) for r in references)


# ---------------------------------------------------------------------------------------------
# InfiniteBench En.Sum


@functools.lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool):
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # pragma: no cover - part of the eval extra
        raise ImportError("ROUGE needs the `rouge_score` package (pip install 'longpo[eval]')") from e
    return rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=use_stemmer)


def rouge_lsum(prediction: str, references: list[str], use_stemmer: bool = False) -> float:
    """ROUGE-Lsum F1 x 100 on the raw texts (sentences are the lines), the best over references.

    The texts are not re-split into sentences: the official scorer passes them to `rouge_score` as they
    are, so a one-paragraph summary is one "sentence" and the score is close to plain ROUGE-L.
    """
    if not references:
        raise ValueError("rouge_lsum needs at least one reference")
    return 100.0 * _rouge_scorer(use_stemmer).score_multi(list(references), prediction)["rougeLsum"].fmeasure


# ---------------------------------------------------------------------------------------------
# InfiniteBench En.MC

_MC_SEPARATORS = ["\n", '"', "'", ".", ",", "?", "!", "{", "}"]
_MC_PREFIXES = ["answer is:", "answer:", "answer is", "option is"]


def choice_labels(gold_letter: str, options: list[str] | None) -> list[str]:
    """The official ground truth of an En.MC example: [gold option text, gold letter] (`get_answer`)."""
    if options:
        return [options["ABCD".index(gold_letter)], gold_letter]
    return [gold_letter]


def choice_correct(prediction: str, labels: list[str]) -> bool:
    """`get_score_one_longbook_choice_eng`: is the free-form prediction the gold option?

    Case-sensitive throughout, as the official code: "answer is" must be lower case, and a leading
    capital A-D decides alone ("Answer: B" reads as A).
    """
    pred = prediction.strip()
    if not pred:
        return False
    if pred[0] in "ABCD":
        return pred[0] in labels
    if pred in labels:
        return True
    for c in _MC_SEPARATORS:
        pred = pred.replace(c, " ")
    while "  " in pred:
        pred = pred.replace("  ", " ")
    for prefix in _MC_PREFIXES:
        idx = pred.find(prefix)
        if idx == -1:
            continue
        after = pred[idx + len(prefix) + 1:]
        return bool(after) and any(after.startswith(s) for s in labels)
    for word in pred.split():
        if word in "ABCD":  # a substring test, as upstream: "AB" counts as a word in "ABCD"
            return word in labels
    return False


def choice_accuracy(prediction: str, gold_letter: str, options: list[str] | None = None) -> float:
    """Official En.MC accuracy (0 or 100) of one prediction."""
    return 100.0 * choice_correct(prediction, choice_labels(gold_letter, options))


_LETTER_PATTERNS = [
    r"^\s*\(?([A-D])\)?\s*$",                                   # "B", "(B)"
    r"^\s*\(?([A-D])[\).:](?:\s|$)",                            # "B. text", "(B) text", "B: text"
    r"answer\s*(?:is|:)?\s*(?:option\s*)?[:\s]*\(?\**([A-D])\b(?![a-z'])",  # "the answer is (B)"
    r"\boption\s*\(?([A-D])\b",                                  # "option B"
    r"^\s*\**([A-D])\**\s*(?:[\n,]|$)",                          # "**B**" alone on the first line
]


def extract_choice(prediction: str, options: list[str] | None = None) -> str | None:
    """Lenient reader (this project's, not official): the option letter (A-D) a free-form answer picks, or None.

    Tries explicit letter forms first ("B", "(B)", "B. text", "The answer is B", "option B"), then
    the text of exactly one option appearing in the prediction.
    """
    text = prediction.strip()
    if not text:
        return None
    for pattern in _LETTER_PATTERNS:
        m = re.search(pattern, text, flags=re.IGNORECASE if "answer" in pattern or "option" in pattern else 0)
        if m:
            return m.group(1).upper()
    if options:
        norm = normalize_answer(text)
        hits = [i for i, opt in enumerate(options) if normalize_answer(opt) and normalize_answer(opt) in norm]
        if len(hits) == 1:
            return "ABCD"[hits[0]]
    return None


def choice_accuracy_lenient(prediction: str, gold_letter: str, options: list[str] | None = None) -> float:
    """100 if `extract_choice` reads the gold letter; reported as `en_mc_lenient`, beside the official score."""
    return 100.0 * (extract_choice(prediction, options) == gold_letter)

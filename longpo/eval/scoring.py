"""Metrics of RULER and InfiniteBench, each a pure function of (prediction, references) -> score in [0, 100].

- `string_match_all` (RULER niah / vt / cwe / fwe): share of references found in the prediction,
  case-insensitive.
- `string_match_part` (RULER qa): 100 if any reference is found in the prediction.
- `rouge_lsum` (InfiniteBench En.Sum): ROUGE-Lsum F1 from `rouge_score`, max over references.
- `qa_f1` (InfiniteBench En.QA): SQuAD token F1 after answer normalisation, max over references.
- `choice_accuracy` (InfiniteBench En.MC): 100 if the letter read from the prediction is the gold one.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter


def string_match_all(prediction: str, references: list[str]) -> float:
    if not references:
        raise ValueError("string_match_all needs at least one reference")
    pred = prediction.lower()
    return 100.0 * sum(r.lower() in pred for r in references) / len(references)


def string_match_part(prediction: str, references: list[str]) -> float:
    if not references:
        raise ValueError("string_match_part needs at least one reference")
    pred = prediction.lower()
    return 100.0 * max(r.lower() in pred for r in references)


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
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


@functools.lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool):
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # pragma: no cover - part of the eval extra
        raise ImportError("ROUGE needs the `rouge_score` package (pip install 'longpo[eval]')") from e
    return rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=use_stemmer)


def _one_sentence_per_line(text: str) -> str:
    from longpo.eval.haystack import split_sentences

    return "\n".join(split_sentences(text.strip()))


def rouge_lsum(prediction: str, references: list[str], use_stemmer: bool = False) -> float:
    """ROUGE-Lsum F1 x100; sentences are put on their own lines, as rougeLsum expects."""
    if not references:
        raise ValueError("rouge_lsum needs at least one reference")
    if not prediction.strip():
        return 0.0
    scorer = _rouge_scorer(use_stemmer)
    pred = _one_sentence_per_line(prediction)
    return 100.0 * max(scorer.score(_one_sentence_per_line(r), pred)["rougeLsum"].fmeasure for r in references)


_LETTER_PATTERNS = [
    r"^\s*\(?([A-D])\)?\s*$",                                   # "B", "(B)"
    r"^\s*\(?([A-D])[\).:](?:\s|$)",                            # "B. text", "(B) text", "B: text"
    r"answer\s*(?:is|:)?\s*(?:option\s*)?[:\s]*\(?\**([A-D])\b(?![a-z'])",  # "the answer is (B)"
    r"\boption\s*\(?([A-D])\b",                                  # "option B"
    r"^\s*\**([A-D])\**\s*(?:[\n,]|$)",                          # "**B**" alone on the first line
]


def extract_choice(prediction: str, options: list[str] | None = None) -> str | None:
    """The option letter (A-D) a free-form answer picks, or None.

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


def choice_accuracy(prediction: str, gold_letter: str, options: list[str] | None = None) -> float:
    return 100.0 * (extract_choice(prediction, options) == gold_letter)

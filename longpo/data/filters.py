"""Filters for generated questions and pairs; every dropped item is counted under its reason.

Each rule is a small named function with a config key that switches or tunes it, so a preset (e.g.
one reproducing the released scripts) can choose which rules apply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from longpo.config import help_field

REFUSALS = [
    "i cannot", "i can't", "i can not", "i'm sorry", "i am sorry", "i apologize", "as an ai",
    "i don't have access", "i do not have access", "i'm unable", "i am unable", "i'm not able",
]
_WORD = re.compile(r"[^\W\d_]{2,}")
# Words that carry no content of their own: English function words, and the frame words of an answer
# or a question about "the text" ("The answer is:", "What is the main idea of this passage?").
FUNCTION_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each either even ever every few for from further had has
have having he her here hers herself him himself his how however if in into is it its itself just let like may
me might more most much must my myself neither no nor not now of off on once only or other ought our ours
ourselves out over own per rather same shall she should so some such than that the their theirs them
themselves then there these they this those through thus to too under until up upon us very via was we were
what when where whether which while who whom whose why will with within without would yes yet you your yours
yourself yourselves one ones thing things something anything way ways make makes made also well
answer answers question questions text texts passage passages above below given following according based
""".split())
GENERIC_WORDS = frozenset("""
main idea ideas topic topics theme themes overall purpose point points key central message summary summarize
author authors writer reader readers relate relates related relation relationship connect connects connection
other others discuss discussed describe described explain explained mention mentioned important significance
significant information content contents aspect aspects part parts example examples general specific
""".split())
DROP_REASONS = ("empty_answer", "refusal", "repetition", "ngram_repetition", "too_few_words", "copied_answer",
                "chosen_equals_rejected", "truncated", "short_prompt_too_long")
TRUNCATION_MODES = ("drop", "trim", "keep")


@dataclass(kw_only=True)
class FilterConfig:
    refusal_phrases: list = help_field(REFUSALS, "lower-case phrases that mark an answer as a refusal")
    max_repeat_ratio: float = help_field(0.9, "drop an answer whose share of repeated words is above this")
    min_words: int = help_field(3, "drop an answer with fewer content words than this (2+ letters, not a function "
                                   "word: 'The answer is:' has none)")
    ngram: int = help_field(3, "n of the repeated n-gram rule")
    max_repeated_ngram_ratio: float = help_field(0.3, "drop an answer whose share of word n-grams that repeat an "
                                                      "earlier n-gram is above this (loops); 1 disables")
    drop_copied_answers: bool = help_field(True, "drop a turn whose chosen or rejected answer repeats an answer "
                                                 "(either branch) of an earlier turn of the document")
    drop_chosen_equals_rejected: bool = help_field(False, "drop a turn whose chosen equals its rejected answer (no "
                                                          "preference signal; always counted). Kept by default: "
                                                          "training leaves such a pair out of the preference mean "
                                                          "and still learns its NLL (docs/stages/train.md)")
    max_question_overlap: float = help_field(0.7, "drop a question whose content words overlap those of a question "
                                                  "already asked in an earlier turn of the same document by more "
                                                  "than this (Jaccard of the two sets); 1 disables")
    require_specific_question: bool = help_field(True, "drop a question none of whose content words (beyond "
                                                       "generic ones: 'main idea', 'text', 'author') occurs in the "
                                                       "chunk; such meta questions do not depend on the chunk")
    truncated: str = help_field("drop", "an answer that hit max_new_tokens: drop (the turn), trim (to its last "
                                        "complete sentence) or keep (as generated: the toy demo's babbling "
                                        "rejected answers); a trimmed or kept one is marked *_cut and its "
                                        "end-of-turn token is not a response token")
    max_short_prompt_tokens: int = help_field(32768, "drop a turn whose short prompt [chunk; question] is longer")

    def __post_init__(self) -> None:
        if self.truncated not in TRUNCATION_MODES:
            raise ValueError(f"filters.truncated={self.truncated!r}: choose one of {TRUNCATION_MODES}")
        if self.ngram < 1:
            raise ValueError(f"filters.ngram={self.ngram} must be at least 1")
        if not 0 <= self.max_question_overlap <= 1:
            raise ValueError(f"filters.max_question_overlap={self.max_question_overlap} must lie in [0, 1]")


def words(text: str) -> list[str]:
    """Lower-case words of 2+ letters (numbers and punctuation are not words)."""
    return _WORD.findall(text.lower())


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in FUNCTION_WORDS]


def repeat_ratio(text: str) -> float:
    """Share of words that repeat an earlier word: 0 for all-distinct, near 1 for degenerate loops."""
    tokens = text.lower().split()
    return 0.0 if not tokens else 1.0 - len(set(tokens)) / len(tokens)


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    """Share of word n-grams that equal an earlier n-gram of the text (0 when it has none)."""
    tokens = re.findall(r"\w+", text.lower())
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def drop_reason(answer: str, cfg: FilterConfig) -> str | None:
    """Why one answer is unusable on its own, or None."""
    if not answer.strip():
        return "empty_answer"
    low = answer.lower()
    if any(phrase in low for phrase in cfg.refusal_phrases):
        return "refusal"
    if repeat_ratio(answer) > cfg.max_repeat_ratio:
        return "repetition"
    if repeated_ngram_ratio(answer, cfg.ngram) > cfg.max_repeated_ngram_ratio:
        return "ngram_repetition"
    if len(content_words(answer)) < cfg.min_words:
        return "too_few_words"
    return None


def chosen_drop_reason(chosen: str, short_prompt_tokens: int, cfg: FilterConfig) -> str | None:
    """Checks that need no long-context answer: run before the expensive rejected step."""
    if short_prompt_tokens > cfg.max_short_prompt_tokens:
        return "short_prompt_too_long"
    return drop_reason(chosen, cfg)


def normalise(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def is_copy(answer: str, earlier: list[str]) -> bool:
    """The answer equals (up to case, spacing and punctuation) one of `earlier`."""
    key = normalise(answer)
    return bool(key) and any(key == normalise(e) for e in earlier)


def question_overlap(a: str, b: str) -> float:
    """Jaccard overlap of two questions' content-word sets (0 when either has none): "What is the main idea
    of the passage?" and "What is the main idea of this text?" overlap 1."""
    x, y = set(content_words(a)), set(content_words(b))
    return len(x & y) / len(x | y) if x and y else 0.0


def is_near_duplicate(question: str, earlier: list[str], max_overlap: float) -> bool:
    """The question overlaps one of `earlier` by more than `max_overlap` (`question_overlap`)."""
    return any(question_overlap(question, e) > max_overlap for e in earlier)


def is_specific_question(question: str, chunk: str) -> bool:
    """Some content word of the question, other than a generic one, occurs in the chunk (a word, or a
    shared stem of 5+ letters: "oxidizing" meets "oxidize")."""
    asked = [w for w in content_words(question) if w not in GENERIC_WORDS]
    in_chunk = set(words(chunk))
    stems = {w[:5] for w in in_chunk if len(w) >= 5}
    return any(w in in_chunk or (len(w) >= 5 and w[:5] in stems) for w in asked)


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """The text up to the end of its last complete sentence ("" when it has none)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].rstrip() if ends else ""

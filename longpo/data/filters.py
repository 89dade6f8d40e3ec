"""Filters for generated pairs; every dropped pair is counted under its reason."""

from __future__ import annotations

import re
from dataclasses import dataclass

from longpo.config import help_field

REFUSALS = [
    "i cannot", "i can't", "i can not", "i'm sorry", "i am sorry", "i apologize", "as an ai",
    "i don't have access", "i do not have access", "i'm unable", "i am unable", "i'm not able",
]
_WORD = re.compile(r"[^\W\d_]{2,}")
DROP_REASONS = ("empty_answer", "refusal", "repetition", "too_few_words", "short_prompt_too_long")


@dataclass(kw_only=True)
class FilterConfig:
    refusal_phrases: list = help_field(REFUSALS, "lower-case phrases that mark an answer as a refusal")
    max_repeat_ratio: float = help_field(0.9, "drop an answer whose share of repeated words is above this")
    min_words: int = help_field(3, "drop an answer with fewer real words (2+ letters) than this")
    max_short_prompt_tokens: int = help_field(32768, "drop a turn whose short prompt [chunk; question] is longer")


def repeat_ratio(text: str) -> float:
    """Share of words that repeat an earlier word: 0 for all-distinct, near 1 for degenerate loops."""
    words = text.lower().split()
    return 0.0 if not words else 1.0 - len(set(words)) / len(words)


def drop_reason(answer: str, cfg: FilterConfig) -> str | None:
    """Why one answer is unusable, or None."""
    if not answer.strip():
        return "empty_answer"
    low = answer.lower()
    if any(phrase in low for phrase in cfg.refusal_phrases):
        return "refusal"
    if len(_WORD.findall(answer)) < cfg.min_words:
        return "too_few_words"
    if repeat_ratio(answer) > cfg.max_repeat_ratio:
        return "repetition"
    return None


def chosen_drop_reason(chosen: str, short_prompt_tokens: int, cfg: FilterConfig) -> str | None:
    """Checks that need no long-context answer: run before the expensive rejected step."""
    if short_prompt_tokens > cfg.max_short_prompt_tokens:
        return "short_prompt_too_long"
    return drop_reason(chosen, cfg)

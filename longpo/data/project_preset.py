"""The `project` generation preset (the default, `prompts: project`): this project's own rules.

- question request: `question_template` (a template or a name of `longpo.data.presets`) asking for
  `num_questions` questions about the chunk;
- parser: `question_parser` (questions, lines or lenient); a reply needs `min_questions`; the first
  `num_questions` are kept, and with `filters.require_specific_question` the generic ones dropped, then
  those that near-duplicate a question of an earlier turn of the document (`filters.max_question_overlap`);
- prefix: `question_prefix` before the chosen question (its first letter lower-cased);
- separators: blocks and chunks joined by `separator` (default two newlines);
- filters: `filters` (`longpo.data.filters`), on each answer alone, plus copied answers;
- turns: 2 per document by default; turn i's rejected answer follows the rejected turns < i of its own
  branch, and a document stops at its first dropped turn.
"""

from __future__ import annotations

import random
from typing import Any

from longpo.data.filters import DROP_REASONS, drop_reason, is_copy, is_near_duplicate, is_specific_question
from longpo.data.prompts import QUESTION_PARSERS, pick_question, question_prompt

# The config keys only this preset reads (a preset that does not read them refuses them when set).
KEYS = ("num_questions", "min_questions", "question_parser", "question_template", "question_prefix",
        "filters.refusal_phrases", "filters.max_repeat_ratio", "filters.min_words", "filters.ngram",
        "filters.max_repeated_ngram_ratio", "filters.drop_copied_answers", "filters.require_specific_question",
        "filters.max_question_overlap")


class ProjectPreset:
    name = "project"
    keys = KEYS
    summary = "asks with question_template and filters with filters.*"
    separator = "\n\n"
    paragraph_separator = None  # blocks inside a chunk are joined by `separator` too
    num_turns = 2
    independent_turns = False
    drop_reasons = DROP_REASONS

    def question_request(self, cfg: Any, chunk: str) -> str:
        return question_prompt(cfg.question_template, chunk, cfg.num_questions)

    def parse_questions(self, cfg: Any, reply: str) -> list[str]:
        return QUESTION_PARSERS[cfg.question_parser](reply)

    def usable_questions(self, cfg: Any, found: list[str], chunk: str, stats: dict, earlier: list[str]) -> list[str]:
        if len(found) < cfg.min_questions:
            stats["questions_unparsable"] += 1
            return []
        stats["questions_parsed"] += 1
        found = found[: cfg.num_questions]
        if cfg.filters.require_specific_question:
            specific = [q for q in found if is_specific_question(q, chunk)]
            stats["questions_dropped"]["generic_question"] += len(found) - len(specific)
            if not specific:
                stats["turns_without_question"]["generic_questions_only"] += 1
            found = specific
        if found and earlier and cfg.filters.max_question_overlap < 1:  # asked again: trains the same thing twice
            distinct = [q for q in found if not is_near_duplicate(q, earlier, cfg.filters.max_question_overlap)]
            stats["questions_dropped"]["near_duplicate_question"] += len(found) - len(distinct)
            if not distinct:
                stats["turns_without_question"]["near_duplicate_questions_only"] += 1
            found = distinct
        return found

    def pick_question(self, cfg: Any, questions: list[str], rng: random.Random) -> str:
        return pick_question(questions, rng, cfg.question_prefix)

    def drop_reason(self, cfg: Any, chosen: str, rejected: str | None, branch: str, earlier: list[str]) -> str | None:
        answer = chosen if branch == "chosen" else rejected
        reason = drop_reason(answer, cfg.filters)
        if reason is None and cfg.filters.drop_copied_answers and is_copy(answer, earlier):
            return "copied_answer"
        return reason


PRESET = ProjectPreset()

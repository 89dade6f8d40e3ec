"""Question prompts and parsers for small instruct models (135M-1B), chosen by name in a config.

    longpo generate ... question_template=small question_parser=lenient

The paper's prompt (`prompts.QUESTION_TEMPLATE`, what the `released` recipes use) asks a 7B model
for exactly k numbered questions and `prompts.parse_questions` keeps a reply only when it holds
exactly k. A 135M model does not follow that: it writes a few questions with their answers mixed
in, or runs on past k. The `small` template says the task first, shows it once on an example text
(a one-shot numbered list), then gives the chunk; `parse_lenient` takes the questions out of
whatever the model wrote: the text of each numbered (or bulleted) item up to its first question
mark, items without one skipped (mixed-in answers), repeats and questions about the example
dropped, up to k kept (one is used per chunk, so fewer than k still counts).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from longpo.data.prompts import QUESTION_TEMPLATE, parse_questions

# One worked example (a text of its own and its questions) shows the format; a 135M model still copies
# example questions now and then, so the lenient parser drops any question of the example.
EXAMPLE_TEXT = ("Tom missed the early train because his alarm did not ring. He called his sister Mary, who "
                "drove him to the city, and he reached the office an hour late.")
EXAMPLE_QUESTIONS = ("Why did Tom miss the early train?", "Who drove Tom to the city?",
                     "How late did Tom reach the office?", "Whom did Tom call for help?")
EXAMPLE_NAMES = ("Tom", "Mary")  # a question naming them is about the example, not the chunk
SMALL_QUESTION_TEMPLATE = (
    "You will write {k} questions about a text.\n\n"
    "Example text: " + EXAMPLE_TEXT + "\nExample questions:\n"
    + "".join(f"{i + 1}. {q}\n" for i, q in enumerate(EXAMPLE_QUESTIONS[:3])) +
    "\nNow the text:\n\n{chunk}\n\n"
    "Write {k} questions about this text, about its people, what they do and why. Write only the "
    "questions, as a numbered list from 1 to {k}."
)

QUESTION_TEMPLATES = {"paper": QUESTION_TEMPLATE, "small": SMALL_QUESTION_TEMPLATE}

_ITEM = re.compile(r"^\s*(?:\*\*)?(?:Q(?:uestion)?\s*)?(?:\d{1,2}\s*(?:[.):\]-]|\*\*)|[-*\u2022])\s*(.*)$", re.IGNORECASE)
# Labels left before a question: "Q:", "Question 2:", "A: 1.", "B)".
_LABEL = re.compile(r"^(?:\*\*)?(?:(?:Q(?:uestion)?\s*\d*|[A-Z])\s*[:.)]\s*)?(?:\d{1,2}\s*[.)]\s*)?")


def parse_lenient(reply: str, k: int) -> list[str] | None:
    """Up to k questions of a reply (the first ones), or None when it holds none.

    A question is the text of a numbered / bulleted item (or, when the reply has no list, of a
    line) up to and including its first "?"; items without a question mark (answers, remarks)
    are skipped, as are repeats of an earlier question, questions about the template's example
    (naming its people) and questions of fewer than 3 words. Only one question per chunk is used
    (`pick_question`), so a reply with fewer than k good questions is still kept: the exact count
    is the paper's quality filter for a 7B model, and a 135M model rarely meets it.
    """
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
    items = [m.group(1) for line in lines if (m := _ITEM.match(line))] or lines
    questions: list[str] = []
    for item in items:
        text = _LABEL.sub("", item.strip().strip("*").strip())
        if "?" not in text:
            continue
        q = text[: text.index("?") + 1].strip().strip("*").strip()
        about_example = any(re.search(rf"\b{name}\b", q) for name in EXAMPLE_NAMES)
        if len(q.split()) >= 3 and not about_example and q.lower() not in {x.lower() for x in questions}:
            questions.append(q)
    return questions[:k] or None


QUESTION_PARSERS: dict[str, Callable[[str, int], list[str] | None]] = {"exact": parse_questions,
                                                                       "lenient": parse_lenient}


def question_template(name_or_text: str) -> str:
    """A template by preset name, or the text itself when it is a template (holds {chunk})."""
    if "{chunk}" in name_or_text:
        return name_or_text
    if name_or_text not in QUESTION_TEMPLATES:
        raise ValueError(f"question_template={name_or_text!r}: neither a preset ({sorted(QUESTION_TEMPLATES)}) nor "
                         "a template with the placeholder {chunk}")
    return QUESTION_TEMPLATES[name_or_text]

"""Prompts of the self-instruction step and the parser of its replies.

The question prompt is a config string with two placeholders, `{chunk}` and `{k}`. Answer prompts
are not templates: both answers use `records.user_content(context, question)`, the exact user
message training and the reference use, so what was generated is what is trained on.
"""

from __future__ import annotations

import random
import re

QUESTION_TEMPLATE = (
    "{chunk}\n\n"
    "Read the text above closely. Write exactly {k} different questions about it that a careful reader "
    "could answer only by understanding the text: ask about its key facts, the reasons behind them, and how "
    "its main ideas connect. Number the questions from 1 to {k}, one per line, and write nothing else."
)
QUESTION_PREFIX = "According to the passage above, "

_NUMBERED = re.compile(r"^\s*(?:\*\*)?(?:Q(?:uestion)?\s*)?(\d{1,2})\s*(?:[.):\]-]|\*\*)\s*(.*)$", re.IGNORECASE)
_BULLET = re.compile(r"^\s*[-*\u2022]\s+(.*)$")


def question_prompt(template: str, chunk: str, k: int) -> str:
    """The user message asking for k questions about a chunk."""
    if "{chunk}" not in template:
        raise ValueError("question_template must contain the placeholder {chunk}")
    return template.replace("{chunk}", chunk).replace("{k}", str(k))


def _clean(question: str) -> str:
    return question.strip().strip("*").strip()


def parse_questions(reply: str, k: int) -> list[str] | None:
    """Exactly k questions from a reply, or None.

    Accepts numbered lists ("1. ...", "2) ...", "Q3: ...", "**4.** ..."), bullets, or one question
    per line; a line that continues a numbered item is joined to it; headers such as
    "Questions:" are ignored. A reply with more or fewer than k questions returns None.
    """
    lines = [line.rstrip() for line in reply.strip().splitlines() if line.strip()]
    numbered: list[str] = []
    saw_number = False
    for line in lines:
        m = _NUMBERED.match(line)
        if m:
            saw_number = True
            numbered.append(m.group(2))
        elif saw_number and numbered and not line.rstrip().endswith(":"):
            numbered[-1] = f"{numbered[-1]} {line.strip()}"
    if saw_number:
        questions = [_clean(q) for q in numbered]
    else:
        bullets = [m.group(1) for line in lines if (m := _BULLET.match(line))]
        questions = [_clean(q) for q in (bullets or [line for line in lines if not line.endswith(":")])]
    questions = [q for q in questions if len(q.split()) >= 2]
    return questions if len(questions) == k else None


def pick_question(questions: list[str], rng: random.Random, prefix: str = QUESTION_PREFIX) -> str:
    """One question at random, prefixed with a phrase that points back at the text."""
    q = rng.choice(questions)
    if prefix and len(q) > 1 and q[0].isupper() and q[1].islower():
        q = q[0].lower() + q[1:]  # "What is ..." -> "According to ..., what is ..."
    return f"{prefix}{q}"

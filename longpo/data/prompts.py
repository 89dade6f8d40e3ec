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

# A list label or a "Q:" / "question:" / "A:" prefix at the start of a line, bold or not: "1.", "2)",
# "(3)", "Q4:", "**Question 5:**", "- ", "a) ", "A: ".
_LABEL = re.compile(
    r"^(?:[-*\u2022>#]+\s+|\**\s*(?:(?:q(?:uestion)?|a(?:nswer)?)\s*\d{0,2}\s*[:.)-]|\(?\d{1,2}\s*[.):\]-]|\(?[a-z]\))\s*\**\s*)",
    re.IGNORECASE,
)
# "According to the text, ...", "Based on the passage, ...": the question starts after the comma.
_LEAD = re.compile(r"^(?:according to|based on|in|from|within)\b[^,?]{0,60},\s*", re.IGNORECASE)
INTERROGATIVES = frozenset(
    "what why how when where which who whom whose whether is are was were do does did can could would should "
    "will shall has have had may might must".split()
)


def question_prompt(template: str, chunk: str, k: int) -> str:
    """The user message asking for k questions about a chunk."""
    if "{chunk}" not in template:
        raise ValueError("question_template must contain the placeholder {chunk}")
    # {k} first: a chunk may hold "{k}" itself (LaTeX: \sum_{k}), which must reach the model as written
    return template.replace("{k}", str(k)).replace("{chunk}", chunk)


def strip_label(line: str) -> tuple[str, bool]:
    """A line without its list labels and Q:/A: prefixes (all of them: "1. Q: ..."), and whether it had one."""
    text, labelled = line.strip(), False
    while (m := _LABEL.match(text)) and m.end() < len(text):
        text, labelled = text[m.end():].strip(), True
    return text.strip("*").strip(), labelled


def is_question(text: str) -> bool:
    """A question: it ends with a question mark, or (the model dropped it) it opens with an interrogative
    word, after any "According to the text, " lead, and does not end like a statement (".", "!", ":")."""
    if len(re.findall(r"[^\W\d_]{2,}", text)) < 2:  # two words of letters at least: not ". ? 44 ."
        return False
    if text.rstrip("*\"') ").endswith("?"):
        return True
    words = _LEAD.sub("", text).split()
    return bool(words) and words[0].lower().strip("\"'(") in INTERROGATIVES and not text.endswith((".", "!", ":"))


def extract_questions(reply: str) -> list[str]:
    """Every question of a reply, in order, without labels or duplicates.

    A labelled line ("1. ...", "- ...", "Q3: ...") starts an item; an unlabelled line continues the
    previous labelled item while that item has not ended (no "?", "." or ":" at its end, as in a
    question wrapped over two lines), else it is an item of its own. Each item is split after every
    "?" (several questions on one line); only the pieces that are questions (`is_question`) are kept,
    so prose, answers and headers ("Here are the questions:") are dropped.
    """
    items: list[tuple[str, bool]] = []
    for line in reply.splitlines():
        text, labelled = strip_label(line)
        if not text:
            continue
        if not labelled and items and items[-1][1] and not items[-1][0].endswith(("?", ".", ":")):
            items[-1] = (f"{items[-1][0]} {text}", True)
        else:
            items.append((text, labelled))
    questions: list[str] = []
    seen: set[str] = set()
    for item, _ in items:
        for piece in re.split(r"(?<=\?)\s+", item):
            piece = strip_label(piece)[0]
            key = " ".join(piece.lower().split())
            if is_question(piece) and key not in seen:
                seen.add(key)
                questions.append(piece)
    return questions


def extract_line_questions(reply: str) -> list[str]:
    """The rule before issue 18, kept for presets: numbered items (else bullets, else every line that is
    not a header) of two words or more, whether or not they are questions."""
    lines = [line.rstrip() for line in reply.strip().splitlines() if line.strip()]
    numbered: list[str] = []
    for line in lines:
        if m := _NUMBERED.match(line):
            numbered.append(m.group(1))
        elif numbered and not line.rstrip().endswith(":"):
            numbered[-1] = f"{numbered[-1]} {line.strip()}"
    if not numbered:
        bullets = [m.group(1) for line in lines if (m := _BULLET.match(line))]
        numbered = bullets or [line for line in lines if not line.endswith(":")]
    return [q for q in (q.strip().strip("*").strip() for q in numbered) if len(q.split()) >= 2]


_NUMBERED = re.compile(r"^\s*(?:\*\*)?(?:Q(?:uestion)?\s*)?\d{1,2}\s*(?:[.):\]-]|\*\*)\s*(.*)$", re.IGNORECASE)
_BULLET = re.compile(r"^\s*[-*\u2022]\s+(.*)$")

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

_LENIENT_ITEM = re.compile(r"^\s*(?:\*\*)?(?:Q(?:uestion)?\s*)?(?:\d{1,2}\s*(?:[.):\]-]|\*\*)|[-*\u2022])\s*(.*)$", re.IGNORECASE)
# Labels left before a question: "Q:", "Question 2:", "A: 1.", "B)".
_LENIENT_LABEL = re.compile(r"^(?:\*\*)?(?:(?:Q(?:uestion)?\s*\d*|[A-Z])\s*[:.)]\s*)?(?:\d{1,2}\s*[.)]\s*)?")


def extract_lenient_questions(reply: str) -> list[str]:
    """The questions of a small model's reply (`question_parser=lenient`, with the `small` template).

    A question is the text of a numbered / bulleted item (or, when the reply has no list, of a
    line) up to and including its first "?"; items without a question mark (answers, remarks)
    are skipped, as are repeats of an earlier question, questions about the template's example
    (naming its people) and questions of fewer than 3 words. Only one question per chunk is used
    (`pick_question`), so a reply with fewer than k good questions is still kept: the exact count
    is the paper's quality filter for a 7B model, and a 135M model rarely meets it.
    """
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
    items = [m.group(1) for line in lines if (m := _LENIENT_ITEM.match(line))] or lines
    questions: list[str] = []
    for item in items:
        text = _LENIENT_LABEL.sub("", item.strip().strip("*").strip())
        if "?" not in text:
            continue
        q = text[: text.index("?") + 1].strip().strip("*").strip()
        about_example = any(re.search(rf"\b{name}\b", q) for name in EXAMPLE_NAMES)
        if len(q.split()) >= 3 and not about_example and q.lower() not in {x.lower() for x in questions}:
            questions.append(q)
    return questions




def parse_lenient(reply: str, k: int) -> list[str] | None:
    """Up to k questions of a reply (the first ones), or None when it holds none (see above)."""
    return extract_lenient_questions(reply)[:k] or None


# Name -> rule, chosen by the config key `question_parser` (a preset may pick another).
QUESTION_PARSERS = {"questions": extract_questions, "lines": extract_line_questions,
                    "lenient": extract_lenient_questions}


def parse_questions(reply: str, k: int, min_questions: int | None = None, parser: str = "questions") -> list[str] | None:
    """The first k questions of a reply when it holds at least `min_questions` (default: k), else None."""
    questions = QUESTION_PARSERS[parser](reply)
    need = k if min_questions is None else min_questions
    return questions[:k] if len(questions) >= need else None


def pick_question(questions: list[str], rng: random.Random, prefix: str = QUESTION_PREFIX) -> str:
    """One question at random, prefixed with a phrase that points back at the text."""
    q = rng.choice(questions)
    if prefix and len(q) > 1 and q[0].isupper() and q[1].islower():
        q = q[0].lower() + q[1:]  # "What is ..." -> "According to ..., what is ..."
    return f"{prefix}{q}"

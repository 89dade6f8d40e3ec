"""The `released` generation rules: how the released LongPO data scripts build and filter pairs.

Learnt from DAMO-NLP-SG/LongPO data_prepare/generate_qa.py and postprocess_longpo_pair.py; the
prompt text and the two phrase lists are the behaviour itself, so they are reproduced; the code
is ours. Where the project's own defaults (`longpo.data.prompts`, `longpo.data.filters`) differ:

- question request: "Context:\\n<chunk>\\n\\n" + the released prompt (4 numbered questions "1:".."4:");
- parser: a numbered-item regex (`1:`, `2.`, `3 -` ...), markdown `*`/`#` and end punctuation
  stripped; a reply counts only with exactly 4 questions;
- prefix: one of 20 phrases at random, then the question unchanged ("As described in the
  preceding text, What ..."; proper nouns keep their capital, so does the first word);
- separators: paragraphs joined by one space inside a chunk, chunks by three newlines;
- filters: empty answer; "meaningless" answers (repetition ratio = share of words that occur
  more than once, counting every occurrence, above 0.95 for rejected / 0.9 for chosen, or fewer
  than 2 words of 3+ characters); any of 37 refusal phrases (case-insensitive) in either answer;
- turns: up to 4 per document; each rejected answer is an independent single-turn request over
  the whole document (not conditioned on the earlier rejected turns).

`longpo generate prompts=released` applies them (longpo/data/generate.py).
"""

from __future__ import annotations

import random
import re
from collections import Counter

QUESTION_PROMPT = """
Based on the content presented above, generate 4 comprehensive English questions that test a reader's comprehension, analytical skills, and ability to extract and interconnect key themes and ideas across the entire document.

Each question should:
1. Encourage the reader to draw connections between different sections or concepts within the text.
2. Challenge the reader to not only recall information but also to synthesize and summarize the material in a coherent manner.
3. Be unique in its focus, avoiding repetition and ensuring a broad coverage of the document's content.
4. Stimulate critical thinking by requiring the application or evaluation of the text's information in broader contexts or hypothetical scenarios, if relevant.
5. Ensure the question is clear and unambiguous.

Please directly give the questions without verbose illustration, and format the 4 questions numerically from “1:” to “4:”.
"""  # noqa: E501  (verbatim: the model sees exactly this text)

NUM_QUESTIONS = 4
MAX_TURNS = 4
PARAGRAPH_SEPARATOR = " "
CHUNK_SEPARATOR = "\n\n\n"
REJECTED_REPEAT_THRESHOLD = 0.95
CHOSEN_REPEAT_THRESHOLD = 0.9
MIN_WORD_LENGTH = 3
DROP_REASONS = ("empty", "meaningless_rejected", "meaningless_chosen", "refusal")  # `drop_reason`'s, in its order

PREFIX_PHRASES = (
    "As described in the preceding text,", "As detailed in the foregoing document,",
    "As mentioned earlier in the text,", "As specified in the above material,",
    "As indicated in the preceding pages,", "In accordance with the above content,",
    "As set forth in the document mentioned,", "Following the details provided above,",
    "As elaborated in the prior document,", "Pursuant to the information above,",
    "In line with the preceding information,", "Reflecting on the content above,",
    "Based on the preceding descriptions,", "With reference to the document above,",
    "Drawing from the details above,", "Considering the information outlined above,",
    "As articulated in the previous sections,", "Conforming to the descriptions above,",
    "As captured in the above explanations,", "As chronicled in the earlier document,",
)

REFUSAL_PHRASES = (
    "I can't assist", "content is not available", "As an AI assistant", "I am unable to", "Sorry, I can't",
    "That topic is outside my scope", "My guidelines prevent me from addressing", "I can't help with",
    "I can't fulfill this request", "I don't have the capability", "This topic is restricted",
    "I cannot discuss this subject", "This information is not accessible", "I'm not permitted to provide",
    "I have no data on this issue", "My training data does not cover this", "Access to this information is restricted",
    "This query is beyond my capabilities", "Sorry, I can't delve into that",
    "This goes beyond my operational boundaries", "I cannot support this inquiry",
    "I'm programmed not to respond to this", "This matter is beyond my scope", "My responses are limited",
    "I have no input on that", "My algorithm restricts me from answering", "I'm sorry, but that's beyond my reach",
    "My response capabilities don’t include this topic", "This falls outside my answer scope", "I don't cover ",
    "I can't engage with ", "I'm not the right resource for that information", "This content is beyond my purview",
    "I don't handle this type of query", "My training limits me from assisting on this",
    "This issue is beyond my functionality", "I am restricted from",
)

# An item starts at a number followed by separator punctuation and runs to the next such number.
_ITEM = re.compile(r"\b\d+\s*[:.!?-]+\s*(.+?)\s*(?=\b\d+\s*[:.!?-]+\s*|$)", re.DOTALL)
_EDGES = re.compile(r"^[*\s#.!]*(.+?)[*\s#.!]*$", re.DOTALL)


def question_request(chunk: str) -> str:
    """The user message that asks for 4 questions about one chunk."""
    return "Context:\n" + chunk + "\n\n" + QUESTION_PROMPT


def parse_questions(reply: str) -> list[str]:
    """Numbered items of a reply, with markdown and end punctuation (`*`, `#`, `.`, `!`) stripped."""
    items = [item.strip() for item in _ITEM.findall(reply) if item.strip()]
    return [_EDGES.sub(r"\1", item) for item in items]


def pick_question(reply: str, rng: random.Random) -> str | None:
    """One question with a random prefix phrase, or None unless the reply holds exactly 4 questions."""
    questions = parse_questions(reply)
    if len(questions) != NUM_QUESTIONS:
        return None
    return choose_question(questions, rng)


def choose_question(questions: list[str], rng: random.Random) -> str:
    """One of the questions at random, then a prefix phrase at random (the released scripts' order of draws)."""
    question = rng.choice(questions)
    return f"{rng.choice(PREFIX_PHRASES)} {question}"


def join_chunk(paragraphs: list[str]) -> str:
    return PARAGRAPH_SEPARATOR.join(paragraphs)


def join_document(chunks: list[str]) -> str:
    return CHUNK_SEPARATOR.join(chunks)


def answer_prompt(context: str, question: str) -> str:
    """The single-turn user message of an answer: the chunk (chosen) or the whole document (rejected)."""
    return context + "\n\n" + question


def repetition_ratio(text: str) -> float:
    """Share of words (lower-cased, punctuation removed) whose word occurs more than once, every occurrence counted."""
    words = re.sub(r"[^\w\s]", "", text.lower()).split()
    if not words:
        return 1.0
    return sum(n for n in Counter(words).values() if n > 1) / len(words)


def is_meaningless(text: str, threshold: float) -> bool:
    words = re.sub(r"[^\w\s]", "", text.lower()).split()
    if not words:
        return True
    return repetition_ratio(text) > threshold or sum(len(w) >= MIN_WORD_LENGTH for w in words) < 2


def has_refusal(text: str) -> bool:
    lowered = text.lower()
    return any(phrase.lower() in lowered for phrase in REFUSAL_PHRASES)


def drop_reason(chosen: str, rejected: str) -> str | None:
    """Why the released filters drop a pair (None: kept), in their order of checks."""
    if not rejected or not chosen:
        return "empty"
    if is_meaningless(rejected, REJECTED_REPEAT_THRESHOLD):
        return "meaningless_rejected"
    if is_meaningless(chosen, CHOSEN_REPEAT_THRESHOLD):
        return "meaningless_chosen"
    if has_refusal(rejected + "\n" + chosen):
        return "refusal"
    return None


def chosen_drop_reason(chosen: str) -> str | None:
    """The checks of `drop_reason` that need no rejected answer, in its order: run before the long step, so
    no rejected answer is generated for a pair its chosen answer already condemns."""
    if not chosen:
        return "empty"
    if is_meaningless(chosen, CHOSEN_REPEAT_THRESHOLD):
        return "meaningless_chosen"
    if has_refusal(chosen):
        return "refusal"
    return None


class ReleasedPreset:
    """The rules above as a generation preset (`prompts: released`); it reads none of the project's keys."""

    name = "released"
    keys = ()
    summary = "asks for the released scripts' 4 questions with their parser, prefix phrases and filters"
    separator = CHUNK_SEPARATOR
    paragraph_separator = PARAGRAPH_SEPARATOR
    num_turns = MAX_TURNS
    independent_turns = True  # each rejected answer on its own; a dropped turn leaves the others
    drop_reasons = DROP_REASONS + ("chosen_equals_rejected", "truncated", "short_prompt_too_long")

    def question_request(self, cfg: object, chunk: str) -> str:
        return question_request(chunk)

    def parse_questions(self, cfg: object, reply: str) -> list[str]:
        return parse_questions(reply)

    def usable_questions(self, cfg: object, found: list[str], chunk: str, stats: dict,
                         earlier: list[str]) -> list[str]:  # the released scripts ask about each chunk alone
        if len(found) != NUM_QUESTIONS:  # the released rule: exactly the 4 asked
            stats["questions_unparsable"] += 1
            stats["turns_without_question"][f"questions_not_{NUM_QUESTIONS}"] += 1
            return []
        stats["questions_parsed"] += 1
        return found

    def pick_question(self, cfg: object, questions: list[str], rng: random.Random) -> str:
        return choose_question(questions, rng)

    def drop_reason(self, cfg: object, chosen: str, rejected: str | None, branch: str,
                    earlier: list[str]) -> str | None:
        """The chosen answer gets the checks that need no rejected answer, the rejected one the pair's."""
        return chosen_drop_reason(chosen) if branch == "chosen" else drop_reason(chosen, rejected)


PRESET = ReleasedPreset()

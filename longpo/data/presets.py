"""Question prompts by name, chosen in a config (`question_template=small`).

    longpo generate ... question_template=small question_parser=lenient

These are templates of the `project` preset (`prompts: project`); `prompts: released`, what the 7B
recipes use, asks with the released scripts' own prompt (`released_preset.py`). The default prompt
(`prompts.QUESTION_TEMPLATE`, by name `paper`) asks a 7B model for k numbered questions. A 135M model does not follow that: it writes a few questions with their
answers mixed in, or runs on past k. The `small` template (`prompts.SMALL_QUESTION_TEMPLATE`) says
the task first, shows it once on an example text (a one-shot numbered list), then gives the chunk;
its parser `lenient` (`prompts.parse_lenient`) takes the questions out of whatever the model wrote.
"""

from __future__ import annotations

from longpo.data.prompts import (  # noqa: F401  (re-exported: the small-model preset's pieces)
    EXAMPLE_QUESTIONS,
    QUESTION_TEMPLATE,
    SMALL_QUESTION_TEMPLATE,
    parse_lenient,
)

QUESTION_TEMPLATES = {"paper": QUESTION_TEMPLATE, "small": SMALL_QUESTION_TEMPLATE}


def question_template(name_or_text: str) -> str:
    """A template by preset name, or the text itself when it is a template (holds {chunk})."""
    if "{chunk}" in name_or_text:
        return name_or_text
    if name_or_text not in QUESTION_TEMPLATES:
        raise ValueError(f"question_template={name_or_text!r}: neither a preset ({sorted(QUESTION_TEMPLATES)}) nor "
                         "a template with the placeholder {chunk}")
    return QUESTION_TEMPLATES[name_or_text]

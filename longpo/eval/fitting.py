"""Prompts measured with the evaluated model's own tokenizer and chat template.

`PromptFormat.render` turns a task's user text and answer prefix into the exact text the backend
receives (chat template with generation prompt, then the answer prefix); `count` measures it. A
prompt fits a target length when `count(rendered) + max_new_tokens <= length`.

`fit_size` finds, by binary search, the largest haystack size (sentences, words, documents...) whose
prompt fits; `truncate_middle` cuts a long context down to a token budget, keeping its two ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class PromptTooLong(ValueError):
    """Even the smallest haystack does not fit the target length (or the model cannot hold it)."""


class PromptFormat:
    """Render and count prompts for one tokenizer.

    With `chat_template=True` (default) the user text goes through the tokenizer's chat template
    with the generation prompt, and the answer prefix (e.g. RULER's " The special magic number for
    ... is") follows it verbatim, leading space included, as RULER's `prepare.py` appends it after
    the model template. `history` holds earlier (user, assistant) turns, e.g. RULER CWE's one-shot
    example, which RULER's template gives as a turn of its own. Without a chat template the prompt is
    `bos + (user + assistant + newline for each earlier turn) + user + answer prefix`.
    """

    def __init__(self, tokenizer: Any, chat_template: bool = True, system_prompt: str | None = None):
        if chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
                "set chat_template=false to evaluate it as a base model"
            )
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.system_prompt = system_prompt

    def render(self, user: str, answer_prefix: str = "", history: list[tuple[str, str]] | None = None,
               system_prompt: str | None = None) -> str:
        """The exact text sent to the backend; `system_prompt` (chat only) overrides the format's own."""
        history = history or []
        if not self.chat_template:
            bos = self.tokenizer.bos_token or ""
            shots = "".join(f"{u}{a}\n" for u, a in history)
            return f"{bos}{shots}{user}{answer_prefix}"
        system = system_prompt if system_prompt is not None else self.system_prompt
        messages = [{"role": "system", "content": system}] if system else []
        for u, a in history:
            messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": user})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + answer_prefix

    def count(self, text: str) -> int:
        """Tokens of a rendered prompt (special tokens are already in the text)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def fit_size(measure: Callable[[int], int], budget: int, start: int = 8, what: str = "prompt",
             upper: int | None = None) -> int:
    """Largest `n >= 1` (and `<= upper`) with `measure(n) <= budget`, assuming `measure` grows with `n`.

    `start` is a first guess; a linear estimate from it (then doubling) brackets the answer, and
    bisection finishes, so it costs O(log n) measurements (each a tokenisation of a full prompt).
    """
    smallest = measure(1)
    if smallest > budget:
        raise PromptTooLong(f"{what}: even the smallest haystack needs {smallest} tokens, over the budget of {budget}")
    cap = upper if upper is not None else 1 << 26
    lo, hi = 1, min(max(2, start), cap)
    first = measure(hi)
    if first <= budget and hi < cap:
        # Haystacks grow about linearly: jump to just past the linear estimate instead of doubling from `start`.
        per_unit = max((first - smallest) / (hi - 1), 1e-9)
        lo, hi = hi, min(cap, max(hi + 1, int(hi + 1.02 * (budget - first) / per_unit) + 1))
        first = measure(hi)
    while first <= budget:
        if hi >= cap:
            if upper is not None:
                return upper  # all the material there is fits
            raise RuntimeError(f"{what}: the prompt does not grow with the haystack size (measure({hi}) <= {budget})")
        lo, hi = hi, min(hi * 2, cap)
        first = measure(hi)
    # invariant: measure(lo) <= budget < measure(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measure(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def truncate_middle(fmt: PromptFormat, context: str, render: Callable[[str], str], budget: int) -> tuple[str, bool]:
    """Cut the middle of `context` so that `count(render(context)) <= budget`; keep first and last halves.

    Returns (context, truncated). The overhead of the template around the context is measured once,
    then the context's tokens are cut; token merges at the seam can add a token or two, so the result
    is re-measured and shaved until it fits.
    """
    if fmt.count(render(context)) <= budget:
        return context, False
    overhead = fmt.count(render(""))
    ids = fmt.encode(context)
    keep = budget - overhead
    if keep < 2:
        raise PromptTooLong(f"the prompt template alone needs {overhead} tokens, over the budget of {budget}")
    while keep >= 2:
        half = keep // 2
        cut = fmt.decode(ids[:half]) + fmt.decode(ids[len(ids) - (keep - half):])
        over = fmt.count(render(cut)) - budget
        if over <= 0:
            return cut, True
        keep -= max(over, 1)
    raise PromptTooLong(f"could not truncate the context to fit {budget} tokens")

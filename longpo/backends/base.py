"""The small interface every generation backend offers (transformers, vLLM, OpenAI-compatible HTTP).

Generation and evaluation both talk to a model only through it. Prompts are fully rendered text
(chat template applied by the caller, generation prompt and any answer prefix included), so a
backend never guesses a template. Scoring works on token ids, so reference log-probs are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from longpo.config import help_field


@dataclass(kw_only=True)
class Sampling:
    temperature: float = help_field(0.0, "sampling temperature; 0 means greedy")
    top_p: float = help_field(1.0, "nucleus sampling mass")
    max_new_tokens: int = help_field(1024, "most tokens generated per prompt")
    seed: int = help_field(0, "seed of the sampler (per request where the backend allows)")

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


class Backend(Protocol):
    """What generation and evaluation need from a model server."""

    tokenizer: Any  # the model's Hugging Face tokenizer (chat template, token counts)

    def generate(self, prompts: list[str], sampling: Sampling) -> list[str]:
        """Completions (text after the prompt, special tokens removed), one per prompt, in order.

        A backend that knows why each completion ended also sets `self.finish_reasons` to a new list
        of the same length: "stop" (it emitted its end-of-sequence token or a stop string) or
        "length" (it hit `max_new_tokens`). Read it with `generate_with_reasons`.
        """
        ...

    def score(self, sequences: list[list[int]], masks: list[list[bool]]) -> list[float]:
        """Summed log-prob of the tokens where mask is True, each predicted from the tokens before it."""
        ...

    def close(self) -> None: ...


FINISH_REASONS = ("stop", "length")


def generate_with_reasons(backend: Backend, prompts: list[str], sampling: Sampling) -> tuple[list[str], list[str | None]]:
    """`backend.generate` and, per completion, "stop", "length", or None where the backend did not say.

    Only a `finish_reasons` list set by this very call counts (a new object of the right length), so a
    wrapper that generates part of its prompts elsewhere reads as unknown rather than as stale reasons.
    """
    before = getattr(backend, "finish_reasons", None)
    texts = backend.generate(prompts, sampling)
    after = getattr(backend, "finish_reasons", None)
    if after is None or after is before or len(after) != len(texts):
        return texts, [None] * len(texts)
    return texts, [r if r in FINISH_REASONS else None for r in after]

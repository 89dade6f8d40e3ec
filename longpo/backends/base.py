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
        """Completions (text after the prompt, special tokens removed), one per prompt, in order."""
        ...

    def score(self, sequences: list[list[int]], masks: list[list[bool]]) -> list[float]:
        """Summed log-prob of the tokens where mask is True, each predicted from the tokens before it."""
        ...

    def close(self) -> None: ...

"""Make a tiny random model end its answers: it never emits its end-of-sequence token by itself."""

import functools

import torch
from transformers import LogitsProcessor, LogitsProcessorList


class EndAfter(LogitsProcessor):
    """Force EOS once a row has generated `after(prompt ids)` tokens (a function of the prompt, so the
    same prompt ends at the same place whatever its batch)."""

    def __init__(self, prompt: torch.Tensor, mask: torch.Tensor | None, eos: int, after):
        width = prompt.shape[1]
        rows = [prompt[i][mask[i].bool()] if mask is not None else prompt[i] for i in range(prompt.shape[0])]
        self.width, self.eos = width, eos
        self.limits = [after(row.tolist()) for row in rows]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.width
        for i, limit in enumerate(self.limits):
            if step >= limit:
                scores[i] = float("-inf")
                scores[i, self.eos] = 0.0
        return scores


def end_answers(model, eos: int, after=lambda ids: 5):
    """Patch `model.generate` so every completion ends with EOS after `after(prompt_ids)` new tokens."""
    original = model.generate

    @functools.wraps(original)
    def generate(*args, **kwargs):
        processor = EndAfter(kwargs["input_ids"], kwargs.get("attention_mask"), eos, after)
        return original(*args, logits_processor=LogitsProcessorList([processor]), **kwargs)

    model.generate = generate
    return model

"""The toy world's fact lookup as an evaluation task (the built-in demo evaluates with it).

Example `i` of length `n` is a seeded toy document of at most `n` tokens and a question about one of
its facts; the score is 100 when the answer states the fact's value right after its name. Length 0
is the short task: documents of the toy base model's own training distribution (its short-context
skill). Enable it in `longpo eval` with `toy.enabled=true`; it reaches the runner as the task suite
`toy` (longpo/demo/extensions.py), so the eval package imports nothing of the toy.
"""

from __future__ import annotations

import random
from typing import Any

from longpo.eval.config import TOY_SHORT as SHORT
from longpo.eval.config import toy_length_label as length_label
from longpo.toy.world import answer_value, make_long_doc, qa_messages, short_doc


class FactQA:
    """What is the code of NAME? over a document of at most `length` tokens (0: a short one)."""

    max_new_tokens = 8

    def __init__(self, tokenizer: Any, length: int, num_samples: int, seed: int):
        self.tokenizer, self.length, self.n, self.seed = tokenizer, length, num_samples, seed
        self.name = f"toy/{length_label(length)}/fact_qa"
        self.metadata = {"suite": "toy", "length": length}

    def num_examples(self) -> int:
        return self.n

    def get_example(self, i: int) -> dict:
        rng = random.Random(f"toy-eval:{self.seed}:{self.length}:{i}")
        doc = short_doc(rng) if self.length == SHORT else make_long_doc(rng, self.length)
        name, value = rng.choice(doc.facts)
        prompt = self.tokenizer.apply_chat_template(qa_messages(doc, [(name, value)], with_answers=False),
                                                    tokenize=False, add_generation_prompt=True)
        return {"id": i, "prompt": prompt, "name": name, "value": value, "facts": len(doc.facts)}

    def score(self, example: dict, prediction: str) -> float:
        return 100.0 if answer_value(prediction, example["name"]) == example["value"] else 0.0

"""The toy evaluation: fact lookup at several document lengths, through `longpo.eval`'s runner.

    python -m longpo.demo.eval model=runs/demo/base_model out_dir=runs/demo/eval/base

`FactQA` is a task of the runner's interface (`longpo.eval.tasks`): example `i` of length `n` is a
seeded document of at most `n` tokens and a question about one of its facts; the score is 100 when
the answer states the fact's value right after its name. `length=0` is the short task: documents of
the base model's own training distribution (its short-context skill). `main(cfg)` is a stage like
`longpo eval` (same backends, greedy decoding, resumable predictions) that writes `summary.json`
with one accuracy per length; `longpo evolve` runs it when an iteration's `eval_stage` is `toy`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longpo.config import help_field
from longpo.demo.world import answer_value, make_long_doc, qa_messages, short_doc

SHORT = 0  # the length key of the short-context task


def length_label(length: int) -> str:
    return "short" if length == SHORT else str(length)


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


@dataclass(kw_only=True)
class Config:
    model: str = help_field(help="checkpoint folder")
    out_dir: str = help_field("runs/toy_eval", "predictions, summary.json / summary.md, resolved config")
    lengths: list[int] = help_field([256, 512, 1024], "document lengths in tokens")
    short: bool = help_field(True, "also the short task (documents of the base model's training distribution)")
    num_samples: int = help_field(100, "questions per length")
    seed: int = help_field(1234, "seed of the documents and questions")
    backend: str = help_field("hf", "generation backend (hf on CPU)")
    backend_args: dict = help_field({"dtype": "float32", "device": "cpu", "batch_size": 16},
                                    "keyword arguments of the backend")
    batch_size: int = help_field(16, "prompts per backend call")
    progress: bool = help_field(False, "progress bars")

    def __post_init__(self) -> None:
        self.lengths = [int(n) for n in self.lengths]
        if not self.model:
            raise ValueError("model= is required")
        if any(n < 32 for n in self.lengths):
            raise ValueError(f"lengths must be >= 32 tokens, got {self.lengths}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples={self.num_samples} must be at least 1")


def tasks(cfg: Config, tokenizer: Any) -> list[FactQA]:
    lengths = ([SHORT] if cfg.short else []) + list(cfg.lengths)
    return [FactQA(tokenizer, n, cfg.num_samples, cfg.seed) for n in lengths]


def evaluate_model(cfg: Config) -> dict:
    """Run (or resume) every task; write and return the summary {"accuracy": {length label: %}}."""
    from longpo.config import write_resolved_config
    from longpo.data.backends import make_backend
    from longpo.eval.runner import evaluate
    from longpo.files import atomic_write_json, atomic_write_text

    out = Path(cfg.out_dir)
    write_resolved_config(cfg, out)
    backend = make_backend(cfg.backend, model=cfg.model, **cfg.backend_args)
    try:
        results = evaluate(backend, tasks(cfg, backend.tokenizer), out, batch_size=cfg.batch_size,
                           progress=cfg.progress)
    finally:
        backend.close()
    summary = {"model": cfg.model, "tasks": results,
               "accuracy": {length_label(r["length"]): r["score"] for r in results}}
    atomic_write_json(out / "summary.json", summary)
    header = list(summary["accuracy"])
    atomic_write_text(out / "summary.md", "| " + " | ".join(header) + " |\n|" + "---:|" * len(header) + "\n| "
                      + " | ".join(f"{summary['accuracy'][k]:.1f}" for k in header) + " |\n")
    return summary


def headline(summary: dict) -> dict[str, float]:
    """`label -> accuracy` for reports (`longpo evolve`'s table)."""
    return {f"fact QA {k}": v for k, v in summary["accuracy"].items()}


def main(cfg: Config) -> int:
    summary = evaluate_model(cfg)
    print(" ".join(f"{k}: {v:.1f}" for k, v in summary["accuracy"].items()))
    return 0

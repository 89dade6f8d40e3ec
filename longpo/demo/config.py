"""`longpo demo`'s config, importing neither torch nor transformers (`longpo demo --help` and its
config errors come from here; `longpo.demo.run` re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass

from longpo.config import help_field, merge_dicts

BASELINES = ("sft", "dpo")
TRAIN_KEYS = {"max_position_embeddings": 4096, "pairs_per_micro_batch": 4, "gradient_accumulation_steps": 2,
              "num_epochs": 2, "loss": "longpo", "beta": 0.1, "lam": 1.0, "nll_mode": "responses",
              "optimizer": "adamw", "learning_rate": 1e-3, "lr_scheduler": "cosine", "warmup_ratio": 0.1,
              "max_grad_norm": 1.0, "save_steps": 10}
# `longpo eval` keys: the toy fact lookup only, on CPU.
EVAL_KEYS = {"ruler": {"enabled": False}, "infinitebench": {"enabled": False},
             "toy": {"enabled": True, "lengths": [256, 512, 1024], "num_samples": 300, "seed": 1234},
             "backend_args": {"dtype": "float32", "device": "cpu", "batch_size": 16}, "batch_size": 16}


@dataclass(kw_only=True)
class Config:
    output_dir: str = help_field("runs/demo", "every stage's folder, and report/")
    base_model: str | None = help_field(None, "the short-context base model; default: the shipped toy model")
    pretrain: bool = help_field(False, "train the base model here first (python -m longpo.demo.pretrain; ~12 min on 1 core)")
    seed: int = help_field(0, "seed of the documents, generation and training")
    threads: int = help_field(2, "torch CPU threads")
    documents: int = help_field(64, "long documents per iteration")
    iterations: list = help_field([{"name": "it1", "length": 512, "rope_theta": 40000.0},
                                   {"name": "it2", "length": 1024, "rope_theta": 160000.0}],
                                  "self-evolution iterations: {name, length (document tokens), rope_theta}")
    generate: dict = help_field({}, "`longpo generate` keys over the toy ones (see toy_generate_keys)")
    train: dict = help_field({}, "`longpo train` keys of every run (LongPO and the baselines), over TRAIN_KEYS")
    eval: dict = help_field({}, "`longpo eval` keys over EVAL_KEYS (e.g. eval.toy.num_samples=100)")
    baselines: list = help_field(list(BASELINES), f"baselines trained on the first iteration's pairs: {BASELINES}")
    overwrite: bool = help_field(False, "start over in output_dir: remove the demo's outputs there first; "
                                        "without it a rerun must use the same settings")

    def __post_init__(self) -> None:
        if not self.iterations:
            raise ValueError("iterations: give at least one {name, length, rope_theta}")
        for it in self.iterations:
            if set(it) != {"name", "length", "rope_theta"}:
                raise ValueError(f"iterations: each needs exactly name, length, rope_theta; got {it}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"baselines: unknown {unknown}; choose from {list(BASELINES)}")
        if self.documents < 1:
            raise ValueError(f"documents={self.documents} must be at least 1")
        # A key given (train.lam=1.0) changes that key only; the rest of the recipe stays.
        self.train = merge_dicts(TRAIN_KEYS, self.train)
        self.eval = merge_dicts(EVAL_KEYS, self.eval)

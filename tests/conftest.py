import os

import pytest

from longpo.demo.extensions import register as register_toy

# Tests never reach a hub: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The toy's tiny training run and eval task, as the CLI and the demo register them (longpo/demo/extensions.py).
register_toy()


@pytest.fixture(scope="session")
def tokenizer():
    from longpo.toy.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


def make_record(rid: str = "r0", n_turns: int = 1, doc_words: int = 60, seed: int = 0) -> dict:
    """A small, valid preference record with distinct chosen / rejected answers."""
    import random

    rng = random.Random(seed)
    words = "the river city book value number code name magic secret vault long short".split()
    chunks = [" ".join(rng.choice(words) for _ in range(doc_words // 3)) + "." for _ in range(3)]
    document = "\n\n".join(chunks)
    turns = []
    for i in range(n_turns):
        turns.append({
            "question": f"According to the passage above, what is value {i}?",
            "chunk": chunks[i % 3],
            "chosen": f"The value is {rng.randint(0, 999)} and the city is {rng.choice(words)}.",
            "rejected": f"I think it might be {rng.randint(0, 99)}.",
        })
    return {"id": rid, "document": document, "turns": turns}

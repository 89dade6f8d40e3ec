"""Synthetic preference records for the tiny training run (`longpo train` with model=tiny) and tests."""

from __future__ import annotations

import random

from longpo.toy.tiny import WORDS


def make_tiny_records(num_records: int = 32, doc_sentences: int = 24, seed: int = 0) -> list[dict]:
    """Synthetic preference records over generated documents: facts hidden in filler sentences.

    The chosen answer states the fact from the question's chunk; the rejected answer names a
    wrong value, as a long-context model that lost the fact would. No reference log-probs yet.
    """
    rng = random.Random(seed)
    records = []
    for r in range(num_records):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 10))).capitalize() + "."
                     for _ in range(doc_sentences)]
        key, value = rng.choice(["vault", "river", "city", "book", "model"]), rng.randint(0, 999)
        at = rng.randrange(doc_sentences)
        sentences[at] = f"The secret number of the {key} is {value}."
        chunks = [" ".join(sentences[i : i + 8]) for i in range(0, doc_sentences, 8)]
        wrong = (value + rng.randint(1, 998)) % 1000
        records.append({
            "id": f"tiny-{r:04d}",
            "document": "\n\n".join(chunks),
            "turns": [{
                "question": f"According to the passage above, what is the secret number of the {key}?",
                "chunk": chunks[at // 8],
                "chosen": f"The secret number of the {key} is {value}.",
                "rejected": f"The passage does not say; maybe {wrong}.",
            }],
        })
    return records


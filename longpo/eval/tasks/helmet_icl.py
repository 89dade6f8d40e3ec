"""HELMET's many-shot in-context learning (TREC coarse / fine, BANKING77, CLINC150, NLU), label accuracy.

HELMET reads these from the hub (`load_dataset("CogComp/trec")`, "PolyAI/banking77", "clinc_oos" "plus",
"xingkunliuxtracta/nlu_evaluation_data"); nothing is downloaded here, so the same records are read from local
JSON / JSONL files of the same fields (docs/stages/eval.md writes them with `datasets` where it can reach the
hub): a train file (the demos) and a test file, each row the text and the integer label.

    task         test split             text   label          labels
    trec_coarse  test                   text   coarse_label   6
    trec_fine    test                   text   fine_label     50
    banking77    test                   text   label          77
    clinic150    validation ("plus")    text   intent         151
    nlu          train_test_split(test_size=0.1, seed=42) of its one split   text  label  68

Protocol, as princeton-nlp/HELMET `data.py` (`load_icl`, its `*shot_balance` datasets) and configs/icl.yaml
(500 test samples, 20 new tokens, stop at a newline, no chat template, seed 42; shots per dataset by input
length in scripts/generate_configs.py, 131072: 6600, 6400, 5900, 7050, 8296):
- test sample (when the test split holds more than 500): the split shuffled with the seed (datasets'
  order), then `balance_labels` to 500 (labels in order of first appearance, `num_rounds` picks per label
  from `random.Random(seed)`, each round shuffled);
- demos per test text: `balance_labels(train, shots, s)`, s = (sha256(text) + seed) mod 2**31; labels mapped to
  the integers 0..L-1 shuffled by `random.seed(s)`; "{text}\\nlabel: {mapped label}" joined by blank lines;
- score: the output ("label:" put back for base models), its `parse_output(.., "label:")`, exact match (SQuAD
  normalisation) with the mapped label, x 100.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path

from longpo.eval.fitting import PromptFormat
from longpo.eval.scoring import normalize_answer
from longpo.eval.tasks.helmet import (
    CATEGORY,
    ICL,
    MAX_NEW_TOKENS,
    HelmetPrompt,
    hf_shuffle_order,
    parse_output,
    read_rows,
    require_fields,
)

USER = ("Use the provided mapping from the text to label to assign a label to the text. Only output \"label: "
        "{{label}}\" and nothing else. \n\n{context}\n\n{question}")
SYSTEM = "label:"
ITEM = "{text}\nlabel: {label}"
LABEL_FIELD = {"trec_coarse": "coarse_label", "trec_fine": "fine_label", "banking77": "label",
               "clinic150": "intent", "nlu": "label"}
NUM_LABELS = {"trec_coarse": 6, "trec_fine": 50, "banking77": 77, "clinic150": 151, "nlu": 68}
SHOTS = {"trec_coarse": 6600, "trec_fine": 6400, "banking77": 5900, "clinic150": 7050, "nlu": 8296}  # at 131072


def balance_labels(rows: list[dict], shots: int, seed: int, label: str) -> list[dict]:
    """data.py `balance_labels`: `shots` rows with the labels as even as they go, in rounds of one row per label
    (each round shuffled). Per label `num_rounds % len(rows)` distinct picks first, then more with replacement
    in batches of distinct picks - HELMET's order of random calls, kept."""
    rand = random.Random(seed)
    by_label: dict = {}
    for row in rows:
        by_label.setdefault(row[label], []).append(row)
    num_rounds = math.ceil(shots / len(by_label))
    rounds: list[list[dict]] = [[] for _ in range(num_rounds)]
    for samples in by_label.values():
        indices = rand.sample(range(len(samples)), num_rounds % len(samples))
        while len(indices) < num_rounds:
            indices += rand.sample(range(len(samples)), min(num_rounds - len(indices), len(samples)))
        for i, idx in enumerate(indices):
            rounds[i].append(samples[idx])
    for r in rounds:
        rand.shuffle(r)
    return [row for r in rounds for row in r][:shots]


class ICLTask(HelmetPrompt):
    def __init__(self, task: str, path: str | Path, fmt: PromptFormat, demo_path: str | Path | None = None,
                 max_length: int = 131072, num_samples: int = 500, shots: int | None = None, seed: int = 42):
        if task not in ICL:
            raise ValueError(f"unknown HELMET ICL task {task!r}; choose from {ICL}")
        if demo_path is None:
            raise ValueError(f"helmet {task}: needs its train file (the demos) as helmet.demos.{task}")
        self.task, self.fmt, self.max_length, self.seed = task, fmt, max_length, seed
        self.shots = SHOTS[task] if shots is None else shots
        self.label = LABEL_FIELD[task]
        self.max_new_tokens = MAX_NEW_TOKENS[task]
        self.name = f"helmet/{task}"
        self.metadata = {"suite": "helmet", "task": task, "category": CATEGORY[task], "length": max_length,
                         "metric": "exact_match", "shots": self.shots}
        self.user, self.system = USER, SYSTEM
        test, self.train = read_rows(path), read_rows(demo_path)
        for rows, where in ((test, path), (self.train, demo_path)):
            require_fields(rows, where, ("text", self.label))
        if 0 <= num_samples < len(test):
            test = balance_labels([test[i] for i in hf_shuffle_order(len(test), seed)], num_samples, seed, self.label)
        self.items = test  # the demos are drawn per example, when it is asked for

    @classmethod
    def from_config(cls, task: str, path, demo_path, fmt: PromptFormat, h) -> ICLTask:
        """From `longpo eval`'s helmet.* keys (HelmetConfig): its own sample size and shots."""
        return cls(task, path, fmt, demo_path, h.max_length, h.icl_num_samples, h.icl_shots.get(task), h.seed)

    def item(self, i: int) -> dict:
        row = self.items[i]
        local = (int(hashlib.sha256(row["text"].encode("utf-8")).hexdigest(), 16) + self.seed) % 2**31
        demos = balance_labels(self.train, self.shots, local, self.label)
        mapping = list(range(NUM_LABELS[self.task]))
        random.Random(local).shuffle(mapping)
        context = "\n\n".join(ITEM.format(text=d["text"], label=mapping[int(d[self.label])]) for d in demos)
        return {"context": context, "question": row["text"], "demos": "",
                "answers": [str(mapping[int(row[self.label])])], "id": str(row.get("id", i))}

    def score(self, example: dict, prediction: str) -> float:
        parsed = parse_output(self.completion(prediction), SYSTEM)
        return 100.0 * (normalize_answer(parsed) == normalize_answer(example["answers"][0]))

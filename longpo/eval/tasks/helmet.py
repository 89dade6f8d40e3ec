"""HELMET's recall (JSON KV) and RAG (KILT NQ, TriviaQA, HotpotQA, PopQA) tasks from their released files.

Files as HELMET's `scripts/download_data.sh` unpacks them (JSONL, or JSON with a "data" list):
    json_kv    data/json_kv/test_k1800_dep6.jsonl: context, question, answer, demos ([key, value] pairs)
    nq, ...    data/kilt/nq-dev-multikilt_1000_k1000_dep6.jsonl (test) and nq-train-multikilt_1000_k3_dep6.jsonl
               (demos): question, answers, ctxs [{title, text}], and id where the file has one

Protocol, as princeton-nlp/HELMET `data.py` (`load_json_kv`, `load_qa`), `model_utils.py` (`tokenize`), `eval.py`
and `utils.py` (`calculate_metrics`, `parse_output`), with configs/recall.yaml and rag.yaml (2 shots, 100
samples, 100 / 20 new tokens, seed 42):
- samples: json_kv takes the first `num_samples` of datasets' `shuffle(seed)` (numpy `default_rng(seed)
  .permutation`); RAG draws `random.sample(sorted(keys), n)` from a fresh `random.seed(seed)` and keeps
  file order; the key is `id` when the test file has it, else `question`;
- demos: json_kv the item's own first `shots` pairs; RAG, per question, the demo file shuffled with seed
  sha256(key) mod 2**31, de-duplicated by key, the first `shots` (PopQA: its own question left out, and
  both files kept to log10(s_pop) < 3, as `kilt_popqa_3`);
- prompt: base models get `user_template + "\\n" + system_template` after BOS; chat models the user
  template as the only turn (HELMET's `system_message` is None), with no answer prefix;
- truncation: when the prompt holds more than `max_length - max_new_tokens` tokens, the context loses
  its last (excess) tokens, cut at a character offset of its own tokenisation (special tokens
  included), once;
- score: for base models the answer prefix is put back in front of the output; substring exact
  match (SQuAD-normalised answer inside the normalised output, best over answers) of the output and
  of `parse_output` of it, the larger; x 100. RAG stops at a newline (`stop_new_line`): the output
  is cut at its first newline here.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from pathlib import Path

from longpo.eval.fitting import PromptFormat, PromptTooLong
from longpo.eval.haystack import DataMissing
from longpo.eval.scoring import normalize_answer

KV_USER = ("{context}\n\nExtract the value corresponding to the specified key in the JSON object below.\n\n"
           "{demos}Key: {question}")
KV_SYSTEM = "Corresponding value:"
QA_USER = ("Use the given documents to write a concise and short answer to the question. Write your answer in "
           "the following format:\nAnswer: [answer]\n\n{demos}{context}\n\nQuestion: {question}")
QA_SYSTEM = "Answer:"
PASSAGE = "Document (Title: {title}): {text}"
QA_DEMO = "{documents}\n\nQuestion: {question}\nAnswer: {answer}"
RECALL_RAG = ("json_kv", "nq", "triviaqa", "hotpotqa", "popqa")
ICL = ("trec_coarse", "trec_fine", "banking77", "clinic150", "nlu")
LONGQA = ("narrativeqa", "infbench_qa", "infbench_choice")
# msmarco: re-rank (helmet_rerank.py); ICL: helmet_icl.py; long-document QA: helmet_narrativeqa.py, helmet_longqa.py
TASKS = (*RECALL_RAG, "msmarco", *ICL, *LONGQA)
CATEGORY = {"json_kv": "recall", "nq": "rag", "triviaqa": "rag", "hotpotqa": "rag", "popqa": "rag",
            "msmarco": "rerank", **dict.fromkeys(ICL, "icl"), **dict.fromkeys(LONGQA, "longqa")}
MAX_NEW_TOKENS = {"json_kv": 100, "nq": 20, "triviaqa": 20, "hotpotqa": 20, "popqa": 20, "msmarco": 200,
                  **dict.fromkeys(ICL, 20), **dict.fromkeys(LONGQA, 10), "narrativeqa": 100}
POPQA_THRESHOLD = 3.0
# where HELMET's scripts/download_data.sh puts each file, relative to its data/ folder (configs/recall.yaml, rag.yaml)
DEFAULT_FILES = {"json_kv": "json_kv/test_k1800_dep6.jsonl",
                 "nq": "kilt/nq-dev-multikilt_1000_k1000_dep6.jsonl",
                 "triviaqa": "kilt/triviaqa-dev-multikilt_1000_k1000_dep6.jsonl",
                 "hotpotqa": "kilt/hotpotqa-dev-multikilt_1000_k1000_dep3.jsonl",
                 "popqa": "kilt/popqa_test_1000_k1000_dep6.jsonl",
                 "msmarco": "msmarco/test_reranking_data_k1000_dep3.jsonl",
                 # HELMET reads ICL from the hub; here local copies of the same splits (docs/stages/eval.md)
                 "trec_coarse": "icl/trec/test.jsonl", "trec_fine": "icl/trec/test.jsonl",
                 "banking77": "icl/banking77/test.jsonl", "clinic150": "icl/clinic150/validation.jsonl",
                 "nlu": "icl/nlu/test.jsonl",
                 # HELMET reads NarrativeQA from the hub too: local copies of its test / train splits
                 "narrativeqa": "narrativeqa/test.jsonl",
                 "infbench_qa": "infinitebench/longbook_qa_eng.jsonl",
                 "infbench_choice": "infinitebench/longbook_choice_eng.jsonl"}
DEFAULT_DEMOS = {"msmarco": "msmarco/test_reranking_data_k10_dep3.jsonl",
                 "trec_coarse": "icl/trec/train.jsonl", "trec_fine": "icl/trec/train.jsonl",
                 "banking77": "icl/banking77/train.jsonl", "clinic150": "icl/clinic150/train.jsonl",
                 "nlu": "icl/nlu/train.jsonl", "narrativeqa": "narrativeqa/train.jsonl",
                 "nq": "kilt/nq-train-multikilt_1000_k3_dep6.jsonl",
                 "triviaqa": "kilt/triviaqa-train-multikilt_1000_k3_dep6.jsonl",
                 "hotpotqa": "kilt/hotpotqa-train-multikilt_1000_k3_dep3.jsonl",
                 "popqa": "kilt/popqa_test_1000_k3_dep6.jsonl"}


def parse_output(output: str, prefix: str = "Answer:") -> str | None:
    """utils.py `parse_output`: the rest of the line after `prefix` (any case), else the first line; stripped,
    with a repeated prefix dropped."""
    patterns = [re.compile(f"(?:{prefix})(.*)(?:\n|$)", flags=re.IGNORECASE), re.compile(r"(?:^)(.*)(?:\n|$)")]
    for pattern in patterns:
        match = pattern.search(output)
        if match is not None:
            return re.sub(f"^{re.escape(prefix)}", "", match[1].strip(), flags=re.IGNORECASE).strip()
    return None


def substring_exact_match(prediction: str, answers: list[str]) -> float:
    """utils.py `substring_exact_match_score`, best over the answers: 100 if a normalised answer is inside
    the normalised prediction."""
    pred = normalize_answer(prediction)
    return 100.0 * max(normalize_answer(a) in pred for a in answers)


def helmet_score(output: str, answers: list[str], parse_prefix: str) -> float:
    """data.py post_process: the metric of the raw output and of its parsed answer, the larger."""
    score = substring_exact_match(output, answers)
    parsed = parse_output(output, parse_prefix)
    return max(score, substring_exact_match(parsed, answers)) if parsed is not None else score


def hf_shuffle_order(n: int, seed: int) -> list[int]:
    """The row order of datasets' `Dataset.shuffle(seed=seed)`: numpy's `default_rng(seed).permutation(n)`."""
    import numpy as np

    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def read_rows(path: str | Path) -> list[dict]:
    """A HELMET data file: JSONL, or JSON whose "data" field is the list (load_dataset(..., field="data"))."""
    path = Path(path)
    if not path.is_file():
        raise DataMissing(f"helmet: data file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        rows = json.loads(text)["data"]
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


def require_fields(rows: list[dict], path, fields: tuple[str, ...]) -> None:
    for k, row in enumerate(rows):
        missing = [f for f in fields if f not in row]
        if missing:
            raise ValueError(f"{path}: example {k}: missing field(s) {missing}")


def _answers(value) -> list[str]:
    """drqa_metric_max_over_ground_truths: a string, a list, or a list of lists (flattened)."""
    if isinstance(value, str):
        return [value]
    return [a for group in value for a in group] if value and isinstance(value[0], list) else list(value)


class HelmetPrompt:
    """HELMET's prompt for an item {context, question, demos, answers, id}: the user template (and, for base
    models, the answer prefix), its context cut at the end to fit `max_length - max_new_tokens`."""

    task: str
    fmt: PromptFormat
    max_length: int
    max_new_tokens: int
    name: str
    user: str
    system: str
    items: list

    def num_examples(self) -> int:
        return len(self.items)

    def item(self, i: int) -> dict:
        return self.items[i]

    def _render(self, item: dict, context: str) -> str:
        user = self.user.format(context=context, question=item["question"], demos=item["demos"])
        if self.fmt.chat_template:
            return self.fmt.render(user)
        return self.fmt.render(user, "\n" + self.system)

    def get_example(self, i: int) -> dict:
        item = self.item(i)
        context, budget = item["context"], self.max_length - self.max_new_tokens
        prompt = self._render(item, context)
        excess = self.fmt.count(prompt) - budget
        if excess > 0:  # model_utils.tokenize: cut the context's last `excess` tokens, by character offset
            offsets = self.fmt.tokenizer(context, return_offsets_mapping=True)["offset_mapping"]
            if excess >= len(offsets):
                raise PromptTooLong(f"{self.name}: example {i} needs {excess} fewer tokens than its context holds")
            prompt = self._render(item, context[:offsets[-excess][0]])
        return {"id": item["id"], "prompt": prompt, "answers": item["answers"], "truncated": excess > 0,
                "prompt_tokens": self.fmt.count(prompt)}

    def completion(self, prediction: str) -> str:
        """What HELMET scores: the output up to its first newline (stop_new_line), and for base models the
        answer prefix put back in front (eval.py)."""
        prediction = prediction.split("\n")[0]
        return prediction if self.fmt.chat_template else self.system + prediction


class HelmetTask(HelmetPrompt):
    def __init__(self, task: str, path: str | Path, fmt: PromptFormat, demo_path: str | Path | None = None,
                 max_length: int = 131072, num_samples: int = 100, shots: int = 2, seed: int = 42):
        if task not in RECALL_RAG:
            raise ValueError(f"unknown HELMET recall / RAG task {task!r}; choose from {RECALL_RAG}")
        self.task, self.fmt, self.max_length, self.shots = task, fmt, max_length, shots
        self.max_new_tokens = MAX_NEW_TOKENS[task]
        self.name = f"helmet/{task}"
        self.metadata = {"suite": "helmet", "task": task, "category": CATEGORY[task], "length": max_length,
                         "metric": "substring_exact_match"}
        rows = read_rows(path)
        if task == "json_kv":
            require_fields(rows, path, ("context", "question", "answer", "demos"))
            self.user, self.system = KV_USER, KV_SYSTEM
            order = hf_shuffle_order(len(rows), seed)[:num_samples] if num_samples >= 0 else range(len(rows))
            self.items = [self._kv_item(rows[i]) for i in order]
            return
        require_fields(rows, path, ("question", "answers", "ctxs"))
        if demo_path is None and shots > 0:
            raise ValueError(f"helmet {task}: shots={shots} needs its demo file (helmet.demos.{task})")
        demos = read_rows(demo_path) if shots > 0 else []
        if task == "popqa":
            rows = [r for r in rows if math.log10(r["s_pop"]) < POPQA_THRESHOLD]
            demos = [r for r in demos if math.log10(r["s_pop"]) < POPQA_THRESHOLD]
        key = "id" if "id" in rows[0] else "question"
        keys = sorted({r[key] for r in rows})
        n = len(keys) if num_samples < 0 else min(num_samples, len(keys))
        picked = set(random.Random(seed).sample(keys, n)) if num_samples >= 0 else set(keys)
        self.user, self.system = QA_USER, QA_SYSTEM
        self.items = [self._qa_item(r, demos, key) for r in rows if r[key] in picked]

    @classmethod
    def from_config(cls, task: str, path, demo_path, fmt: PromptFormat, h) -> HelmetTask:
        """From `longpo eval`'s helmet.* keys (HelmetConfig)."""
        return cls(task, path, fmt, demo_path, h.max_length, h.num_samples, h.shots, h.seed)

    def _kv_item(self, row: dict) -> dict:
        demos = "\n\n".join(f"Key: {k}\nCorresponding value: {v}" for k, v in row["demos"][:self.shots])
        return {"context": row["context"], "question": row["question"], "answers": _answers(row["answer"]),
                "demos": demos + ("\n\n" if self.shots > 0 else ""), "id": str(row.get("id", row["question"]))}

    def _qa_item(self, row: dict, demo_rows: list[dict], key: str) -> dict:
        demo_text = ""
        if self.shots > 0:
            pool = [d for d in demo_rows if d[key] != row[key]] if self.task == "popqa" else demo_rows
            h = int(hashlib.sha256(str(row[key]).encode("utf-8")).hexdigest(), 16) % 2**31
            chosen, seen = [], set()
            for i in hf_shuffle_order(len(pool), h):  # shuffle(seed=h), drop_duplicates(key), select(shots)
                if pool[i][key] not in seen:
                    seen.add(pool[i][key])
                    chosen.append(pool[i])
            if len(chosen) < self.shots:
                raise ValueError(f"helmet {self.task}: the demo file holds {len(chosen)} distinct questions, "
                                 f"fewer than shots={self.shots}")
            demo_text = "\n\n".join(
                QA_DEMO.format(documents="\n\n".join(PASSAGE.format(**c) for c in d["ctxs"]),
                               question=d["question"], answer=d["answers"][0])
                for d in chosen[:self.shots]) + "\n\n"
        context = "\n\n".join(PASSAGE.format(**c) for c in row["ctxs"])
        return {"context": context, "question": row["question"], "answers": _answers(row["answers"]),
                "demos": demo_text, "id": str(row[key])}

    def score(self, example: dict, prediction: str) -> float:
        if self.task != "json_kv":
            prediction = prediction.split("\n")[0]  # stop_new_line: generation ends at the first newline
        if not self.fmt.chat_template:
            prediction = self.system + prediction  # eval.py: completion outputs get the prefix back
        return helmet_score(prediction, example["answers"], "corresponding value:" if self.task == "json_kv"
                            else "Answer:")

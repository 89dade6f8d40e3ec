"""LongBench v2 (Bai et al., 2024): 503 four-choice questions over 8K-2M-word contexts, from the released JSON.

The file is THUDM/LongBench-v2's `data.json` (a JSON list; a JSONL file also reads), each item with
`_id, domain, sub_domain, difficulty (easy|hard), length (short|medium|long), question, choice_A..D,
answer (a letter), context`. Given as a file or a folder holding `data.json`.

Protocol, as THUDM/LongBench `pred.py` (the v2 code at the repository root) and `result.py`:
- prompt: `prompts/0shot.txt` filled by chained `str.replace` of `$DOC$` (context.strip()), `$Q$`,
  `$C_A$`..`$C_D$` (each stripped), in that order;
- truncation (`query_llm`): `ids = tokenizer.encode(prompt)` (special tokens included); above
  `max_length` (model2maxlen.json: 120000 for the open models) keep `ids[:max_length // 2] +
  ids[-max_length // 2:]` - Python reads the second as `(-max_length) // 2`, so an odd budget keeps
  one token more at the end - and decode skipping special tokens; no room is kept for the answer;
- the result is the only (user) message of a chat request, no system prompt; 128 new tokens;
- `extract_answer`: drop every `*`, then the letter of the first "The correct answer is (X)", else of
  the first "The correct answer is X" (X in A-D, case-sensitive); right when it equals `answer`;
- `result.py`: accuracy x 100 overall, by difficulty (easy / hard) and by length (short / medium /
  long), each rounded to 1 decimal.
Where this differs (docs/stages/eval.md): decoding follows the run's `temperature` (greedy by
default; pred.py samples at 0.1); an empty answer counts as wrong (pred.py drops the item and asks
again on its next run); the CoT, RAG and no-context variants are not built.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from longpo.eval.fitting import PromptFormat
from longpo.eval.haystack import DataMissing

TEMPLATE_0SHOT = """Please read the following text and answer the question below.

<text>
$DOC$
</text>

What is the correct answer to this question: $Q$
Choices:
(A) $C_A$
(B) $C_B$
(C) $C_C$
(D) $C_D$

Format your response as follows: "The correct answer is (insert answer here)"."""
FIELDS = ("_id", "difficulty", "length", "question", "choice_A", "choice_B", "choice_C", "choice_D", "answer",
          "context")
DIFFICULTIES = ("easy", "hard")
LENGTHS = ("short", "medium", "long")
SPLITS = DIFFICULTIES + LENGTHS
OFFICIAL_MAX_LENGTH = 120000
MAX_NEW_TOKENS = 128
DEFAULT_FILE = "data.json"


def fill_prompt(item: dict) -> str:
    """pred.py: the template's placeholders replaced one after another (a `$Q$` inside the context is replaced too)."""
    return (TEMPLATE_0SHOT.replace("$DOC$", item["context"].strip()).replace("$Q$", item["question"].strip())
            .replace("$C_A$", item["choice_A"].strip()).replace("$C_B$", item["choice_B"].strip())
            .replace("$C_C$", item["choice_C"].strip()).replace("$C_D$", item["choice_D"].strip()))


def truncate_official(tokenizer, prompt: str, max_length: int) -> tuple[str, bool]:
    """pred.py `query_llm`: keep ids[:max_length // 2] + ids[-max_length // 2:] of `tokenizer.encode(prompt)`."""
    ids = tokenizer.encode(prompt)
    if len(ids) <= max_length:
        return prompt, False
    ids = ids[:max_length // 2] + ids[-max_length // 2:]  # (-max_length) // 2: as upstream, one more for odd
    return tokenizer.decode(ids, skip_special_tokens=True), True


def extract_answer(response: str) -> str | None:
    """pred.py `extract_answer`: the chosen letter, or None."""
    response = response.replace("*", "")
    match = re.search(r"The correct answer is \(([A-D])\)", response)
    if match:
        return match.group(1)
    match = re.search(r"The correct answer is ([A-D])", response)
    return match.group(1) if match else None


def load_items(path: str | Path) -> list[dict]:
    """Read data.json (a JSON list) or a JSONL file of items; errors name the file, item and field."""
    path = Path(path)
    if path.is_dir():
        path = path / DEFAULT_FILE
    if not path.is_file():
        raise DataMissing(f"longbench_v2: data file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty JSON list of LongBench v2 items")
    for k, item in enumerate(items):
        where = f"{path}: item {k}"
        missing = [f for f in FIELDS if f not in item]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        if item["answer"] not in ("A", "B", "C", "D"):
            raise ValueError(f"{where}: answer {item['answer']!r} must be one of A, B, C, D")
        if item["difficulty"] not in DIFFICULTIES or item["length"] not in LENGTHS:
            raise ValueError(f"{where}: difficulty {item['difficulty']!r} / length {item['length']!r} must be "
                             f"one of {DIFFICULTIES} / {LENGTHS}")
    return items


class LongBenchV2Task:
    def __init__(self, path: str | Path, fmt: PromptFormat, max_length: int = OFFICIAL_MAX_LENGTH,
                 num_samples: int | None = None):
        self.fmt, self.max_length = fmt, max_length
        self.items = load_items(path)
        if num_samples is not None and num_samples >= 0:
            self.items = self.items[:num_samples]
        self.name = "longbench_v2/0shot"
        self.max_new_tokens = MAX_NEW_TOKENS
        self.metadata = {"suite": "longbench_v2", "task": "0shot", "length": max_length, "metric": "accuracy"}

    def num_examples(self) -> int:
        return len(self.items)

    def get_example(self, i: int) -> dict:
        item = self.items[i]
        user, truncated = truncate_official(self.fmt.tokenizer, fill_prompt(item), self.max_length)
        prompt = self.fmt.render(user)
        return {"id": str(item["_id"]), "prompt": prompt, "gold": item["answer"], "difficulty": item["difficulty"],
                "length_split": item["length"], "truncated": truncated, "prompt_tokens": self.fmt.count(prompt)}

    def score(self, example: dict, prediction: str) -> float:
        return 100.0 * (extract_answer(prediction.strip()) == example["gold"])

    def extra_scores(self, example: dict, prediction: str) -> dict[str, float]:
        """The example's score under its difficulty and its length split: the runner's means are the split accuracies."""
        score = self.score(example, prediction)
        return {example["difficulty"]: score, example["length_split"]: score}

    def aggregate(self, scores: list[float]) -> float:
        return round(sum(scores) / len(scores), 1)  # result.py: round(100 * correct / n, 1)

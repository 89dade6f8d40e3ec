"""InfiniteBench En.Sum, En.QA and En.MC (Zhang et al., 2024) from local JSONL files.

Each line holds `id`, `context` (a book), `input` (the question; empty for En.Sum), `answer` (a
string or list of strings) and `options` (four strings for En.MC).

Prompt, as OpenBMB/InfiniteBench builds it (`src/eval_utils.py create_prompt`, `src/eval_*.py
truncate_by_tokens`), with `truncation="official"` (the default): the task template is filled with
the whole book, the filled prompt is encoded (`tokenizer.encode`, special tokens included) and, when
longer than `max_length` (128 x 1024), cut to its first and last `max_length // 2` tokens, then
decoded without special tokens - no room is kept for the answer. A chat model then gets it as the
user turn after the system prompt "You are a helpful assistant." (`create_system_msg`); a base model
gets the completion-style template with no system prompt. `truncation="fit"` instead cuts the book
only, so that template + answer fit `max_length` (this project's earlier rule; not comparable).

    en_sum  1200 new tokens   ROUGE-Lsum F1 on raw texts (max over references)
    en_qa     40 new tokens   SQuAD token F1 (max over references)
    en_mc     40 new tokens   accuracy under the official parser; `lenient` beside it
"""

from __future__ import annotations

from pathlib import Path

from longpo.eval.fitting import PromptFormat, truncate_middle
from longpo.eval.haystack import DataMissing
from longpo.eval.scoring import choice_accuracy, choice_accuracy_lenient, qa_f1, rouge_lsum
from longpo.files import read_jsonl

# InfiniteBench's instruction-style templates (for chat models) and completion-style ones (base models).
CHAT_TEMPLATES = {
    "en_sum": "Summarize the following book.\n\n{context}",
    "en_qa": "Read the book below and answer a question.\n\n{context}\n\nQuestion: {question}\n\nBe very concise.",
    "en_mc": "Read the book and answer the question.\n\n{context}\n\nQuestion: {question}\n\nOnly one of the "
             "following options is correct, tell me the answer using one single letter (A, B, C, or D). "
             "Don't say anything else.\nA. {OPTION_A}\nB. {OPTION_B}\nC. {OPTION_C}\nD. {OPTION_D}",
}
BASE_TEMPLATES = {
    "en_sum": "Summarize the book below.\n\n{context}\n\nSummary:",
    "en_qa": "Read the book and answer the question. Be very concise in your answer.\n\n{context}\n\n"
             "Question: {question}\nAnswer:",
    "en_mc": "Read the book and answer the question.\n\n{context}\n\nQuestion: {question}\nA. {OPTION_A}\n"
             "B. {OPTION_B}\nC. {OPTION_C}\nD. {OPTION_D}\n\nThe letter of the correct answer is",
}
TOKENS_TO_GENERATE = {"en_sum": 1200, "en_qa": 40, "en_mc": 40}
METRICS = {"en_sum": "rouge_lsum", "en_qa": "qa_f1", "en_mc": "accuracy"}
DEFAULT_FILES = {"en_sum": "longbook_sum_eng.jsonl", "en_qa": "longbook_qa_eng.jsonl",
                 "en_mc": "longbook_choice_eng.jsonl"}
TASKS = list(TOKENS_TO_GENERATE)
OFFICIAL_SYSTEM_PROMPT = "You are a helpful assistant."
OFFICIAL_MAX_LENGTH = 128 * 1024
TRUNCATIONS = ("official", "fit")


def truncate_official(tokenizer, text: str, budget: int) -> tuple[str, bool]:
    """`truncate_by_tokens`: encode with special tokens, keep the first and last `budget // 2` tokens if
    longer than `budget`, decode skipping special tokens (always - the round trip is part of the protocol)."""
    ids = tokenizer.encode(text)
    truncated = len(ids) > budget
    if truncated:
        split = budget // 2
        ids = ids[:split] + ids[len(ids) - split:]
    return tokenizer.decode(ids, skip_special_tokens=True), truncated


def load_rows(task: str, path: str | Path) -> list[dict]:
    """Read and validate a task's JSONL file; errors name the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataMissing(f"infinitebench {task}: data file {path} does not exist")
    rows = []
    with open(path, encoding="utf-8") as f:
        line_numbers = [i for i, line in enumerate(f, start=1) if line.strip()]
    for lineno, row in zip(line_numbers, read_jsonl(path)):
        where = f"{path}:{lineno}"
        for key in ("context", "answer") + (("input",) if task != "en_sum" else ()):
            if key not in row:
                raise ValueError(f"{where}: missing field {key!r}")
        if not isinstance(row["context"], str):
            raise ValueError(f"{where}: field 'context' must be a string")
        answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
        if not answers or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{where}: field 'answer' must be a string or a non-empty list of strings")
        out = {"id": str(row.get("id", len(rows))), "context": row["context"], "input": row.get("input", ""),
               "answers": answers}
        if task == "en_mc":
            options = row.get("options")
            if not isinstance(options, list) or len(options) != 4:
                raise ValueError(f"{where}: field 'options' must be a list of 4 strings for en_mc")
            if answers[0] in options:
                gold = "ABCD"[options.index(answers[0])]
            elif answers[0].strip().upper() in ("A", "B", "C", "D"):
                gold = answers[0].strip().upper()
            else:
                raise ValueError(f"{where}: answer {answers[0]!r} is not one of the options")
            out.update(options=[str(o) for o in options], gold=gold)
        rows.append(out)
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


class InfiniteBenchTask:
    def __init__(self, task: str, path: str | Path, fmt: PromptFormat, max_length: int = OFFICIAL_MAX_LENGTH,
                 num_samples: int | None = None, use_stemmer: bool = False, truncation: str = "official",
                 system_prompt: str | None = OFFICIAL_SYSTEM_PROMPT):
        if task not in TOKENS_TO_GENERATE:
            raise ValueError(f"unknown InfiniteBench task {task!r}; choose from {TASKS}")
        if truncation not in TRUNCATIONS:
            raise ValueError(f"infinitebench truncation {truncation!r}: choose from {TRUNCATIONS}")
        self.truncation, self.system_prompt = truncation, system_prompt
        self.task, self.fmt, self.max_length = task, fmt, max_length
        self.max_new_tokens = TOKENS_TO_GENERATE[task]
        self.metric = METRICS[task]
        self.use_stemmer = use_stemmer
        self.rows = load_rows(task, path)
        if num_samples is not None and num_samples >= 0:
            self.rows = self.rows[:num_samples]
        self.name = f"infinitebench/{task}"
        self.metadata = {"suite": "infinitebench", "task": task, "length": max_length, "metric": self.metric,
                         "truncation": truncation}
        self.template = (CHAT_TEMPLATES if fmt.chat_template else BASE_TEMPLATES)[task]

    def num_examples(self) -> int:
        return len(self.rows)

    def _user_text(self, row: dict, context: str) -> str:
        fields = {"context": context, "question": row["input"]}
        if self.task == "en_mc":
            fields.update({f"OPTION_{letter}": opt for letter, opt in zip("ABCD", row["options"])})
        return self.template.format(**fields)

    def _render(self, user: str) -> str:
        if self.truncation == "official" and self.fmt.chat_template:
            return self.fmt.render(user, system_prompt=self.system_prompt or "")
        return self.fmt.render(user)

    def get_example(self, i: int) -> dict:
        row = self.rows[i]
        if self.truncation == "official":
            user, truncated = truncate_official(self.fmt.tokenizer, self._user_text(row, row["context"]),
                                                self.max_length)
            prompt = self._render(user)
        else:
            budget = self.max_length - self.max_new_tokens
            context, truncated = truncate_middle(self.fmt, row["context"],
                                                 lambda c: self._render(self._user_text(row, c)), budget)
            prompt = self._render(self._user_text(row, context))
        example = {"id": row["id"], "prompt": prompt, "answers": row["answers"], "truncated": truncated,
                   "prompt_tokens": self.fmt.count(prompt)}
        if self.task == "en_mc":
            example.update(options=row["options"], gold=row["gold"])
        return example

    def score(self, example: dict, prediction: str) -> float:
        if self.task == "en_sum":
            return rouge_lsum(prediction, example["answers"], use_stemmer=self.use_stemmer)
        if self.task == "en_qa":
            return qa_f1(prediction, example["answers"])
        return choice_accuracy(prediction, example["gold"], example["options"])

    def extra_scores(self, example: dict, prediction: str) -> dict[str, float]:
        if self.task != "en_mc":
            return {}
        return {"lenient": choice_accuracy_lenient(prediction, example["gold"], example["options"])}

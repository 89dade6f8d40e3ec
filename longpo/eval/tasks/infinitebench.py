"""InfiniteBench En.Sum, En.QA and En.MC (Zhang et al., 2024) from local JSONL files.

Each line holds `id`, `context` (a book), `input` (the question; empty for En.Sum), `answer` (a
string or list of strings) and `options` (four strings for En.MC). The book is cut in the middle to
a token budget (128K by default: the prompt plus the tokens to generate must fit, and the first and
last halves of the book are kept), then put in InfiniteBench's prompt template.

    en_sum  1200 new tokens   ROUGE-Lsum F1 (max over references)
    en_qa     40 new tokens   SQuAD token F1 (max over references)
    en_mc     40 new tokens   accuracy of the option letter read from the answer
"""

from __future__ import annotations

from pathlib import Path

from longpo.eval.fitting import PromptFormat, truncate_middle
from longpo.eval.haystack import DataMissing
from longpo.eval.scoring import choice_accuracy, qa_f1, rouge_lsum
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
    def __init__(self, task: str, path: str | Path, fmt: PromptFormat, max_length: int = 131072,
                 num_samples: int | None = None, use_stemmer: bool = False):
        if task not in TOKENS_TO_GENERATE:
            raise ValueError(f"unknown InfiniteBench task {task!r}; choose from {TASKS}")
        self.task, self.fmt, self.max_length = task, fmt, max_length
        self.max_new_tokens = TOKENS_TO_GENERATE[task]
        self.metric = METRICS[task]
        self.use_stemmer = use_stemmer
        self.rows = load_rows(task, path)
        if num_samples is not None and num_samples >= 0:
            self.rows = self.rows[:num_samples]
        self.name = f"infinitebench/{task}"
        self.metadata = {"suite": "infinitebench", "task": task, "length": max_length, "metric": self.metric}
        self.template = (CHAT_TEMPLATES if fmt.chat_template else BASE_TEMPLATES)[task]

    def num_examples(self) -> int:
        return len(self.rows)

    def _render(self, row: dict, context: str) -> str:
        fields = {"context": context, "question": row["input"]}
        if self.task == "en_mc":
            fields.update({f"OPTION_{letter}": opt for letter, opt in zip("ABCD", row["options"])})
        return self.fmt.render(self.template.format(**fields))

    def get_example(self, i: int) -> dict:
        row = self.rows[i]
        budget = self.max_length - self.max_new_tokens
        context, truncated = truncate_middle(self.fmt, row["context"], lambda c: self._render(row, c), budget)
        prompt = self._render(row, context)
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

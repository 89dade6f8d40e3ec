"""HELMET's long-document QA on InfiniteBench: En.QA (ROUGE-L F1) and En.MC (exact match), HELMET's prompts.

HELMET reads InfiniteBench from the hub (`xinrongzhang2022/infinitebench`); its rows are those of the released
`longbook_qa_eng.jsonl` / `longbook_choice_eng.jsonl` (id, context, input, answer, options), read here from a
local file. Protocol, as princeton-nlp/HELMET `data.py` (`load_infbench`, `truncate_llama2`, `filter_length`,
`default_post_process`, its `choice_post_process`), `utils.py` (`calculate_metrics`) and configs/longqa.yaml
(`infbench_qa_eng_130862`, `infbench_choice_eng_130862`: 2 shots, 100 samples, 10 new tokens, chat template):
- MC options "A. ..\\nB. ..\\nC. ..\\nD. .." and answers [letter, "letter. text"];
- demos per example: the other rows in datasets' `shuffle(seed)` order, the first `shots`, as "[story text]"
  placeholders - "For example:\\n\\n{demos}\\n\\nNow, read the following story:\\n\\n";
- rows with a context under 65536 tokens dropped, contexts over 130862 tokens cut there (at the end offset of
  token 130862 - len(postfix)) with " ... [the rest of the text is omitted]" - tokens of Llama-2's tokenizer
  (`truncate_tokenizer`; unset: the evaluated model's, a documented difference);
- the first `num_samples` of the rest in `shuffle(seed)` order;
- prompt: the user template; base models `user + "\\n\\n" + "Answer:"`;
- score: QA the max of ROUGE-L F1 (rouge_score, stemmer) over the answers, of the output and of its
  `parse_output`, the larger; MC exact match (SQuAD normalisation) of either with the letter or
  "letter. text", or 100 when "letter. text" appears (any case) in the output; x 100.
"""

from __future__ import annotations

import functools
from pathlib import Path

from longpo.eval.fitting import PromptFormat, PromptTooLong
from longpo.eval.scoring import normalize_answer
from longpo.eval.tasks.helmet import (
    CATEGORY,
    MAX_NEW_TOKENS,
    HelmetPrompt,
    hf_shuffle_order,
    parse_output,
    read_rows,
    require_fields,
)

QA_USER = ("You are given a story and a question. Answer the question as concisely as you can, using a single phrase "
           "if possible.\n\n{demos}{context}\n\nQuestion: {question}")
MC_USER = ("You are given a story and a question with multiple choices. Choose the best answer from the options "
           "provided. Only one of the following options is correct, output the answer using one single letter (A, B, "
           "C, or D). Don't say anything else.\n\n{demos}{context}\n\nQuestion: {question}\nOptions:\n{options}")
SYSTEM = "Answer:"
POSTFIX = " ... [the rest of the text is omitted]"
MIN_TOKENS, MAX_TOKENS = 65536, 130862


@functools.lru_cache(maxsize=1)
def _rouge_l():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_f1(prediction: str, answers: list[str]) -> float:
    return max(_rouge_l().score(target=a, prediction=prediction)["rougeL"].fmeasure for a in answers)


def exact_match(prediction: str, answers: list[str]) -> float:
    return float(max(normalize_answer(prediction) == normalize_answer(a) for a in answers))


class LongQATask(HelmetPrompt):
    def __init__(self, task: str, path: str | Path, fmt: PromptFormat, demo_path: str | Path | None = None,
                 max_length: int = 131072, num_samples: int = 100, shots: int = 2, seed: int = 42,
                 truncate_tokenizer: str | None = None, min_tokens: int = MIN_TOKENS, max_tokens: int = MAX_TOKENS):
        if task not in ("infbench_qa", "infbench_choice"):
            raise ValueError(f"unknown HELMET long-document QA task {task!r}; choose infbench_qa or infbench_choice")
        self.task, self.fmt, self.max_length, self.shots = task, fmt, max_length, shots
        self.max_new_tokens = MAX_NEW_TOKENS[task]
        self.name = f"helmet/{task}"
        self.metadata = {"suite": "helmet", "task": task, "category": CATEGORY[task], "length": max_length,
                         "metric": "rougeL_f1" if task == "infbench_qa" else "exact_match"}
        self.user, self.system = (QA_USER if task == "infbench_qa" else MC_USER), SYSTEM
        rows = read_rows(path)
        require_fields(rows, path, ("id", "context", "input", "answer") + (("options",) if task != "infbench_qa" else ()))
        items = [self._item(r) for r in rows]
        if shots > 0:
            for item in items:  # data.filter(id != own).shuffle(seed).select(range(shots))
                others = [x for x in items if x["id"] != item["id"]]
                item["demos"] = self._demos([others[i] for i in hf_shuffle_order(len(others), seed)[:shots]])
        tok = fmt.tokenizer
        if truncate_tokenizer:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(truncate_tokenizer)
        postfix_tokens = len(tok(POSTFIX)["input_ids"])
        kept = []
        for item in items:
            enc = tok(item["context"], return_offsets_mapping=True)
            if len(enc["input_ids"]) < min_tokens:
                continue
            if len(enc["input_ids"]) > max_tokens:
                item["context"] = item["context"][:enc["offset_mapping"][max_tokens - postfix_tokens][1]] + POSTFIX
            kept.append(item)
        if not kept:  # skipped with this reason by `longpo eval`, as a length that does not fit
            raise PromptTooLong(f"{self.name}: no book of {path} holds the {min_tokens} tokens HELMET asks for")
        order = hf_shuffle_order(len(kept), seed)
        self.items = [kept[i] for i in (order[:num_samples] if num_samples >= 0 else order)]

    @classmethod
    def from_config(cls, task: str, path, demo_path, fmt: PromptFormat, h) -> LongQATask:
        """From `longpo eval`'s helmet.* keys (HelmetConfig); the demos come from the test file itself."""
        return cls(task, path, fmt, None, h.max_length, h.num_samples, h.shots, h.seed, h.truncate_tokenizer)

    def _item(self, row: dict) -> dict:
        item = {"id": str(row["id"]), "context": row["context"], "question": row["input"], "demos": "",
                "answers": list(row["answer"])}
        if self.task == "infbench_choice":
            letter = chr(ord("A") + row["options"].index(row["answer"][0]))
            item["options"] = "A. {}\nB. {}\nC. {}\nD. {}".format(*row["options"])
            item["answers"] = [letter, f"{letter}. {row['answer'][0]}"]
        return item

    def _demos(self, demos: list[dict]) -> str:
        if self.task == "infbench_qa":
            text = "\n\n".join(f"[story text]\nQuestion: {d['question']}\nAnswer: {d['answers'][0]}" for d in demos)
        else:
            text = "\n\n".join(f"[story text]\nQuestion: {d['question']}\nOptions:\n{d['options']}\nAnswer: "
                               f"{d['answers'][0]}" for d in demos)
        return f"For example:\n\n{text}\n\nNow, read the following story:\n\n"

    def _render(self, item: dict, context: str) -> str:
        user = self.user.format(context=context, question=item["question"], demos=item["demos"],
                                options=item.get("options", ""))
        return self.fmt.render(user) if self.fmt.chat_template else self.fmt.render(user, "\n\n" + self.system)

    def score(self, example: dict, prediction: str) -> float:
        if not self.fmt.chat_template:
            prediction = self.system + prediction  # eval.py; no stop at a newline (stop_new_line: false)
        metric = rouge_l_f1 if self.task == "infbench_qa" else exact_match
        parsed = parse_output(prediction)
        score = max(metric(prediction, example["answers"]),
                    metric(parsed, example["answers"]) if parsed is not None else 0.0)
        if self.task == "infbench_choice" and example["answers"][1].lower() in prediction.lower():
            score = 1.0
        return 100.0 * score

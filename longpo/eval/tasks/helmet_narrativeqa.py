"""HELMET's NarrativeQA (long-document QA): its prompt, demos, length filter and truncation, its exact metrics,
and optionally its GPT-4o judge through `longpo/eval/judge.py`.

HELMET reads `load_dataset("narrativeqa")`; here the same rows come from local JSON / JSONL files with the hub's
fields (docs/stages/eval.md shows how to write them with `datasets`): `document` {id, text, ...}, `question`
{text}, `answers` [{text}]. Protocol, as princeton-nlp/HELMET `data.py` (`load_narrativeqa`, `filter_length`,
`truncate_llama2`, `default_post_process`), `utils.py` (`calculate_metrics`, `parse_output`), configs/longqa.yaml
(`narrativeqa_130772`: 2 shots, 100 samples, 100 new tokens, chat template, no stop at a newline) and
scripts/eval_gpt4_longqa.py (the judge):
- the test split in datasets' `shuffle(seed)` order, books over 131072 tokens kept, each cut at the end offset
  of token 130772 - len(postfix) with " ... [the rest of the text is omitted]" (Llama-2 tokens via
  `truncate_tokenizer`; unset: the evaluated model's), then the first `num_samples`;
- demos: `shots` train rows as "Question: ..\\nAnswer: <first answer>" between "For example:\\n\\n" and
  "\\n\\nNow, use the following story to answer the question:\\n\\n". HELMET draws them per example with an
  unseeded `shuffle()`; here with `shuffle(seed=(sha256(question) + seed) mod 2**31)`, so a rerun gets the
  same prompts;
- prompt: the user template; base models `user + "\\n" + "Answer:"`;
- score: `calculate_metrics` of the output (the prefix put back for base models) and of its `parse_output`,
  each metric the larger; the task's score is ROUGE-L F1, the others are extras; x 100;
- judge: HELMET's rubric (fluency 0-1 x correctness 0-3) over the question, the answers' Python list and
  `parse_output` of the output with newlines made spaces; mean of the parsed scores x 100 / 3
  (collect_results.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

from longpo.eval.fitting import PromptFormat, PromptTooLong
from longpo.eval.judge import JudgeClient, mean_score, run_judgements
from longpo.eval.scoring import normalize_answer
from longpo.eval.tasks.helmet import (
    MAX_NEW_TOKENS,
    HelmetPrompt,
    hf_shuffle_order,
    parse_output,
    read_rows,
    require_fields,
)
from longpo.eval.tasks.helmet_longqa import POSTFIX
from longpo.files import read_jsonl

USER = ("You are given a story, which can be either a novel or a movie script, and a question. Answer the question as "
        "concisely as you can, using a single phrase if possible.\n\n{demos}{context}\n\nQuestion: {question}")
SYSTEM = "Answer:"
MIN_TOKENS, MAX_TOKENS = 131072, 130772  # load_narrativeqa's filter (strictly longer); narrativeqa_130772's cut
METRICS = ("rougeL_f1", "rougeL_recall", "rougeLsum_f1", "rougeLsum_recall", "f1", "exact_match",
           "substring_exact_match")

# scripts/eval_gpt4_longqa.py `judge_prompt` (format braces doubled as there)
JUDGE_PROMPT = """Please act as an impartial judge and evaluate the quality of the provided answer which attempts to answer the provided question based on a provided context.
Although you are not given the context, you will be given a set of correct answers that achieves full scores on all metrics, and you need to assess the provided answers using the correct answers.

Below is your grading rubric:

Fluency:
- Score 0 (incoherent, repetitive, or incomplete): Incoherent sentences, repetitive sentences (even if not by exact words), incomplete answers, or gibberish. Note that even if the answer is coherent, if it is repetitive or incomplete, it should be given a score of 0.
- Score 1 (coherent, non-repetitive answer): Coherent, non-repetitive, fluent, grammatically correct answers.

Correctness:
- Score 0 (Incorrect): The answer does not agree with the provided correct answers at all.
- Score 1 (partly correct): Partly agree with one of the provided correct answers (for example, the question asks for a date and a person; the answer gets the date right but the person wrong).
- Score 2 (correct but not fully relevant): Fully agrees with one of the provided correct answers but mentions other completely irrelevant information. Note that extra details provided in the answer, even if not mentioned in the correct answers, should NOT be seen as irrelevant as long as they are relevant to the question to a reasonable extend.
- Score 3 (correct and relevant): Fully agrees with one of the provided correct answers and only provides information relevant to the question. Note that if the answer is longer than the correct answer, as long as everything in the answer is relevant to the question, it should still be given score 3. For example, if the correct answer is "the North Pole" and the answer is "They are headed for the North Pole", it should still be given a score of 3.

Now, read the following question, answer, and correct answers. First think step-by-step and provide your reasoning and assessment on the answer. Then output your score in the following json format: {{"fluency": 0, "correctness": 1}}.

Question: {question}
Correct answers: {correct_answers}
Answer: {parsed_output}
"""


@functools.lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL", "rougeLsum"], use_stemmer=True)


def token_f1(prediction: str, truth: str) -> float:
    """utils.py `f1_score`: SQuAD token F1, 0 when either side normalises to yes / no / noanswer and they differ."""
    pred, gold = normalize_answer(prediction), normalize_answer(truth)
    if (pred in ("yes", "no", "noanswer") or gold in ("yes", "no", "noanswer")) and pred != gold:
        return 0.0
    common = Counter(pred.split()) & Counter(gold.split())
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred.split()), same / len(gold.split())
    return 2 * precision * recall / (precision + recall)


def calculate_metrics(prediction: str, answers: list[str]) -> dict[str, float]:
    """utils.py `calculate_metrics`: each metric the best over the answers, in [0, 1]."""
    rouges = [_rouge().score(target=a, prediction=prediction) for a in answers]
    out = {"exact_match": float(max(normalize_answer(prediction) == normalize_answer(a) for a in answers)),
           "f1": max(token_f1(prediction, a) for a in answers),
           "substring_exact_match": float(max(normalize_answer(a) in normalize_answer(prediction) for a in answers))}
    for kind in ("rougeL", "rougeLsum"):
        out[f"{kind}_f1"] = max(r[kind].fmeasure for r in rouges)
        out[f"{kind}_recall"] = max(r[kind].recall for r in rouges)
    return out


def helmet_metrics(output: str, answers: list[str]) -> dict[str, float]:
    """data.py `default_post_process`: the metrics of the output and of its parse_output, the larger of each."""
    mets = calculate_metrics(output, answers)
    parsed = parse_output(output)
    if parsed is not None:
        mets = {k: max(v, calculate_metrics(parsed, answers)[k]) for k, v in mets.items()}
    return mets


def parse_judgement(text: str) -> float | None:
    """eval_gpt4_longqa.py `parse_json` over the reply: the last {...} as JSON, fluency x correctness; None when
    there is none, it is not JSON or it lacks either key (HELMET leaves those out of the mean)."""
    matches = re.findall(r"\{.*?\}", text, re.DOTALL)
    if not matches:
        return None
    try:
        scores = json.loads(matches[-1])
    except json.JSONDecodeError:
        return None
    if not isinstance(scores, dict) or "fluency" not in scores or "correctness" not in scores:
        return None
    try:
        return float(scores["fluency"]) * float(scores["correctness"])
    except (TypeError, ValueError):
        return None


def judge_prompt(question: str, answers: list[str], output: str) -> str:
    """The judge's user turn: the answers as Python's list repr and the output parsed after newlines became spaces."""
    return JUDGE_PROMPT.format(question=question, correct_answers=str(list(answers)),
                               parsed_output=parse_output(output.replace("\n", " ")))


class NarrativeQATask(HelmetPrompt):
    def __init__(self, path: str | Path, fmt: PromptFormat, demo_path: str | Path | None = None,
                 max_length: int = 131072, num_samples: int = 100, shots: int = 2, seed: int = 42,
                 truncate_tokenizer: str | None = None, min_tokens: int = MIN_TOKENS, max_tokens: int = MAX_TOKENS):
        self.task, self.fmt, self.max_length, self.shots = "narrativeqa", fmt, max_length, shots
        self.max_new_tokens = MAX_NEW_TOKENS["narrativeqa"]
        self.name = "helmet/narrativeqa"
        self.metadata = {"suite": "helmet", "task": "narrativeqa", "category": "longqa", "length": max_length,
                         "metric": "rougeL_f1"}
        self.user, self.system = USER, SYSTEM
        rows = read_rows(path)
        require_fields(rows, path, ("document", "question", "answers"))
        train = []
        if shots > 0:
            if demo_path is None:
                raise ValueError(f"helmet narrativeqa: shots={shots} needs the train split (helmet.demos.narrativeqa)")
            train = read_rows(demo_path)
            require_fields(train, demo_path, ("question", "answers"))
            if len(train) < shots:
                raise ValueError(f"{demo_path}: {len(train)} train rows, fewer than shots={shots}")
        tok = fmt.tokenizer
        if truncate_tokenizer:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(truncate_tokenizer)
        postfix_tokens = len(tok(POSTFIX)["input_ids"])
        cut: dict[str, str | None] = {}  # book text -> its cut text, None when too short (questions share books)
        self.items = []
        for i in hf_shuffle_order(len(rows), seed):  # filter and truncate keep order: stop at num_samples
            if 0 <= num_samples <= len(self.items):
                break
            text = rows[i]["document"]["text"]
            if text not in cut:
                enc = tok(text, return_offsets_mapping=True)
                n = len(enc["input_ids"])
                cut[text] = None if n <= min_tokens else (
                    text[:enc["offset_mapping"][max_tokens - postfix_tokens][1]] + POSTFIX if n > max_tokens else text)
            if cut[text] is not None:
                self.items.append(self._item(rows[i], cut[text], train, seed))
        if not self.items:  # skipped with this reason by `longpo eval`, as a length that does not fit
            raise PromptTooLong(f"{self.name}: no book of {path} holds more than the {min_tokens} tokens HELMET asks for")

    @classmethod
    def from_config(cls, task: str, path, demo_path, fmt: PromptFormat, h) -> NarrativeQATask:
        """From `longpo eval`'s helmet.* keys (HelmetConfig)."""
        return cls(path, fmt, demo_path, h.max_length, h.num_samples, h.shots, h.seed, h.truncate_tokenizer)

    def _item(self, row: dict, context: str, train: list[dict], seed: int) -> dict:
        question = row["question"]["text"]
        demos = ""
        if self.shots > 0:
            h = (int(hashlib.sha256(question.encode("utf-8")).hexdigest(), 16) + seed) % 2**31
            picked = [train[k] for k in hf_shuffle_order(len(train), h)[:self.shots]]
            demos = ("For example:\n\n" + "\n\n".join(f"Question: {d['question']['text']}\nAnswer: "
                                                      f"{d['answers'][0]['text']}" for d in picked)
                     + "\n\nNow, use the following story to answer the question:\n\n")
        doc = row["document"]
        return {"id": f"{doc.get('id', '')}:{question}", "context": context, "question": question, "demos": demos,
                "answers": [a["text"] for a in row["answers"]]}

    def get_example(self, i: int) -> dict:
        return {**super().get_example(i), "question": self.item(i)["question"]}  # kept in the row for the judge

    def output(self, prediction: str) -> str:
        """What HELMET scores and judges: the whole output (no stop at a newline), the prefix back for base models."""
        return prediction if self.fmt.chat_template else self.system + prediction

    def score(self, example: dict, prediction: str) -> float:
        return 100.0 * helmet_metrics(self.output(prediction), example["answers"])["rougeL_f1"]

    def extra_scores(self, example: dict, prediction: str) -> dict[str, float]:
        mets = helmet_metrics(self.output(prediction), example["answers"])
        return {k: 100.0 * mets[k] for k in METRICS if k != "rougeL_f1"}


def judge_result(result: dict, client: JudgeClient, chat_template: bool, path: str | Path,
                 progress: bool = True) -> float | None:
    """HELMET's judge score of a NarrativeQA run: every saved prediction row (`result["predictions"]`) judged
    once through `client` (resumable, saved to `path`), mean fluency x correctness x 100 / 3 over the replies
    that parse (None when none does)."""
    rows = list(read_jsonl(Path(result["predictions"])))
    requests = [{"key": str(r["index"]), "system": "", "id": r["id"],
                 "user": judge_prompt(r["question"], r["answers"], r["prediction"] if chat_template
                                      else SYSTEM + r["prediction"])} for r in rows]
    mean = mean_score(run_judgements(client, requests, path, parse_judgement, progress))
    return None if mean is None else mean * 100 / 3

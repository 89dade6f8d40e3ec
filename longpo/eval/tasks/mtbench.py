"""MT-Bench (Zheng et al., 2023) with single-answer grading, as FastChat's llm_judge runs it.

Inputs are local files in FastChat's formats: `question.jsonl` (`question_id`, `category`, `turns`: two
user messages) and, for the categories that need one (math, reasoning, coding), `reference_answer/gpt-4.jsonl`
(`question_id`, `choices[0].turns`). Protocol (fastchat/llm_judge gen_model_answer.py, gen_judgment.py,
common.py, show_result.py):

- answers: the model's chat template, turn 2 conditioned on the model's own turn-1 answer; sampling
  temperature by category (`TEMPERATURES`: writing/roleplay 0.7, stem/humanities 0.1, others greedy;
  unknown categories 0.7), at most 1024 new tokens;
- judgements: turn 1 with "single-v1" (or "single-math-v1" with the reference), turn 2 with
  "single-v1-multi-turn" (or the math variant) showing the whole conversation; judge temperature 0,
  2048 tokens; the rating is the first "[[x]]" (else "[x]") of the reply;
- scores: unparsable judgements are left out (FastChat's -1 rows); turn 1, turn 2 and overall are means
  over judgements; a category's score is the mean over both turns of its questions.

Outputs in `out_dir`: `mt_bench/answers.jsonl` (one line per question, both turns) and
`mt_bench/judgements.jsonl` (one line per question and turn, with prompts and raw replies). Both resume.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from longpo.config import help_field
from longpo.eval.haystack import DataMissing
from longpo.eval.judge import JudgeClient, cut_torn_tail, mean_score, parse_fastchat_rating, run_judgements
from longpo.eval.judge_prompts import MT_BENCH_PROMPTS, NEED_REF_CATS
from longpo.files import append_jsonl, atomic_write_json, read_jsonl

TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
DEFAULT_TEMPERATURE = 0.7


@dataclass(kw_only=True)
class MTBenchConfig:
    enabled: bool = help_field(False, "run MT-Bench (needs the question file and a judge endpoint)")
    questions: str | None = help_field(None, "FastChat's data/mt_bench/question.jsonl (a local copy)")
    reference_answers: str | None = help_field(None, "FastChat's data/mt_bench/reference_answer/gpt-4.jsonl "
                                               "(needed for math, reasoning and coding questions)")
    max_new_tokens: int = help_field(1024, "most tokens per answer turn (FastChat: 1024)")
    temperatures: dict = help_field({}, "category -> temperature overrides of FastChat's table (changes the protocol)")
    num_questions: int = help_field(-1, "first N questions (-1: all 80)")


def load_questions(path: str | Path, limit: int = -1) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataMissing(f"mt_bench: question file {path} does not exist; set mt_bench.questions to a local "
                          "copy of FastChat's data/mt_bench/question.jsonl")
    questions = []
    for lineno, row in enumerate(read_jsonl(path), start=1):
        turns = row.get("turns")
        if "question_id" not in row or not isinstance(turns, list) or len(turns) != 2 \
                or not all(isinstance(t, str) for t in turns):
            raise ValueError(f"{path}: record {lineno} needs 'question_id' and 'turns' (two strings)")
        questions.append({"question_id": row["question_id"], "category": str(row.get("category", "")),
                          "turns": turns})
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions[:limit] if limit >= 0 else questions


def load_references(path: str | Path | None, questions: list[dict]) -> dict:
    """question_id -> the reference answer's two turns, for the questions whose category needs one."""
    needed = [q["question_id"] for q in questions if q["category"] in NEED_REF_CATS]
    refs = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DataMissing(f"mt_bench: reference answer file {path} does not exist")
        for lineno, row in enumerate(read_jsonl(path), start=1):
            try:
                refs[row["question_id"]] = list(row["choices"][0]["turns"])
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"{path}: record {lineno} needs 'question_id' and 'choices[0].turns'") from None
    missing = [q for q in needed if q not in refs or len(refs[q]) < 2]
    if missing:
        raise ValueError(f"mt_bench: questions {missing[:5]} ({len(missing)} in all) are in {list(NEED_REF_CATS)} "
                         "and need reference answers: set mt_bench.reference_answers to FastChat's "
                         "reference_answer/gpt-4.jsonl")
    return refs


def generate_answers(backend: Any, fmt: Any, questions: list[dict], path: Path, sampling: Any,
                     cfg: MTBenchConfig, batch_size: int = 8) -> dict:
    """question_id -> [answer 1, answer 2], generating only the questions not yet in `path`."""
    cut_torn_tail(path)
    done = {row["question_id"]: row for row in read_jsonl(path)} if path.exists() else {}
    temperatures = {**TEMPERATURES, **cfg.temperatures}
    todo = [q for q in questions if q["question_id"] not in done]
    by_temperature: dict[float, list[dict]] = {}
    for q in todo:
        by_temperature.setdefault(float(temperatures.get(q["category"], DEFAULT_TEMPERATURE)), []).append(q)
    for temperature, group in by_temperature.items():
        params = replace(sampling, temperature=temperature, max_new_tokens=cfg.max_new_tokens)
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            first = backend.generate([fmt.render(q["turns"][0]) for q in chunk], params)
            second = backend.generate([fmt.render(q["turns"][1], history=[(q["turns"][0], a)])
                                       for q, a in zip(chunk, first)], params)
            for q, a1, a2 in zip(chunk, first, second):
                row = {"question_id": q["question_id"], "category": q["category"], "turns": [a1, a2],
                       "temperature": temperature}
                append_jsonl(path, row)
                done[q["question_id"]] = row
    return {qid: row["turns"] for qid, row in done.items()}


def judge_requests(questions: list[dict], answers: dict, refs: dict) -> list[dict]:
    """Two single-answer grading requests per question, built as FastChat's `run_judge_single` does."""
    requests = []
    for q in questions:
        a1, a2 = answers[q["question_id"]]
        math = q["category"] in NEED_REF_CATS
        ref_1 = {"ref_answer_1": refs[q["question_id"]][0]} if math else {}
        ref = {**ref_1, "ref_answer_2": refs[q["question_id"]][1]} if math else {}
        one = MT_BENCH_PROMPTS["single-math-v1" if math else "single-v1"]
        two = MT_BENCH_PROMPTS["single-math-v1-multi-turn" if math else "single-v1-multi-turn"]
        requests.append({"key": f"{q['question_id']}/turn1", "question_id": q["question_id"], "turn": 1,
                         "category": q["category"], "system": one["system_prompt"],
                         "user": one["prompt_template"].format(question=q["turns"][0], answer=a1, **ref_1)})
        requests.append({"key": f"{q['question_id']}/turn2", "question_id": q["question_id"], "turn": 2,
                         "category": q["category"], "system": two["system_prompt"],
                         "user": two["prompt_template"].format(question_1=q["turns"][0], question_2=q["turns"][1],
                                                               answer_1=a1, answer_2=a2, **ref)})
    return requests


def summarize(rows: list[dict]) -> dict:
    """Per category, per turn and overall means of the parsed ratings (1-10), with counts."""
    categories = sorted({r["category"] for r in rows})
    return {
        "overall": mean_score(rows),
        "turn1": mean_score([r for r in rows if r["turn"] == 1]),
        "turn2": mean_score([r for r in rows if r["turn"] == 2]),
        "categories": {c: mean_score([r for r in rows if r["category"] == c]) for c in categories},
        "n": sum(r["status"] == "ok" for r in rows),
        "unparsable": sum(r["status"] == "unparsable" for r in rows),
    }


def run(cfg: MTBenchConfig, client: JudgeClient, get_backend: Any, fmt: Any, out_dir: str | Path, sampling: Any,
        batch_size: int = 8, progress: bool = True) -> dict:
    """Answer (what is missing), judge (what is missing), summarize. `get_backend()` is called only if
    answers are missing, so a rerun that only judges never loads the model."""
    if not cfg.questions:
        raise DataMissing("mt_bench: set mt_bench.questions to a local copy of FastChat's question.jsonl")
    questions = load_questions(cfg.questions, cfg.num_questions)
    refs = load_references(cfg.reference_answers, questions)
    out = Path(out_dir) / "mt_bench"
    answers_path = out / "answers.jsonl"
    answered = {row["question_id"] for row in read_jsonl(answers_path, tolerate_torn_tail=True)} \
        if answers_path.exists() else set()
    backend = get_backend() if any(q["question_id"] not in answered for q in questions) else None
    answers = generate_answers(backend, fmt, questions, answers_path, sampling, cfg, batch_size)
    rows = run_judgements(client, judge_requests(questions, answers, refs), out / "judgements.jsonl",
                          parse_fastchat_rating, progress)
    summary = summarize(rows)
    summary["judge_model"] = client.cfg.model
    atomic_write_json(out / "summary.json", summary)
    return summary

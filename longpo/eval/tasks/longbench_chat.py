"""LongBench-Chat (Bai et al., LongAlign, 2024): long-context instructions judged against a reference
with three scored example answers per question, as THUDM/LongAlign LongBench_Chat/eval.py runs it.

Inputs are local copies of `test_cases.json` (a list of `idx`, `query`, `prompt` - the whole long
input - and `answer`, the reference) and `few_shots.json` (per case, in `idx` order, three
`{answer, score}` examples). Protocol (eval.py `get_predictions`, `get_score`):

- answers: the prompt is tokenised without special tokens and, when longer than `max_length` (64000),
  cut to its first and last `int(max_length / 2)` tokens, each half decoded without special tokens; then
  the model's chat template; at most 1024 new tokens; the saved answer is `strip()`-ed with its newlines
  turned into spaces (that text is what the judge sees). eval.py calls HF generate with temperature 1.0
  but no do_sample, i.e. greedy for models whose generation config does not sample: greedy here.
- judgements: system "You're a good assistant at evaluating the quality of texts.", the prompt_fs.txt
  template filled with question, reference, the three examples and the answer; temperature 0; the
  rating is the first number in the LAST "[[...]]" of the reply; up to 5 calls in eval.py
  (`judge.parse_tries` here, 3 by default) until one parses.
- score: the mean rating (1-10) over the cases that parsed; unparsable ones are counted apart.

Outputs: `longbench_chat/answers.jsonl`, `longbench_chat/judgements.jsonl` (resumable), `summary.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from longpo.config import help_field
from longpo.eval.haystack import DataMissing
from longpo.eval.judge import (
    JudgeClient,
    cut_torn_tail,
    mean_score,
    parse_longbench_chat_rating,
    run_judgements,
)
from longpo.eval.judge_prompts import LONGBENCH_CHAT_PROMPT, LONGBENCH_CHAT_SYSTEM_PROMPT
from longpo.files import append_jsonl, atomic_write_json, read_jsonl


@dataclass(kw_only=True)
class LongBenchChatConfig:
    enabled: bool = help_field(False, "run LongBench-Chat (needs its files and a judge endpoint)")
    test_cases: str | None = help_field(None, "LongAlign's LongBench_Chat/test_cases.json (a local copy)")
    few_shots: str | None = help_field(None, "LongAlign's LongBench_Chat/few_shots.json (a local copy)")
    max_length: int = help_field(64000, "prompt tokens kept (first and last halves); eval.py's default 64000")
    max_new_tokens: int = help_field(1024, "most tokens per answer (eval.py: 1024)")
    num_cases: int = help_field(-1, "first N cases (-1: all 50)")


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataMissing(f"longbench_chat: {what} file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e


def load_cases(cfg: LongBenchChatConfig) -> list[dict]:
    """Cases with their three scored examples attached; errors name the file, case and field."""
    if not cfg.test_cases or not cfg.few_shots:
        raise DataMissing("longbench_chat: set longbench_chat.test_cases and longbench_chat.few_shots to local "
                          "copies of LongAlign's LongBench_Chat/test_cases.json and few_shots.json")
    cases_path, shots_path = Path(cfg.test_cases), Path(cfg.few_shots)
    cases, shots = _read_json(cases_path, "test_cases"), _read_json(shots_path, "few_shots")
    if not isinstance(cases, list) or not isinstance(shots, list):
        raise ValueError(f"{cases_path} and {shots_path} must each hold a JSON list")
    out = []
    for n, case in enumerate(cases):
        for key in ("idx", "query", "prompt", "answer"):
            if key not in case:
                raise ValueError(f"{cases_path}: case {n} has no field {key!r}")
        idx = int(case["idx"])
        if not 1 <= idx <= len(shots):
            raise ValueError(f"{shots_path}: no few-shot entry for case idx={idx} (entries are in idx order, from 1)")
        examples = shots[idx - 1]
        if not isinstance(examples, list) or len(examples) != 3 or \
                not all(isinstance(x, dict) and "answer" in x and "score" in x for x in examples):
            raise ValueError(f"{shots_path}: entry {idx - 1} must be three {{answer, score}} objects")
        out.append({"idx": idx, "query": case["query"], "prompt": case["prompt"], "answer": case["answer"],
                    "shots": examples})
    return out[:cfg.num_cases] if cfg.num_cases >= 0 else out


def truncate_prompt(tokenizer: Any, prompt: str, max_length: int) -> str:
    """eval.py: ids without special tokens; above max_length, decode(first half) + decode(last half)."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_length:
        return prompt
    half = int(max_length / 2)
    return (tokenizer.decode(ids[:half], skip_special_tokens=True)
            + tokenizer.decode(ids[-half:], skip_special_tokens=True))


def judge_prompt(case: dict, prediction: str) -> str:
    fields = {"question": case["query"], "reference": case["answer"], "answer": prediction}
    for k, shot in enumerate(case["shots"], start=1):
        fields[f"shot_{k}"], fields[f"score_{k}"] = shot["answer"], shot["score"]
    return LONGBENCH_CHAT_PROMPT.format(**fields)


def generate_answers(backend: Any, fmt: Any, cases: list[dict], path: Path, sampling: Any,
                     cfg: LongBenchChatConfig, batch_size: int = 1) -> dict[int, str]:
    cut_torn_tail(path)
    done = {row["idx"]: row["prediction"] for row in read_jsonl(path)} if path.exists() else {}
    todo = [c for c in cases if c["idx"] not in done]
    params = replace(sampling, temperature=0.0, max_new_tokens=cfg.max_new_tokens)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        prompts = [fmt.render(truncate_prompt(fmt.tokenizer, c["prompt"], cfg.max_length)) for c in chunk]
        for case, reply in zip(chunk, backend.generate(prompts, params)):
            prediction = reply.strip().replace("\n", " ")
            append_jsonl(path, {"idx": case["idx"], "prediction": prediction})
            done[case["idx"]] = prediction
    return done


def run(cfg: LongBenchChatConfig, client: JudgeClient, get_backend: Any, fmt: Any, out_dir: str | Path,
        sampling: Any, batch_size: int = 1, progress: bool = True) -> dict:
    cases = load_cases(cfg)
    out = Path(out_dir) / "longbench_chat"
    answers_path = out / "answers.jsonl"
    answered = {row["idx"] for row in read_jsonl(answers_path, tolerate_torn_tail=True)} \
        if answers_path.exists() else set()
    backend = get_backend() if any(c["idx"] not in answered for c in cases) else None
    answers = generate_answers(backend, fmt, cases, answers_path, sampling, cfg, batch_size)
    requests = [{"key": str(c["idx"]), "idx": c["idx"], "system": LONGBENCH_CHAT_SYSTEM_PROMPT,
                 "user": judge_prompt(c, answers[c["idx"]])} for c in cases]
    rows = run_judgements(client, requests, out / "judgements.jsonl", parse_longbench_chat_rating, progress)
    summary = {"overall": mean_score(rows), "n": sum(r["status"] == "ok" for r in rows),
               "unparsable": sum(r["status"] == "unparsable" for r in rows), "judge_model": client.cfg.model}
    atomic_write_json(out / "summary.json", summary)
    return summary

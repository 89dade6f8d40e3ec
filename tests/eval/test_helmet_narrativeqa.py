"""HELMET NarrativeQA against princeton-nlp/HELMET data.py (load_narrativeqa, filter_length, truncate_llama2,
default_post_process), utils.py (calculate_metrics, f1_score, parse_output) and scripts/eval_gpt4_longqa.py (the
judge prompt and parse_json). Token limits are scaled down (HELMET: books over 131072 Llama-2 tokens, cut at
130772) so the fixture stays tiny; the files hold the hub dataset's fields."""

import hashlib
import json

import pytest

from longpo.eval.fitting import PromptFormat
from longpo.eval.judge import JudgeClient, JudgeConfig
from longpo.eval.tasks.helmet import hf_shuffle_order
from longpo.eval.tasks.helmet_longqa import POSTFIX
from longpo.eval.tasks.helmet_narrativeqa import (
    NarrativeQATask,
    calculate_metrics,
    helmet_metrics,
    judge_prompt,
    judge_result,
    parse_judgement,
    token_f1,
)
from tests.data.loopback import LoopbackServer

WORDS = "the old man walked along the river to the city and spoke of the sea".split()


def _row(doc_id: str, n_words: int, question: str, answers: list[str]) -> dict:
    """One row with the hub's nested fields (document / question / answers), extra fields as the hub has them."""
    text = " ".join(WORDS[j % len(WORDS)] for j in range(n_words))
    return {"document": {"id": doc_id, "kind": "gutenberg", "url": "", "file_size": 0, "word_count": n_words,
                         "start": "", "end": "", "summary": {"text": "", "tokens": [], "url": "", "title": ""},
                         "text": text},
            "question": {"text": question, "tokens": question.split()},
            "answers": [{"text": a, "tokens": a.split()} for a in answers]}


@pytest.fixture
def splits(tmp_path):
    """Test rows on 3 books (200, 5 and 70 words; two questions share the long book) and 4 train rows."""
    test = [_row("b1", 200, "Who walked?", ["the old man", "an old man"]), _row("b2", 5, "Where?", ["city"]),
            _row("b3", 70, "What sea?", ["the sea"]), _row("b1", 200, "Where to?", ["the city"])]
    train = [_row(f"t{k}", 3, f"Train question {k}?", [f"train answer {k}", "other"]) for k in range(4)]
    paths = tmp_path / "test.jsonl", tmp_path / "train.jsonl"
    for path, rows in zip(paths, (test, train)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths, test, train


def test_order_filter_truncation_demos_and_prompt(tokenizer, splits):
    """load_narrativeqa: test.shuffle(seed=42); books of at most min_tokens dropped; longer ones cut at the end
    offset of token max - len(postfix) + postfix; first num_samples. Demos: shots train rows, 'Question: ..\\nAnswer:
    <first answer>', between 'For example:\\n\\n' and '\\n\\nNow, use the following story to answer the
    question:\\n\\n', drawn by shuffle(seed=(sha256(question) + 42) mod 2**31) (HELMET: an unseeded shuffle()).
    Base prompt: '<s>' + user + '\\nAnswer:'."""
    (test_path, train_path), test, train = splits
    fmt = PromptFormat(tokenizer, chat_template=False)
    task = NarrativeQATask(test_path, fmt, train_path, num_samples=100, shots=2, min_tokens=20, max_tokens=60)
    kept = [i for i in hf_shuffle_order(4, 42) if i != 1]  # row 1's book (5 words) is under 20 tokens
    assert [task.item(k)["question"] for k in range(3)] == [test[i]["question"]["text"] for i in kept]
    assert task.max_new_tokens == 100
    enc = tokenizer(test[0]["document"]["text"], return_offsets_mapping=True)
    assert len(enc["input_ids"]) > 60
    cut = test[0]["document"]["text"][:enc["offset_mapping"][60 - len(tokenizer(POSTFIX)["input_ids"])][1]] + POSTFIX
    k = next(k for k in range(3) if task.item(k)["question"] == "Who walked?")
    assert task.item(k)["context"] == cut and task.item(k)["answers"] == ["the old man", "an old man"]
    h = (int(hashlib.sha256(b"Who walked?").hexdigest(), 16) + 42) % 2**31
    picked = [train[i] for i in hf_shuffle_order(4, h)[:2]]
    demos = ("For example:\n\n" + "\n\n".join(f"Question: {d['question']['text']}\nAnswer: {d['answers'][0]['text']}"
                                              for d in picked)
             + "\n\nNow, use the following story to answer the question:\n\n")
    ex = task.get_example(k)
    assert ex["prompt"] == (
        "<s>You are given a story, which can be either a novel or a movie script, and a question. Answer the question "
        f"as concisely as you can, using a single phrase if possible.\n\n{demos}{cut}\n\nQuestion: Who walked?\nAnswer:")
    assert ex["question"] == "Who walked?"
    again = NarrativeQATask(test_path, fmt, train_path, shots=2, min_tokens=20, max_tokens=60)
    assert again.get_example(k)["prompt"] == ex["prompt"]   # seeded: the same demos on every run
    first = NarrativeQATask(test_path, fmt, train_path, num_samples=1, shots=0, min_tokens=20, max_tokens=60)
    assert first.num_examples() == 1 and first.item(0)["question"] == task.item(0)["question"]
    assert first.item(0)["demos"] == ""


def test_calculate_metrics_hand_worked():
    """utils.calculate_metrics on 'Answer: the old man' vs ['old man']: rouge_score keeps 'the' and 'answer'
    (tokens answer the old man / old man: LCS 2, P 2/4, R 1, F 2/3); the SQuAD normaliser drops 'the' and ':'
    (token F1: P 2/3, R 1 -> 0.8); sub-EM 1, EM 0. Parsed 'the old man': ROUGE-L P 2/3 R 1 F 0.8, F1 1, EM 1."""
    raw = calculate_metrics("Answer: the old man", ["old man"])
    assert raw["rougeL_f1"] == pytest.approx(2 / 3) and raw["rougeL_recall"] == 1.0
    assert raw["f1"] == pytest.approx(0.8) and raw["substring_exact_match"] == 1.0 and raw["exact_match"] == 0.0
    best = helmet_metrics("Answer: the old man", ["old man"])
    assert best["rougeL_f1"] == pytest.approx(0.8) and best["f1"] == 1.0 and best["exact_match"] == 1.0
    # f1_score: a yes / no / noanswer side that differs scores 0, whatever the overlap
    assert token_f1("yes it is", "yes") == 0.0 and token_f1("No.", "no") == 1.0
    assert token_f1("the cat sat", "a dog sat") == pytest.approx(0.5)  # 'cat sat' / 'dog sat': P 1/2, R 1/2
    # best over answers; Porter stems (walking, walked -> walk)
    assert calculate_metrics("he walking", ["nothing", "he walked"])["rougeL_f1"] == 1.0


def test_task_scores_and_extras(tokenizer, splits):
    """score = ROUGE-L F1 x 100 of the output with 'Answer:' put back for base models (no stop at a newline);
    extras: the other metrics x 100. Chat models: the output as it is."""
    (test_path, _), _, _ = splits
    base = NarrativeQATask(test_path, PromptFormat(tokenizer, chat_template=False), shots=0, min_tokens=20,
                           max_tokens=60)
    ex = {"answers": ["old man"]}
    assert base.score(ex, " the old man") == pytest.approx(80.0)
    extra = base.extra_scores(ex, " the old man")
    assert extra["f1"] == 100.0 and extra["substring_exact_match"] == 100.0 and "rougeL_f1" not in extra
    # the first line is parsed ('old man' -> 100), the whole output also counts
    assert base.score(ex, " old man\nand then more words") == 100.0
    chat = NarrativeQATask(test_path, PromptFormat(tokenizer, chat_template=True), shots=0, min_tokens=20,
                           max_tokens=60)
    assert chat.score(ex, "the old man") == pytest.approx(80.0)   # parse_output: the first line, 'the' kept
    assert chat.score({"answers": ["x y z"]}, "nothing alike") == 0.0


def test_judge_prompt_and_parser():
    """eval_gpt4_longqa.py: the answers as Python's list repr; the output parsed after newlines became spaces;
    parse_json takes the last {...}; fluency x correctness, None when it does not parse or lacks a key."""
    user = judge_prompt("Who?", ["the old man", "a man"], "Answer: the old man\nwho walked")
    assert user.startswith("Please act as an impartial judge and evaluate the quality of the provided answer")
    assert user.endswith("Question: Who?\nCorrect answers: ['the old man', 'a man']\nAnswer: the old man who walked\n")
    assert 'json format: {"fluency": 0, "correctness": 1}.\n\nQuestion:' in user
    assert parse_judgement('Example {"fluency": 0, "correctness": 1}. Mine: {"fluency": 1, "correctness": 3}') == 3.0
    assert parse_judgement('{"fluency": 0, "correctness": 2}') == 0.0
    assert parse_judgement('{"fluency": 1}') is None and parse_judgement("no json") is None
    assert parse_judgement("{not json}") is None


def test_judge_result_through_the_judge_client(tmp_path):
    """Rows judged through JudgeClient on a loopback endpoint: replies 1 x 3 = 3, 0 x 2 = 0 and one that never
    parses (left out, as HELMET counts only parsed scores): (3 + 0) / 2 x 100 / 3 = 50. A rerun judges nothing."""
    rows = [{"index": i, "id": f"b:{q}", "question": q, "answers": ["a"], "prediction": p}
            for i, (q, p) in enumerate([("Q-ONE", " one"), ("Q-TWO", " two"), ("Q-THREE", " three")])]
    preds = tmp_path / "predictions.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    replies = {"Q-ONE": 'fine {"fluency": 1, "correctness": 3}', "Q-TWO": '{"fluency": 0, "correctness": 2}',
               "Q-THREE": "I cannot grade this."}
    seen = []

    def reply(payload, headers):
        user = payload["messages"][-1]["content"]
        seen.append(user)
        q = next(q for q in replies if f"Question: {q}\n" in user)
        return 200, {"choices": [{"message": {"role": "assistant", "content": replies[q]}}]}

    server = LoopbackServer(reply)
    try:
        client = JudgeClient(JudgeConfig(model="judge-x", base_url=server.url, api_key_env="LONGPO_NO_KEY",
                                         concurrency=1, parse_tries=2, backoff=0.01))
        out = tmp_path / "judge.jsonl"
        score = judge_result({"predictions": str(preds)}, client, False, out, progress=False)
        assert score == pytest.approx(50.0)
        assert len(seen) == 1 + 1 + 2                                 # the unparsable one asked twice
        assert "Answer: one\n" in seen[0] and len(seen[0].split("Answer: one")) == 2   # prefix put back, parsed
        assert judge_result({"predictions": str(preds)}, client, False, out, progress=False) == pytest.approx(50.0)
        assert len(seen) == 4
    finally:
        server.close()


def test_config_report_and_compare(tokenizer, splits, tmp_path, scripted_backend):
    """helmet.data_dir finds narrativeqa/{test,train}.jsonl (too short for HELMET's 131072 tokens here: skipped
    with the reason); the HELMET table gets NarrativeQA, its F1 and sub-EM, and the judge score and LongQA avg
    when given."""
    from longpo.eval.config import Config, HelmetConfig, InfiniteBenchConfig, RulerConfig
    from longpo.eval.report import compare, summarize, to_markdown
    from longpo.eval.run import build_tasks
    from longpo.eval.runner import evaluate

    (test_path, train_path), _, _ = splits
    (tmp_path / "h" / "narrativeqa").mkdir(parents=True)
    (tmp_path / "h" / "narrativeqa" / "test.jsonl").write_text(test_path.read_text())
    (tmp_path / "h" / "narrativeqa" / "train.jsonl").write_text(train_path.read_text())
    cfg = Config(model="m", ruler=RulerConfig(enabled=False), infinitebench=InfiniteBenchConfig(enabled=False),
                 helmet=HelmetConfig(data_dir=str(tmp_path / "h"), tasks=["narrativeqa"]))
    tasks, _, skipped = build_tasks(cfg, PromptFormat(tokenizer))
    assert tasks == [] and [s["task"] for s in skipped] == ["helmet/narrativeqa"]
    assert "more than the 131072 tokens" in skipped[0]["reason"]
    fmt = PromptFormat(tokenizer, chat_template=False)
    task = NarrativeQATask(test_path, fmt, train_path, shots=2, min_tokens=20, max_tokens=60)
    results = evaluate(scripted_backend(tokenizer, lambda p: " the old man"), [task], tmp_path / "out", progress=False)
    he = summarize(results)["helmet"]
    assert set(he) == {"narrativeqa", "narrativeqa_f1", "narrativeqa_substring_exact_match"}
    assert he["narrativeqa_substring_exact_match"] == pytest.approx(100 / 3)  # 1 of 3 questions has 'old man'
    md = to_markdown(summarize(results))
    assert "| NarrativeQA | NarrativeQA F1 | NarrativeQA sub-EM |" in md
    rows = [json.loads(line) for line in open(results[0]["predictions"])]
    assert {r["question"] for r in rows} == {"Who walked?", "What sea?", "Where to?"}   # kept for the judge
    results[0]["extra"]["judge"] = 50.0
    extra = [{"task": "infbench_qa", "suite": "helmet", "score": 20.0}, {"task": "infbench_choice", "suite": "helmet",
                                                                       "score": 80.0}]
    summary = summarize(results + extra)
    assert summary["helmet"]["narrativeqa_judge"] == 50.0 and summary["helmet"]["longqa"] == pytest.approx(50.0)
    assert "| NarrativeQA judge |" in to_markdown(summary) and "LongQA avg" in to_markdown(summary)
    assert "HELMET NarrativeQA F1" in compare(summary, summary) and "HELMET LongQA avg" in compare(summary, summary)


def test_eval_run_puts_the_judge_score_in_the_result(tokenizer, splits, tmp_path, scripted_backend):
    """helmet.judge=true: `longpo eval` judges the NarrativeQA predictions once (suites.helmet.judge_narrativeqa) and puts
    fluency x correctness x 100 / 3 into the result's extra['judge']; other tasks are left alone."""
    from longpo.eval.config import Config, HelmetConfig
    from longpo.eval.runner import evaluate
    from longpo.eval.suites.helmet import judge_narrativeqa

    (test_path, train_path), _, _ = splits
    task = NarrativeQATask(test_path, PromptFormat(tokenizer, chat_template=True), train_path, shots=2,
                           min_tokens=20, max_tokens=60)
    out = tmp_path / "out"
    results = evaluate(scripted_backend(tokenizer, lambda p: "the old man"), [task], out, progress=False)
    other = {"suite": "helmet", "task": "infbench_qa", "n": 1, "score": 1.0}
    server = LoopbackServer(lambda payload, headers: (200, {"choices": [{"message": {
        "content": '{"fluency": 1, "correctness": 2}'}}]}))
    try:
        cfg = Config(model="m", helmet=HelmetConfig(judge=True), judge=JudgeConfig(
            base_url=server.url, api_key_env="LONGPO_NO_KEY", concurrency=1, backoff=0.01))
        judge_narrativeqa(cfg, task.fmt, results + [other], out)
    finally:
        server.close()
    assert results[0]["extra"]["judge"] == pytest.approx(200 / 3) and "extra" not in other
    assert len((out / "helmet_narrativeqa_judge.jsonl").read_text().splitlines()) == 3

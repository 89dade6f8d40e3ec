"""HELMET long-document QA on InfiniteBench (En.QA, En.MC) against princeton-nlp/HELMET data.py (load_infbench,
truncate_llama2, filter_length, default_post_process, choice_post_process) and utils.py (calculate_metrics).
Token limits are scaled down (HELMET: 65536 / 130862 Llama-2 tokens) so the fixture stays tiny."""

import json

import pytest

from longpo.eval.fitting import PromptFormat
from longpo.eval.tasks.helmet import hf_shuffle_order
from longpo.eval.tasks.helmet_longqa import POSTFIX, LongQATask


@pytest.fixture
def books(tmp_path):
    words = "the old man walked along the river to the city and spoke of the sea".split()
    rows = [{"id": i, "context": " ".join(words[j % len(words)] for j in range(n)), "input": f"Who walked {i}?",
             "answer": [f"Paris {i}"], "options": [f"Rome {i}", f"Paris {i}", f"Oslo {i}", f"Bern {i}"]}
            for i, n in enumerate([40, 5, 200, 60])]
    path = tmp_path / "longbook_choice_eng.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_choice_prompt_demos_filter_and_truncation(tokenizer, books):
    """load_infbench: options 'A. ..\\nB. ..', answers [letter, 'letter. text']; demos = the other rows in
    shuffle(seed=42) order, first 2, '[story text]\\nQuestion: ..\\nOptions:\\n..\\nAnswer: letter'; contexts under
    min_tokens dropped, over max_tokens cut at the end offset of token max - len(postfix) + postfix; then
    shuffle(seed).select(n); base prompt = user + '\\n\\nAnswer:'."""
    path, rows = books
    fmt = PromptFormat(tokenizer, chat_template=False)
    task = LongQATask("infbench_choice", path, fmt, shots=2, min_tokens=20, max_tokens=60)
    kept = [0, 2, 3]  # row 1 (5 words) is under 20 tokens
    assert [task.item(i)["id"] for i in range(3)] == [str(kept[i]) for i in hf_shuffle_order(3, 42)]
    long = next(task.item(i) for i in range(3) if task.item(i)["id"] == "2")
    enc = tokenizer(rows[2]["context"], return_offsets_mapping=True)
    cut = 60 - len(tokenizer(POSTFIX)["input_ids"])
    assert long["context"] == rows[2]["context"][:enc["offset_mapping"][cut][1]] + POSTFIX
    others = [r for r in rows if r["id"] != 2]
    demos = "\n\n".join(f"[story text]\nQuestion: {d['input']}\nOptions:\nA. Rome {d['id']}\nB. Paris {d['id']}\n"
                        f"C. Oslo {d['id']}\nD. Bern {d['id']}\nAnswer: B"
                        for d in [others[i] for i in hf_shuffle_order(3, 42)[:2]])
    i = [task.item(k)["id"] for k in range(3)].index("2")
    assert task.get_example(i)["prompt"] == (
        "<s>You are given a story and a question with multiple choices. Choose the best answer from the options "
        "provided. Only one of the following options is correct, output the answer using one single letter (A, B, C, "
        f"or D). Don't say anything else.\n\nFor example:\n\n{demos}\n\nNow, read the following story:\n\n"
        f"{long['context']}\n\nQuestion: Who walked 2?\nOptions:\nA. Rome 2\nB. Paris 2\nC. Oslo 2\nD. Bern 2"
        "\n\nAnswer:")
    assert task.max_new_tokens == 10


def test_choice_and_qa_scores(tokenizer, books):
    """choice_post_process: exact match of output or parse_output(output) with 'B' or 'B. Paris 2', and 100 when
    'b. paris 2' is inside the lower-cased output; QA: ROUGE-L F1 (stemmer), max over output / parsed."""
    path, _ = books
    fmt = PromptFormat(tokenizer, chat_template=False)
    mc = LongQATask("infbench_choice", path, fmt, shots=0, min_tokens=20, max_tokens=60)
    ex = {"answers": ["B", "B. Paris 2"]}
    assert mc.score(ex, " B") == 100.0                           # 'Answer: B' parsed to 'B'
    assert mc.score(ex, " (B)\nmore") == 100.0                   # parse_output takes the first line; '(b)' -> 'b'
    assert mc.score(ex, " I pick b. paris 2 here") == 100.0      # 'letter. text' inside the output
    assert mc.score(ex, " C") == 0.0 and mc.score(ex, " B and C") == 0.0
    qa = LongQATask("infbench_qa", path, fmt, shots=0, min_tokens=20, max_tokens=60)
    ex = {"answers": ["the old man"]}
    assert qa.score(ex, " the old man\nwalked far away") == 100.0   # the parsed first line matches exactly
    # parsed 'old men' against 'the old man': the LCS is 'old' ('men' stems to 'men'), P 1/2, R 1/3, F 0.4; the raw
    # 'Answer: old men' gives 1/3 - the larger counts
    assert qa.score(ex, " old men") == pytest.approx(40.0)
    assert qa.score({"answers": ["he walked"]}, " he walking") == 100.0   # Porter stems: walk, walk


def test_config_and_report_columns(tokenizer, books, tmp_path, scripted_backend):
    """helmet.data_dir finds infinitebench/longbook_{qa,choice}_eng.jsonl; the HELMET table gets InfBench QA / MC."""
    from longpo.eval.config import Config, HelmetConfig, InfiniteBenchConfig, RulerConfig
    from longpo.eval.report import compare, summarize, to_markdown
    from longpo.eval.run import build_tasks
    from longpo.eval.runner import evaluate

    path, _ = books
    (tmp_path / "h" / "infinitebench").mkdir(parents=True)
    (tmp_path / "h" / "infinitebench" / "longbook_choice_eng.jsonl").write_text(path.read_text())
    cfg = Config(model="m", ruler=RulerConfig(enabled=False), infinitebench=InfiniteBenchConfig(enabled=False),
                 helmet=HelmetConfig(data_dir=str(tmp_path / "h"), tasks=["infbench_choice", "infbench_qa"]))
    tasks, _, skipped = build_tasks(cfg, PromptFormat(tokenizer))
    assert tasks == [] and [s["task"] for s in skipped] == ["helmet/infbench_choice", "helmet/infbench_qa"]
    assert "holds the 65536 tokens" in skipped[0]["reason"] and skipped[1]["missing"]  # too short; no file
    fmt = PromptFormat(tokenizer, chat_template=False)
    tasks = [LongQATask("infbench_choice", path, fmt, shots=0, min_tokens=20, max_tokens=60)]
    summary = summarize(evaluate(scripted_backend(tokenizer, lambda p: " B"), tasks, tmp_path / "out", progress=False))
    assert summary["helmet"] == {"infbench_choice": 100.0}
    assert "| InfBench MC |" in to_markdown(summary) and "HELMET InfBench MC" in compare(summary, summary)

"""HELMET recall (JSON KV) and RAG against princeton-nlp/HELMET: data.py (load_json_kv, load_qa, post_process),
model_utils.py (tokenize), eval.py (the answer prefix put back for completions) and utils.py (parse_output,
substring_exact_match_score). Fixtures are tiny files in HELMET's released formats, written here."""

import hashlib
import json
import random

import pytest

from longpo.eval.fitting import PromptFormat
from longpo.eval.report import compare, summarize, to_markdown
from longpo.eval.runner import evaluate
from longpo.eval.tasks.helmet import (
    HelmetTask,
    helmet_score,
    hf_shuffle_order,
    parse_output,
    substring_exact_match,
)


@pytest.mark.parametrize("output,prefix,parsed", [
    ("Answer: Paris\nMore text", "Answer:", "Paris"),
    ("answer: answer: Paris", "Answer:", "Paris"),                   # any case; a repeated prefix dropped once more
    ("Paris is the capital.\nAnswer: no", "Answer:", "no"),         # the prefix wins over the first line
    ("  Paris  \nRome", "Answer:", "Paris"),                         # no prefix: the first line
    ("Corresponding value: 1234-abcd", "corresponding value:", "1234-abcd"),
    ("", "Answer:", ""),
])
def test_parse_output(output, prefix, parsed):
    """utils.py parse_output: (?:prefix)(.*)(?:\\n|$) ignoring case, else (?:^)(.*)(?:\\n|$); strip; lstrip prefix."""
    assert parse_output(output, prefix) == parsed


def test_substring_exact_match_and_the_max_with_the_parsed_answer():
    """substring_exact_match_score: normalize_answer(gt) in normalize_answer(pred), best over answers; data.py
    takes max(raw, parsed). 'The Eiffel-Tower' normalises to 'eiffeltower', so 'Eiffel Tower' is not inside."""
    assert substring_exact_match("It is in PARIS, France.", ["paris"]) == 100.0
    assert substring_exact_match("The Eiffel-Tower", ["Eiffel Tower"]) == 0.0
    assert substring_exact_match("the answer", ["an answer"]) == 100.0   # articles dropped on both sides
    assert substring_exact_match("Rome", ["Paris", "rome"]) == 100.0
    assert helmet_score("Answer: London", ["Paris"], "Answer:") == 0.0
    assert helmet_score("Answer: the Paris", ["paris"], "Answer:") == 100.0


def test_hf_shuffle_order_is_datasets_shuffle():
    """datasets' Dataset.shuffle(seed) reorders rows by numpy default_rng(seed).permutation(n)."""
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"i": list(range(17))})
    for seed in (42, 123456789):
        assert ds.shuffle(seed=seed)["i"] == hf_shuffle_order(17, seed)


@pytest.fixture
def kv_file(tmp_path):
    rows = [{"id": i, "context": json.dumps({f"k{i}-{j}": f"v{i}-{j}" for j in range(3)}), "question": f"k{i}-1",
             "answer": f"v{i}-1", "demos": [[f"d{i}a", f"w{i}a"], [f"d{i}b", f"w{i}b"], [f"d{i}c", f"w{i}c"]],
             "num_kvs": 3} for i in range(6)]
    path = tmp_path / "test_k1800_dep6.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_json_kv_prompt_samples_and_score(tokenizer, kv_file):
    """load_json_kv: shuffle(seed=42).select(range(n)); demos 'Key: k\\nCorresponding value: v' joined by blank
    lines; base prompt = user_template + '\\n' + 'Corresponding value:' after BOS; the output is scored with the
    prefix put back (eval.py) under post_process's max(raw, parse_output(.., 'corresponding value:'))."""
    fmt = PromptFormat(tokenizer, chat_template=False)
    task = HelmetTask("json_kv", kv_file, fmt, num_samples=4, shots=2)
    order = hf_shuffle_order(6, 42)[:4]
    assert [task.get_example(i)["id"] for i in range(4)] == [str(i) for i in order]
    i = order[0]
    context = json.dumps({f"k{i}-{j}": f"v{i}-{j}" for j in range(3)})
    assert task.get_example(0)["prompt"] == (
        f"<s>{context}\n\nExtract the value corresponding to the specified key in the JSON object below.\n\n"
        f"Key: d{i}a\nCorresponding value: w{i}a\n\nKey: d{i}b\nCorresponding value: w{i}b\n\nKey: k{i}-1\n"
        "Corresponding value:")
    ex = task.get_example(0)
    assert task.max_new_tokens == 100
    assert task.score(ex, f" v{i}-1\nKey: x") == 100.0
    assert task.score(ex, " v9-9") == 0.0


@pytest.fixture
def kilt(tmp_path):
    def row(q, n, with_id=True):
        r = {"question": f"Where is item {q}?", "answers": [f"City{q}", f"Town{q}"],
             "ctxs": [{"title": f"T{q}-{j}", "text": f"Item {q} text {j}.", "has_answer": j == 0} for j in range(n)]}
        return {"id": f"q{q}", **r} if with_id else r
    test, demo = tmp_path / "nq-dev.jsonl", tmp_path / "nq-train.jsonl"
    test.write_text("".join(json.dumps(row(q, 3)) + "\n" for q in range(5)))
    demos = [row(100 + d, 2) for d in range(4)] + [row(100, 2)]  # a duplicate id: drop_duplicates keeps one
    demo.write_text("".join(json.dumps(r) + "\n" for r in demos))
    return test, demo, demos


def test_rag_samples_demos_and_prompt(tokenizer, kilt):
    """load_qa: keys = random.sample(sorted(ids), n) after random.seed(42), rows kept in file order; demos per
    question = demo file shuffled with seed sha256(id) % 2**31, de-duplicated by id, first 2; passages
    'Document (Title: t): text'; demo '{documents}\\n\\nQuestion: q\\nAnswer: answers[0]'."""
    test, demo, demos = kilt
    fmt = PromptFormat(tokenizer, chat_template=False)
    task = HelmetTask("nq", test, fmt, demo, num_samples=3, shots=2)
    picked = set(random.Random(42).sample(sorted(f"q{q}" for q in range(5)), 3))
    ids = [task.get_example(i)["id"] for i in range(task.num_examples())]
    assert ids == [f"q{q}" for q in range(5) if f"q{q}" in picked]
    qid = ids[0]
    h = int(hashlib.sha256(qid.encode()).hexdigest(), 16) % 2**31
    chosen, seen = [], set()
    for k in hf_shuffle_order(len(demos), h):
        if demos[k]["id"] not in seen:
            seen.add(demos[k]["id"])
            chosen.append(demos[k])
    demo_text = "\n\n".join("\n\n".join(f"Document (Title: {c['title']}): {c['text']}" for c in d["ctxs"])
                            + f"\n\nQuestion: {d['question']}\nAnswer: {d['answers'][0]}" for d in chosen[:2])
    q = int(qid[1:])
    context = "\n\n".join(f"Document (Title: T{q}-{j}): Item {q} text {j}." for j in range(3))
    assert task.get_example(0)["prompt"] == (
        "<s>Use the given documents to write a concise and short answer to the question. Write your answer in the "
        f"following format:\nAnswer: [answer]\n\n{demo_text}\n\n{context}\n\nQuestion: Where is item {q}?\nAnswer:")
    ex = task.get_example(0)
    assert task.score(ex, f" Town{q}\nQuestion: City{q}") == 100.0
    assert task.score(ex, f" no\nCity{q}") == 0.0           # stop_new_line: after the newline nothing counts
    chat = HelmetTask("nq", test, PromptFormat(tokenizer), demo, num_samples=3, shots=2).get_example(0)["prompt"]
    assert chat.endswith(f"Question: Where is item {q}?<|end|>\n<|assistant|>\n") and "<|system|>" not in chat


def test_rag_truncates_the_end_of_the_context(tokenizer, kilt):
    """model_utils.tokenize: over max_length - generation_max_length, the context loses its last
    `excess` tokens (cut at offset_mapping[-excess][0]); the demos and question stay."""
    test, demo, _ = kilt
    fmt = PromptFormat(tokenizer, chat_template=False)
    full = HelmetTask("nq", test, fmt, demo, num_samples=1, shots=0).get_example(0)
    budget = full["prompt_tokens"] - 5
    cut = HelmetTask("nq", test, fmt, demo, max_length=budget + 20, num_samples=1, shots=0).get_example(0)
    assert cut["truncated"] and cut["prompt"].endswith(f"\n\nQuestion: Where is item {cut['id'][1:]}?\nAnswer:")
    assert cut["prompt_tokens"] <= budget + 1 and cut["prompt_tokens"] < full["prompt_tokens"]


def test_report_has_helmet_columns(tmp_path, tokenizer, kv_file, kilt, scripted_backend):
    test, demo, _ = kilt
    fmt = PromptFormat(tokenizer, chat_template=False)
    tasks = [HelmetTask("json_kv", kv_file, fmt, num_samples=2), HelmetTask("nq", test, fmt, demo, num_samples=2)]
    answers = {tasks[0].get_example(i)["prompt"]: " " + tasks[0].get_example(i)["answers"][0] for i in range(2)}
    backend = scripted_backend(tokenizer, lambda p: answers.get(p, " unknown"))
    summary = summarize(evaluate(backend, tasks, tmp_path, progress=False))
    assert summary["helmet"] == {"json_kv": 100.0, "nq": 0.0, "recall": 100.0, "rag": 0.0}
    md = to_markdown(summary)
    assert "## HELMET\n\n| JSON KV | NQ | RAG avg |\n|---|---|---|\n| 100.0 | 0.0 | 0.0 |" in md
    assert "HELMET JSON KV" in compare(summary, summary)


def test_config_builds_the_given_tasks_only(tokenizer, kv_file, kilt, tmp_path):
    """`longpo eval` runs a HELMET task or LongBench v2 only when its file is given; the rest are not listed."""
    from longpo.eval.config import Config, HelmetConfig, InfiniteBenchConfig, LongBenchV2Config, RulerConfig
    from longpo.eval.run import build_tasks

    test, demo, _ = kilt
    lb2 = tmp_path / "data.json"
    lb2.write_text(json.dumps([{"_id": "a", "domain": "d", "sub_domain": "s", "difficulty": "easy", "length": "short",
                                "question": "q", "choice_A": "1", "choice_B": "2", "choice_C": "3", "choice_D": "4",
                                "answer": "A", "context": "c"}]))
    cfg = Config(model="m", ruler=RulerConfig(enabled=False), infinitebench=InfiniteBenchConfig(enabled=False),
                 helmet=HelmetConfig(files={"json_kv": str(kv_file), "nq": str(test)}, demos={"nq": str(demo)}),
                 longbench_v2=LongBenchV2Config(data=str(lb2)))
    tasks, sweep, skipped = build_tasks(cfg, PromptFormat(tokenizer))
    assert [t.name for t in tasks] == ["helmet/json_kv", "helmet/nq", "longbench_v2/0shot"] and not skipped
    with pytest.raises(ValueError, match="helmet.tasks: unknown"):
        HelmetConfig(tasks=["qasper"])  # not a HELMET task here

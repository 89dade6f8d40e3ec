"""HELMET re-rank (MS MARCO, NDCG@10) and many-shot ICL against princeton-nlp/HELMET: data.py (load_msmarco_rerank,
load_icl, balance_labels), utils.py (parse_rankings, calculate_retrieval_metrics via pytrec_eval, parse_output) and
trec_eval's m_ndcg_cut.c / form_res_rels.c, which pytrec_eval runs. Fixtures are tiny files written here."""

import hashlib
import json
import math
import random

import pytest

from longpo.eval.fitting import PromptFormat
from longpo.eval.report import compare, summarize, to_markdown
from longpo.eval.runner import evaluate
from longpo.eval.tasks.helmet import hf_shuffle_order
from longpo.eval.tasks.helmet_icl import ICLTask, balance_labels
from longpo.eval.tasks.helmet_rerank import RerankTask, ndcg_at_k, parse_rankings


@pytest.mark.parametrize("output,parsed", [
    ("Ranking: [ID: 3] > [ID: 1] > [ID: 2]", {"3": 3, "1": 2, "2": 1}),   # brackets, colons and "id" dropped
    ("Ranking: 12 > 7 > 12 > 5", {"12": 4, "7": 3, "5": 1}),              # a repeat keeps its first score
    ("Ranking: 4 > 2. Then 1 > 0 > 9 > 8", {"1": 4, "0": 3, "9": 2, "8": 1}),  # the longest run wins
    ("Ranking: 4 > 2 and 1 > 0", {"4": 2, "2": 1}),                     # equal length: the first
    ("Ranking: none", {"ranking none": 1}),                              # no number: the whole text, one 'id'
])
def test_parse_rankings(output, parsed):
    assert parse_rankings(output) == parsed


def test_ndcg_at_10_as_trec_eval():
    """trec_eval ndcg_cut: DCG@k = sum_{i<=k} rel_i / log2(i + 1) over the run sorted by score (ties: doc id
    descending by strcmp), IDCG@k over every judged document's relevance sorted descending, unjudged = 0.

    qrels a:3 b:2 c:0 d:1, run b > a > x > d:  (2/1 + 3/log2 3 + 1/log2 5) / (3 + 2/log2 3 + 1/log2 4) = 0.90793...
    """
    qrels = {"a": 3, "b": 2, "c": 0, "d": 1}
    run = {"b": 4, "a": 3, "x": 2, "d": 1}
    expected = (2 + 3 / math.log2(3) + 1 / math.log2(5)) / (3 + 2 / math.log2(3) + 1 / 2)
    assert ndcg_at_k(run, qrels, 10) == pytest.approx(expected, abs=1e-12)
    assert round(expected, 5) == 0.90794
    # cut at 10: the one relevant document at rank 11 counts nothing; nothing relevant: 0
    deep = {str(i): 20 - i for i in range(11)}
    assert ndcg_at_k(deep, {"10": 1}, 10) == 0.0 and ndcg_at_k(deep, {"10": 1}, 11) == pytest.approx(1 / math.log2(12))
    assert ndcg_at_k(run, {"a": 0}, 10) == 0.0
    # judged but not retrieved documents stay in the ideal: 1 / (1 + 1/log2 3)
    assert ndcg_at_k({"a": 1}, {"a": 1, "b": 1}, 10) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    # ties by id descending as strcmp: "9" > "10", so "9" is ranked first and "10" second
    assert ndcg_at_k({"10": 1.0, "9": 1.0}, {"10": 1}, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k({"10": 1.0, "9": 1.0}, {"9": 1}, 10) == 1.0


@pytest.fixture
def msmarco(tmp_path):
    def row(q, n=12, title=False):
        ctxs = [{"id": str(j), "text": f"Passage {q}-{j}.", "label": (3 if j == 5 else 1 if j in (2, 9) else 0),
                 **({"title": f"T{j}"} if title else {})} for j in range(n)]
        return {"qid": f"q{q}", "query": f"what is {q}?", "ctxs": ctxs}
    test, demo = tmp_path / "test_reranking_data_k12_dep3.jsonl", tmp_path / "test_reranking_data_k10_dep3.jsonl"
    test.write_text("".join(json.dumps(row(q)) + "\n" for q in range(5)))
    demos = [row(q, 3) for q in (0, 1, 2, 3, 4, 100, 101, 102, 103)]
    demo.write_text("".join(json.dumps(r) + "\n" for r in demos))
    return test, demo, demos


def test_rerank_samples_demos_prompt_and_score(tokenizer, msmarco):
    """load_msmarco_rerank: qids = random.sample(sorted(qids), 3) after random.seed(42), file order kept; the demo
    file (9 rows) holds more than 2 x 3, so every sampled qid leaves it; per query it is shuffled with seed
    sha256(qid) % 2**31, de-duplicated, the first 2, each '...\\n\\nQuery: q\\nRanking: ids by label'; the base
    prompt ends in '\\nRanking:', which the output gets back before parse_rankings; NDCG@10 rounded to 5
    decimals, x 100."""
    test, demo, demos = msmarco
    task = RerankTask("msmarco", test, PromptFormat(tokenizer, chat_template=False), demo, num_samples=3, shots=2)
    picked = set(random.Random(42).sample(sorted(f"q{q}" for q in range(5)), 3))
    ids = [task.get_example(i)["id"] for i in range(task.num_examples())]
    assert ids == [f"q{q}" for q in range(5) if f"q{q}" in picked]
    pool = [d for d in demos if d["qid"] not in picked]
    h = int(hashlib.sha256(ids[0].encode()).hexdigest(), 16) % 2**31
    chosen = [pool[k] for k in hf_shuffle_order(len(pool), h)][:2]
    demo_text = "".join("\n\n".join(f"[ID: {c['id']}] Document: {c['text']}" for c in d["ctxs"])
                        + f"\n\nQuery: {d['query']}\nRanking: " + " > ".join(
                            c["id"] for c in sorted(d["ctxs"], key=lambda c: c["label"], reverse=True)) + "\n\n"
                        for d in chosen)
    q = ids[0][1:]
    context = "\n\n".join(f"[ID: {j}] Document: Passage {q}-{j}." for j in range(12))
    ex = task.get_example(0)
    assert ex["prompt"] == (
        "<s>You are provided with a list of documents, each indicated by their ID. Rank each document based on their "
        "relevance to the question in descending order from most relelvant to least relevant texts. Include all "
        "documents in the rankings. Write your answer using the unique IDs, with the following format:\nRanking: "
        f"ID3 > ID1 > ID2\n\n{demo_text}{context}\n\nQuery: what is {q}?\nRanking:")
    assert task.max_new_tokens == 200 and task.metadata["metric"] == "NDCG@10"
    assert task.score(ex, " [5] > [2] > [9] > [0]") == 100.0
    assert task.score(ex, " 9 > 2 > 5\n5 > 2 > 9 > 1 > 0") == pytest.approx(
        100 * round((1 + 1 / math.log2(3) + 3 / 2) / (3 + 1 / math.log2(3) + 1 / 2), 5))  # cut at the newline
    assert task.score(ex, " I cannot rank these.") == 0.0


def test_balance_labels_rounds():
    """balance_labels: num_rounds = ceil(shots / labels); each round one row per label, shuffled; a label with
    fewer rows than rounds is drawn again (replacement), as HELMET's `num_rounds % len(samples)` start allows."""
    rows = [{"t": f"r{i}", "y": y} for i, y in enumerate([0, 0, 1, 1, 1, 2])]
    out = balance_labels(rows, 6, 7, "y")
    assert sorted(r["y"] for r in out[:3]) == [0, 1, 2] and sorted(r["y"] for r in out[3:]) == [0, 1, 2]
    assert [r["t"] for r in out if r["y"] == 2] == ["r5", "r5"]
    assert len({r["t"] for r in out if r["y"] == 0}) == 2   # 2 % 2 == 0 first, then a sample of both
    assert sorted(r["y"] for r in balance_labels(rows, 4, 7, "y")[:3]) == [0, 1, 2]
    assert balance_labels(rows, 4, 7, "y") == balance_labels(rows, 4, 7, "y")


@pytest.fixture
def trec(tmp_path):
    rng = random.Random(0)
    train = [{"text": f"question {i} {rng.choice(['who', 'what', 'where'])}", "coarse_label": i % 6,
              "fine_label": i % 50} for i in range(30)]
    test = [{"text": f"test question {i}", "coarse_label": i % 6, "fine_label": i % 50} for i in range(8)]
    paths = tmp_path / "train.jsonl", tmp_path / "test.json"
    paths[0].write_text("".join(json.dumps(r) + "\n" for r in train))
    paths[1].write_text(json.dumps({"data": test}))
    return paths, train, test


def test_icl_samples_prompt_and_score(tokenizer, trec):
    """load_icl (*shot_balance): 8 test rows > 4 samples, so the split is shuffled (seed 42) and balanced to 4;
    per text, demos = balance_labels(train, 12, s) and the label ids mapped by random.seed(s) + shuffle, s =
    (sha256(text) + 42) % 2**31; the base prompt ends in '\\nlabel:'; score: exact match of parse_output of
    'label:' + output with the mapped label."""
    (train_path, test_path), train, test = trec
    task = ICLTask("trec_coarse", test_path, PromptFormat(tokenizer, chat_template=False), train_path,
                   num_samples=4, shots=12)
    shuffled = [test[i] for i in hf_shuffle_order(8, 42)]
    sample = balance_labels(shuffled, 4, 42, "coarse_label")
    assert task.num_examples() == 4 and [task.item(i)["question"] for i in range(4)] == [r["text"] for r in sample]
    row = sample[0]
    s = (int(hashlib.sha256(row["text"].encode()).hexdigest(), 16) + 42) % 2**31
    mapping = list(range(6))
    random.seed(s)
    random.shuffle(mapping)
    demos = balance_labels(train, 12, s, "coarse_label")
    context = "\n\n".join(f"{d['text']}\nlabel: {mapping[d['coarse_label']]}" for d in demos)
    ex = task.get_example(0)
    assert ex["prompt"] == ('<s>Use the provided mapping from the text to label to assign a label to the text. Only '
                            f'output "label: {{label}}" and nothing else. \n\n{context}\n\n{row["text"]}\nlabel:')
    answer = str(mapping[row["coarse_label"]])
    assert ex["answers"] == [answer] and task.max_new_tokens == 20
    assert task.score(ex, f" {answer}\nlabel: 99") == 100.0
    assert task.score(ex, f" label: {answer}") == 100.0                 # a repeated prefix is dropped
    assert task.score(ex, f" {answer}0") == 0.0 and task.score(ex, f"\n{answer}") == 0.0
    assert ICLTask("trec_coarse", test_path, PromptFormat(tokenizer), train_path, num_samples=-1,
                   shots=6).num_examples() == 8


def test_report_has_rerank_and_icl_columns(tmp_path, tokenizer, msmarco, trec, scripted_backend):
    test, demo, _ = msmarco
    (train_path, test_path), _, _ = trec
    fmt = PromptFormat(tokenizer, chat_template=False)
    tasks = [RerankTask("msmarco", test, fmt, demo, num_samples=2, shots=0),
             ICLTask("trec_coarse", test_path, fmt, train_path, num_samples=2, shots=6),
             ICLTask("trec_fine", test_path, fmt, train_path, num_samples=2, shots=6)]
    icl = {tasks[1].get_example(i)["prompt"]: " " + tasks[1].get_example(i)["answers"][0] for i in range(2)}
    backend = scripted_backend(tokenizer, lambda p: icl.get(p, " 5 > 2 > 9"))
    summary = summarize(evaluate(backend, tasks, tmp_path, progress=False))
    assert summary["helmet"] == {"msmarco": 100.0, "trec_coarse": 100.0, "trec_fine": 0.0, "icl": 50.0,
                                 "rerank": 100.0}
    md = to_markdown(summary)
    assert ("## HELMET\n\n| MS MARCO | TREC Coarse | TREC Fine | ICL avg |\n|---|---|---|---|\n"
            "| 100.0 | 100.0 | 0.0 | 50.0 |") in md and "NDCG@10" in md
    table = compare(summary, summary)
    assert "HELMET MS MARCO" in table and "HELMET ICL avg" in table


def test_config_finds_rerank_and_icl_files_under_data_dir(tokenizer, msmarco, trec, tmp_path):
    """helmet.data_dir: msmarco/ as HELMET's download script unpacks it, icl/<dataset>/{train,test}.jsonl written
    locally; ICL shots per task from helmet.icl_shots, else HELMET's 131072-token counts."""
    from longpo.eval.config import Config, HelmetConfig, InfiniteBenchConfig, RulerConfig
    from longpo.eval.run import build_tasks

    test, demo, _ = msmarco
    (train_path, test_path), _, test_rows = trec
    root = tmp_path / "helmet"
    (root / "msmarco").mkdir(parents=True)
    (root / "icl" / "trec").mkdir(parents=True)
    (root / "msmarco" / "test_reranking_data_k1000_dep3.jsonl").write_text(test.read_text())
    (root / "msmarco" / "test_reranking_data_k10_dep3.jsonl").write_text(demo.read_text())
    (root / "icl" / "trec" / "train.jsonl").write_text(train_path.read_text())
    (root / "icl" / "trec" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    cfg = Config(model="m", ruler=RulerConfig(enabled=False), infinitebench=InfiniteBenchConfig(enabled=False),
                 helmet=HelmetConfig(data_dir=str(root), tasks=["msmarco", "trec_coarse", "trec_fine", "nlu"],
                                     icl_shots={"trec_fine": 12}, icl_num_samples=4))
    tasks, _, skipped = build_tasks(cfg, PromptFormat(tokenizer))
    assert [t.name for t in tasks] == ["helmet/msmarco", "helmet/trec_coarse", "helmet/trec_fine"]
    assert [type(t).__name__ for t in tasks] == ["RerankTask", "ICLTask", "ICLTask"]
    assert (tasks[1].shots, tasks[2].shots, tasks[2].num_examples()) == (6600, 12, 4)
    assert [s["task"] for s in skipped] == ["helmet/nlu"] and skipped[0]["missing"]

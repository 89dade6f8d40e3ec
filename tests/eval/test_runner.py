"""Runner (resume after a kill, torn tail, changed prompts), InfiniteBench tasks, reports and compare."""

import json
import re

import pytest

from longpo.eval.haystack import DataMissing
from longpo.eval.report import compare, summarize, to_markdown, write_summary
from longpo.eval.runner import evaluate, predictions_path
from longpo.eval.tasks.infinitebench import InfiniteBenchTask
from longpo.eval.tasks.ruler import RulerTask


def niah_oracle(prompt: str) -> str:
    """Answers NIAH perfectly by reading the needle of the queried key."""
    key = re.search(r"special magic number for (\S+) mentioned in the provided text\?", prompt).group(1)
    return re.search(rf"for {re.escape(key)} is: (\d+)\.", prompt).group(1)


def _tasks(fmt, n=5):
    return [RulerTask("niah_single_1", 1024, fmt, num_samples=n), RulerTask("niah_multikey_2", 1024, fmt, num_samples=n)]


def test_runner_scores_and_resumes_after_a_kill(tmp_path, fmt, tokenizer, scripted_backend):
    backend = scripted_backend(tokenizer, niah_oracle, fail_after=7)
    with pytest.raises(KeyboardInterrupt):
        evaluate(backend, _tasks(fmt), tmp_path, batch_size=2, progress=False)
    first = predictions_path(tmp_path, "ruler/1024/niah_single_1")
    second = predictions_path(tmp_path, "ruler/1024/niah_multikey_2")
    assert len(first.read_text().splitlines()) == 5 and len(second.read_text().splitlines()) == 2
    # a kill in the middle of a write leaves a torn last line: it is dropped and redone
    with open(second, "a") as f:
        f.write('{"index": 2, "predic')

    resumed = scripted_backend(tokenizer, niah_oracle)
    results = evaluate(resumed, _tasks(fmt), tmp_path, batch_size=2, progress=False)
    assert len(resumed.prompts) == 3, "only the 3 missing examples of the second task are generated"
    assert [r["n"] for r in results] == [5, 5] and [r["score"] for r in results] == [100.0, 100.0]
    rows = [json.loads(x) for x in second.read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == [0, 1, 2, 3, 4]
    assert set(resumed.max_new_tokens) == {128}

    # an uninterrupted run gives the same predictions
    fresh = tmp_path / "fresh"
    evaluate(scripted_backend(tokenizer, niah_oracle), _tasks(fmt), fresh, batch_size=3, progress=False)
    key = lambda p: sorted((r["index"], r["prediction"]) for r in map(json.loads, p.read_text().splitlines()))  # noqa: E731
    assert key(second) == key(predictions_path(fresh, "ruler/1024/niah_multikey_2"))


def test_runner_refuses_predictions_from_other_prompts(tmp_path, fmt, tokenizer, scripted_backend):
    backend = scripted_backend(tokenizer, niah_oracle, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate(backend, _tasks(fmt)[:1], tmp_path, batch_size=1, progress=False)
    other_seed = [RulerTask("niah_single_1", 1024, fmt, num_samples=5, seed=1)]
    with pytest.raises(ValueError, match="different prompts"):
        evaluate(scripted_backend(tokenizer, niah_oracle), other_seed, tmp_path, progress=False)


def test_infinitebench_tasks(tmp_path, data_dir, fmt, tokenizer, scripted_backend):
    ib = data_dir / "infinitebench"
    tasks = [InfiniteBenchTask("en_sum", ib / "longbook_sum_eng.jsonl", fmt, max_length=1800),
             InfiniteBenchTask("en_qa", ib / "longbook_qa_eng.jsonl", fmt, max_length=600),
             InfiniteBenchTask("en_mc", ib / "longbook_choice_eng.jsonl", fmt, max_length=600, num_samples=2)]
    assert [t.max_new_tokens for t in tasks] == [1200, 40, 40]
    ex = tasks[1].get_example(1)
    # official truncation: the filled prompt is cut to 600 tokens (no room kept for the answer), then
    # the chat template with InfiniteBench's system prompt goes around it
    assert ex["truncated"] and 600 < ex["prompt_tokens"] < 600 + 40
    assert ex["prompt"].startswith("<s><|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\n")
    book = json.loads((ib / "longbook_qa_eng.jsonl").read_text().splitlines()[1])["context"]
    assert book[:40] in ex["prompt"] and book[-40:] in ex["prompt"]  # first and last parts kept
    assert "Question: Who is hero 1?\n\nBe very concise." in ex["prompt"]
    mc = tasks[2].get_example(0)
    assert mc["gold"] == "B" and "B. blue\nC. green" in mc["prompt"]

    # "The answer is B." reads as B under the official parser ("(B)" would not: see test_official_scoring)
    answers = {"Summarize": "A summary of book 0.", "hero": "Hero 1", "Which option": "The answer is B."}
    backend = scripted_backend(tokenizer, lambda p: next(v for k, v in answers.items() if k in p))
    results = {r["task"]: r for r in evaluate(backend, tasks, tmp_path, progress=False)}
    assert results["en_mc"]["score"] == 100.0 and results["en_mc"]["n"] == 2
    assert results["en_mc"]["extra"] == {"lenient": 100.0}
    # "Hero 1" vs "Hero 0" / "Hero 1" / "Hero 2": token F1 0.5, 1, 0.5
    assert results["en_qa"]["score"] == pytest.approx(200 / 3)
    # "a summary of book 0" vs "... book 1": LCS 4 of 5 tokens -> F 0.8; exact on example 0
    assert results["en_sum"]["score"] == pytest.approx((100 + 80 + 80) / 3)


def test_infinitebench_bad_files(tmp_path, fmt):
    with pytest.raises(DataMissing, match="does not exist"):
        InfiniteBenchTask("en_qa", tmp_path / "missing.jsonl", fmt)
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"id": 0, "context": "x", "input": "q", "answer": ["a"]}\n{"id": 1, "context": \n')
    with pytest.raises(ValueError, match=r"qa.jsonl:2: invalid JSON"):
        InfiniteBenchTask("en_qa", bad, fmt)
    bad.write_text('{"id": 0, "context": "x", "answer": ["a"]}\n')
    with pytest.raises(ValueError, match=r"qa.jsonl:1: missing field 'input'"):
        InfiniteBenchTask("en_qa", bad, fmt)
    bad.write_text('\n{"id": 0, "context": "x", "input": "q", "answer": ["z"], "options": ["a", "b", "c", "d"]}\n')
    with pytest.raises(ValueError, match=r"qa.jsonl:2: answer 'z' is not one of the options"):
        InfiniteBenchTask("en_mc", bad, fmt)


def _result(task, length, score, suite="ruler", **kw):
    return {"task": task, "suite": suite, "length": length, "score": score, "n": 1, **kw}


def test_summary_groups_as_in_the_paper(tmp_path):
    from longpo.eval.suites.ruler import RULER_GROUPS

    results = []
    for i, task in enumerate(RULER_GROUPS["AVG"]):
        results += [_result(task, 4096, 10.0 * (i % 5)), _result(task, 8192, 50.0)]
    results += [_result("en_qa", 131072, 30.0, suite="infinitebench"), _result("en_mc", 131072, 60.0, suite="infinitebench")]
    s = summarize(results, [{"task": "infinitebench/en_sum", "reason": "no data"}],
                  {"short": {"mmlu": 40.0, "winogrande": 60.0}})
    g = s["ruler"]["groups"]
    niah = [10.0 * (i % 5) for i in range(8)]
    assert g["NIAH"]["4096"] == pytest.approx(sum(niah) / 8)
    assert g["VT"]["4096"] == pytest.approx(30.0)            # vt is task 8 -> 10 * (8 % 5)
    assert g["AGG"]["4096"] == pytest.approx((40.0 + 0.0) / 2)  # cwe 9, fwe 10
    assert g["QA"]["4096"] == pytest.approx((10.0 + 20.0) / 2)
    assert g["AVG"]["4096"] == pytest.approx(sum(10.0 * (i % 5) for i in range(13)) / 13)
    assert g["AVG"]["avg"] == pytest.approx((g["AVG"]["4096"] + 50.0) / 2)
    assert s["infinitebench"]["avg"] == pytest.approx(45.0) and s["short"]["avg"] == pytest.approx(50.0)
    md = to_markdown(s)
    assert "| RULER | 4K | 8K | Avg |" in md and "| En.QA | En.MC | Avg |" in md and "en_sum: no data" in md
    paths = write_summary(s, tmp_path)
    assert json.loads(paths["json"].read_text())["ruler"]["lengths"] == [4096, 8192]
    assert "ruler-group,NIAH,4096" in paths["csv"].read_text()


def test_partial_groups_are_marked_and_compare_prints_deltas():
    a = summarize([_result("niah_single_1", 4096, 80.0), _result("vt", 4096, 50.0)])
    b = summarize([_result("niah_single_1", 4096, 90.0), _result("vt", 4096, 40.0)])
    assert a["ruler"]["coverage"]["NIAH"] == "1/8"
    assert "NIAH*" in to_markdown(a)
    text = compare(a, b, "base", "longpo")
    line = next(x for x in text.splitlines() if x.startswith("RULER NIAH 4K"))
    assert line.split()[-3:] == ["80.0", "90.0", "+10.0"]
    assert next(x for x in text.splitlines() if x.startswith("RULER VT 4K")).split()[-1] == "-10.0"


def test_niah_heatmap_png(tmp_path):
    from longpo.eval.plots import plot_niah_heatmap

    results = [_result("niah_single_2", n, 100.0 - d, depth=d) for n in (4096, 8192) for d in (0, 50, 100)]
    s = summarize(results)
    assert s["niah_depth"]["scores"] == [[100.0, 100.0], [50.0, 50.0], [0.0, 0.0]]
    path = plot_niah_heatmap(s["niah_depth"], tmp_path / "niah.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stage_skips_tasks_whose_data_is_missing(tmp_path, fmt):
    from longpo.config import load_config
    from longpo.eval.config import Config
    from longpo.eval.run import build_tasks

    cfg = load_config(Config, None, ["model=unused", "ruler.tasks=niah_single_1,niah_single_2",
                                     "ruler.lengths=[1024]", "ruler.num_samples=2",
                                     f"ruler.essays={tmp_path / 'missing.json'}"])
    tasks, sweep, skipped = build_tasks(cfg, fmt)
    assert [t.name for t in tasks] == ["ruler/1024/niah_single_1"] and sweep == []
    reasons = {s["task"]: s["reason"] for s in skipped}
    assert "missing.json does not exist" in reasons["ruler/1024/niah_single_2"]
    assert "infinitebench.data_dir" in reasons["infinitebench/en_sum"]

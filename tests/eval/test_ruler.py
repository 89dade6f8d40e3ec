"""RULER generators: deterministic for a seed, the answer is really in the prompt, the prompt fits the
target length with the chat template and answer prefix, and the answers are what the template asks for."""

import collections
import json
import re

import pytest

from longpo.eval.fitting import PromptFormat, PromptTooLong, fit_size, truncate_middle
from longpo.eval.haystack import DataMissing
from longpo.eval.tasks.ruler import TASKS, RulerData, RulerTask

# The tiny byte-level BPE spends ~3x more tokens per word than a real 32K vocabulary, so "short"
# lengths here are 2K-3K tokens.
LENGTHS = {"cwe": 3072, "qa_2": 3072}


@pytest.mark.parametrize("name", list(TASKS))
def test_task_is_deterministic_fits_and_contains_answers(name, fmt, data, tokenizer):
    length = LENGTHS.get(name, 2048)
    task = RulerTask(name, length, fmt, num_samples=3, seed=42, data=data)
    a, b = task.get_example(1), RulerTask(name, length, fmt, num_samples=3, seed=42, data=data).get_example(1)
    assert a == b, f"{name}: same seed, different example"
    other = RulerTask(name, length, fmt, num_samples=3, seed=7, data=data).get_example(1)
    assert other["prompt"] != a["prompt"], f"{name}: the seed does not change the example"
    assert task.get_example(0)["prompt"] != a["prompt"]

    prompt = a["prompt"]
    # fits: template + answer prefix + tokens to generate <= length, and the haystack fills it
    n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert n == a["prompt_tokens"]
    assert n + task.max_new_tokens <= length, f"{name}: {n} + {task.max_new_tokens} > {length}"
    if name not in ("qa_1", "qa_2"):  # the QA stand-in data has only a few documents
        assert n + task.max_new_tokens > 0.8 * length, f"{name}: haystack fills only {n} of {length} tokens"
    # chat template, then the answer prefix starts the assistant turn
    assert prompt.startswith("<s><|user|>\n")
    assert "<|assistant|>\n" in prompt and not prompt.endswith("<|end|>\n")
    # every answer is in the part of the prompt that holds the context (before the final assistant turn)
    body = prompt.rsplit("<|assistant|>", 1)[0]
    for answer in a["answers"]:
        assert answer in body, f"{name}: answer {answer!r} not in the prompt"
    assert task.score(a, " ".join(a["answers"])) == 100.0
    assert task.score(a, "") == 0.0


def test_niah_answers_match_the_query(fmt, data):
    """The queried key's needle carries the answer; single tasks ask for 'the number', multi for 'all ...'."""
    ex = RulerTask("niah_single_2", 2048, fmt, num_samples=2, data=data).get_example(0)
    m = re.search(r"What is the special magic number for (\S+) mentioned", ex["prompt"])
    key = m.group(1)
    assert f"One of the special magic numbers for {key} is: {ex['answers'][0]}." in ex["prompt"]
    assert ex["prompt"].endswith(f"The special magic number for {key} mentioned in the provided text is")

    ex = RulerTask("niah_multiquery", 2048, fmt, num_samples=2, data=data).get_example(0)
    assert "What are all the special magic numbers for" in ex["prompt"]
    assert len(ex["answers"]) == 4
    ex = RulerTask("niah_multivalue", 2048, fmt, num_samples=2, data=data).get_example(0)
    key = re.search(r"for (\S+) mentioned in the provided text\?", ex["prompt"]).group(1)
    assert [v for v in ex["answers"] if f"for {key} is: {v}." in ex["prompt"]] == ex["answers"]
    ex = RulerTask("niah_multikey_3", 2048, fmt, num_samples=2, data=data).get_example(0)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", ex["answers"][0])
    assert ex["prompt"].count("One of the special magic uuids for") > 5  # distractor needles


def test_niah_depth_places_the_needle(fmt, data):
    positions = []
    for depth in (0, 50, 100):
        ex = RulerTask("niah_single_1", 2048, fmt, num_samples=1, data=data, depth=depth).get_example(0)
        body = ex["prompt"].split("What is the special magic")[0]
        positions.append(body.index("One of the special magic") / len(body))
    assert positions[0] < 0.15 < 0.35 < positions[1] < 0.65 < 0.85 < positions[2]


def test_vt_chain_answers(fmt, data):
    ex = RulerTask("vt", 2048, fmt, num_samples=1, data=data).get_example(0)
    value = re.search(r"assigned the value (\d+) in the text above\.<", ex["prompt"]).group(1)
    body = ex["prompt"].split("<|assistant|>")[0]
    # follow the chain in the (last, real) question's text
    real = body[body.rindex("Memorize and track"):]
    names, frontier = set(), {value}
    for _ in range(6):
        for m in re.finditer(r"VAR (\w+) = (?:VAR )?(\w+)", real):
            if m.group(2) in frontier or m.group(2) in names:
                names.add(m.group(1))
        frontier = names
    assert sorted(names) == sorted(ex["answers"]) and len(names) == 5
    assert "5 variables are assigned the value" in ex["prompt"]


def test_cwe_and_fwe_answers_are_the_most_frequent(fmt, data):
    ex = RulerTask("cwe", 3072, fmt, num_samples=1, data=data).get_example(0)
    real = ex["prompt"].split("<|user|>\n")[-1].split("\n")[1]  # the question's own turn: its numbered list
    words = re.findall(r"\d+\. (\S+)", real)
    top = [w for w, _ in collections.Counter(words).most_common(10)]
    assert sorted(top) == sorted(ex["answers"])

    ex = RulerTask("fwe", 2048, fmt, num_samples=1, data=data).get_example(0)
    text = ex["prompt"].split("coded words. ")[1].split("\nQuestion:")[0].split()
    counts = collections.Counter(w for w in text if w != "...")
    assert [w for w, _ in counts.most_common(3)] == ex["answers"]


def test_qa_has_gold_document_and_answers(fmt, data, data_dir):
    ex = RulerTask("qa_1", 2048, fmt, num_samples=2, data=data).get_example(0)
    squad = json.loads((data_dir / "squad.json").read_text())
    question = re.search(r"Question: (.*?)<\|end\|>", ex["prompt"]).group(1)
    gold = [p["context"] for d in squad["data"] for p in d["paragraphs"] for q in p["qas"] if q["question"] == question]
    assert gold and gold[0] in ex["prompt"]
    assert ex["answers"] == [a["text"] for d in squad["data"] for p in d["paragraphs"] for q in p["qas"]
                             if q["question"] == question for a in q["answers"]]
    assert "Document 1:\n" in ex["prompt"]


def test_plain_format_without_chat_template(tokenizer, data):
    fmt = PromptFormat(tokenizer, chat_template=False)
    ex = RulerTask("niah_single_1", 1024, fmt, num_samples=1, data=data).get_example(0)
    assert ex["prompt"].startswith("<s>A special magic number is hidden")
    assert ex["prompt"].endswith("? The special magic number for " + ex["prompt"].split("for ")[-1])


def test_missing_data_and_too_short_length(fmt):
    with pytest.raises(DataMissing, match="does not exist"):
        RulerTask("niah_single_2", 2048, fmt, data=RulerData(essays="/nonexistent/essays.json"))
    with pytest.raises(DataMissing, match="does not exist"):
        RulerTask("qa_2", 2048, fmt, data=RulerData(hotpotqa="/nonexistent/hotpot.json"))
    with pytest.raises(PromptTooLong, match="too short for niah_single_1"):
        RulerTask("niah_single_1", 128, fmt).fitted_size()


def test_malformed_essay_and_squad_files(fmt, tmp_path):
    bad = tmp_path / "essays.json"
    bad.write_text('{"text": 1}')
    with pytest.raises(ValueError, match="string field 'text'"):
        RulerTask("niah_single_2", 2048, fmt, data=RulerData(essays=str(bad)))
    bad = tmp_path / "squad.json"
    bad.write_text('{"data": [\n{"oops": 1}]}')
    with pytest.raises(ValueError, match="not in SQuAD format"):
        RulerTask("qa_1", 2048, fmt, data=RulerData(squad=str(bad)))
    bad.write_text('{"data": [\n{"oops": 1}')
    with pytest.raises(ValueError, match=r"squad.json:2: invalid JSON"):
        RulerTask("qa_1", 2048, fmt, data=RulerData(squad=str(bad)))


def test_fit_size_is_the_largest_fitting_size():
    assert fit_size(lambda n: 10 * n + 5, 1000) == 99
    assert fit_size(lambda n: 10 * n + 5, 15) == 1
    with pytest.raises(PromptTooLong):
        fit_size(lambda n: 10 * n + 5, 10)


def test_truncate_middle_keeps_both_ends(fmt):
    context = " ".join(f"w{i}" for i in range(2000))
    render = lambda c: fmt.render(f"Read this.\n\n{c}\n\nQuestion?")  # noqa: E731
    cut, truncated = truncate_middle(fmt, context, render, 300)
    assert truncated and fmt.count(render(cut)) <= 300
    assert cut.startswith("w0 w1 w2") and cut.endswith("w1998 w1999")
    same, truncated = truncate_middle(fmt, "short", render, 300)
    assert same == "short" and not truncated

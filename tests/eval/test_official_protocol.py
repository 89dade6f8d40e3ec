"""Prompt protocols checked against the official code; each test names the function it follows.

RULER: scripts/data/synthetic/qa.py `generate_input_output` / `generate_samples`,
common_words_extraction.py `generate_input_output`, scripts/data/prepare.py (answer prefix after the
model template). InfiniteBench: src/eval_yarn_mistral.py `truncate_by_tokens` (TRUNCATE_LEN = 128 * 1024),
src/eval_utils.py `create_system_msg`.
"""

import collections
import json
import random
import re

import pytest

from longpo.eval.config import InfiniteBenchConfig
from longpo.eval.fitting import PromptFormat
from longpo.eval.runner import evaluate
from longpo.eval.tasks.infinitebench import InfiniteBenchTask, truncate_official
from longpo.eval.tasks.ruler import RulerTask, qa_documents

# --------------------------------------------------------------------------------------------- RULER QA


def test_qa_asks_the_first_questions_in_file_order(fmt, data):
    """qa.py: sample `index` uses QAS[index]; read_squad walks data[].paragraphs[].qas[], skipping
    is_impossible; the stand-in file's first answerable questions are 'What is fact 0-0?', '0-1', '0-2'."""
    task = RulerTask("qa_1", 2048, fmt, num_samples=3, data=data)
    questions = [re.search(r"Question: (.*?)<\|end\|>", task.get_example(i)["prompt"]).group(1) for i in range(3)]
    assert questions == ["What is fact 0-0?", "What is fact 0-1?", "What is fact 0-2?"]
    with pytest.raises(ValueError, match="fewer than ruler.num_samples=13"):
        RulerTask("qa_1", 2048, fmt, num_samples=13, data=data)  # the file has 12 answerable questions


def test_qa_documents_follow_the_official_rule():
    """qa.py generate_input_output, worked by hand. random.Random(42).shuffle of a 3-list gives the order
    [1, 0, 2] and of a 6-list [3, 1, 2, 4, 0, 5] (Python's shuffle depends only on the seed and the length),
    so the gold document, first before the shuffle, lands at position 1 (of 3) and 4 (of 6) in every sample."""
    qa = {"context": [7], "more_context": [4, 5, 6]}
    for sample in range(5):
        rng = random.Random(sample)  # the per-sample draw of distractors
        three = qa_documents(rng, 3, qa, num_docs=12, seed=42)
        assert three[1] == 7 and set(three) - {7} <= {4, 5, 6}  # gold + 2 of the same article
        six = qa_documents(rng, 6, qa, num_docs=12, seed=42)
        assert six[4] == 7 and {4, 5, 6} <= set(six)             # gold + whole article + 2 others
    # above the supply: all 12 documents in sorted order, repeated and cut to 30, then shuffled
    thirty = qa_documents(random.Random(0), 30, qa, num_docs=12, seed=42)
    expected = (list(range(12)) * 3)[:30]
    random.Random(42).shuffle(expected)
    assert thirty == expected
    assert collections.Counter(thirty) == {**{d: 3 for d in range(6)}, **{d: 2 for d in range(6, 12)}}


def test_qa_gold_position_is_fixed_per_length_and_documents_repeat_above_supply(fmt, data, data_dir):
    """qa.py: one size per length (fitted on question 0), repetition above the supply (the stand-in file
    holds 12 paragraphs; 8K tokens need more): DOCS (sorted) * repeats cut to the size, then the
    fresh-Random(seed) shuffle - the same list for every question, so the same gold positions."""
    squad = json.loads((data_dir / "squad.json").read_text())
    docs = sorted({p["context"] for d in squad["data"] for p in d["paragraphs"]})
    task = RulerTask("qa_1", 8192, fmt, num_samples=3, data=data)
    examples = [task.get_example(i) for i in range(3)]
    size = examples[0]["haystack_size"]
    assert size > len(docs) and all(ex["haystack_size"] == size for ex in examples)
    order = (list(range(len(docs))) * -(-size // len(docs)))[:size]
    random.Random(42).shuffle(order)
    for ex in examples:
        body = ex["prompt"].split("The following are given documents.\n\n")[1].split("\n\nAnswer the question")[0]
        assert body == "\n\n".join(f"Document {k + 1}:\n{docs[d]}" for k, d in enumerate(order))
        assert ex["prompt"].count(docs[0]) == order.count(0) >= 2


# --------------------------------------------------------------------------------------------- RULER CWE / prefix


def test_cwe_one_shot_is_a_separate_turn_and_the_prefix_keeps_its_space(fmt, data):
    """common_words_extraction.py: few_shot = template(example) + ' ' + answers, then '\\n' + template(question),
    where the template is model_template(task) + answer_prefix (prepare.py); with a chat template the example
    is an earlier user turn and its answer an assistant turn; the prefix ' Answer: ...' keeps its space."""
    ex = RulerTask("cwe", 3072, fmt, num_samples=1, data=data).get_example(0)
    prefix = " Answer: The top 10 words that appear most often in the list are:"
    p = ex["prompt"]
    assert p.count("<|user|>\n") == 2 and p.count("<|assistant|>\n") == 2
    assert p.endswith("<|end|>\n<|assistant|>\n" + prefix)
    shot = p.split("<|assistant|>\n")[1]
    assert re.match(re.escape(prefix) + r"( \d+\. [a-z-]+){10}<\|end\|>\n<\|user\|>\nBelow is a numbered list", shot)
    # the question's own turn holds only its list (the example is not in it)
    assert p.split("<|user|>\n")[2].count("Below is a numbered list") == 1

    plain = RulerTask("cwe", 3072, PromptFormat(fmt.tokenizer, chat_template=False), num_samples=1,
                      data=data).get_example(0)["prompt"]
    # base template: example + prefix + " " + answers, a newline, then the question and the prefix
    assert re.match(r"<s>Below is a numbered list.*\?" + re.escape(prefix) + r"( \d+\. \S+){10}\nBelow is a", plain,
                    flags=re.S)
    assert plain.endswith("?" + prefix)


def test_answer_prefix_keeps_its_leading_space_after_the_chat_template(fmt, data):
    """prepare.py: config['template'] = model_template.format(task_template) + answer_prefix (leading space kept)."""
    ex = RulerTask("niah_single_1", 1024, fmt, num_samples=1, data=data).get_example(0)
    assert re.search(r"<\|assistant\|>\n The special magic number for \S+ mentioned in the provided text is$",
                     ex["prompt"])


def test_ruler_task_score_goes_through_postprocess_and_rounding(tmp_path, fmt, data, tokenizer, scripted_backend):
    """evaluate.py: postprocess_pred then string_match_all, round(mean, 2). niah_multivalue has 4 values per
    sample; answering 1, 2 and 4 of them scores 25, 50, 100 -> 58.333 -> 58.33."""
    task = RulerTask("niah_multivalue", 2048, fmt, num_samples=3, data=data)
    by_prompt = {task.get_example(i)["prompt"]: task.get_example(i)["answers"] for i in range(3)}
    kept = iter([1, 2, 4])
    backend = scripted_backend(tokenizer, lambda p: "\x00 " + "\t".join(by_prompt[p][:next(kept)]) + "\x1f")
    result = evaluate(backend, [task], tmp_path, batch_size=1, progress=False)[0]
    assert result["score"] == 58.33


# --------------------------------------------------------------------------------------------- InfiniteBench


def test_infinitebench_truncates_the_whole_prompt_to_the_official_budget(tokenizer, data_dir):
    """eval_yarn_mistral.py truncate_by_tokens: ids = tok.encode(prompt); if len > 128 * 1024 keep
    ids[:split] + ids[-split:] with split = 128 * 1024 // 2; decode(skip_special_tokens=True). For a chat
    model the result is the user turn after the system prompt "You are a helpful assistant." (create_system_msg)."""
    assert InfiniteBenchConfig().max_length == 128 * 1024 == 131072
    assert InfiniteBenchConfig().truncation == "official"
    assert InfiniteBenchConfig().system_prompt == "You are a helpful assistant."
    fmt = PromptFormat(tokenizer)
    path = data_dir / "infinitebench" / "longbook_qa_eng.jsonl"
    row = json.loads(path.read_text().splitlines()[0])
    user = (f"Read the book below and answer a question.\n\n{row['context']}\n\nQuestion: {row['input']}"
            "\n\nBe very concise.")
    ids = tokenizer.encode(user)
    budget = 501  # odd: split = 250, so 500 tokens are kept
    assert len(ids) > budget
    expected_user = tokenizer.decode(ids[:250] + ids[-250:], skip_special_tokens=True)
    ex = InfiniteBenchTask("en_qa", path, fmt, max_length=budget).get_example(0)
    assert ex["truncated"]
    assert ex["prompt"] == ("<s><|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\n" + expected_user
                            + "<|end|>\n<|assistant|>\n")
    assert truncate_official(tokenizer, user, budget) == (expected_user, True)
    # the cut keeps the instruction and the question, and no room is left for the 40 answer tokens
    assert ex["prompt_tokens"] + 40 > budget
    # under the budget nothing is cut (the text still makes the encode/decode round trip)
    assert truncate_official(tokenizer, user, len(ids)) == (tokenizer.decode(ids, skip_special_tokens=True), False)
    # a base model gets the completion template and no system prompt
    base = InfiniteBenchTask("en_qa", path, PromptFormat(tokenizer, chat_template=False), max_length=budget)
    assert base.get_example(0)["prompt"].startswith("<s>Read the book and answer the question. Be very concise")
    assert "You are a helpful assistant." not in base.get_example(0)["prompt"]
    # truncation=fit is the project's own rule: prompt + answer fit the budget
    fit = InfiniteBenchTask("en_qa", path, fmt, max_length=budget, truncation="fit").get_example(0)
    assert fit["prompt_tokens"] + 40 <= budget

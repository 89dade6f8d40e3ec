"""LongBench v2 against THUDM/LongBench's v2 code: pred.py (`extract_answer`, the 0-shot template, `query_llm`'s
truncation) and result.py (accuracy overall / easy / hard / short / medium / long, rounded to 1 decimal).
The fixture is a tiny file in the released data.json format, written here."""

import json

import pytest

from longpo.eval.fitting import PromptFormat
from longpo.eval.report import compare, summarize, to_markdown
from longpo.eval.runner import evaluate
from longpo.eval.tasks.longbench_v2 import LongBenchV2Task, extract_answer, fill_prompt, truncate_official


@pytest.mark.parametrize("response,letter", [
    ("The correct answer is (B)", "B"),
    ("The correct answer is B.", "B"),                      # second pattern: no parentheses
    ("**The correct answer is (C)**", "C"),                 # every '*' dropped first
    ("The correct answer is **(D)**", "D"),
    ("the correct answer is (B)", None),                    # case-sensitive
    ("The correct answer is: (B)", None),                   # a colon breaks both patterns
    ("The correct answer is (E)", None),
    ("(A)", None),                                          # a bare letter is not read
    ("I think A. The correct answer is (C). Not D", "C"),   # the first match after any reasoning
    ("The correct answer is Both", "B"),                    # pattern 2 has no word boundary: 'Both' reads as B
    ("The correct answer is (insert answer here)", None),
    ("", None),
])
def test_extract_answer_follows_pred_py(response, letter):
    """pred.py extract_answer: replace('*', ''), re.search(r'The correct answer is \\(([A-D])\\)'), else
    re.search(r'The correct answer is ([A-D])'), else None."""
    assert extract_answer(response) == letter


def _item(i, difficulty, length, answer="B", context="Some long text."):
    return {"_id": f"id{i}", "domain": "Single-Document QA", "sub_domain": "Literary", "difficulty": difficulty,
            "length": length, "question": f" Question {i}? ", "choice_A": "red", "choice_B": " blue ",
            "choice_C": "green", "choice_D": "gold", "answer": answer, "context": f"  {context} {i}\n"}


SPLITS = [("easy", "short"), ("easy", "medium"), ("hard", "long"), ("hard", "short"), ("hard", "long"),
          ("easy", "long")]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([_item(i, d, n) for i, (d, n) in enumerate(SPLITS)]))
    return path


def test_prompt_is_the_official_0shot_template():
    """prompts/0shot.txt with $DOC$, $Q$, $C_A$..$C_D$ replaced by the stripped fields, one after another."""
    assert fill_prompt(_item(0, "easy", "short")) == (
        "Please read the following text and answer the question below.\n\n<text>\nSome long text. 0\n</text>\n\n"
        "What is the correct answer to this question: Question 0?\nChoices:\n(A) red\n(B) blue\n(C) green\n"
        "(D) gold\n\nFormat your response as follows: \"The correct answer is (insert answer here)\".")
    # chained str.replace: a placeholder inside the context is filled too, as upstream
    assert "<text>\nsee Question 1?" in fill_prompt(_item(1, "easy", "short", context="see $Q$"))


def test_truncation_keeps_both_ends_with_upstreams_odd_split(tokenizer):
    """query_llm: ids[:max_len//2] + ids[-max_len//2:] with -max_len//2 == (-max_len)//2, so 7 keeps 3 + 4."""
    prompt = fill_prompt(_item(0, "easy", "short", context="river city book " * 50))
    ids = tokenizer.encode(prompt)
    text, cut = truncate_official(tokenizer, prompt, 7)
    assert cut and text == tokenizer.decode(ids[:3] + ids[-4:], skip_special_tokens=True)
    assert truncate_official(tokenizer, prompt, len(ids)) == (prompt, False)


def test_chat_prompt_is_one_user_turn_without_a_system_prompt(tokenizer, data_file):
    """pred.py sends messages=[{'role': 'user', 'content': prompt}] and nothing else."""
    task = LongBenchV2Task(data_file, PromptFormat(tokenizer))
    ex = task.get_example(0)
    assert ex["prompt"] == PromptFormat(tokenizer).render(fill_prompt(_item(0, "easy", "short")))
    assert ex["prompt"].count("<|user|>") == 1 and "<|system|>" not in ex["prompt"]
    assert task.max_new_tokens == 128 and ex["gold"] == "B"


def test_scores_by_split_and_report_columns(tmp_path, tokenizer, data_file, scripted_backend):
    """result.py: right answers on items 0, 2 and 5 (of 6) -> overall 3/6 = 50.0; easy {0, 1, 5} 2/3 = 66.7;
    hard {2, 3, 4} 1/3 = 33.3; short {0, 3} 50.0; medium {1} 0.0; long {2, 4, 5} 2/3 = 66.7."""
    task = LongBenchV2Task(data_file, PromptFormat(tokenizer))
    replies = {0: "**The correct answer is (B)**", 1: "The correct answer is (A)", 2: "The correct answer is B",
               3: "B", 4: "", 5: "Reasoning... The correct answer is (B)."}
    by_prompt = {task.get_example(i)["prompt"]: replies[i] for i in range(6)}
    backend = scripted_backend(tokenizer, lambda p: by_prompt[p])
    results = evaluate(backend, [task], tmp_path, batch_size=2, progress=False)
    summary = summarize(results)
    assert summary["longbench_v2"] == {"overall": 50.0, "n": 6, "easy": 66.7, "hard": 33.3, "short": 50.0,
                                       "medium": 0.0, "long": 66.7}
    md = to_markdown(summary)
    assert "## LongBench v2\n\n| Overall | Easy | Hard | Short | Medium | Long |" in md
    assert "| 50.0 | 66.7 | 33.3 | 50.0 | 0.0 | 66.7 |" in md
    table = compare(summary, summary, "base", "longpo")
    assert "LongBench v2 Easy" in table and "LongBench v2 Long" in table


def test_bad_items_name_the_file_and_field(tmp_path):
    path = tmp_path / "data.json"
    bad = _item(0, "easy", "short")
    del bad["choice_C"]
    path.write_text(json.dumps([bad]))
    with pytest.raises(ValueError, match=r"data.json: item 0: missing field\(s\) \['choice_C'\]"):
        LongBenchV2Task(path, None)
    path.write_text(json.dumps([_item(0, "medium", "short")]))
    with pytest.raises(ValueError, match="difficulty 'medium'"):
        LongBenchV2Task(tmp_path, None)  # a folder holding data.json

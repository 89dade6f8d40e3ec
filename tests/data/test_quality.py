"""Issue 18, pair quality: the replies and answers it quotes (and similar hand-written ones) through the
question parser, the filters and the truncation handling, each decision counted under its reason."""

import pytest

from longpo.config import build_config
from longpo.data.filters import (
    FilterConfig,
    content_words,
    drop_reason,
    is_copy,
    is_specific_question,
    repeated_ngram_ratio,
    trim_to_sentence,
)
from longpo.data.generate import Config, generate
from longpo.data.prompts import extract_line_questions, extract_questions, is_question, parse_questions
from longpo.data.records import read_records, tokenize_pair, tokenize_short
from tests.data.test_generate import MARK, write_corpus

# A prose reply to the question prompt (the real model wrote about the Basel problem, no question).
PROSE = ("According to the passage above, in the Basel Problem, Euler came up with a way to prove that the sum of "
         "the reciprocals of the squares equals pi squared over six.\nHe used the product formula of the sine.\n"
         "This result made him famous.\nLater work extended it to all even powers.")
LABELLED = ("1. question: Why did the Normans settle in Normandy?\n2. A: What was the role of Rollo?\n"
            "Q: When did the duchy become part of France?\n**Question 4:** Which language did they speak")
MIXED = ("What is the main function of the chloroplast?\nThe chloroplast turns light into chemical energy.\n"
         "How does oxygen leave the leaf? Through the stomata.\nWhy are plants green? They reflect green light.")
CHUNK = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
         "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under "
         "their leader Rollo, agreed to swear fealty to King Charles III of West Francia.")
LOOP = ("a weak oxidizing agent that is a weak oxidizing agent that is a weak oxidizing agent because it is not a "
        "strong oxidizing agent because it is not a strong oxidizing agent because")


def test_prose_is_not_questions_and_the_old_line_rule_took_it():
    assert extract_questions(PROSE) == []
    assert parse_questions(PROSE, 4, min_questions=1) is None
    assert len(extract_line_questions(PROSE)) == 4  # what the pre-issue parser kept: 4 "questions"
    assert not is_question("According to the passage above, in the Basel Problem, Euler came up with a way.")


def test_labels_and_prefixes_are_stripped():
    assert extract_questions(LABELLED) == ["Why did the Normans settle in Normandy?", "What was the role of Rollo?",
                                           "When did the duchy become part of France?",
                                           "Which language did they speak"]  # interrogative, "?" dropped


def test_questions_mixed_with_answers_and_several_per_line():
    assert extract_questions(MIXED) == ["What is the main function of the chloroplast?",
                                        "How does oxygen leave the leaf?", "Why are plants green?"]
    assert extract_questions("1. What is the city? 2. Why is it on the river? Explain.") == [
        "What is the city?", "Why is it on the river?"]
    assert extract_questions("According to the text, why did the mill close") == [
        "According to the text, why did the mill close"]


@pytest.mark.parametrize("min_questions, expected", [(1, 3), (3, 3), (4, None)])
def test_a_reply_needs_min_questions_of_those_asked(min_questions, expected):
    parsed = parse_questions(MIXED, 4, min_questions=min_questions)
    assert (None if parsed is None else len(parsed)) == expected
    assert parse_questions(LABELLED + "\n5. Who was Rollo's heir?", 4, min_questions=1) == extract_questions(LABELLED)


def test_answer_filters_with_teeth():
    cfg = FilterConfig()
    assert content_words("The answer is:") == []
    assert drop_reason("The answer is:", cfg) == "too_few_words"  # 3 words passed the old min_words 3
    assert drop_reason(LOOP, cfg) == "ngram_repetition"  # passed the old max_repeat_ratio 0.9
    assert repeated_ngram_ratio(LOOP) > 0.5 and repeated_ngram_ratio(CHUNK) == 0.0
    assert drop_reason("The Normans descended from Norse raiders led by Rollo.", cfg) is None
    assert is_copy("The city is Paris.", ["the city  is paris", "Rome."]) and not is_copy("Paris.", ["Rome."])


def test_meta_questions_do_not_mention_the_chunk():
    assert not is_specific_question("What is the main idea of this text?", CHUNK)
    assert not is_specific_question("How does this text relate to other topics?", CHUNK)
    assert is_specific_question("Why did the Normans swear fealty to Charles III?", CHUNK)
    assert is_specific_question("Who led the Norse raiders?", CHUNK)


def test_trim_to_the_last_complete_sentence():
    assert trim_to_sentence("The Normans came from Norway. They settled under Rollo and") == "The Normans came from Norway."
    assert trim_to_sentence('He said "stop!" Then the duke, who') == 'He said "stop!"'
    assert trim_to_sentence("In 911 the treaty of 3.5 pages was") == ""


# ------------------------------------------------------------------ through `longpo generate`

# The question reply hit max_new_tokens mid-question; one of its questions is generic.
REPLY = "1. What does the river carry past the city?\n2. What is the main idea of this text?\n3. How did the"
GOOD = ["The river carries the magic book past the old city.", "The vault holds the secret number code.",
        "The paper names the long river after the city."]


class Scripted:
    """Question prompts get REPLY (cut off); every other call takes the next list of (answer, finish reason)
    from `calls`, in the order `longpo generate` asks: all chosen answers, then rejected turn 0, turn 1."""

    def __init__(self, tokenizer, calls):
        self.tokenizer, self.calls = tokenizer, list(calls)

    def generate(self, prompts, sampling):
        if all(MARK in p for p in prompts):
            self.finish_reasons = ["length"] * len(prompts)
            return [REPLY] * len(prompts)
        replies = self.calls.pop(0)
        assert len(replies) == len(prompts), (len(replies), len(prompts))
        self.finish_reasons = [reason for _, reason in replies]
        return [text for text, _ in replies]

    def score(self, sequences, masks):
        return [-float(sum(m)) for m in masks]

    def close(self):
        pass


def run(tmp_path, tokenizer, calls, **filters):
    # Every turn gets the same REPLY, so turn 2 would only be asked turn 1's question again: the near-duplicate
    # rule (tested in test_generate.py) is off here, where the answers' filters are under test.
    filters.setdefault("max_question_overlap", 1.0)
    cfg = build_config(Config, dict(
        model="served", corpus=str(write_corpus(tmp_path / "c.jsonl", 4)), output_dir=str(tmp_path / "o"),
        min_doc_tokens=100, max_doc_tokens=4000, min_chunk_tokens=60, max_chunk_tokens=200, num_turns=2,
        documents_per_group=4, progress=False, question_sampling={"max_new_tokens": 40},
        answer_sampling={"max_new_tokens": 40}, filters=filters))
    backend = Scripted(tokenizer, calls)
    stats = generate(cfg, backend=backend, ref_backend=backend)
    assert not backend.calls, "a scripted call was not made"
    return stats, (read_records(tmp_path / "o") if stats["records"] else [])


def test_every_decision_is_counted_under_its_reason(tmp_path, tokenizer):
    """Documents A-D, two turns each. A: turn 2's rejected copies turn 1's chosen. B: chosen "The answer
    is:". C: chosen cut at max_new_tokens. D: rejected loops. Only A's first turn survives."""
    chosen = [(GOOD[0], "stop"), (GOOD[1], "stop"), ("The answer is:", "stop"), (GOOD[2], "stop"),
              ("The river carries the book. It then flows past the", "length"), (GOOD[1], "stop"),
              (GOOD[2], "stop"), (GOOD[0], "stop")]
    rejected_0 = [("A long answer about the city and its magic river.", "stop"), (LOOP, "stop")]  # A, D
    rejected_1 = [(GOOD[0], "stop")]  # A's second turn copies its first chosen answer
    stats, records = run(tmp_path, tokenizer, [chosen, rejected_0, rejected_1])
    assert stats["dropped"] == {**{r: 0 for r in stats["dropped"]}, "copied_answer": 1, "too_few_words": 1,
                                "truncated": 1, "ngram_repetition": 1}
    assert stats["pairs_kept"] == 1 and [len(r["turns"]) for r in records] == [1]
    assert stats["truncated"] == {"question": 8, "chosen": 1, "rejected": 0}
    # Each cut-off reply lost its unfinished last line; its generic question was dropped.
    assert stats["questions_found"] == 16 and stats["questions_dropped"] == {"generic_question": 8}
    assert stats["hist"]["questions_per_reply"] == {"2": 8}
    assert records[0]["turns"][0]["question"] == "According to the passage above, what does the river carry past the city?"


def test_trimmed_answer_is_kept_without_its_end_of_turn_label(tmp_path, tokenizer):
    cut = "The river carries the magic book. It then flows past the"
    chosen = [(cut, "length"), (GOOD[1], "stop")] + [(GOOD[i % 3], "stop") for i in range(6)]
    rejected_0 = [(f"Answer {i}: the long city river holds a secret {i}.", "stop") for i in range(4)]
    rejected_1 = [(f"Then the paper names code {i} for the vault book.", "stop") for i in range(4)]
    stats, records = run(tmp_path, tokenizer, [chosen, rejected_0, rejected_1], truncated="trim")
    assert stats["trimmed"] == {"chosen": 1} and stats["dropped"]["truncated"] == 0 and stats["pairs_kept"] == 8
    turn = records[0]["turns"][0]
    assert turn["chosen"] == "The river carries the magic book." and turn["chosen_cut"] is True
    assert "chosen_cut" not in records[0]["turns"][1] and "rejected_cut" not in turn
    eos = tokenizer.eos_token_id
    pair = tokenize_pair(tokenizer, records[0])
    trained = [t for t, m in zip(pair.chosen, pair.chosen_mask) if m]
    assert trained.count(eos) == 1  # turn 2's own end-of-turn token; none after the trimmed turn 1
    assert [t for t, m in zip(pair.rejected, pair.rejected_mask) if m].count(eos) == 2
    ids, mask = tokenize_short(tokenizer, turn["chunk"], turn["question"], turn["chosen"], cut=True)
    assert eos in ids and eos not in [t for t, m in zip(ids, mask) if m]
    assert turn["ref_chosen_logp"] == -float(sum(mask))  # the reference scored that very mask


def test_no_trained_answer_ends_in_an_end_of_turn_token_it_did_not_generate(tmp_path, tokenizer):
    """HF backend, tiny model: an answer ends after `3 + sum(prompt ids) % 12` new tokens, so with
    max_new_tokens 10 some emit EOS and some are cut off. Every generation is recorded; in the records
    tokenised for training, an answer's end-of-turn token is a response token only if its generation
    produced EOS, i.e. every trained answer is one that finished (truncated=drop)."""
    import torch

    from longpo.backends.hf import HFBackend
    from longpo.toy.tiny import build_tiny_model
    from tests.data.ending import end_answers
    from tests.data.test_generate import QUESTIONS, small

    eos = tokenizer.eos_token_id
    model = end_answers(build_tiny_model("llama", dtype=torch.float32, seed=3), eos, after=lambda ids: 3 + sum(ids) % 12)
    ended: dict[str, bool] = {}  # answer text -> its generation produced EOS
    inner = model.generate

    def spy(*args, **kwargs):
        result = inner(*args, **kwargs)
        for row in result[:, kwargs["input_ids"].shape[1]:].tolist():
            ended[tokenizer.decode(row, skip_special_tokens=True).strip()] = eos in row
        return result

    model.generate = spy

    class Questions(HFBackend):
        def generate(self, prompts, sampling):
            if all(MARK in p for p in prompts):
                return [QUESTIONS] * len(prompts)
            return super().generate(prompts, sampling)

    backend = Questions(model, tokenizer)
    values = small(corpus=str(write_corpus(tmp_path / "c.jsonl", 6)), output_dir=str(tmp_path / "o"),
                   documents_per_group=6)
    values["filters"] = {**values["filters"], "truncated": "drop"}
    stats = generate(build_config(Config, values), backend=backend, ref_backend=backend)
    records = read_records(tmp_path / "o")
    cut_off = stats["truncated"]["chosen"] + stats["truncated"]["rejected"]
    assert cut_off >= 2 and stats["dropped"]["truncated"] == cut_off and stats["pairs_kept"] >= 2, stats
    for record in records:
        pair = tokenize_pair(tokenizer, record)
        for branch, ids, mask in (("chosen", pair.chosen, pair.chosen_mask), ("rejected", pair.rejected,
                                                                              pair.rejected_mask)):
            answers = [turn[branch] for turn in record["turns"]]
            assert all(ended[a] for a in answers), f"{record['id']}: a {branch} answer that never ended was kept"
            trained_ends = [t for t, m in zip(ids, mask) if m].count(eos)
            assert trained_ends == len(answers), (record["id"], branch)

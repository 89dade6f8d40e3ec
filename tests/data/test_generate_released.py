"""`longpo generate prompts=released`: the released scripts' prompts, parser, prefix, filters, separators and
turns through `generate`, with a scripted backend, against `prompts=project` on the same corpus."""

import hashlib
import json
import random

import pytest

from longpo.config import build_config
from longpo.data import released_preset as rp
from longpo.data.chunking import chunk_document
from longpo.data.generate import Config, generate
from longpo.data.inspect import inspect_pairs
from longpo.data.records import read_records
from tests.data.test_generate import MARK, Recorder, small, write_corpus

ASK = "generate 4 comprehensive English questions"  # a phrase of the released question request
FOUR = ("1: What does Elizabeth Bennet say about the river and the city?\n"
        "2: Why does Elizabeth Bennet keep the vault and its code secret from Mr. Darcy?\n"
        "3. How does Elizabeth Bennet find the magic book in the city?\n"
        "**4:** Where does Elizabeth Bennet hide the paper with the number?")
QUESTIONS = [  # FOUR as the released parser reads it: labels and markdown gone, capitals kept
    "What does Elizabeth Bennet say about the river and the city?",
    "Why does Elizabeth Bennet keep the vault and its code secret from Mr. Darcy?",
    "How does Elizabeth Bennet find the magic book in the city?",
    "Where does Elizabeth Bennet hide the paper with the number?",
]
THREE = "1: What is the city?\n2: Why is the river long?\n3: Who wrote the book?"
TWICE = "the cat sat. the cat sat."  # every word repeated: ratio 1.0 under released, 0.5 under project
REFUSAL = "As an AI assistant, I would rather not say anything about the vault."


class Scripted(Recorder):
    """A Recorder whose replies come from `reply(kind, doc id, prompt) -> (text, finish reason)`; kind is
    question, chosen (the prompt holds a chunk) or rejected (it holds every paragraph of the document)."""

    def __init__(self, tokenizer, corpus, reply):
        super().__init__(tokenizer, "scripted")
        self.docs = {r["id"]: r["text"].split("\n\n") for r in map(json.loads, corpus.read_text().splitlines())}
        self.reply = reply

    def kind_and_doc(self, prompt):
        doc = next(d for d, paragraphs in self.docs.items() if any(p in prompt for p in paragraphs))
        if ASK in prompt or MARK in prompt:
            return "question", doc
        return ("rejected" if all(p in prompt for p in self.docs[doc]) else "chosen"), doc

    def generate(self, prompts, sampling):
        self.prompts += prompts
        out = [self.reply(*self.kind_and_doc(p), p) for p in prompts]
        self.finish_reasons = [reason for _, reason in out]
        return [text for text, _ in out]

    def sent(self, kind):
        return [p for p in self.prompts if self.kind_and_doc(p)[0] == kind]


def plain(kind, doc, prompt):
    """Four questions; answers that pass every filter of both presets, distinct per prompt."""
    if kind == "question":
        return FOUR, "stop"
    return f"The {kind} answer for {doc} names the river and mill {hashlib.sha1(prompt.encode()).hexdigest()[:6]}.", \
        "stop"


def run(tmp_path, tokenizer, name, reply=plain, n_docs=2, **extra):
    corpus = tmp_path / "c.jsonl"
    if not corpus.exists():
        write_corpus(corpus, n_docs)
    values = small(corpus=str(corpus), output_dir=str(tmp_path / name))
    del values["num_turns"]  # the preset's turn count unless a test sets it
    values["filters"] = {}  # each preset's own filters, as they are by default
    values.update(extra)
    backend = Scripted(tokenizer, corpus, reply)
    stats = generate(build_config(Config, values), backend=backend, ref_backend=backend)
    records = read_records(tmp_path / name) if stats["records"] else []
    return stats, records, backend


def chat(text):
    """The tiny tokenizer's chat template around one user message, with the generation prompt."""
    return f"<s><|user|>\n{text}<|end|>\n<|assistant|>\n"


def test_question_request_is_the_released_prompt_after_the_chunk(tmp_path, tokenizer):
    stats, records, backend = run(tmp_path, tokenizer, "o", prompts="released")
    asked = backend.sent("question")
    chunks = [t["chunk"] for r in records for t in r["turns"]]
    assert len(asked) == stats["question_replies"] == len(chunks) == 8
    assert asked == [chat("Context:\n" + chunk + "\n\n" + rp.QUESTION_PROMPT) for chunk in chunks]
    assert asked[0].startswith("<s><|user|>\nContext:\n" + chunks[0] + "\n\n\nBased on the content presented "
                               "above, generate 4 comprehensive English questions")
    assert asked[0].endswith("from “1:” to “4:”.\n<|end|>\n<|assistant|>\n")


def test_prefix_phrase_keeps_the_question_as_written_and_is_seeded_by_document(tmp_path, tokenizer):
    """The question after the phrase is verbatim (its capital and proper nouns kept); the choices come
    from random.Random(f"{seed}:{doc id}"), which first samples the turns' chunks, then draws the
    question and the phrase of each turn: global random state changes nothing."""
    random.seed(1)
    _, records, backend = run(tmp_path, tokenizer, "a", prompts="released")
    random.seed(2)
    _, again, _ = run(tmp_path, tokenizer, "b", prompts="released")
    assert again == records
    for record in records:
        rng = random.Random(f"42:{record['id']}")
        text = "\n\n".join(backend.docs[record["id"]])
        eligible = chunk_document(tokenizer, text, 60, 200, "\n\n\n", block_separator=" ").eligible
        rng.sample(eligible, min(4, len(eligible)))
        expected = []
        for _ in record["turns"]:
            question = rng.choice(QUESTIONS)
            expected.append(f"{rng.choice(rp.PREFIX_PHRASES)} {question}")
        assert [t["question"] for t in record["turns"]] == expected
    asked = [t["question"] for r in records for t in r["turns"]]
    assert all(any(q == f"{p} {x}" for p in rp.PREFIX_PHRASES for x in QUESTIONS) for q in asked)
    after = [q.split(", ", 1)[1] for q in asked]  # "What does Elizabeth Bennet ...", never "what does ..."
    assert all(a.split()[0] in ("What", "Why", "How", "Where") and a.split()[1:4] == ["does", "Elizabeth", "Bennet"]
               for a in after)
    _, other_seed, _ = run(tmp_path, tokenizer, "c", prompts="released", seed=7)
    assert [t["question"] for r in other_seed for t in r["turns"]] != asked
    # The project preset's prefix lower-cases a leading "What": the released one does not.
    _, project, _ = run(tmp_path, tokenizer, "p", prompts="project")
    lowered = {f"According to the passage above, {q[0].lower()}{q[1:]}" for q in QUESTIONS}
    assert {t["question"] for r in project for t in r["turns"]} <= lowered


def filtered(kind, doc, prompt):
    """d0 plain; d1 a 3-question reply; d2 chosen said twice; d3 rejected said twice; d4 a refusal in the
    rejected answer; d5 an empty rejected answer; d6 a chosen answer cut at max_new_tokens."""
    if kind == "question":
        return (THREE if doc == "d1" else FOUR), "stop"
    special = {("d2", "chosen"): TWICE, ("d3", "rejected"): TWICE, ("d4", "rejected"): REFUSAL,
               ("d5", "rejected"): ""}
    if (doc, kind) in special:
        return special[doc, kind], "stop"
    if (doc, kind) == ("d6", "chosen"):
        return "The river runs past the city and then", "length"
    return plain(kind, doc, prompt)


@pytest.mark.parametrize("prompts", ["released", "project"])
def test_parser_and_filters_decide_and_count_by_preset(tmp_path, tokenizer, prompts):
    """One turn per document (d0-d6, see `filtered`). The released filters drop both answers said twice
    (every word repeated) and the refusal; the project's keep the repeated ones (share of repeated words 0.5,
    of repeated 3-grams 0.25, 4 content words) and drop the refusal. Its parser takes 3 questions
    (min_questions 1); the released one wants exactly 4. Truncation is handled the same in both."""
    stats, records, _ = run(tmp_path, tokenizer, "o", reply=filtered, n_docs=7, prompts=prompts, num_turns=1)
    released = prompts == "released"
    assert [r["id"] for r in records] == (["d0"] if released else ["d0", "d1", "d2", "d3"])
    if released:
        assert stats["dropped"] == {"empty": 1, "meaningless_rejected": 1, "meaningless_chosen": 1, "refusal": 1,
                                    "chosen_equals_rejected": 0, "truncated": 1, "short_prompt_too_long": 0}
        assert stats["turns_without_question"] == {"questions_not_4": 1}
        assert stats["questions_unparsable"] == 1 and stats["questions_parsed"] == 6
    else:
        assert stats["dropped"] == {"empty_answer": 1, "refusal": 1, "repetition": 0, "ngram_repetition": 0,
                                    "too_few_words": 0, "copied_answer": 0, "chosen_equals_rejected": 0,
                                    "truncated": 1, "short_prompt_too_long": 0}
        assert stats["turns_without_question"] == {} and stats["questions_parsed"] == 7
        assert records[2]["turns"][0]["chosen"] == TWICE and records[3]["turns"][0]["rejected"] == TWICE
    assert stats["hist"]["questions_per_reply"] == {"3": 1, "4": 6}
    # What `longpo generate inspect` prints: the summary of stats.json.
    text = inspect_pairs(tmp_path / "o", n=0)
    if released:
        assert ("dropped 5 {'empty': 1, 'meaningless_rejected': 1, 'meaningless_chosen': 1, 'refusal': 1, "
                "'truncated': 1}") in text
        assert "turns without a question {'questions_not_4': 1}" in text
    else:
        assert "dropped 3 {'empty_answer': 1, 'refusal': 1, 'truncated': 1}" in text
    saved = json.loads((tmp_path / "o" / "stats.json").read_text())["dropped"]
    assert saved == stats["dropped"]


def test_rejected_requests_are_single_turn_under_released_and_follow_earlier_turns_under_project(tmp_path,
                                                                                                  tokenizer):
    stats, records, backend = run(tmp_path, tokenizer, "r", prompts="released")
    rejected = backend.sent("rejected")
    assert len(rejected) == 8 and all(p.count("<|user|>") == 1 and p.count("<|assistant|>") == 1 for p in rejected)
    assert sorted(rejected) == sorted(chat(r["document"] + "\n\n" + t["question"]) for r in records
                                      for t in r["turns"])
    _, project, backend = run(tmp_path, tokenizer, "p", prompts="project")
    rejected = backend.sent("rejected")
    assert sorted(p.count("<|user|>") for p in rejected) == [1, 1, 2, 2]  # turn 2 after turn 1's question and answer
    first, second = project[0]["turns"]
    assert f"{first['question']}<|end|>\n<|assistant|>\n{first['rejected']}<|end|>\n<|user|>\n{second['question']}" \
        in next(p for p in rejected if p.count("<|user|>") == 2 and project[0]["document"] in p)


@pytest.mark.parametrize("prompts, kept", [("released", 3), ("project", 1)])
def test_a_dropped_turn_leaves_the_others_under_released_and_ends_the_document_under_project(tmp_path, tokenizer,
                                                                                              prompts, kept):
    """d0's second rejected answer is a refusal. Released rejected answers are asked on their own, so turns
    1, 3 and 4 stay; a project turn follows the earlier ones, so the document stops at turn 1."""
    rejected_calls = []

    def reply(kind, doc, prompt):
        if kind == "rejected" and doc == "d0":
            rejected_calls.append(prompt)
            if len(rejected_calls) == 2:
                return REFUSAL, "stop"
        return plain(kind, doc, prompt)

    stats, records, _ = run(tmp_path, tokenizer, "o", reply=reply, n_docs=1, prompts=prompts, num_turns=4)
    assert [len(r["turns"]) for r in records] == [kept] and stats["dropped"]["refusal"] == 1
    assert len(rejected_calls) == (4 if prompts == "released" else 2)
    assert all(REFUSAL != t["rejected"] for t in records[0]["turns"])


def test_released_asks_up_to_4_turns_unless_num_turns_is_set(tmp_path, tokenizer):
    """d0-d4 have 4 or 5 eligible chunks each (60-200 tokens): 4 turns each, at most 4."""
    stats, records, _ = run(tmp_path, tokenizer, "r", n_docs=5, prompts="released")
    assert [len(r["turns"]) for r in records] == [4, 4, 4, 4, 4] and stats["pairs_kept"] == 20
    assert stats["eligible_chunks"] == 21  # one document has a fifth chunk, not asked about
    _, records, _ = run(tmp_path, tokenizer, "r2", prompts="released", num_turns=2)
    assert [len(r["turns"]) for r in records] == [2] * 5
    _, records, _ = run(tmp_path, tokenizer, "p", prompts="project")
    assert [len(r["turns"]) for r in records] == [2] * 5


def test_record_document_is_the_chunks_joined_as_released(tmp_path, tokenizer):
    _, records, backend = run(tmp_path, tokenizer, "r", prompts="released")
    for record in records:
        paragraphs = backend.docs[record["id"]]
        chunks = chunk_document(tokenizer, "\n\n".join(paragraphs), 60, 200, "\n\n\n", block_separator=" ").chunks
        assert record["document"] == "\n\n\n".join(chunks) and len(chunks) >= 4
        assert "\n" not in record["document"].replace("\n\n\n", "") and record["document"].count("\n\n\n") == 3
        assert record["document"].replace("\n\n\n", " ") == " ".join(paragraphs)
        assert all(t["chunk"] in chunks for t in record["turns"])
    _, project, backend = run(tmp_path, tokenizer, "p", prompts="project")
    assert all(r["document"] == "\n\n".join(backend.docs[r["id"]]) for r in project)  # as today: the text itself


def test_prompts_key_is_checked():
    base = dict(model="m", corpus="c")
    assert Config(**base).prompts == "project" and Config(**base).num_turns == 2
    assert Config(**base).separator == "\n\n" and Config(**base, prompts="released").separator == "\n\n\n"
    assert Config(**base, prompts="released").num_turns == 4
    with pytest.raises(ValueError, match=r"prompts='paper': choose one of \['project', 'released'\]"):
        Config(**base, prompts="paper")
    with pytest.raises(ValueError, match=r"question_template, filters.min_words apply to prompts=project"):
        build_config(Config, {**base, "prompts": "released", "question_template": "small", "filters": {"min_words": 5}})


@pytest.mark.parametrize("prompts", ["project", "released"])
def test_num_rejected_3_under_either_preset_keeps_the_turns_of_m_1_with_three_sampled_answers(tmp_path, tokenizer,
                                                                                              prompts):
    """num_rejected=3 through each preset: the same turns as num_rejected=1 are kept, each with 3 distinct
    rejected answers, drawn at rejected_temperature with 3 seeds (the backend interface alone: the sampling
    each call carries)."""
    seen = []

    class Seeded(Scripted):
        def generate(self, prompts, sampling):
            out = super().generate(prompts, sampling)
            if any(self.kind_and_doc(p)[0] == "rejected" for p in prompts):
                seen.append((sampling.seed, sampling.temperature))
                return [f"{text[:-1]} draw {sampling.seed}." for text in out]
            return out

    def run_seeded(name, **extra):
        corpus = tmp_path / "c.jsonl"
        if not corpus.exists():
            write_corpus(corpus, 2)
        values = small(corpus=str(corpus), output_dir=str(tmp_path / name), prompts=prompts) | extra
        del values["num_turns"]
        values["filters"] = {}
        return generate(build_config(Config, values), backend=Seeded(tokenizer, corpus, plain),
                        ref_backend=Seeded(tokenizer, corpus, plain)), read_records(tmp_path / name)

    one_stats, ones = run_seeded("one")
    seen.clear()
    stats, threes = run_seeded("three", num_rejected=3, rejected_temperature=0.8)
    assert [(r["id"], [t["question"] for t in r["turns"]]) for r in threes] == \
           [(r["id"], [t["question"] for t in r["turns"]]) for r in ones]
    assert stats["pairs_kept"] == one_stats["pairs_kept"] and stats["rejected_kept"] == 3 * stats["pairs_kept"]
    assert sorted({s for s, _ in seen}) == [0, 1, 2] and {t for _, t in seen} == {0.8}
    for record in threes:
        for turn in record["turns"]:
            assert [a.rsplit(" ", 1)[1] for a in turn["rejected"]] == ["0.", "1.", "2."]
            assert turn["chosen"] in [x["chosen"] for r in ones if r["id"] == record["id"] for x in r["turns"]]

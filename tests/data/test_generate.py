"""`longpo generate` end to end: trainable records, exact reference, SIGKILL resume, shards and merge."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from torch.testing import assert_close

from longpo.backends.hf import HFBackend
from longpo.backends.openai import OpenAIBackend
from longpo.config import build_config
from longpo.data.corpus import CorpusError
from longpo.data.generate import Config, generate, merge
from longpo.data.records import read_records
from longpo.toy.tiny import build_tiny_model
from tests.data.ending import end_answers
from tests.data.loopback import LoopbackServer
from tests.data.test_reference import direct_logp

WORDS = "the river city book value number code name magic secret vault long short paper".split()
QUESTIONS = "1. What is the city?\n2. Which river is named?\n3. Who wrote the book?\n4. Why is the value secret?"
MARK = "Number the questions"  # a phrase of the default question template


def write_corpus(path, n_docs=6, seed=0, sizes=(20, 60)):
    rng = random.Random(seed)
    rows = [{"id": f"d{i}", "text": "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(*sizes))) + "."
                                               for _ in range(10))} for i in range(n_docs)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def small(**extra):
    values = dict(model="served", min_doc_tokens=100, max_doc_tokens=4000, min_chunk_tokens=60, max_chunk_tokens=200,
                  num_turns=2, documents_per_group=2, progress=False,
                  question_sampling={"temperature": 0.0, "max_new_tokens": 4},
                  answer_sampling={"temperature": 0.0, "max_new_tokens": 10},
                  filters={"min_words": 0, "max_repeat_ratio": 1.0, "refusal_phrases": [],
                           "max_repeated_ngram_ratio": 1.0, "drop_copied_answers": False,
                           "require_specific_question": False})
    values.update(extra)
    return values


class ScriptedQuestions(HFBackend):
    """The tiny random model cannot write questions; everything else is its own generation."""

    def generate(self, prompts, sampling):
        answers = iter(super().generate([p for p in prompts if MARK not in p], sampling))
        return [QUESTIONS if MARK in p else next(answers) for p in prompts]


def test_hf_end_to_end_records_are_trainable_with_exact_reference(tmp_path, tokenizer):
    # A random model never ends an answer, and an answer cut at max_new_tokens is dropped: end them.
    model = end_answers(build_tiny_model("llama", dtype=torch.float64, seed=7), tokenizer.eos_token_id)
    backend = ScriptedQuestions(model, tokenizer, reuse_across_calls=True)
    cfg = build_config(Config, small(corpus=str(write_corpus(tmp_path / "c.jsonl", 3)), output_dir=str(tmp_path / "o")))
    stats = generate(cfg, backend=backend, ref_backend=backend)
    records = read_records(tmp_path / "o", require_reference=True)
    assert len(records) == stats["records"] == 3
    assert stats["pairs_kept"] == sum(len(r["turns"]) for r in records) == 6
    assert stats["questions_parsed"] == stats["question_replies"] == 6
    for rec in records:
        for turn in rec["turns"]:
            assert turn["chunk"] in rec["document"]
            assert turn["question"].startswith("According to the passage above, ")
            for branch in ("chosen", "rejected"):
                expected = direct_logp(model, tokenizer, turn["chunk"], turn["question"], turn[branch])
                assert_close(turn[f"ref_{branch}_logp"], expected, rtol=1e-12, atol=1e-10)
    assert (tmp_path / "o" / "resolved_config.yaml").exists() and (tmp_path / "o" / "stats.json").exists()
    assert "pairs kept 6 in 3 records" in (tmp_path / "o" / "summary.txt").read_text()
    # Turn 2 of each document continued from turn 1's KV cache instead of prefilling the document again.
    document_tokens = sum(len(tokenizer(r["document"], add_special_tokens=False)["input_ids"]) for r in records)
    assert backend.stats["reused_prefix_tokens"] >= document_tokens


def canned(delay=0.0):
    """Questions for question prompts; an answer that depends on the prompt otherwise; echo log-probs."""

    def reply(payload, headers):
        time.sleep(delay)
        prompt = payload["prompt"]
        if isinstance(prompt, list):
            return 200, {"choices": [{"text": "", "logprobs": {"token_logprobs": [None] + [-0.25] * len(prompt)}}]}
        if MARK in prompt:
            return 200, {"choices": [{"text": QUESTIONS, "finish_reason": "stop"}]}
        h = hashlib.sha1(prompt.encode()).hexdigest()
        return 200, {"choices": [{"text": f"The answer is {h[:6]} near the {WORDS[int(h[6], 16) % len(WORDS)]}.",
                                  "finish_reason": "stop"}]}

    return reply


@pytest.fixture
def tokenizer_dir(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    return str(tmp_path / "tok")


def run_cli(cfg_values, tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg_values))
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.Popen([sys.executable, "-m", "longpo.cli", "generate", "--config", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def by_id(folder):
    records = read_records(folder, require_reference=True)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "duplicate pairs"
    return {r["id"]: r for r in records}


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_uninterrupted(tmp_path, tokenizer_dir):
    server = LoopbackServer(canned(delay=0.03))
    try:
        corpus = write_corpus(tmp_path / "c.jsonl", 10)
        values = small(corpus=str(corpus), backend="openai", tokenizer=tokenizer_dir,
                       backend_args={"base_url": server.url, "concurrency": 1, "backoff": 0.01})
        full = run_cli({**values, "output_dir": str(tmp_path / "full")}, tmp_path, "full")
        assert full.wait(timeout=300) == 0, full.stderr.read()

        killed_dir = tmp_path / "killed"
        proc = run_cli({**values, "output_dir": str(killed_dir)}, tmp_path, "killed")
        manifest = killed_dir / "manifest.json"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if manifest.exists() and len(json.loads(manifest.read_text())["done_groups"]) >= 1:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_at_kill = len(json.loads(manifest.read_text())["done_groups"])
        assert 1 <= done_at_kill < 5
        rerun = run_cli({**values, "output_dir": str(killed_dir)}, tmp_path, "killed")
        assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
        assert by_id(killed_dir) == by_id(tmp_path / "full")
        stats_full = json.loads((tmp_path / "full" / "stats.json").read_text())
        stats_killed = json.loads((killed_dir / "stats.json").read_text())
        assert stats_killed["pairs_kept"] == stats_full["pairs_kept"] and stats_killed["documents"] == 10
    finally:
        server.close()


def test_shards_partition_the_corpus_and_merge_dedups(tmp_path, tokenizer_dir):
    server = LoopbackServer(canned())
    try:
        corpus = write_corpus(tmp_path / "c.jsonl", 8)
        backend = OpenAIBackend("served", tokenizer_dir, base_url=server.url)

        def run(out, **extra):
            cfg = build_config(Config, small(corpus=str(corpus), output_dir=str(tmp_path / out), **extra))
            return generate(cfg, backend=backend, ref_backend=backend)

        run("all")
        run("s0", num_shards=2, shard_index=0)
        run("s1", num_shards=2, shard_index=1)
        ids0, ids1 = set(by_id(tmp_path / "s0")), set(by_id(tmp_path / "s1"))
        assert ids0 and ids1 and not ids0 & ids1
        stats = merge([str(tmp_path / "s0"), str(tmp_path / "s1"), str(tmp_path / "s1")], str(tmp_path / "merged"))
        assert by_id(tmp_path / "merged") == by_id(tmp_path / "all")
        assert stats["records"] == 8
        with pytest.raises(ValueError, match="shard_index: 0 -> 1"):  # the fingerprint refuses first
            run("s0", num_shards=2, shard_index=1)
    finally:
        server.close()


def test_out_of_bounds_and_repeated_documents_are_counted_and_empty_corpus_is_an_error(tmp_path, tokenizer_dir):
    server = LoopbackServer(canned())
    try:
        backend = OpenAIBackend("served", tokenizer_dir, base_url=server.url)
        corpus = write_corpus(tmp_path / "c.jsonl", 4)
        with open(corpus, "a") as f:
            f.write(json.dumps({"id": "tiny", "text": "too short."}) + "\n")
            f.write(json.dumps({"id": "huge", "text": " ".join(["river"] * 5000)}) + "\n")
            f.write(json.dumps({"id": "blank", "text": "   "}) + "\n")
            f.write(json.dumps({"id": "d0", "text": "a second document with the id of the first."}) + "\n")
        cfg = build_config(Config, small(corpus=str(corpus), output_dir=str(tmp_path / "o")))
        stats = generate(cfg, backend=backend, ref_backend=backend)
        assert stats["documents"] == 7 and stats["records"] == 4
        assert stats["skipped"] == {"too_short": 1, "too_long": 1, "empty": 1, "duplicate_id": 1}
        # Groups 2 and 3 kept nothing: no shard file for them, so the folder still reads.
        assert len(read_records(tmp_path / "o")) == 4 and len(list((tmp_path / "o").glob("*.jsonl"))) == 2
        (tmp_path / "empty.jsonl").write_text("")
        with pytest.raises(CorpusError, match="no documents"):
            generate(build_config(Config, small(corpus=str(tmp_path / "empty.jsonl"), output_dir=str(tmp_path / "e"))),
                     backend=backend, ref_backend=backend)
    finally:
        server.close()


class Recorder:
    """A scripted backend that notes every prompt it is asked about."""

    def __init__(self, tokenizer, name):
        self.tokenizer, self.name, self.prompts, self.scored = tokenizer, name, [], 0

    def generate(self, prompts, sampling):
        self.prompts += prompts
        self.finish_reasons = ["stop"] * len(prompts)
        return [QUESTIONS if MARK in p else f"The {self.name} model says {hashlib.sha1(p.encode()).hexdigest()[:8]}."
                for p in prompts]

    def score(self, sequences, masks):
        self.scored += len(sequences)
        return [-1.0] * len(sequences)

    def close(self):
        pass


@pytest.mark.parametrize("original_for_short_steps", [True, False])
def test_generator_answers_on_the_long_context_the_original_on_short_prompts(tmp_path, tokenizer,
                                                                              original_for_short_steps):
    """With a RoPE override the generator (new RoPE) writes only the rejected answers, unless told to do all."""
    generator, original = Recorder(tokenizer, "generator"), Recorder(tokenizer, "original")
    cfg = build_config(Config, small(corpus=str(write_corpus(tmp_path / "c.jsonl", 2)), output_dir=str(tmp_path / "o"),
                                     rope_theta=1e6, original_for_short_steps=original_for_short_steps))
    generate(cfg, backend=generator, ref_backend=original)
    records = read_records(tmp_path / "o", require_reference=True)
    turns = [t for r in records for t in r["turns"]]
    assert len(turns) == 4 and original.scored == 8  # the reference is always the original model
    assert all(t["rejected"].startswith("The generator") for t in turns)
    assert all(t["chosen"].startswith("The original" if original_for_short_steps else "The generator") for t in turns)
    long_prompts = [p for p in generator.prompts if any(r["document"] in p for r in records)]
    assert len(long_prompts) == 4
    assert len(generator.prompts) == (4 if original_for_short_steps else 12)


def test_server_error_and_timeout_mid_run_change_nothing(tmp_path, tokenizer_dir):
    """One rejected request fails with HTTP 500 and another stalls past the timeout; both are retried."""
    calm = canned()
    hits: dict[str, int] = {}

    def unreliable(payload, headers):
        prompt = payload["prompt"]
        hits[json.dumps(prompt)] = hits.get(json.dumps(prompt), 0) + 1
        long_prompt = isinstance(prompt, str) and len(prompt) > 1500  # a whole document, not a chunk
        if long_prompt and hits[json.dumps(prompt)] == 1:  # first try of each rejected request
            if len(hits) % 2:
                return 500, {"error": "overloaded"}
            time.sleep(0.6)  # past the client's 0.3 s timeout
        return calm(payload, headers)

    corpus = write_corpus(tmp_path / "c.jsonl", 4)
    outputs = {}
    for name, reply in (("calm", calm), ("flaky", unreliable)):
        server = LoopbackServer(reply)
        try:
            backend = OpenAIBackend("served", tokenizer_dir, base_url=server.url, timeout=0.3, backoff=0.01,
                                    concurrency=2)
            cfg = build_config(Config, small(corpus=str(corpus), output_dir=str(tmp_path / name)))
            generate(cfg, backend=backend, ref_backend=backend)
            outputs[name] = (by_id(tmp_path / name), backend.retries)
        finally:
            server.close()
    assert outputs["flaky"][0] == outputs["calm"][0] and len(outputs["calm"][0]) == 4
    assert outputs["calm"][1] == 0 and outputs["flaky"][1] >= 2


def test_num_rejected_2_samples_two_distinct_answers_per_turn_scored_and_trainable(tmp_path, tokenizer):
    """num_rejected=2 on the tiny HF model: every kept turn holds 2 distinct rejected answers sampled on the
    long document (answer j of turn 2 after answer j of turn 1), each with its exact short-prompt reference;
    the stats count M answers per kept turn, and the records pack as M = 2 pairs."""
    from longpo.data.records import tokenize_pair
    from longpo.train.packing import pack_pairs

    class Noting(ScriptedQuestions):
        prompts: list = []

        def generate(self, prompts, sampling):
            self.prompts += prompts
            return super().generate(prompts, sampling)

    model = end_answers(build_tiny_model("llama", dtype=torch.float64, seed=7), tokenizer.eos_token_id)
    backend = Noting(model, tokenizer)
    cfg = build_config(Config, small(corpus=str(write_corpus(tmp_path / "c.jsonl", 3)), output_dir=str(tmp_path / "o"),
                                     num_rejected=2))
    stats = generate(cfg, backend=backend, ref_backend=backend)
    records = read_records(tmp_path / "o", require_reference=True)
    turns = [t for r in records for t in r["turns"]]
    assert turns and stats["pairs_kept"] == len(turns) and stats["rejected_kept"] == 2 * len(turns)
    assert stats["dropped"]["too_few_rejected"] == stats["rejected_discarded"].get("duplicate_rejected", 0) == 0
    for turn in turns:
        assert len(turn["rejected"]) == 2 and turn["rejected"][0] != turn["rejected"][1]
        for answer, ref in zip(turn["rejected"], turn["ref_rejected_logp"]):
            assert_close(ref, direct_logp(model, tokenizer, turn["chunk"], turn["question"], answer),
                         rtol=1e-12, atol=1e-10)
    multi = [r for r in records if len(r["turns"]) == 2]
    assert multi, "no two-turn record to check the branches on"
    long_prompts = [p for p in backend.prompts if multi[0]["document"] in p and multi[0]["turns"][1]["question"] in p]
    for j in range(2):  # turn 2 of branch j follows answer j of turn 1
        assert sum(multi[0]["turns"][0]["rejected"][j] in p for p in long_prompts) == 1
    batch = pack_pairs([tokenize_pair(tokenizer, r) for r in records])
    assert batch.num_rejected == 2 and batch.ref_rejected.shape == (len(records), 2)
    assert f"rejected answers kept {2 * len(turns)} (2.0 per turn)" in (tmp_path / "o" / "summary.txt").read_text()
    from longpo.data.inspect import inspect_pairs

    shown = inspect_pairs(tmp_path / "o", n=1, width=200)
    assert "rejected 1 of 2 (ref log-prob" in shown and "rejected 2 of 2 (ref log-prob" in shown


def test_a_turn_without_m_distinct_rejected_answers_is_dropped_and_counted(tmp_path, tokenizer_dir):
    """A server whose answer depends on the prompt alone (not the seed) gives one answer however often it
    is asked: with num_rejected=2 every draw after the first repeats it, is discarded as duplicate_rejected,
    redrawn for rejected_retries rounds, and the turn is dropped as too_few_rejected."""
    server = LoopbackServer(canned())
    try:
        backend = OpenAIBackend("served", tokenizer_dir, base_url=server.url, backoff=0.01)
        cfg = build_config(Config, small(corpus=str(write_corpus(tmp_path / "c.jsonl", 2)),
                                         output_dir=str(tmp_path / "o"), num_rejected=2, rejected_retries=1))
        stats = generate(cfg, backend=backend, ref_backend=backend)
    finally:
        server.close()
    # the project preset stops a document at its first dropped turn: one first turn per document
    assert stats["pairs_kept"] == stats["records"] == 0
    assert stats["dropped"]["too_few_rejected"] == 2
    assert stats["rejected_discarded"]["duplicate_rejected"] == 2 * 2  # answer 2, in each of the 2 rounds
    assert stats["generated"]["rejected"] == 2 * (2 + 1)  # per turn: 2 draws, then 1 more round for answer 2


def test_num_rejected_above_1_needs_sampling():
    with pytest.raises(ValueError, match="num_rejected=3 needs rejected_temperature > 0"):
        build_config(Config, small(corpus="c.jsonl", num_rejected=3, rejected_temperature=0.0))


def test_near_duplicate_questions_within_a_document_are_dropped_and_counted(tmp_path, tokenizer):
    """Turn 2 is asked the same questions as turn 1 (reworded): the project preset drops the ones that
    near-duplicate turn 1's question (content-word overlap above filters.max_question_overlap) and counts
    them; at overlap 1 (disabled) nothing is dropped."""
    from longpo.data.filters import question_overlap

    assert question_overlap("What is the main idea of the passage?", "What is the main idea of this text?") == 1.0
    assert question_overlap("Who wrote the book?", "Which river is named?") == 0.0
    reworded = "1. What is the city here?\n2. What city is it?\n3. Which city is it?\n4. What is the city?"

    class SameQuestions(Recorder):
        def generate(self, prompts, sampling):
            return [reworded if MARK in p else text for p, text in zip(prompts, super().generate(prompts, sampling))]

    outputs = {}
    for overlap in (0.7, 1.0):
        cfg = build_config(Config, small(corpus=str(write_corpus(tmp_path / "c.jsonl", 2)),
                                         output_dir=str(tmp_path / f"o{overlap}"),
                                         filters={**small()["filters"], "max_question_overlap": overlap}))
        outputs[overlap] = generate(cfg, backend=SameQuestions(tokenizer, "m"), ref_backend=SameQuestions(tokenizer, "m"))
    strict, off = outputs[0.7], outputs[1.0]
    assert strict["questions_dropped"]["near_duplicate_question"] == 2 * 4  # turn 2's four, in both documents
    assert strict["turns_without_question"]["near_duplicate_questions_only"] == 2
    assert strict["pairs_kept"] == 2 and off["pairs_kept"] == 4
    assert off["questions_dropped"].get("near_duplicate_question", 0) == 0

"""HF backend: every fast path (shared prefill, KV kept across calls, left-padded batches) gives the
answers of the plain path, and a RoPE override changes the frequencies but not the weights."""

import pytest
import torch
from torch.testing import assert_close

from longpo.backends.base import Sampling
from longpo.backends.hf import HFBackend, load_model
from longpo.data.records import user_content
from longpo.toy.tiny import build_tiny_model

GREEDY = Sampling(temperature=0.0, max_new_tokens=6)
SAMPLED = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=8, seed=1)  # sensitive to every logit
PLAIN = 10**9  # min_shared_prefix no prompt reaches: every prompt is prefilled from scratch


class IdsBackend(HFBackend):
    """Answers as token ids: a random model's text decodes to look-alike replacement characters."""

    def _decode(self, ids):
        super()._decode(ids)
        eos = self.tokenizer.eos_token_id
        return " ".join(map(str, ids[: ids.index(eos) + 1] if eos in ids else ids))  # padding after eos dropped


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("llama", dtype=torch.float64, seed=2)  # a seed whose answers depend on the question


def chat(tok, messages):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def document(n_words=150):
    words = "the river city book value number code name magic secret vault".split()
    return " ".join(words[(i * 7) % len(words)] for i in range(n_words))


def test_shared_document_prefill_equals_separate_prefills(model, tokenizer):
    doc = document()
    questions = ["Question 0: where?", "Why is the city by the river, and who named it?", "Q?"]  # tails of 3 lengths
    prompts = [chat(tokenizer, [{"role": "user", "content": user_content(doc, q)}]) for q in questions]
    prompts += [chat(tokenizer, [{"role": "user", "content": "unrelated short prompt"}])]
    plain = IdsBackend(model, tokenizer, min_shared_prefix=PLAIN).generate(prompts, GREEDY)
    assert len(set(plain[:3])) > 1, "the test needs answers that depend on the question"
    for batch_size, batched in ((8, False), (8, True), (2, True)):  # one at a time, one batch, batches of 2 + 1
        fast = IdsBackend(model, tokenizer, batch_size=batch_size, batch_shared_greedy=batched)
        assert fast.generate(prompts, GREEDY) == plain, f"batch_size={batch_size}, batch_shared_greedy={batched}"
    # Sampled answers go one at a time from copies of the prefix cache.
    sampled = IdsBackend(model, tokenizer, min_shared_prefix=PLAIN).generate(prompts, SAMPLED)
    assert IdsBackend(model, tokenizer).generate(prompts, SAMPLED) == sampled
    doc_tokens = len(tokenizer(doc, add_special_tokens=False)["input_ids"])
    assert fast.stats["reused_prefix_tokens"] >= 2 * doc_tokens  # questions 2 and 3 skip the document


def assert_cache_is_fresh(model, kept):
    """The kept KV cache equals a fresh prefill of the tokens it claims to hold (a tiny random model's
    answers barely depend on the context, so the cache itself is compared)."""
    from transformers import DynamicCache

    ids, cache = kept._kept
    fresh = DynamicCache(config=model.config)
    with torch.no_grad():
        model.model(input_ids=torch.tensor([ids]), past_key_values=fresh, use_cache=True)
    assert cache.get_seq_length() == len(ids)
    for a, b in zip(cache.layers, fresh.layers):
        assert_close(a.keys, b.keys, rtol=1e-9, atol=1e-9)
        assert_close(a.values, b.values, rtol=1e-9, atol=1e-9)


def test_next_turn_continues_from_the_kept_cache(model, tokenizer):
    """Turn 2's prompt is turn 1's prompt + answer + question 2: only that tail is prefilled."""
    doc = document()
    plain = IdsBackend(model, tokenizer, min_shared_prefix=PLAIN)
    kept = IdsBackend(model, tokenizer, reuse_across_calls=True)
    messages = [{"role": "user", "content": user_content(doc, "What is the city?")}]
    for turn in range(3):
        prompt = chat(tokenizer, messages)
        answer = kept.generate([prompt], SAMPLED)[0]
        assert answer == plain.generate([prompt], SAMPLED)[0], f"turn {turn}"
        assert_cache_is_fresh(model, kept)
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": f"And question {turn}?"}]
    # Another first question on the same document: the kept cache is cut back to the document.
    sibling = chat(tokenizer, [{"role": "user", "content": user_content(doc, "Which river?")}])
    assert kept.generate([sibling], SAMPLED) == plain.generate([sibling], SAMPLED)
    assert_cache_is_fresh(model, kept)
    doc_tokens = len(tokenizer(doc, add_special_tokens=False)["input_ids"])
    assert kept.stats["reused_prefix_tokens"] >= 3 * doc_tokens
    assert kept.stats["prefill_tokens"] < plain.stats["prefill_tokens"] - 3 * doc_tokens


def test_left_padded_batch_equals_one_at_a_time(model, tokenizer):
    prompts = [chat(tokenizer, [{"role": "user", "content": "word " * n + "end"}]) for n in (1, 9, 30, 4)]
    batched = IdsBackend(model, tokenizer, batch_size=4).generate(prompts, GREEDY)
    single = [IdsBackend(model, tokenizer, batch_size=1).generate([p], GREEDY)[0] for p in prompts]
    assert batched == single


def test_sampled_answer_does_not_depend_on_its_neighbours(model, tokenizer):
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=8, seed=5)
    prompts = [chat(tokenizer, [{"role": "user", "content": f"tell me about item {i}"}]) for i in range(3)]
    backend = IdsBackend(model, tokenizer)
    together = backend.generate(prompts, sampling)
    assert together == [backend.generate([p], sampling)[0] for p in prompts]
    assert together[::-1] == backend.generate(prompts[::-1], sampling)


def test_rope_override_changes_frequencies_only(tmp_path, tokenizer):
    original = build_tiny_model("llama", dtype=torch.float32, seed=1)
    original.save_pretrained(tmp_path / "m")
    same = load_model(str(tmp_path / "m"), dtype="float32", device="cpu")
    long = load_model(str(tmp_path / "m"), dtype="float32", device="cpu", rope_theta=1e6, max_position_embeddings=65536)
    assert long.config.rope_parameters["rope_theta"] == 1e6 and long.config.max_position_embeddings == 65536
    dim = original.config.hidden_size // original.config.num_attention_heads
    expected = 1.0 / (1e6 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    assert_close(long.model.rotary_emb.inv_freq.double(), expected, rtol=1e-6, atol=0)
    assert_close(same.model.rotary_emb.inv_freq, original.model.rotary_emb.inv_freq)
    for (name, a), b in zip(original.state_dict().items(), long.state_dict().values()):
        if "rotary" not in name:
            assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match="not a local model folder"):
        load_model(str(tmp_path / "missing"))


def test_scoring_answers_of_one_short_prompt_shares_its_prefill(model, tokenizer):
    """score = sum_j log softmax(model(ids)[j-1])[ids[j]] over answer tokens j, equal with and without sharing."""
    from longpo.data.records import tokenize_short
    from tests.data.test_reference import direct_logp

    chunk, question = document(), "According to the passage above, what is the city?"
    answers = ["The city is by the river.", "It is the magic vault.", "Nobody knows the name."]
    seqs, masks = zip(*(tokenize_short(tokenizer, chunk, question, a) for a in answers))
    shared = HFBackend(model, tokenizer)
    scores = shared.score(list(seqs), list(masks))
    assert shared.stats["reused_prefix_tokens"] >= 2 * len(tokenizer(chunk, add_special_tokens=False)["input_ids"])
    assert scores == pytest.approx(HFBackend(model, tokenizer, min_shared_prefix=PLAIN).score(list(seqs), list(masks)),
                                   rel=1e-12)
    for answer, score in zip(answers, scores):
        assert_close(score, direct_logp(model, tokenizer, chunk, question, answer), rtol=1e-12, atol=1e-10)

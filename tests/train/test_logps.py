"""Fast paths equal plain paths: chunked log-probs vs full logits; packed pairs vs separate forwards.

HF's RMSNorm and RoPE compute in float32 even for float64 models, so parameter gradients agree
to float32 rounding (1e-6 relative) while the summed log-probs agree to float64 rounding.
"""

import copy

import pytest
import torch
from torch.testing import assert_close

from longpo.data.records import tokenize_pair
from longpo.toy.tiny import build_tiny_model
from longpo.train.attention import use_shared_prefix_attention
from longpo.train.logps import chunked_target_logps, forward_pairs, forward_pairs_plain
from longpo.train.packing import pack_pairs
from tests.conftest import make_record


def test_chunked_logps_equal_full_logits_values_and_grads():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False, dtype=torch.float64)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    w = torch.randn(37, dtype=torch.float64)
    full = torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None]).squeeze(-1)
    g_full = torch.autograd.grad((full * w).sum(), (hidden, head.weight))
    for chunk in (1, 5, 37, 100):
        fast = chunked_target_logps(hidden, head, targets, chunk_size=chunk)
        assert_close(fast, full)
        for g, gf in zip(torch.autograd.grad((fast * w).sum(), (hidden, head.weight)), g_full):
            assert_close(g, gf)


def test_chunked_logps_keep_no_logits_between_forward_and_backward():
    head = torch.nn.Linear(8, 1000, bias=False)
    hidden = torch.randn(64, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        chunked_target_logps(hidden, head, torch.zeros(64, dtype=torch.long), chunk_size=16)
    assert max(saved) < 16 * 1000, f"a saved tensor of {max(saved)} elements: logits were kept"


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("n_turns", [1, 2])
@pytest.mark.parametrize("nll_mode", ["full", "responses"])
def test_packed_equals_plain_values_and_grads(tokenizer, arch, n_turns, nll_mode):
    model = build_tiny_model(arch, dtype=torch.float64, num_heads=4, num_kv_heads=2, seed=3)
    records = [make_record(f"r{i}", n_turns=n_turns, seed=i) for i in range(3)]
    records[1]["turns"][0]["chosen_cut"] = True  # its end-of-turn token is in the sequence, in no target
    pairs = [tokenize_pair(tokenizer, r) for r in records]
    assert sum(pairs[1].chosen_unproduced) == 1 and pairs[0].chosen_unproduced is None
    plain = forward_pairs_plain(model, pairs, nll_mode)
    packed_model = copy.deepcopy(model)
    use_shared_prefix_attention(packed_model)
    fast = forward_pairs(packed_model, pack_pairs(pairs, nll_mode, pad_to_multiple_of=32), chunk_size=33)
    assert_close(fast.policy.chosen, plain.policy.chosen, rtol=1e-10, atol=1e-9)
    assert_close(fast.policy.rejected, plain.policy.rejected, rtol=1e-10, atol=1e-9)
    assert_close(fast.nll_sum, plain.nll_sum, rtol=1e-10, atol=1e-9)
    assert fast.nll_tokens == plain.nll_tokens
    assert fast.policy.chosen_tokens.tolist() == plain.policy.chosen_tokens.tolist() == [sum(p.chosen_mask) for p in pairs]
    assert fast.policy.rejected_tokens.tolist() == plain.policy.rejected_tokens.tolist() == [
        sum(p.rejected_mask) for p in pairs]

    def objective(out):  # touches every term with different weights
        return 0.3 * out.policy.chosen.sum() - 0.7 * out.policy.rejected.sum() + 0.05 * out.nll_sum

    g_plain = torch.autograd.grad(objective(plain), list(model.parameters()))
    g_fast = torch.autograd.grad(objective(fast), list(packed_model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), g_fast, g_plain):
        assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_full_nll_leaves_out_the_end_of_turn_a_cut_answer_never_generated(tokenizer, arch):
    model = build_tiny_model(arch, dtype=torch.float64, num_heads=4, num_kv_heads=2, seed=5)
    record = make_record("c", n_turns=2, seed=1)
    cut = copy.deepcopy(record)
    cut["turns"][0]["chosen_cut"] = True
    whole, trimmed = tokenize_pair(tokenizer, record), tokenize_pair(tokenizer, cut)
    assert whole.chosen_unproduced is None
    assert trimmed.prefix + trimmed.chosen == whole.prefix + whole.chosen  # the same tokens ...
    never = [t for t, n in zip(trimmed.chosen, trimmed.chosen_unproduced) if n]
    assert never == [tokenizer.eos_token_id]  # ... but turn 1's end-of-turn token is no target
    n_whole = pack_pairs([whole], "full").num_nll_tokens
    assert n_whole == len(whole.prefix) + len(whole.chosen) - 1  # every next-token target of the sequence
    assert pack_pairs([trimmed], "full").num_nll_tokens == n_whole - 1
    assert forward_pairs_plain(model, [trimmed], "full").nll_tokens == n_whole - 1
    assert pack_pairs([trimmed], "responses").num_nll_tokens == sum(trimmed.chosen_mask)


def several_rejected(record: dict, m: int) -> dict:
    """`record` with M distinct rejected answers per turn (answer 0 the original), the second one cut."""
    for t, turn in enumerate(record["turns"]):
        turn["rejected"] = [turn["rejected"]] + [f"Perhaps {7 * j + t} or the {'vault ' * j}code." for j in range(1, m)]
        turn["rejected_cut"] = [j == 1 for j in range(m)]
    return record


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@pytest.mark.parametrize("n_turns", [1, 2])
def test_three_rejected_answers_packed_equal_four_separate_forwards_values_and_grads(tokenizer, arch, n_turns):
    """The packing parity test with M = 3: [prefix | chosen | rejected_1 | rejected_2 | rejected_3] per pair,
    three pairs in one row, against M + 1 = 4 separate full-logit forwards per pair, float64. The rejected
    sums and counts come back (P, M); every parameter gradient of a weighted sum of all of them agrees."""
    model = build_tiny_model(arch, dtype=torch.float64, num_heads=4, num_kv_heads=2, seed=3)
    pairs = [tokenize_pair(tokenizer, several_rejected(make_record(f"r{i}", n_turns=n_turns, seed=i), 3))
             for i in range(3)]
    assert [p.num_rejected for p in pairs] == [3, 3, 3]
    plain = forward_pairs_plain(model, pairs, "full")
    packed_model = copy.deepcopy(model)
    use_shared_prefix_attention(packed_model)
    batch = pack_pairs(pairs, "full", pad_to_multiple_of=32)
    assert [len(s) for s in batch.layout.pairs] == [6, 6, 6]  # offset, prefix, chosen, 3 rejected
    fast = forward_pairs(packed_model, batch, chunk_size=33)
    assert fast.policy.rejected.shape == plain.policy.rejected.shape == (3, 3)
    assert_close(fast.policy.chosen, plain.policy.chosen, rtol=1e-10, atol=1e-9)
    assert_close(fast.policy.rejected, plain.policy.rejected, rtol=1e-10, atol=1e-9)
    assert_close(fast.nll_sum, plain.nll_sum, rtol=1e-10, atol=1e-9)
    assert fast.nll_tokens == plain.nll_tokens
    want = [[sum(m) for m in p.rejected_mask] for p in pairs]
    assert fast.policy.rejected_tokens.tolist() == plain.policy.rejected_tokens.tolist() == want
    uncut = several_rejected(make_record("r0", n_turns=n_turns, seed=0), 3)
    for turn in uncut["turns"]:
        del turn["rejected_cut"]
    # the cut second answer has no end-of-turn label (one per turn); the other answers are untouched
    assert [sum(m) for m in tokenize_pair(tokenizer, uncut).rejected_mask] == [want[0][0], want[0][1] + n_turns,
                                                                                want[0][2]]

    weights = torch.tensor([[-0.7, 0.2, -0.4]], dtype=torch.float64)  # a different weight per answer

    def objective(out):
        return 0.3 * out.policy.chosen.sum() + (weights * out.policy.rejected).sum() + 0.05 * out.nll_sum

    g_plain = torch.autograd.grad(objective(plain), list(model.parameters()))
    g_fast = torch.autograd.grad(objective(fast), list(packed_model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), g_fast, g_plain):
        assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_three_rejected_answers_under_flex_equal_separate_forwards(tokenizer):
    """The flex backend with M = 3 (on CPU FlexAttention runs forward only: values, float64)."""
    model = build_tiny_model("mistral", dtype=torch.float64, num_heads=4, num_kv_heads=2, seed=4)
    pairs = [tokenize_pair(tokenizer, several_rejected(make_record(f"r{i}", n_turns=2, seed=i), 3)) for i in range(2)]
    with torch.no_grad():
        plain = forward_pairs_plain(model, pairs, "full")
        use_shared_prefix_attention(model, "flex")
        fast = forward_pairs(model, pack_pairs(pairs, "full", pad_to_multiple_of=128), attention_backend="flex")
    assert_close(fast.policy.chosen, plain.policy.chosen, rtol=1e-10, atol=1e-9)
    assert_close(fast.policy.rejected, plain.policy.rejected, rtol=1e-10, atol=1e-9)
    assert_close(fast.nll_sum, plain.nll_sum, rtol=1e-10, atol=1e-9)


def test_one_rejected_answer_in_a_list_packs_as_the_string(tokenizer):
    """`rejected: ["x"]` is M = 1, token for token the record with `rejected: "x"`: (P,) statistics."""
    record = make_record("s", n_turns=2, seed=2)
    listed = copy.deepcopy(record)
    for turn in listed["turns"]:
        turn["rejected"] = [turn["rejected"]]
    a, b = pack_pairs([tokenize_pair(tokenizer, record)]), pack_pairs([tokenize_pair(tokenizer, listed)])
    assert a.input_ids.tolist() == b.input_ids.tolist() and a.layout == b.layout and b.num_rejected == 1
    assert all(torch.equal(getattr(a.targets, f), getattr(b.targets, f)) for f in ("src", "tgt", "slot", "nll"))


def test_pairs_with_different_numbers_of_rejected_answers_are_refused_in_one_batch(tokenizer):
    one = tokenize_pair(tokenizer, make_record("one", seed=1))
    three = tokenize_pair(tokenizer, several_rejected(make_record("three", seed=2), 3))
    with pytest.raises(ValueError, match=r"\[1, 3\] rejected answers in one batch"):
        pack_pairs([one, three])

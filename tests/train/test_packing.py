"""Shared-prefix layout and attention against a dense-mask SDPA on random inputs (float64)."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from longpo.data.records import tokenize_pair
from longpo.train.attention import shared_prefix_attention
from longpo.train.packing import SharedPrefixLayout, pack_pairs
from tests.conftest import make_record


def test_layout_mask_by_hand():
    # one pair: prefix 2, chosen 2, rejected 1, then one padding token
    mask = SharedPrefixLayout(pairs=((0, 2, 2, 1),), total_len=6).allowed().int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],  # chosen sees prefix + itself
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # rejected sees prefix + itself, never chosen
        [0, 0, 0, 0, 0, 1],  # padding
    ]


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_sdpa_spans_equal_dense_mask_values_and_grads(heads, kv_heads):
    torch.manual_seed(0)
    layout = SharedPrefixLayout(pairs=((0, 7, 3, 5), (15, 4, 1, 2), (22, 3, 4, 4)), total_len=36)
    q = torch.randn(1, heads, 36, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, kv_heads, 36, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, kv_heads, 36, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, heads, 36, 8, dtype=torch.float64)
    out = shared_prefix_attention(q, k, v, layout, scaling=0.3)
    rep = heads // kv_heads
    dense = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                           attn_mask=layout.allowed(), scale=0.3)
    real = 33  # the last three positions are padding
    assert_close(out[:, :, :real], dense[:, :, :real])
    grads = torch.autograd.grad((out[:, :, :real] * w[:, :, :real]).sum(), (q, k, v))
    dense_grads = torch.autograd.grad((dense[:, :, :real] * w[:, :, :real]).sum(), (q, k, v))
    for g, d in zip(grads, dense_grads):
        assert_close(g, d)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_forward_equals_sdpa_on_cpu():
    torch.manual_seed(1)
    layout = SharedPrefixLayout(pairs=((0, 70, 30, 20), (120, 40, 5, 3)), total_len=168)
    q, k, v = (torch.randn(1, 2, 168, 16) for _ in range(3))
    sdpa = shared_prefix_attention(q, k, v, layout, backend="sdpa")
    flex = shared_prefix_attention(q, k, v, layout, backend="flex")
    assert_close(flex[:, :, :168], sdpa, atol=1e-5, rtol=1e-5)


def test_pack_pairs_positions_and_targets(tokenizer):
    pairs = [tokenize_pair(tokenizer, make_record(f"r{i}", n_turns=1 + i, seed=i)) for i in range(2)]
    batch = pack_pairs(pairs, nll_mode="responses", pad_to_multiple_of=64)
    ids, pos = batch.input_ids[0].tolist(), batch.position_ids[0].tolist()
    assert batch.layout.total_len % 64 == 0 and len(ids) == batch.layout.total_len
    o = 0
    for pair, (off, p, c, r) in zip(pairs, batch.layout.pairs):
        assert off == o and (p, c, r) == (len(pair.prefix), len(pair.chosen), len(pair.rejected))
        assert ids[o : o + p + c + r] == pair.prefix + pair.chosen + pair.rejected
        assert pos[o : o + p + c + r] == list(range(p + c)) + list(range(p, p + r))
        o += p + c + r
    # With nll_mode="responses", every target is a response token and all chosen ones count in the NLL.
    t = batch.targets
    assert (t.slot >= 0).all()
    assert t.nll.sum() == sum(sum(p.chosen_mask) for p in pairs) == batch.num_nll_tokens
    assert (t.slot % 2 == 1).sum() == sum(sum(p.rejected_mask) for p in pairs)
    assert [t.tgt[t.slot == 1].tolist()] == [[tok for tok, m in zip(pairs[0].rejected, pairs[0].rejected_mask) if m]]
    assert pack_pairs(pairs, nll_mode="full").num_nll_tokens == sum(len(p.prefix) + len(p.chosen) - 1 for p in pairs)


def test_layout_mask_by_hand_with_two_rejected_branches():
    # prefix 2, chosen 1, rejected 2 and 1: each branch sees the prefix and itself only
    mask = SharedPrefixLayout(pairs=((0, 2, 1, 2, 1),), total_len=6).allowed().int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],  # chosen
        [1, 1, 0, 1, 0, 0],  # rejected 1
        [1, 1, 0, 1, 1, 0],
        [1, 1, 0, 0, 0, 1],  # rejected 2, never rejected 1
    ]
    assert SharedPrefixLayout(pairs=((0, 2, 1, 2, 1),), total_len=6).positions().tolist() == [0, 1, 2, 2, 3, 2]


@pytest.mark.parametrize("arch, window", [("llama", None), ("mistral", 5)])
def test_three_rejected_branches_on_one_prefix_equal_four_separate_forwards(arch, window):
    """[prefix | chosen | rejected_1 | rejected_2 | rejected_3] in one row, plus a second pair with M = 1,
    against M + 1 separate sequences prefix + branch through the model's own attention: hidden states
    and every parameter gradient, float64. With `window`, a sliding window shorter than the prefix."""
    import copy

    from longpo.toy.tiny import build_tiny_model
    from longpo.train.attention import LAYOUT_KWARG, use_shared_prefix_attention

    extra = {"sliding_window": window} if window else {}
    model = build_tiny_model(arch, dtype=torch.float64, num_heads=4, num_kv_heads=2, seed=7, **extra)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    rows = [[torch.randint(3, vocab, (n,), generator=g).tolist() for n in lens] for lens in ((9, 4, 3, 6, 2), (5, 3, 4))]
    ids, spans, o = [], [], 0
    for prefix, *branches in rows:
        ids += prefix + sum(branches, [])
        spans.append((o, len(prefix), *(len(b) for b in branches)))
        o = len(ids)
    layout = SharedPrefixLayout(pairs=tuple(spans), total_len=len(ids) + 3)  # 3 padding tokens
    packed_model = copy.deepcopy(model)
    use_shared_prefix_attention(packed_model)
    input_ids = torch.tensor([ids + [0, 0, 0]])
    hidden = packed_model.get_decoder()(input_ids=input_ids, position_ids=layout.positions()[None], use_cache=False,
                                        **{LAYOUT_KWARG: layout}).last_hidden_state[0]
    w = torch.randn(hidden.shape, generator=g, dtype=torch.float64)
    fast_obj, plain_obj = (hidden[: len(ids)] * w[: len(ids)]).sum(), 0.0
    for (o, p, *_), (prefix, *branches) in zip(layout.pairs, rows):
        start = o + p
        for k, branch in enumerate(branches):
            plain = model.get_decoder()(input_ids=torch.tensor([prefix + branch]), use_cache=False).last_hidden_state[0]
            assert_close(hidden[start : start + len(branch)], plain[p:], rtol=1e-10, atol=1e-10)
            if k == 0:
                assert_close(hidden[o : o + p], plain[:p], rtol=1e-10, atol=1e-10)
                plain_obj = plain_obj + (plain[:p] * w[o : o + p]).sum()
            plain_obj = plain_obj + (plain[p:] * w[start : start + len(branch)]).sum()
            start += len(branch)
    g_fast = torch.autograd.grad(fast_obj, list(packed_model.get_decoder().parameters()))
    g_plain = torch.autograd.grad(plain_obj, list(model.get_decoder().parameters()))
    for (name, _), a, b in zip(model.get_decoder().named_parameters(), g_fast, g_plain):
        assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")

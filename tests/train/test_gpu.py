"""CUDA paths of the training core: SDPA spans (flash / memory-efficient kernels) and compiled
FlexAttention against the plain path. Skipped without a GPU (CI has none); run on a lent GPU with
`pytest tests/train/test_gpu.py`.
"""

import copy
import time

import pytest
import torch
from torch.testing import assert_close

from longpo.data.records import TokenizedPair, tokenize_pair
from longpo.toy.tiny import build_tiny_model
from longpo.train.attention import use_shared_prefix_attention
from longpo.train.logps import forward_pairs, forward_pairs_plain
from longpo.train.packing import batch_to, pack_pairs
from tests.conftest import make_record

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _objective(out):
    return 0.3 * out.policy.chosen.sum() - 0.7 * out.policy.rejected.sum() + 0.05 * out.nll_sum


def _compare(model, pairs, backend, nll_mode="full", rtol=1e-4, atol=1e-3, grad_rtol=1e-3, grad_atol=1e-4):
    plain = forward_pairs_plain(model, pairs, nll_mode)
    packed_model = copy.deepcopy(model)
    use_shared_prefix_attention(packed_model, backend)
    batch = batch_to(pack_pairs(pairs, nll_mode, pad_to_multiple_of=128), "cuda")
    fast = forward_pairs(packed_model, batch, chunk_size=97, attention_backend=backend)
    assert_close(fast.policy.chosen, plain.policy.chosen, rtol=rtol, atol=atol)
    assert_close(fast.policy.rejected, plain.policy.rejected, rtol=rtol, atol=atol)
    assert_close(fast.nll_sum, plain.nll_sum, rtol=rtol, atol=atol)
    g_plain = torch.autograd.grad(_objective(plain), list(model.parameters()))
    g_fast = torch.autograd.grad(_objective(fast), list(packed_model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), g_fast, g_plain):
        assert_close(a.float(), b.float(), rtol=grad_rtol, atol=grad_atol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("n_turns", [1, 2])
def test_cuda_packed_equals_plain_float32(tokenizer, backend, arch, n_turns):
    with torch.device("cuda"):
        model = build_tiny_model(arch, dtype=torch.float32, num_heads=4, num_kv_heads=2, seed=3)
    pairs = [tokenize_pair(tokenizer, make_record(f"r{i}", n_turns=n_turns, seed=i)) for i in range(3)]
    _compare(model, pairs, backend)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_cuda_packed_close_to_plain_bfloat16(tokenizer, backend):
    """bf16 kernels differ from the plain path by rounding only: pair log-prob sums within 2%."""
    with torch.device("cuda"):
        model = build_tiny_model("llama", dtype=torch.bfloat16, num_heads=4, num_kv_heads=2, seed=3)
    pairs = [tokenize_pair(tokenizer, make_record(f"r{i}", n_turns=2, seed=i)) for i in range(3)]
    plain = forward_pairs_plain(model, pairs, "full")
    use_shared_prefix_attention(model, backend)
    batch = batch_to(pack_pairs(pairs, "full", pad_to_multiple_of=128), "cuda")
    fast = forward_pairs(model, batch, attention_backend=backend)
    assert_close(fast.policy.chosen, plain.policy.chosen, rtol=2e-2, atol=0.5)
    assert_close(fast.policy.rejected, plain.policy.rejected, rtol=2e-2, atol=0.5)


def test_cuda_flex_many_row_lengths_stay_compiled():
    """Rows of 12 different lengths (as a real corpus gives): values equal SDPA's at each, and no call
    after the first few is slow (a fallback to eager flex, past the recompile limit, would be)."""
    vocab = 512
    with torch.device("cuda"):
        model = build_tiny_model("llama", dtype=torch.float32, num_heads=4, num_kv_heads=2, seed=0,
                                 max_position_embeddings=8192)
    sdpa_model = copy.deepcopy(model)
    use_shared_prefix_attention(model, "flex")
    use_shared_prefix_attention(sdpa_model, "sdpa")
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(12):
        prefix = 700 + 211 * i
        ids = torch.randint(3, vocab, (prefix + 2 * 64,), generator=gen).tolist()
        pair = TokenizedPair(id=f"p{i}", prefix=ids[:prefix], chosen=ids[prefix:prefix + 64], chosen_mask=[True] * 64,
                             rejected=ids[prefix + 64:], rejected_mask=[True] * 64, ref_chosen_logp=-1.0,
                             ref_rejected_logp=-1.0)
        batch = batch_to(pack_pairs([pair], "full", pad_to_multiple_of=8), "cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        fast = forward_pairs(model, batch, attention_backend="flex")
        fast.nll_sum.backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        with torch.no_grad():
            ref = forward_pairs(sdpa_model, batch, attention_backend="sdpa")
        assert_close(fast.policy.chosen.detach(), ref.policy.chosen, rtol=1e-4, atol=1e-3)
        assert_close(fast.nll_sum.detach(), ref.nll_sum, rtol=1e-4, atol=1e-3)
    print("flex step seconds by row length:", [f"{t:.3f}" for t in times])
    assert max(times[4:]) < 5.0, f"late calls slow (recompiling or eager fallback): {times}"

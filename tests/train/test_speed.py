"""Speed options (`longpo/train/speed.py`) equal the current path, and the memory model (`longpo/train/memory.py`)
equals what autograd keeps.

Parity: for each option, the packed LongPO forward (`forward_pairs` on a `PackedBatch`) of a float64 tiny
Llama gives the same summed log-probs, NLL sum and parameter gradients as the same model without the
option. Recomputation replays the same float64 operations, so the tolerances are at float64 rounding.

Memory model: for a packed row the bytes `estimate_activation_bytes` counts equal the bytes of the
distinct storages autograd saves during the forward (seen through `saved_tensors_hooks`), exactly.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import longpo.train.memory as memory
import longpo.train.speed as speed
from longpo.config import load_config
from longpo.data.records import tokenize_pair
from longpo.toy.tiny import build_tiny_model
from longpo.train.attention import use_shared_prefix_attention
from longpo.train.logps import forward_hidden, forward_pairs
from longpo.train.memory import checkpoint_plan, estimate_activation_bytes
from longpo.train.packing import pack_pairs
from longpo.train.speed import apply_speed_options
from longpo.train.trainer import Config, Trainer
from tests.conftest import make_record

ROOT = Path(__file__).resolve().parents[2]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def objective(out):  # touches every term with different weights
    return 0.3 * out.policy.chosen.sum() - 0.7 * out.policy.rejected.sum() + 0.05 * out.nll_sum


def tiny(dtype=torch.float64, device="cpu", num_layers=3, **kw):
    with torch.device(device):
        model = build_tiny_model("llama", dtype=dtype, num_layers=num_layers, num_heads=4, num_kv_heads=2, seed=3, **kw)
    use_shared_prefix_attention(model)
    model.train()
    return model


def batches(tokenizer, sizes=((3, 1), (2, 2))):
    """Packed rows of different lengths: (pairs, turns) each."""
    out = []
    for n, turns in sizes:
        pairs = [tokenize_pair(tokenizer, make_record(f"r{n}{i}", n_turns=turns, seed=10 * n + i)) for i in range(n)]
        out.append(pack_pairs(pairs, "full", pad_to_multiple_of=32))
    return out


def run_pairs(model, batch, device="cpu"):
    from longpo.train.packing import batch_to

    out = forward_pairs(model, batch_to(batch, device), chunk_size=33)
    return out, torch.autograd.grad(objective(out), list(model.parameters()))


def assert_same(model, ref, batch, device="cpu", rtol=1e-10, atol=1e-12, grad_rtol=1e-10, grad_atol=1e-12):
    fast, g_fast = run_pairs(model, batch, device)
    plain, g_plain = run_pairs(ref, batch, device)
    for a, b in ((fast.policy.chosen, plain.policy.chosen), (fast.policy.rejected, plain.policy.rejected),
                 (fast.nll_sum, plain.nll_sum)):
        assert_close(a, b, rtol=rtol, atol=atol)
    for (name, _), a, b in zip(model.named_parameters(), g_fast, g_plain):
        assert_close(a.float(), b.float(), rtol=grad_rtol, atol=grad_atol, msg=lambda m, name=name: f"{name}: {m}")


def test_checkpoint_plan_names_the_layers():
    assert checkpoint_plan(4, "off") == [(False, False)] * 4
    assert checkpoint_plan(4, "full", every_k=3) == [(True, False)] * 4
    assert checkpoint_plan(5, "every_k", every_k=2) == [(True, False), (False, False)] * 2 + [(True, False)]
    assert checkpoint_plan(2, "mlp") == [(False, True)] * 2


OPTIONS = {
    "full": dict(activation_checkpointing="full"),
    "every_k": dict(activation_checkpointing="every_k", checkpoint_every_k=2),
    "mlp": dict(activation_checkpointing="mlp"),
    "offload": dict(offload_activations=True),
    "offload+full": dict(activation_checkpointing="full", offload_activations=True),
    "offload+mlp": dict(activation_checkpointing="mlp", offload_activations=True),
    "hf_gradient_checkpointing": dict(gradient_checkpointing=True),
    # tiles of 7 tokens: rows of 100-200 tokens end in a short tile
    "tiled": dict(mlp_tile_tokens=7),
    "tiled+full": dict(mlp_tile_tokens=7, activation_checkpointing="full"),
    "tiled+every_k": dict(mlp_tile_tokens=7, activation_checkpointing="every_k", checkpoint_every_k=2),
    "tiled+mlp": dict(mlp_tile_tokens=7, activation_checkpointing="mlp"),
    "tiled+offload+full": dict(mlp_tile_tokens=7, activation_checkpointing="full", offload_activations=True),
    "tiled+hf_gradient_checkpointing": dict(mlp_tile_tokens=7, gradient_checkpointing=True),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_option_equals_the_current_path_values_and_grads(tokenizer, name):
    ref = tiny()
    model = apply_speed_options(copy.deepcopy(ref), Config(**OPTIONS[name]))
    for batch in batches(tokenizer):
        assert_same(model, ref, batch)


@cuda
@pytest.mark.parametrize("name", list(OPTIONS))
def test_cuda_option_equals_the_current_path(tokenizer, name):
    """On CUDA (float32, no TF32): offload really copies to pinned host memory and back."""
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = tiny(torch.float32, "cuda")
    model = apply_speed_options(copy.deepcopy(ref), Config(**OPTIONS[name]))
    for batch in batches(tokenizer):
        assert_same(model, ref, batch, "cuda", rtol=1e-5, atol=1e-5, grad_rtol=1e-4, grad_atol=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "phi3"])
def test_tiled_mlp_equals_the_untiled_path_on_other_families(tokenizer, family):
    """Gemma-2's gelu-tanh MLP and Phi-3's fused gate_up_proj (tests/families.py configs), float64, with
    and without full checkpointing: values and every gradient equal the untiled model's."""
    from tests.families import build_family_model, float64_throughout

    ref = build_family_model(family)
    use_shared_prefix_attention(ref)
    ref.train()
    with float64_throughout():
        for options in (dict(mlp_tile_tokens=5), dict(mlp_tile_tokens=64, activation_checkpointing="full")):
            model = apply_speed_options(copy.deepcopy(ref), Config(**options))
            assert_same(model, ref, batches(tokenizer, sizes=((2, 2),))[0])


def test_tiled_mlp_refuses_mixtures_of_experts_in_one_line():
    from tests.families import build_family_model

    model = build_family_model("qwen3_moe")
    use_shared_prefix_attention(model)
    with pytest.raises(ValueError, match=r"^mlp_tile_tokens: Qwen3MoeSparseMoeBlock is a mixture of experts.*"
                                         r"set mlp_tile_tokens: 0$"):
        apply_speed_options(model, Config(mlp_tile_tokens=8))


def test_tiled_mlp_keeps_one_tile_of_intermediates():
    """What the tiling saves, seen through autograd's saved-tensor hooks on one MLP (D 16, I 64, T 40, tiles
    of 8): the untiled MLP saves its input and 4 T I values (gate, up, act(gate), act(gate) x up); tiled,
    the forward saves only its input (the tile views share its storage), and the backward rebuilds the
    MLP 8 tokens at a time."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    from longpo.toy.tiny import tiny_model_config

    mlp = LlamaMLP(tiny_model_config("llama", hidden_size=16, intermediate_size=64)).double()
    x = torch.randn(1, 40, 16, dtype=torch.float64, requires_grad=True)
    plain = mlp(x)
    sizes: list[int] = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        tiled = speed.tiled_forward(mlp.forward, 8)(x)
    assert [n for n in sizes if n != 16 * 64] == [8 * 16] * 5  # the 5 tile inputs (views of x), nothing of I
    assert_close(tiled, plain, rtol=1e-12, atol=1e-14)
    rebuilt: list[int] = []  # tokens of each MLP call the backward makes (the checkpoints' recomputations)
    hook = mlp.gate_proj.register_forward_hook(lambda mod, args, out: rebuilt.append(out.shape[-2]))
    g = torch.autograd.grad(tiled.sum(), [x, *mlp.parameters()])
    hook.remove()
    assert rebuilt == [8] * 5, rebuilt
    for a, b in zip(g, torch.autograd.grad(plain.sum(), [x, *mlp.parameters()])):
        assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_ours_full_equals_transformers_gradient_checkpointing(tokenizer):
    """`activation_checkpointing: full` (ours) and `gradient_checkpointing: true` (transformers') agree."""
    base = tiny()
    ours = apply_speed_options(copy.deepcopy(base), Config(activation_checkpointing="full"))
    hf = apply_speed_options(copy.deepcopy(base), Config(gradient_checkpointing=True))
    assert_same(ours, hf, batches(tokenizer)[0])


def test_speed_options_apply_once():
    model = apply_speed_options(tiny(), Config(activation_checkpointing="full"))
    with pytest.raises(RuntimeError, match="already applied"):
        apply_speed_options(model, Config(activation_checkpointing="full"))


@pytest.mark.slow
def test_compiled_layers_equal_eager_and_do_not_recompile_per_length(tokenizer, monkeypatch):
    """compile_layers with and without checkpointing (every_k, k=2: layer 0 recomputed, layer 1 not) on
    rows of two lengths, then inside transformers' checkpointing. CPU: the aot_eager backend (dynamo + AOT autograd, dynamic shapes, the graph
    break around the attention), because inductor's C++ codegen takes minutes on these CPUs; inductor
    is checked on CUDA below. The compiled graphs are counted after the first length and the last."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(speed, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    ref = tiny(num_layers=2)
    model = apply_speed_options(copy.deepcopy(ref), Config(compile_layers=True, activation_checkpointing="every_k",
                                                           checkpoint_every_k=2))
    rows = batches(tokenizer, sizes=((1, 1), (2, 1)))
    assert rows[0].num_tokens != rows[1].num_tokens
    assert_same(model, ref, rows[0])
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0, "nothing was compiled"
    for batch in rows[1:]:
        assert_same(model, ref, batch)
    assert counters["stats"]["unique_graphs"] == graphs, "a new row length recompiled"
    assert model.config._attn_implementation.endswith("_eager_in_compile")
    # The benchmark's `compile` row: compiled layers inside transformers' own checkpointing.
    hf = apply_speed_options(copy.deepcopy(ref), Config(compile_layers=True, gradient_checkpointing=True))
    assert_same(hf, ref, rows[1])
    torch._dynamo.reset()


@cuda
@pytest.mark.parametrize("keys", [dict(), dict(activation_checkpointing="full"), dict(activation_checkpointing="mlp"),
                                  dict(gradient_checkpointing=True)], ids=["off", "full", "mlp", "hf"])
def test_cuda_compiled_layers_inductor(tokenizer, keys):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch._dynamo.reset()
    ref = tiny(torch.float32, "cuda")
    model = apply_speed_options(copy.deepcopy(ref), Config(compile_layers=True, **keys))
    for batch in batches(tokenizer):
        assert_same(model, ref, batch, "cuda", rtol=1e-4, atol=1e-4, grad_rtol=1e-3, grad_atol=1e-4)
    torch._dynamo.reset()


@cuda
def test_cuda_liger_kernels_equal_the_current_path(tokenizer, monkeypatch):
    """Liger replaces RoPE, RMSNorm and the MLP class module-wide, so the plain results are computed before
    it is applied, and the module's names are restored afterwards (monkeypatch) for the other tests."""
    pytest.importorskip("liger_kernel")
    from transformers.models.llama import modeling_llama

    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = tiny(torch.float32, "cuda")
    rows = batches(tokenizer)
    plain = [run_pairs(ref, batch, "cuda") for batch in rows]
    model = apply_speed_options(copy.deepcopy(ref), Config(liger_kernels=True))
    for batch, (p_out, p_grads) in zip(rows, plain):
        out, grads = run_pairs(model, batch, "cuda")
        assert_close(out.policy.chosen, p_out.policy.chosen, rtol=1e-4, atol=1e-4)
        assert_close(out.policy.rejected, p_out.policy.rejected, rtol=1e-4, atol=1e-4)
        assert_close(out.nll_sum, p_out.nll_sum, rtol=1e-4, atol=1e-4)
        for (name, _), a, b in zip(model.named_parameters(), grads, p_grads):
            assert_close(a, b, rtol=1e-3, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_liger_kernels_without_gpu_or_package_say_what_to_do():
    with pytest.raises(RuntimeError, match=r"liger_kernels: true needs .*(longpo\[liger\]|CUDA GPU).*liger_kernels: false"):
        apply_speed_options(tiny(), Config(liger_kernels=True))


@pytest.mark.parametrize("kw, message", [
    (dict(activation_checkpointing="some"), "activation_checkpointing='some': choose one of"),
    (dict(activation_checkpointing="every_k", checkpoint_every_k=0), "checkpoint_every_k=0 must be at least 1"),
    (dict(gradient_checkpointing=True, activation_checkpointing="mlp"), "set gradient_checkpointing: false"),
    (dict(gradient_checkpointing=True, offload_activations=True), "set gradient_checkpointing: false"),
    (dict(liger_kernels=True, sp_size=2), "liger_kernels: false, or sp_size: 1"),
    (dict(mlp_tile_tokens=-1), "mlp_tile_tokens=-1 must not be negative"),
    (dict(mlp_tile_tokens=8, compile_layers=True), "set compile_layers: false, or mlp_tile_tokens: 0"),
])
def test_bad_combinations_say_what_to_change(kw, message):
    with pytest.raises(ValueError, match=message):
        Config(**kw)


# ---------------------------------------------------------------- memory model


def saved_bytes(model, batch) -> int:
    """Bytes of the distinct storages autograd saves in `forward_hidden`, weights excluded, plus the RoPE
    cos / sin that checkpointed layers hold by reference (keyword arguments are kept outside the hooks)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    rope: list = []
    hook = model.get_decoder().rotary_emb.register_forward_hook(lambda mod, args, out: rope.extend(out))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward_hidden(model, batch)
    hook.remove()
    for t in rope:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode, k", [("off", 1), ("full", 1), ("every_k", 2), ("mlp", 1)])
@pytest.mark.parametrize("shape", [dict(hidden_size=64, intermediate_size=128), dict(hidden_size=96, intermediate_size=200)])
def test_memory_model_equals_what_autograd_saves(tokenizer, dtype, mode, k, shape):
    """Per decoder layer, in bytes (b = dtype bytes, T row tokens, see `layer_saved_bytes`):
        T (2 (D (4 + 2 b) + 4) + (3 Dq + 2 Dkv) b + 4 H + 4 I b)
        + 2 Dkv b x (gathered key/value rows) + b x (lower-right mask entries, CPU SDPA only)
    kept whole, or T D b when the layer is recomputed, or less its 4 I b T when its MLP is; plus the ids,
    cos / sin and the final norm (`model_saved_bytes`; forward_hidden has no head: targets=0)."""
    model = apply_speed_options(tiny(dtype, **shape), Config(activation_checkpointing=mode, checkpoint_every_k=k))
    batch = batches(tokenizer, sizes=((2, 2),))[0]
    est = estimate_activation_bytes(model.config, batch.layout, mode, every_k=k, dtype_bytes=dtype.itemsize,
                                    targets=0, device="cpu")
    assert saved_bytes(model, batch) == est.saved


@pytest.mark.parametrize("mode", ["off", "full"])
def test_memory_model_of_the_tiled_mlp_equals_what_autograd_saves(tokenizer, mode):
    """Tiled MLP (tiles of 16 tokens): every layer that is kept whole keeps all but its 4 I b per token, as
    with MLP checkpointing (the tiles' inputs are views of the input the norm's output already is)."""
    model = apply_speed_options(tiny(torch.float32), Config(activation_checkpointing=mode, mlp_tile_tokens=16))
    batch = batches(tokenizer, sizes=((2, 2),))[0]
    est = estimate_activation_bytes(model.config, batch.layout, mode, dtype_bytes=4, targets=0, device="cpu",
                                    mlp_tile_tokens=16)
    assert saved_bytes(model, batch) == est.saved


def test_parameter_count_from_config_numbers_equals_the_model():
    """`memory.parameter_count` (torch-free, for `longpo plan`) equals the parameters transformers builds, for
    Llama (tied and untied), Mistral and Qwen2 (q / k / v biases) shapes."""
    from transformers import AutoModelForCausalLM

    from longpo.toy.tiny import tiny_model_config

    for arch, kw in (("llama", {}), ("mistral", {}), ("qwen2", {}), ("llama", {"tie_word_embeddings": True})):
        cfg = tiny_model_config(arch, hidden_size=96, intermediate_size=200, num_heads=6, num_kv_heads=2, **kw)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        assert memory.parameter_count(cfg) == sum(p.numel() for p in model.parameters()), (arch, kw)


def test_offloaded_layers_keep_nothing_on_the_device(tokenizer):
    """With offload_activations every tensor a decoder layer saves goes through save_on_cpu's hooks (the
    innermost hooks win), so an outer hook sees only what lies outside the layers."""
    model = apply_speed_options(tiny(torch.float32), Config(offload_activations=True))
    batch = batches(tokenizer, sizes=((2, 1),))[0]
    est = estimate_activation_bytes(model.config, batch.layout, "off", offload=True, dtype_bytes=4, targets=0,
                                    device="cpu")
    off = estimate_activation_bytes(model.config, batch.layout, "off", dtype_bytes=4, targets=0,
                                    device="cpu")
    assert est.host == off.saved - est.saved > 0
    assert saved_bytes(model, batch) == est.saved


def test_memory_model_by_hand_and_the_order_of_the_modes():
    """Mistral-7B shape (D 4096, I 14336, 32 / 8 heads of 128), bf16, one causal token, per layer:
        norms 2 (4096 (4 + 4) + 4) = 65,544;  MLP 4 x 14336 x 2 = 114,688;
        attention q and o_proj input 2 x 4096 x 2, span output 4096 x 2 + lse 4 x 32, keys / values:
          cuda (repeated to 32 heads) 2 x 4096 x 2 = 16,384   -> 41,088, layer 221,320
          cpu  (8 kv heads)           2 x 1024 x 2 =  4,096   -> 28,800, layer 209,032
    At 64K tokens: off > every_k(2) > mlp > full in kept bytes (the MLP is more than half a layer), and
    offload keeps no layer activations on the device."""
    from transformers import MistralConfig

    cfg = MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=32000)
    assert sum(memory.layer_saved_bytes(cfg, 1, 2, "cuda").values()) == 65544 + 114688 + 41088
    assert sum(memory.layer_saved_bytes(cfg, 1, 2, "cpu").values()) == 65544 + 114688 + 28800
    saved = {m: estimate_activation_bytes(cfg, 65536, m, every_k=2).saved for m in ("off", "mlp", "every_k", "full")}
    assert saved["off"] > saved["every_k"] > saved["mlp"] > saved["full"], saved
    full = estimate_activation_bytes(cfg, 65536, "full")
    assert full.saved - 32 * 65536 * 4096 * 2 == estimate_activation_bytes(cfg, 65536, "full", offload=True).saved
    # tiled MLP, tiles of 4096 tokens: the recomputed layer loses its MLP but for one tile, the MLP backward's
    # buffers shrink from 2 T I b to 2 t I b (+ T D b of the tiles' input gradients); what is kept between
    # forward and backward does not change
    tiled = estimate_activation_bytes(cfg, 65536, "full", mlp_tile_tokens=4096)
    assert tiled.saved == full.saved
    assert full.recompute - tiled.recompute == (65536 - 4096) * 114688
    assert (full.backward, tiled.backward) == (2 * 65536 * 14336 * 2, 2 * 4096 * 14336 * 2 + 65536 * 4096 * 2)


@cuda
@pytest.mark.parametrize("mode", ["off", "full", "mlp"])
def test_cuda_memory_model_against_allocated_bytes(mode):
    """On CUDA (no masks materialised): the bytes allocated by the forward and still held before the
    backward are within 10% of the estimate (allocator rounding, kernel extras such as a padded lse)."""
    model = apply_speed_options(tiny(torch.bfloat16, "cuda", hidden_size=256, intermediate_size=768),
                                Config(activation_checkpointing=mode))
    from longpo.data.records import TokenizedPair
    from longpo.train.packing import batch_to

    ids = torch.randint(3, 500, (4096,)).tolist()
    pair = TokenizedPair(id="m", prefix=ids[:3072], chosen=ids[3072:3584], chosen_mask=[True] * 512,
                         rejected=ids[3584:], rejected_mask=[True] * 512, ref_chosen_logp=0.0, ref_rejected_logp=0.0)
    batch = batch_to(pack_pairs([pair], "full"), "cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    hidden = forward_hidden(model, batch)
    held = torch.cuda.memory_allocated() - before - hidden.numel() * hidden.element_size()
    est = estimate_activation_bytes(model.config, batch.layout, mode, targets=0)
    assert held == pytest.approx(est.saved, rel=0.1), (held, est)


# ---------------------------------------------------------------- `longpo train` with the options


def train_tiny(out: Path, overrides: list[str]) -> list[dict]:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    base = ["tiny_records=8", "max_steps=2", "num_epochs=1", "progress_bar=false", "save_steps=0", "seed=3",
            f"output_dir={out}"]
    Trainer(load_config(Config, ROOT / "longpo" / "recipes" / "tiny.yaml", base + overrides)).train()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_longpo_train_with_speed_options_matches_the_default_run(tmp_path):
    """The tiny recipe for two steps, default vs MLP checkpointing with offloaded activations: the same
    losses and gradient norms (float32; the options only change what is kept and recomputed)."""
    plain = train_tiny(tmp_path / "plain", [])
    src = tmp_path / "plain"
    fast = train_tiny(tmp_path / "fast", [f"model={src / 'original_model'}", f"train_file={src / 'tiny_records.jsonl'}",
                                          "activation_checkpointing=mlp", "offload_activations=true"])
    assert [r["step"] for r in fast] == [1, 2]
    for a, b in zip(plain, fast):
        for key in ("loss", "nll", "pref_loss", "grad_norm"):
            assert math.isfinite(b[key]) and b[key] == pytest.approx(a[key], rel=1e-5), key


@pytest.mark.slow
def test_longpo_train_with_compiled_layers_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "aot_eager")  # inductor on these CPUs: minutes
    torch._dynamo.reset()
    rows = train_tiny(tmp_path / "compiled", ["compile_layers=true", "activation_checkpointing=every_k",
                                              "checkpoint_every_k=2", "tiny_records=2", "max_steps=1"])
    torch._dynamo.reset()
    assert math.isfinite(rows[-1]["loss"])


@pytest.mark.parametrize("tokens, measured_gib", [(16384, 31.5), (32768, 36.5), (65536, 49.4)])
def test_memory_model_predicts_the_measured_h200_peaks(tokens, measured_gib):
    """The only GPU memory measured so far (README, GPU throughput, 2026-11-30: one H200, Mistral-7B shape,
    bf16 weights and gradients, no optimizer state, transformers' checkpointing of every layer, one pair
    with two 512-token answers): `estimate_peak_bytes` of the full mode is within 3% of each peak."""
    from transformers import AutoModelForCausalLM

    from longpo.toy.tiny import tiny_model_config
    from longpo.train.memory import estimate_peak_bytes
    from longpo.train.packing import SharedPrefixLayout

    cfg = tiny_model_config("mistral", vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
                            num_kv_heads=8, intermediate_size=14336)
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    layout = SharedPrefixLayout(pairs=((0, tokens - 1024, 512, 512),), total_len=tokens)
    peak = estimate_peak_bytes(estimate_activation_bytes(cfg, layout, "full"), params) / 2**30
    assert peak == pytest.approx(measured_gib, rel=0.03)


# ---------------------------------------------------------------- the benchmarks' CPU side


def load_benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_throughput_plans_its_rows_and_refuses_bad_ones(capsys):
    bench = load_benchmark("gpu_throughput")
    bench.main(["--dry-run", "--compare-plain", "32768"])
    plan = capsys.readouterr().out
    assert "plain" in plan and "[16384, 32768]" in plan and "trl+liger" in plan
    for options in bench.ROWS.values():  # every row's keys pass the trainer's validation
        if options is not None:
            Config(**options)
    for argv in (["--rows", "fastest"], ["--lengths", "1000"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)


def test_memory_model_table_prints(capsys):
    load_benchmark("memory_model").main(["--lengths", "16384", "65536"])
    out = capsys.readouterr().out
    assert out.count("\n| 16384 |") == 1 and "OOM" in out and "fits" in out


def test_memory_model_longest_lengths_print(capsys):
    """The estimate the docs quote: with every option (full checkpointing, tiled MLP, offloaded activations
    and states) a Mistral-7B shape reaches 512K tokens on one 80 GiB GPU; without the tiled MLP it does not."""
    load_benchmark("memory_model").main(["--longest", "--gpu-gib", "80"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| Mistral-7B | 1 |"))
    full_offloaded, everything = [int(c.strip().rstrip("K")) for c in row.split("|")[-3:-1]]
    assert full_offloaded < 512 <= everything, row


@pytest.mark.slow
def test_sequence_parallel_with_recomputed_offloaded_layers_equals_one_process(tmp_path):
    """`longpo train sp_size=2` on 2 gloo ranks with activation_checkpointing: full and offload_activations
    (the backward re-runs each layer's Ulysses all-to-alls from offloaded inputs) writes the same metrics as
    one process without the options (float64, 2 AdamW steps; the recipe of tests/train/test_parallel.py)."""
    from tests.train.test_parallel import train_one_and_sp2

    rows = train_one_and_sp2(tmp_path, "activation_checkpointing=full", "offload_activations=true")
    assert len(rows["one"]) == len(rows["sp2"]) == 2
    for a, b in zip(rows["one"], rows["sp2"]):
        for key in ("loss", "nll", "pref_loss", "grad_norm", "rewards/margin"):
            assert b[key] == pytest.approx(a[key], rel=1e-10, abs=1e-12), f"step {a['step']} {key}: {b[key]} != {a[key]}"


@pytest.mark.slow
def test_sequence_parallel_with_a_tiled_mlp_equals_one_process(tmp_path):
    """`longpo train sp_size=2` with the tiled MLP (tiles of 5 tokens of each rank's shard) and full
    checkpointing writes the same metrics as one process without either (float64, 2 AdamW steps)."""
    from tests.train.test_parallel import train_one_and_sp2

    rows = train_one_and_sp2(tmp_path, "mlp_tile_tokens=5", "activation_checkpointing=full")
    assert len(rows["one"]) == len(rows["sp2"]) == 2
    for a, b in zip(rows["one"], rows["sp2"]):
        for key in ("loss", "nll", "pref_loss", "grad_norm", "rewards/margin"):
            assert b[key] == pytest.approx(a[key], rel=1e-10, abs=1e-12), f"step {a['step']} {key}: {b[key]} != {a[key]}"

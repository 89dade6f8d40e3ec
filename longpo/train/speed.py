"""Training speed options, applied to a loaded Hugging Face causal LM from outside (no model code edited).

    activation_checkpointing  off | full | every_k | mlp: which activations the backward recomputes
    offload_activations       what the decoder layers keep for the backward lives in host memory
    compile_layers            torch.compile per decoder layer, dynamic lengths, attention left eager
    liger_kernels             Liger's fused RMSNorm / SwiGLU / RoPE (triton, CUDA only)

Every option rebinds `forward` on module INSTANCES (the way Liger patches an instance), so parameter
names, state dicts, exported models and the shared-prefix attention registered by `attention.py` /
`parallel.py` are untouched. The wrappers nest as offload(checkpoint(compiled(forward))): the checkpoint
keeps only the layer input, which save_on_cpu then moves to the host; the recompute in the backward runs
the compiled code again. Checkpointing sits inside any hooks a sharding wrapper puts on the layer's
`__call__` (FSDP2, ZeRO-3), as torchtitan's checkpoint_wrapper under fully_shard does.

Why not transformers' own `gradient_checkpointing_enable` (its `every_n_layers` selects the same layers
as every_k): its `offload` argument is missing from 5.16, the oldest transformers this package admits;
it cannot checkpoint a sub-module such as the MLP; and it runs the sharding hooks inside the recomputed
function. `gradient_checkpointing: true`
keeps calling it (today's path, unchanged); `activation_checkpointing: full` is ours and equal to it in
values and gradients (tests/train/test_speed.py).

Memory model (`estimate_activation_bytes`): the bytes a step keeps for the backward on the device, per
mode, counted from what autograd saves in a Llama-style layer on the fast attention path; see README.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from longpo.train.attention import set_attention
from longpo.train.config import CHECKPOINT_MODES, check_speed_options  # noqa: F401 (re-exported)
from longpo.train.packing import SharedPrefixLayout

_WRAPPED = "_longpo_speed_wrapped"
COMPILE_BACKEND = "inductor"  # tests on CPU swap in "aot_eager": inductor's C++ codegen takes minutes there


def checkpoint_plan(num_layers: int, mode: str, every_k: int = 1) -> list[tuple[bool, bool]]:
    """Per decoder layer: (recompute the whole layer, recompute only its MLP).

    every_k checkpoints layers 0, k, 2k, ... (the same layers as transformers' every_n_layers)."""
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"activation checkpointing mode {mode!r}: choose one of {list(CHECKPOINT_MODES)}")
    k = 1 if mode == "full" else every_k
    return [(mode in ("full", "every_k") and i % k == 0, mode == "mlp") for i in range(num_layers)]


def _pin() -> bool:
    return torch.cuda.is_available()


def _wrap_forward(module: torch.nn.Module, *, recompute: bool = False, offload: bool = False,
                  compile_dynamic: bool = False) -> None:
    """Rebind `module.forward` as offload(checkpoint(compiled(current forward))), each part optional."""
    if getattr(module, _WRAPPED, False):
        raise RuntimeError(f"{type(module).__name__}: speed options were already applied to this module; "
                           f"apply them once, to a freshly loaded model")
    fn = module.forward  # bound; Liger's instance patch when liger_kernels ran first
    if compile_dynamic:
        # dynamic=True: lengths are symbolic from the first compile, so a new row length reuses the code.
        fn = torch.compile(fn, dynamic=True, backend=COMPILE_BACKEND)
    if recompute:
        inner = fn

        def fn(*args, **kwargs):
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    if offload:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        inner_off = fn

        def fn(*args, **kwargs):
            with torch.autograd.graph.save_on_cpu(pin_memory=_pin(), device_type=device_type):
                return inner_off(*args, **kwargs)

    module.forward = fn
    setattr(module, _WRAPPED, True)


def _eager_attention(model: Any) -> None:
    """Keep the model's attention function out of torch.compile: the shared-prefix attention loops over the
    layout's spans in Python, so tracing it would specialise (and recompile) on every layout. The layer
    compiles around it (norm, projections, RoPE before; o_proj, residual, norm, MLP after)."""
    name = model.config._attn_implementation
    if name.endswith("_eager_in_compile"):
        return
    fn = ALL_ATTENTION_FUNCTIONS.get(name)
    if fn is None:  # "sdpa" / "eager" live outside the interface's registry
        if name != "sdpa":
            raise ValueError(f"compile_layers: attention {name!r} is not a registered function; use sdpa or "
                             f"longpo's shared-prefix attention")
        fn = sdpa_attention_forward
    AttentionInterface.register(f"{name}_eager_in_compile", torch.compiler.disable(fn))
    set_attention(model, f"{name}_eager_in_compile")


def apply_liger_kernels(model: Any) -> None:
    """Liger's fused RMSNorm, SwiGLU and RoPE on this model instance; the log-probs stay ours (chunked)."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as e:
        raise RuntimeError(f"liger_kernels: true needs the liger-kernel package ({e}); install it with "
                           f"pip install 'longpo[liger]', or set liger_kernels: false") from e
    device = next(model.parameters()).device
    if not torch.cuda.is_available() or device.type == "meta":
        raise RuntimeError("liger_kernels: true needs a CUDA GPU (Liger's triton kernels do not run on CPU): "
                           "set liger_kernels: false on this machine")
    model_type = model.config.model_type
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if apply is None:
        raise ValueError(f"liger_kernels: Liger has no kernels for model_type {model_type!r}; "
                         f"set liger_kernels: false")
    kwargs = dict(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    accepted = inspect.signature(apply).parameters
    apply(model=model, **{k: v for k, v in kwargs.items() if k in accepted})


def apply_speed_options(model: Any, cfg: Any) -> Any:
    """Apply a train config's speed keys to a loaded causal LM, in place; returns the model.

    Call once, after the attention is set (`parallelize`) and before an accelerate / DeepSpeed wrapper."""
    if cfg.gradient_checkpointing:  # today's path, unchanged
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.liger_kernels:
        apply_liger_kernels(model)
    if cfg.compile_layers:
        _eager_attention(model)
    layers = model.get_decoder().layers
    plan = checkpoint_plan(len(layers), cfg.activation_checkpointing, cfg.checkpoint_every_k)
    for layer, (whole, mlp) in zip(layers, plan):
        if mlp:
            _wrap_forward(layer.mlp, recompute=True)
        if whole or cfg.offload_activations or cfg.compile_layers:
            _wrap_forward(layer, recompute=whole, offload=cfg.offload_activations, compile_dynamic=cfg.compile_layers)
    return model


# --------------------------------------------------------------------------------------------
# Memory model


@dataclass(frozen=True)
class ActivationBytes:
    """Device bytes kept between forward and backward (`saved`), the extra peak of rebuilding one
    checkpointed (or offloaded) region in the backward (`recompute`), the backward's own gradient
    buffers inside one layer (`backward`: the MLP's, its largest), and the bytes kept on the host."""

    saved: int
    recompute: int
    host: int
    backward: int = 0

    @property
    def peak(self) -> int:
        return self.saved + self.recompute + self.backward


def estimate_peak_bytes(act: ActivationBytes, params: int, weight_bytes: float = 2, grad_bytes: float = 2,
                        optimizer_bytes: float = 0) -> int:
    """Device peak of a training step: weights + optimizer state + the larger of (activations kept,
    gradients) + one recomputed region + the backward's buffers. The kept activations are freed layer by
    layer while the gradients fill up, so their sum is largest at one end of the backward."""
    weights = params * (weight_bytes + optimizer_bytes)
    return int(weights + max(act.saved, params * grad_bytes) + act.recompute + act.backward)


def _spans(row: int | SharedPrefixLayout) -> tuple[int, int, int, int, int]:
    """(row tokens, tokens inside attention spans (not padding), key rows over all spans, key/value rows
    gathered by concatenation, query x key entries of lower-right masks)."""
    if isinstance(row, int):  # one plain causal sequence: one span, nothing gathered
        return row, row, row, 0, 0
    spanned = keys_all = kv = masks = 0
    for q0, q1, ranges in row.spans():
        keys = sum(b - a for a, b in ranges)
        spanned, keys_all = spanned + q1 - q0, keys_all + keys
        if len(ranges) > 1:  # a branch over [prefix; branch]: SDPA gets the concatenated keys / values
            kv += keys
            masks += (q1 - q0) * keys
    return row.total_len, spanned, keys_all, kv, masks


def layer_saved_bytes(config: Any, row: int | SharedPrefixLayout, dtype_bytes: int = 2,
                      device: str = "cuda") -> dict[str, int]:
    """Bytes one Llama / Mistral / Qwen2 decoder layer saves for its backward when nothing is recomputed,
    by part, for a packed row (a `SharedPrefixLayout`, or a token count for one causal sequence), on the
    shared-prefix SDPA path of `attention.py` on `device` ("cuda" or "cpu").

    With b = dtype_bytes, D hidden, I MLP width, Dq = heads x head_dim, Dkv = kv_heads x head_dim, per token:
      norms      2 x (float32 copy of the input 4 D, normalised input b D, weighted output b D, rsqrt 4)
      attention  q after RoPE (Dq), the span outputs (Dq) and their contiguous copy for o_proj (Dq), at b;
                 the log-sum-exp per head, float32 (span outputs and log-sum-exp only for tokens inside a
                 span: padding gets zeros that nothing saves); and the keys / values SDPA saves:
        cpu, or one kv head per query head: k after RoPE and v (2 Dkv b per token), plus 2 Dkv b per
                 key/value row a branch span gathers ([prefix; branch] is concatenated), plus the
                 lower-right causal mask CPU SDPA builds per branch span (q x keys at b)
        cuda with grouped-query heads: each span's keys and values repeated to Dq (the kernels want equal
                 head counts), 2 Dq b per key row of every span, no mask
      mlp        gate, up, silu(gate), silu(gate) x up: 4 I at b
    The layer's own input is the previous part's output.
    """
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device={device!r}: the memory model knows 'cuda' and 'cpu'")
    tokens, spanned, keys_all, kv, masks = _spans(row)
    d, inter, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    dq, dkv, b = heads * head_dim, config.num_key_value_heads * head_dim, dtype_bytes
    if device == "cuda" and dq != dkv:
        keys_values = keys_all * 2 * dq * b
    else:
        keys_values = tokens * 2 * dkv * b + kv * 2 * dkv * b + (masks * b if device == "cpu" else 0)
    return {
        "norms": tokens * 2 * (d * (4 + 2 * b) + 4),
        "attention": tokens * 2 * dq * b + spanned * (dq * b + 4 * heads) + keys_values,
        "mlp": tokens * 4 * inter * b,
    }


def model_saved_bytes(config: Any, row: int | SharedPrefixLayout, targets: int | None = None,
                      dtype_bytes: int = 2) -> int:
    """Bytes saved outside the decoder layers: the input ids (int64, for the embedding), RoPE cos and sin (b x head_dim each),
    the final norm (float32 input copy, normalised input, rsqrt) and the chunked head's inputs
    (`targets` x D; default one per token)."""
    tokens = _spans(row)[0]
    d, b = config.hidden_size, dtype_bytes
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    targets = tokens if targets is None else targets
    return tokens * (8 + 2 * head_dim * b + d * (4 + b) + 4) + targets * d * b


def estimate_activation_bytes(config: Any, row: int | SharedPrefixLayout, mode: str = "off", *,
                              every_k: int = 1, offload: bool = False, dtype_bytes: int = 2,
                              targets: int | None = None, device: str = "cuda") -> ActivationBytes:
    """Activation memory of one packed row by checkpointing mode (layers chosen by `checkpoint_plan`):
        layer kept         sum of `layer_saved_bytes`
        layer recomputed   its input (b D per token) kept; the backward rebuilds one layer at a time
        MLP recomputed     the MLP's 4 I b dropped; the backward rebuilds one MLP at a time
        offload            what the layers keep moves to the host; one layer's share comes back at a time
    plus `model_saved_bytes`; `backward` = 2 T I b. Not counted here: weights, gradients and optimizer
    states (`estimate_peak_bytes` adds them), one chunk of logits (`logps.auto_chunk_size`), attention
    kernel workspace.
    """
    parts = layer_saved_bytes(config, row, dtype_bytes, device)
    tokens = _spans(row)[0]
    layer, mlp = sum(parts.values()), parts["mlp"]
    layer_input = tokens * config.hidden_size * dtype_bytes
    kept = rebuilt = 0
    for recompute_layer, recompute_mlp in checkpoint_plan(config.num_hidden_layers, mode, every_k):
        if recompute_layer:
            kept, rebuilt = kept + layer_input, max(rebuilt, layer)
        elif recompute_mlp:
            kept, rebuilt = kept + layer - mlp, max(rebuilt, mlp)
        else:
            kept += layer
    fixed = model_saved_bytes(config, row, targets, dtype_bytes)
    # The MLP's backward holds three T x I gradients at once (of the product, then of silu(gate) and of up)
    # after freeing the saved product its down_proj no longer needs: net 2 T I b above the kept bytes.
    grads = 2 * tokens * config.intermediate_size * dtype_bytes
    if offload:
        back = max(layer_input if mode in ("full", "every_k") else 0, layer - (mlp if mode == "mlp" else 0))
        return ActivationBytes(saved=fixed, recompute=max(rebuilt, back), host=kept, backward=grads)
    return ActivationBytes(saved=fixed + kept, recompute=rebuilt, host=0, backward=grads)

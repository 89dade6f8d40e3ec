"""The memory model of a training step, torch-free: what autograd keeps for the backward, and the device peak.

    layer_saved_bytes / model_saved_bytes   bytes a Llama / Mistral / Qwen2 layer (and the rest of the
                                            model) saves for the backward, by part, counted from autograd
    estimate_activation_bytes               by speed option: checkpointing mode, offload, tiled MLP
    estimate_peak_bytes                     + weights, gradients, optimizer state: the device peak
    parameter_count                         the parameters, from config.json's numbers

`config` is anything with transformers' config attribute names (a `PretrainedConfig`, or config.json read
into a namespace by `longpo plan`), and a row is a token count or a layout with `spans()` and `total_len`
(`packing.SharedPrefixLayout`), so `longpo plan` uses this without importing torch. On CPU the saved bytes
equal what autograd saves, exactly (tests/train/test_speed.py); the CUDA peak of full checkpointing is
within 3% of three H200 measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from longpo.train.config import CHECKPOINT_MODES


def checkpoint_plan(num_layers: int, mode: str, every_k: int = 1) -> list[tuple[bool, bool]]:
    """Per decoder layer: (recompute the whole layer, recompute only its MLP).

    every_k checkpoints layers 0, k, 2k, ... (the same layers as transformers' every_n_layers)."""
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"activation checkpointing mode {mode!r}: choose one of {list(CHECKPOINT_MODES)}")
    k = 1 if mode == "full" else every_k
    return [(mode in ("full", "every_k") and i % k == 0, mode == "mlp") for i in range(num_layers)]


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


def _spans(row: Any) -> tuple[int, int, int, int, int]:
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


def layer_saved_bytes(config: Any, row: Any, dtype_bytes: int = 2,
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


def model_saved_bytes(config: Any, row: Any, targets: int | None = None,
                      dtype_bytes: int = 2) -> int:
    """Bytes saved outside the decoder layers: the input ids (int64, for the embedding), RoPE cos and sin (b x head_dim each),
    the final norm (float32 input copy, normalised input, rsqrt) and the chunked head's inputs
    (`targets` x D; default one per token)."""
    tokens = _spans(row)[0]
    d, b = config.hidden_size, dtype_bytes
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    targets = tokens if targets is None else targets
    return tokens * (8 + 2 * head_dim * b + d * (4 + b) + 4) + targets * d * b


def estimate_activation_bytes(config: Any, row: Any, mode: str = "off", *,
                              every_k: int = 1, offload: bool = False, dtype_bytes: int = 2,
                              targets: int | None = None, device: str = "cuda",
                              mlp_tile_tokens: int = 0) -> ActivationBytes:
    """Activation memory of one packed row by checkpointing mode (layers chosen by `checkpoint_plan`):
        layer kept         sum of `layer_saved_bytes`
        layer recomputed   its input (b D per token) kept; the backward rebuilds one layer at a time
        MLP recomputed     the MLP's 4 I b dropped; the backward rebuilds one MLP at a time
        tiled MLP          (`mlp_tile_tokens` t > 0) as MLP recomputed, in every layer and inside a recomputed
                           layer too, but the backward rebuilds one tile, 4 t I b, and its buffers are 2 t I b
                           plus the tiles' input gradients (T D b)
        offload            what the layers keep moves to the host; one layer's share comes back at a time
    plus `model_saved_bytes`; `backward` = 2 T I b (2 t I b + T D b tiled). Not counted here: weights, gradients and
    optimizer states (`estimate_peak_bytes` adds them), one chunk of logits (`logps.auto_chunk_size`),
    attention kernel workspace.
    """
    parts = layer_saved_bytes(config, row, dtype_bytes, device)
    tokens = _spans(row)[0]
    layer, mlp = sum(parts.values()), parts["mlp"]
    tile = min(mlp_tile_tokens, tokens) if mlp_tile_tokens else tokens  # tokens of one MLP call
    mlp_call = 4 * tile * config.intermediate_size * dtype_bytes  # what one (tile's) MLP call rebuilds
    no_mlp = mode == "mlp" or bool(mlp_tile_tokens)  # layers kept whole keep all but their MLP
    layer_input = tokens * config.hidden_size * dtype_bytes
    kept = rebuilt = 0
    for recompute_layer, _ in checkpoint_plan(config.num_hidden_layers, mode, every_k):
        if recompute_layer:
            kept, rebuilt = kept + layer_input, max(rebuilt, layer - mlp + mlp_call if mlp_tile_tokens else layer)
        elif no_mlp:
            kept, rebuilt = kept + layer - mlp, max(rebuilt, mlp_call)
        else:
            kept += layer
    fixed = model_saved_bytes(config, row, targets, dtype_bytes)
    # The MLP's backward holds three T x I gradients at once (of the product, then of silu(gate) and of up)
    # after freeing the saved product its down_proj no longer needs: net 2 T I b above the kept bytes.
    # Tiled: 2 t I b, plus the tiles' input gradients, T D b, which split's backward joins after the last tile.
    grads = 2 * tile * config.intermediate_size * dtype_bytes + (layer_input if mlp_tile_tokens else 0)
    if offload:
        back = max(layer_input if mode in ("full", "every_k") else 0, layer - (mlp if no_mlp else 0))
        return ActivationBytes(saved=fixed, recompute=max(rebuilt, back), host=kept, backward=grads)
    return ActivationBytes(saved=fixed + kept, recompute=rebuilt, host=0, backward=grads)


def ulysses_size(sp_size: int, num_heads: int) -> int:
    """Ranks that split the heads (Ulysses) in an SP group: sp_size itself up to the head count, past it the
    largest divisor of sp_size not above the head count; the sp_size / u groups of u split the sequence
    (`parallel.split_sp_group`). Here, torch-free, because `longpo plan` needs it too."""
    return max(d for d in range(1, min(sp_size, num_heads) + 1) if sp_size % d == 0)


def parameter_count(config: Any) -> int:
    """Parameters of a Llama / Mistral / Qwen2-style causal LM from its config numbers: embeddings (and an
    untied head), per layer q / k / v / o (Qwen2's q / k / v biases, `attention_bias`), a gated MLP of three
    D x I matrices (`mlp_bias`), two norms, and the final norm."""
    d, inter, heads, layers = (config.hidden_size, config.intermediate_size, config.num_attention_heads,
                               config.num_hidden_layers)
    head_dim = getattr(config, "head_dim", None) or d // heads
    dq, dkv = heads * head_dim, (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    attention_bias = bool(getattr(config, "attention_bias", False))
    qkv_bias = attention_bias or getattr(config, "model_type", "") == "qwen2"
    attention = d * (dq + 2 * dkv) + dq * d + qkv_bias * (dq + 2 * dkv) + attention_bias * d
    mlp = 3 * d * inter + bool(getattr(config, "mlp_bias", False)) * (2 * inter + d)
    embeddings = config.vocab_size * d * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return embeddings + layers * (attention + mlp + 2 * d) + d

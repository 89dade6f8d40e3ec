"""Shared-prefix attention, registered with transformers' AttentionInterface (no model code edited).

Each branch of a packed pair attends to its prefix and to itself only (see `packing.py`). The
core, `shared_prefix_attention`, works on full-sequence q/k/v for whatever heads it is given, so
Ulysses sequence parallel wraps it with an all-to-all before and after (`parallel.py`).

Backends:
  sdpa: one SDPA call per span (prefix: causal; branch: causal aligned to the last key over
        [prefix; branch], via `causal_lower_right`), no T x T mask; CPU and GPU (flash/efficient
        kernels on CUDA). The reference path for every test.
  flex: FlexAttention with a block mask from the layout, compiled on GPU (CPU: forward only).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from longpo.train.config import ATTENTION_BACKENDS as BACKENDS
from longpo.train.packing import SharedPrefixLayout

LAYOUT_KWARG = "longpo_layout"
BLOCK_MASK_KWARG = "longpo_block_mask"


def _repeat_heads(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    # (B, Hkv, T, D) -> (B, Hkv * n_rep, T, D), grouped-query heads next to each other
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def _sdpa_spans(q, k, v, layout: SharedPrefixLayout, scaling: float | None) -> torch.Tensor:
    n_rep = q.shape[1] // k.shape[1]
    # CPU SDPA handles grouped-query heads itself; CUDA's lower-right kernels want equal head counts.
    gqa_native = q.device.type == "cpu"
    outs, end = [], 0
    for q0, q1, kv_ranges in layout.spans():
        assert q0 == end, f"layout spans must tile the row in order (gap at {end}..{q0})"
        kk = torch.cat([k[:, :, a:b] for a, b in kv_ranges], dim=2) if len(kv_ranges) > 1 else k[:, :, q0:q1]
        vv = torch.cat([v[:, :, a:b] for a, b in kv_ranges], dim=2) if len(kv_ranges) > 1 else v[:, :, q0:q1]
        if not gqa_native:
            kk, vv = _repeat_heads(kk, n_rep), _repeat_heads(vv, n_rep)
        lq, lk = q1 - q0, kk.shape[2]
        mask = None if lq == lk else causal_lower_right(lq, lk)
        outs.append(
            F.scaled_dot_product_attention(
                q[:, :, q0:q1], kk, vv, attn_mask=mask, is_causal=mask is None, scale=scaling,
                enable_gqa=gqa_native and n_rep > 1,
            )
        )
        end = q1
    if end < q.shape[2]:  # padding rows attend nowhere; their outputs never reach a loss
        outs.append(q.new_zeros(q.shape[0], q.shape[1], q.shape[2] - end, v.shape[3]))
    return torch.cat(outs, dim=2)


def build_block_mask(layout: SharedPrefixLayout, device: torch.device | str) -> Any:
    """FlexAttention block mask of a layout: same pair, causal, prefix or own branch."""
    pair, branch = layout.token_ids(device)

    def mask_mod(b, h, q_idx, kv_idx):
        same = (pair[q_idx] == pair[kv_idx]) & (pair[q_idx] >= 0)
        visible = (branch[kv_idx] == 0) | (branch[kv_idx] == branch[q_idx])
        return (same & visible & (kv_idx <= q_idx)) | (q_idx == kv_idx)

    t = layout.total_len
    # Eager mask creation materialises T x T booleans (256 GB at 512K): on CUDA it is compiled,
    # which evaluates mask_mod block by block.
    compile_mask = torch.device(device).type == "cuda"
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=t, KV_LEN=t, device=device, _compile=compile_mask)


_compiled_flex = None


def _flex(q, k, v, block_mask, scaling: float | None) -> torch.Tensor:
    global _compiled_flex
    fn = flex_attention
    if q.device.type == "cuda":
        if _compiled_flex is None:
            # Not dynamic=False: every new row length would recompile, and past dynamo's recompile
            # limit flex_attention silently falls back to eager (a dense T x T score matrix). The
            # default compiles the first shape statically and the next one with a symbolic length.
            _compiled_flex = torch.compile(flex_attention)
        fn = _compiled_flex
    return fn(q, k, v, block_mask=block_mask, scale=scaling, enable_gqa=q.shape[1] != k.shape[1])


def _common_dtype(q, k, v):
    """Under autocast RoPE leaves q/k in float32 and v in bf16; SDPA with a bias object checks dtypes
    before autocast would cast them, so cast here to the autocast dtype (or q's dtype)."""
    device_type = q.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else q.dtype
    return q.to(dtype), k.to(dtype), v.to(dtype)


def shared_prefix_attention(
    q: torch.Tensor,  # (B, H, T, D)
    k: torch.Tensor,  # (B, Hkv, T, D)
    v: torch.Tensor,  # (B, Hkv, T, D)
    layout: SharedPrefixLayout,
    scaling: float | None = None,
    backend: str = "sdpa",
    block_mask: Any = None,
) -> torch.Tensor:
    """Attention under a shared-prefix layout over the full sequence; returns (B, H, T, D)."""
    assert q.shape[2] == layout.total_len, f"q has {q.shape[2]} positions, layout {layout.total_len}"
    assert q.shape[1] % k.shape[1] == 0, f"{q.shape[1]} query heads not a multiple of {k.shape[1]} kv heads"
    q, k, v = _common_dtype(q, k, v)
    if backend == "sdpa":
        return _sdpa_spans(q, k, v, layout, scaling)
    if backend == "flex":
        return _flex(q, k, v, block_mask if block_mask is not None else build_block_mask(layout, q.device), scaling)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")


def make_hf_attention(backend: str):
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layout = kwargs.get(LAYOUT_KWARG)
        if layout is None:  # plain use of the model (generation, evaluation): ordinary causal SDPA

            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                          dropout=dropout, **kwargs)
        assert dropout == 0.0, "shared-prefix attention does not implement attention dropout"
        out = shared_prefix_attention(query, key, value, layout, scaling, backend, kwargs.get(BLOCK_MASK_KWARG))
        return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)

    return attention


def attention_name(backend: str) -> str:
    return f"longpo_{backend}"


def register_shared_prefix_attention(backend: str = "sdpa", name: str | None = None, fn: Any = None) -> str:
    """Register the attention function under `longpo_<backend>` (or `name`) and return the name."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    name = name or attention_name(backend)
    AttentionInterface.register(name, fn or make_hf_attention(backend))
    return name


def set_attention(model: Any, name: str) -> None:
    """Point a model (and its sub-configs) at a registered attention function."""
    model.set_attn_implementation(name)
    assert model.config._attn_implementation == name, f"model kept attention {model.config._attn_implementation!r}"


def use_shared_prefix_attention(model: Any, backend: str = "sdpa") -> None:
    """Switch `model` to shared-prefix attention; without a layout kwarg it behaves as plain SDPA."""
    set_attention(model, register_shared_prefix_attention(backend))


# What `attention_backend: auto` means, on every device. On an H200 (Mistral-7B shape, bf16, 16K tokens)
# SDPA's flash kernel per span took 2.52 s a step and compiled flex 2.78 s, after 80 s of compilation
# (benchmarks/gpu_throughput.py, 2026-11-30); flex stays available as `attention_backend: flex`.
DEFAULT_BACKEND = "sdpa"

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

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface

from longpo.train.config import ATTENTION_BACKENDS as BACKENDS
from longpo.train.packing import SharedPrefixLayout

LAYOUT_KWARG = "longpo_layout"
BLOCK_MASK_KWARG = "longpo_block_mask"
# Scores of one eager tile (tile x keys x heads) stay near this many elements; the backward recomputes the tile.
EAGER_TILE_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class AttentionOptions:
    """What one layer's attention does besides causal softmax(q k^T * scaling) v: what transformers' models
    pass to their attention function (`scaling`, `sliding_window`, `softcap`, `s_aux`), read per call.

    window: a query at position i sees keys at positions j with i - j < window (transformers'
        `sliding_window_overlay`: kv_idx > q_idx - window), counted in positions, so across the shared
        prefix exactly as in the plain sequence prefix + branch.
    softcap: scores become softcap * tanh(scores / softcap) before masking (Gemma-2).
    sinks: (H,) one extra logit per query head in the softmax denominator, whose value is dropped (gpt-oss).
    """

    scaling: float | None = None
    window: int | None = None
    softcap: float | None = None
    sinks: torch.Tensor | None = None

    @property
    def plain(self) -> bool:
        return self.window is None and self.softcap is None and self.sinks is None


def _repeat_heads(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    # (B, Hkv, T, D) -> (B, Hkv * n_rep, T, D), grouped-query heads next to each other
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def _eager_tile(q, k, v, mask, scaling, softcap, sinks) -> torch.Tensor:
    """softmax over explicit scores, in the order transformers' eager functions use: scale, softcap,
    mask, (sink column), softmax in float32, drop the sink. q (B, H, tq, D); k/v with H heads."""
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling  # (B, H, tq, tk)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, float("-inf"))
    if sinks is not None:
        sink = sinks.to(scores.dtype).reshape(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[2], 1)
        scores = torch.cat([scores, sink], dim=-1)
        scores = scores - scores.amax(dim=-1, keepdim=True)
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
    if sinks is not None:
        probs = probs[..., :-1]
    return torch.matmul(probs, v)


def _span_attention(q, k, v, opts: AttentionOptions, gqa_native: bool) -> torch.Tensor:
    """Attention of queries q (B, H, lq, D) over keys k/v (B, Hkv, lk, D) in position order, causal aligned
    to the last key (query i sits at key index i + lk - lq), under `opts`."""
    n_rep = q.shape[1] // k.shape[1]
    lq, lk = q.shape[2], k.shape[2]
    off = lk - lq
    scaling = opts.scaling if opts.scaling is not None else q.shape[-1] ** -0.5
    window = opts.window if opts.window is not None and opts.window < lk else None
    if window is None and opts.softcap is None and opts.sinks is None:  # one fused call, no mask tensor
        if not gqa_native:
            k, v = _repeat_heads(k, n_rep), _repeat_heads(v, n_rep)
        mask = None if lq == lk else causal_lower_right(lq, lk)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scaling,
                                              enable_gqa=gqa_native and n_rep > 1)
    eager = opts.softcap is not None or opts.sinks is not None
    if eager:  # explicit scores: tiles small enough to hold, each recomputed in the backward
        # keys per tile: all of them, or (with a window) at most the tile's 1024 queries + window - 1
        keys = lk if window is None else min(lk, window + 1024)
        tile = max(16, EAGER_TILE_ELEMENTS // max(1, q.shape[0] * q.shape[1] * keys))
        tile = tile if window is None else min(tile, 1024)
        k, v = _repeat_heads(k, n_rep), _repeat_heads(v, n_rep)
    else:  # a sliding window through SDPA: query tiles against the keys of their band, a band mask each
        tile = max(window, 1024)
        if not gqa_native:
            k, v = _repeat_heads(k, n_rep), _repeat_heads(v, n_rep)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    outs = []
    for a in range(0, lq, tile):
        b = min(a + tile, lq)
        k_lo = 0 if window is None else max(0, a + off - window + 1)
        k_hi = b + off
        qi = torch.arange(a + off, b + off, device=q.device)[:, None]
        kj = torch.arange(k_lo, k_hi, device=q.device)[None, :]
        mask = kj <= qi
        if window is not None:
            mask = mask & (qi - kj < window)
        qt, kt, vt = q[:, :, a:b], k[:, :, k_lo:k_hi], v[:, :, k_lo:k_hi]
        if not eager:
            outs.append(F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scaling,
                                                       enable_gqa=gqa_native and n_rep > 1))
        elif needs_grad:
            outs.append(checkpoint(_eager_tile, qt, kt, vt, mask, scaling, opts.softcap, opts.sinks,
                                   use_reentrant=False))
        else:
            outs.append(_eager_tile(qt, kt, vt, mask, scaling, opts.softcap, opts.sinks))
    return torch.cat(outs, dim=2)


def _sdpa_spans(q, k, v, layout: SharedPrefixLayout, opts: AttentionOptions,
                query_range: tuple[int, int] | None = None) -> torch.Tensor:
    """q holds the queries of positions [qa, qb) of the row (all of it without `query_range`), k / v all keys.

    A span cut to [qa, qb) keeps its keys up to its last kept query: the last key range of every span is the
    span's own queries, so cutting it at the last query keeps "causal, aligned to the last key" exact."""
    # CPU SDPA handles grouped-query heads itself; CUDA's lower-right kernels want equal head counts.
    gqa_native = q.device.type == "cpu"
    qa, qb = query_range or (0, layout.total_len)
    outs, end = [], qa
    for q0, q1, kv_ranges in layout.spans():
        c0, c1 = max(q0, qa), min(q1, qb)
        if c0 >= c1:
            continue
        assert c0 == end, f"layout spans must tile the row in order (gap at {end}..{c0})"
        ranges = (*kv_ranges[:-1], (kv_ranges[-1][0], c1))
        kk = torch.cat([k[:, :, a:b] for a, b in ranges], dim=2) if len(ranges) > 1 else k[:, :, ranges[0][0]:c1]
        vv = torch.cat([v[:, :, a:b] for a, b in ranges], dim=2) if len(ranges) > 1 else v[:, :, ranges[0][0]:c1]
        outs.append(_span_attention(q[:, :, c0 - qa:c1 - qa], kk, vv, opts, gqa_native))
        end = c1
    if end < qb:  # padding rows attend nowhere; their outputs never reach a loss
        outs.append(q.new_zeros(q.shape[0], q.shape[1], qb - end, v.shape[3]))
    return torch.cat(outs, dim=2)


class BlockMasks(dict):
    """FlexAttention block masks of one layout, one per sliding window (None: full causal), built on first use."""

    def __init__(self, layout: SharedPrefixLayout, device: torch.device | str):
        super().__init__()
        self.layout, self.device = layout, device

    def __missing__(self, window: int | None) -> Any:
        self[window] = mask = build_block_mask(self.layout, self.device, window)
        return mask


def build_block_mask(layout: SharedPrefixLayout, device: torch.device | str, window: int | None = None) -> Any:
    """FlexAttention block mask of a layout: same pair, causal, prefix or own branch (within `window` positions)."""
    pair, branch = layout.token_ids(device)
    pos = layout.positions(device)

    def mask_mod(b, h, q_idx, kv_idx):
        same = (pair[q_idx] == pair[kv_idx]) & (pair[q_idx] >= 0)
        visible = (branch[kv_idx] == 0) | (branch[kv_idx] == branch[q_idx])
        keep = same & visible & (kv_idx <= q_idx)
        if window is not None:
            keep = keep & (pos[q_idx] - pos[kv_idx] < window)
        return keep | (q_idx == kv_idx)

    t = layout.total_len
    # Eager mask creation materialises T x T booleans (256 GB at 512K): on CUDA it is compiled,
    # which evaluates mask_mod block by block.
    compile_mask = torch.device(device).type == "cuda"
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=t, KV_LEN=t, device=device, _compile=compile_mask)


_compiled_flex = None


def _flex(q, k, v, block_mask, opts: AttentionOptions) -> torch.Tensor:
    global _compiled_flex
    if opts.sinks is not None:
        raise ValueError("attention sinks (gpt-oss) are not implemented for attention_backend=flex; "
                         "use attention_backend=sdpa")
    fn = flex_attention
    if q.device.type == "cuda":
        if _compiled_flex is None:
            # Not dynamic=False: every new row length would recompile, and past dynamo's recompile
            # limit flex_attention silently falls back to eager (a dense T x T score matrix). The
            # default compiles the first shape statically and the next one with a symbolic length.
            _compiled_flex = torch.compile(flex_attention)
        fn = _compiled_flex
    score_mod = None
    if opts.softcap is not None:
        cap = opts.softcap

        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.tanh(score / cap) * cap

    if isinstance(block_mask, BlockMasks):
        block_mask = block_mask[opts.window]
    return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=opts.scaling,
              enable_gqa=q.shape[1] != k.shape[1])


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
    opts: AttentionOptions | None = None,
    query_range: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Attention under a shared-prefix layout over the full sequence; returns (B, H, T, D).

    `opts` carries the layer's sliding window, softcapping and sinks (its `scaling` wins over `scaling`).
    `query_range` (a, b): q holds only the queries of positions [a, b) (k / v still the whole row), and the
    result is theirs, (B, H, b - a, D): sequence parallel past the head count (`parallel.py`); sdpa only.
    """
    qa, qb = query_range or (0, layout.total_len)
    assert q.shape[2] == qb - qa and k.shape[2] == layout.total_len, \
        f"q has {q.shape[2]} positions, k {k.shape[2]}, for queries [{qa}, {qb}) of a layout of {layout.total_len}"
    assert q.shape[1] % k.shape[1] == 0, f"{q.shape[1]} query heads not a multiple of {k.shape[1]} kv heads"
    opts = opts or AttentionOptions(scaling=scaling)
    if opts.sinks is not None:
        assert opts.sinks.shape == (q.shape[1],), f"{tuple(opts.sinks.shape)} sinks for {q.shape[1]} query heads"
    q, k, v = _common_dtype(q, k, v)
    if backend == "sdpa":
        return _sdpa_spans(q, k, v, layout, opts, query_range)
    if query_range is not None:
        raise ValueError("a query range (sequence parallel past the head count) needs attention_backend=sdpa")
    if backend == "flex":
        if block_mask is None:
            block_mask = build_block_mask(layout, q.device, opts.window)
        return _flex(q, k, v, block_mask, opts)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")


# Keyword arguments transformers' decoder layers pass that change nothing here: the positions are already in
# q/k (RoPE), the cache is off in training, and the mask is the layout's.
_INERT_KWARGS = {"position_ids", "use_cache", "cache_position", "output_attentions", "past_key_values",
                 "position_embeddings", "layer_idx"}


_OPTION_KWARGS = {"sliding_window", "softcap", "s_aux", "is_causal", LAYOUT_KWARG, BLOCK_MASK_KWARG}


def attention_options(module: Any, scaling: float | None, kwargs: dict) -> AttentionOptions:
    """The options of one call from the kwargs a model passed; an argument that would change attention
    and is not implemented here stops the forward (a new family's feature is never silently dropped)."""
    unknown = sorted(key for key, value in kwargs.items()
                     if key not in _INERT_KWARGS and key not in _OPTION_KWARGS
                     and value is not None and value is not False)
    if unknown:
        raise NotImplementedError(f"{type(module).__name__} passes attention argument(s) {unknown} that longpo's "
                                  f"shared-prefix attention does not implement; this model family is not supported "
                                  f"for training (docs/models.md)")
    if getattr(module, "is_causal", True) is False or kwargs.get("is_causal", True) is False:
        raise NotImplementedError(f"{type(module).__name__} attends bidirectionally (is_causal=False); longpo "
                                  f"trains causal decoders only")
    return AttentionOptions(scaling=scaling, window=kwargs.pop("sliding_window", None),
                            softcap=kwargs.pop("softcap", None), sinks=kwargs.pop("s_aux", None))


def make_hf_attention(backend: str):
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layout = kwargs.pop(LAYOUT_KWARG, None)
        block_mask = kwargs.pop(BLOCK_MASK_KWARG, None)
        if layout is None and attention_mask is None and query.shape[2] == key.shape[2]:
            # plain use of the model (one unpadded sequence, no cache): a layout of one causal sequence
            layout = SharedPrefixLayout(pairs=((0, query.shape[2], 0, 0),), total_len=query.shape[2])
        elif layout is None:
            raise NotImplementedError("shared-prefix attention runs training forwards only (no padding mask, no "
                                      "cache); load the model with longpo.models.load_model to generate")
        assert dropout == 0.0, "shared-prefix attention does not implement attention dropout"
        opts = attention_options(module, scaling, kwargs)
        out = shared_prefix_attention(query, key, value, layout, backend=backend, block_mask=block_mask, opts=opts)
        return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)

    return attention


# Registered names avoid "sdpa" and "flex_attention": transformers runs its SDPA / flex capability checks on any
# name holding them, and refuses families without an SDPA path (gpt-oss) that this attention serves exactly.
REGISTERED = {"sdpa": "spans", "flex": "flex"}


def attention_name(backend: str) -> str:
    return f"longpo_{REGISTERED[backend]}"


def register_shared_prefix_attention(backend: str = "sdpa", name: str | None = None, fn: Any = None) -> str:
    """Register the attention function under `attention_name(backend)` (or `name`) and return the name."""
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

"""Data parallel x Ulysses sequence parallel around the shared-prefix training core.

The model code is untouched; this layer wraps it from outside:

  `init_mesh(sp_size)`   ranks r = dp_rank * sp_size + sp_rank; the `sp_size` ranks of one SP group
                         (adjacent ranks, so one node's fast links) hold the shards of one sample,
                         the DP groups hold different samples.
  `parallelize(model)`   registers `longpo_ulysses_<spans|flex>` and points the model at it: inside
                         each attention layer q/k/v go from sequence shards to head shards by an
                         all-to-all, `shared_prefix_attention` runs on the FULL sequence for the
                         local heads, and an all-to-all brings the output back to sequence shards.
  `shard_batch(batch)`   pads the packed row to a multiple of sp_size and keeps this rank's slice
                         of ids and positions, plus the log-prob targets whose source position lies
                         in the slice. Targets (shifted labels) were computed on the full row by
                         `pack_pairs`, so no label ever crosses a shard boundary.
  `gather_stats(out)`    sums the per-shard pair log-probs and NLL sums over the SP group with an
                         autograd-aware sum (the token counts with a plain one); every SP rank then
                         holds the whole sample's statistics.

Gradient contract: after `loss.backward()` on every rank, the parameter gradients of ALL ranks
add up to the gradient of the step loss (each SP rank back-propagates its own shard's share, see
`_SumOverGroup`). A data-parallel wrapper that averages gradients over the world (DDP, FSDP2,
ZeRO via accelerate) therefore gives the exact gradient when the loss is multiplied by the world
size (`mesh.world_size`, SP ranks included). Sample counts (tokens, pairs) are per sample and
identical on the ranks of an SP group: reduce them over `mesh.dp_group` only.

Head split: query heads are split as evenly as possible (28 heads on 8 ranks: 4,4,4,4,3,3,3,3);
each rank receives the key/value heads its query heads use, so kv heads are replicated when there
are fewer than sp_size of them or the split cuts a group (the all-to-all's backward sums the
replicas' gradients).

Past the head count (sdpa): an SP group of sp_size = u x r ranks is r Ulysses groups of u
(`ulysses_size`, `split_sp_group`); Ulysses group g holds segment g of the row, gathers the keys and
values of the other segments over its key/value group, and runs the core on its queries only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import torch
import torch.distributed as dist

from longpo.train.attention import (
    BACKENDS,
    BLOCK_MASK_KWARG,
    LAYOUT_KWARG,
    REGISTERED,
    AttentionOptions,
    attention_options,
    make_hf_attention,
    register_shared_prefix_attention,
    set_attention,
    shared_prefix_attention,
)
from longpo.train.logps import ForwardOutput, forward_pairs
from longpo.train.loss import PairLogps
from longpo.train.memory import ulysses_size
from longpo.train.packing import LogpTargets, PackedBatch


@dataclass(frozen=True)
class Mesh:
    """This rank's place in the data-parallel x sequence-parallel grid."""

    sp_size: int = 1
    dp_size: int = 1
    sp_rank: int = 0
    dp_rank: int = 0
    sp_group: Any = None  # ProcessGroup of this rank's SP group (None when sp_size == 1)
    dp_group: Any = None  # ProcessGroup of this rank's DP group (None when dp_size == 1)

    @property
    def world_size(self) -> int:
        return self.sp_size * self.dp_size

    @property
    def rank(self) -> int:
        return self.dp_rank * self.sp_size + self.sp_rank


def init_mesh(sp_size: int = 1) -> Mesh:
    """Build the DP x SP mesh over the default process group (one process: a 1 x 1 mesh)."""
    if not (dist.is_available() and dist.is_initialized()):
        if sp_size != 1:
            raise ValueError(f"sp_size={sp_size} needs torch.distributed; launch with torchrun or accelerate")
        return Mesh()
    world, rank = dist.get_world_size(), dist.get_rank()
    if sp_size < 1 or world % sp_size:
        raise ValueError(f"sp_size={sp_size} must divide the world size {world}; "
                         f"choose one of {[d for d in range(1, world + 1) if world % d == 0]}")
    dp_size = world // sp_size
    sp_group = dp_group = None
    # Every rank must create every group, in the same order.
    for d in range(dp_size):
        g = dist.new_group([d * sp_size + s for s in range(sp_size)])
        if d == rank // sp_size:
            sp_group = g
    for s in range(sp_size):
        g = dist.new_group([d * sp_size + s for d in range(dp_size)])
        if s == rank % sp_size:
            dp_group = g
    return Mesh(sp_size=sp_size, dp_size=dp_size, sp_rank=rank % sp_size, dp_rank=rank // sp_size,
                sp_group=sp_group if sp_size > 1 else None, dp_group=dp_group if dp_size > 1 else None)


def reduce_sum(values: torch.Tensor, mesh: Mesh, over: str = "dp") -> torch.Tensor:
    """The one reduction rule of training: sum `values` over the data-parallel group ("dp": per-sample
    counts and metric sums, which the ranks of one SP group share, so a sum over the world would count
    each sample sp_size times) or over every rank ("world": flags every rank must act on together)."""
    assert over in ("dp", "world"), f"over={over!r}: 'dp' or 'world'"
    if (mesh.dp_size if over == "dp" else mesh.world_size) == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, group=mesh.dp_group if over == "dp" else None)
    return values


# ---------------------------------------------------------------- batch sharding and gathering


def padded_length(length: int, sp_size: int) -> int:
    return -(-length // sp_size) * sp_size


def shard_batch(batch: PackedBatch, mesh: Mesh, pad_token_id: int = 0) -> PackedBatch:
    """This rank's sequence shard of a packed row (1, T): ids, positions, targets; the layout stays whole.

    Sample-level fields (pairs, counts, reference log-probs) are kept as they are: they describe the
    sample, not the shard. Padding added here lies outside every layout span, so it is never a target.
    """
    if mesh.sp_size == 1:
        return batch
    t = batch.input_ids.shape[1]
    total = padded_length(t, mesh.sp_size)
    ids, pos = batch.input_ids, batch.position_ids
    if total > t:
        pad = total - t
        ids = torch.cat([ids, ids.new_full((ids.shape[0], pad), pad_token_id)], dim=1)
        pos = torch.cat([pos, torch.arange(pad, device=pos.device, dtype=pos.dtype).expand(pos.shape[0], pad)], dim=1)
    size = total // mesh.sp_size
    start, end = mesh.sp_rank * size, (mesh.sp_rank + 1) * size
    tg = batch.targets
    keep = (tg.src >= start) & (tg.src < end)
    return replace(
        batch,
        input_ids=ids[:, start:end],
        position_ids=pos[:, start:end],
        layout=replace(batch.layout, total_len=total),
        targets=LogpTargets(src=tg.src[keep] - start, tgt=tg.tgt[keep], slot=tg.slot[keep], nll=tg.nll[keep]),
    )


class _SumOverGroup(torch.autograd.Function):
    """y = sum of x over the group's ranks; backward passes dL/dy to x unchanged.

    Every rank of the group computes the same loss L from the same y. Counted once for the group
    (not once per rank), dL/dx_r = dL/dy on each rank r: the identity. (torch.distributed.nn's
    all_reduce sums the group's identical dL/dy in backward, i.e. counts the loss sp_size times.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any) -> torch.Tensor:
        y = x.detach().clone()
        dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def gather_stats(local: ForwardOutput, mesh: Mesh, num_nll_tokens: int | None = None) -> ForwardOutput:
    """Sum the shard statistics of an SP group into the sample's, differentiably; identical on its ranks.

    `num_nll_tokens` is the sample's NLL token count when known (`shard.num_nll_tokens`); otherwise
    the shards' counts are summed.
    """
    if mesh.sp_size == 1:
        return local
    p, shape = local.policy.chosen.shape[0], local.policy.rejected.shape  # rejected: (P,) or (P, M)
    r = local.policy.rejected.numel()
    flat = torch.cat([local.policy.chosen, local.policy.rejected.reshape(-1), local.nll_sum.reshape(1)])  # (P + PM + 1,)
    total = _SumOverGroup.apply(flat, mesh.sp_group)
    # the response token counts (length-normalised losses) and the NLL count, in one collective
    counts = torch.cat([local.policy.chosen_tokens, local.policy.rejected_tokens.reshape(-1),
                        torch.tensor([local.nll_tokens], device=flat.device)]).to(torch.long)
    dist.all_reduce(counts, group=mesh.sp_group)
    if num_nll_tokens is None:
        num_nll_tokens = int(counts[p + r].item())
    return ForwardOutput(policy=PairLogps(chosen=total[:p], rejected=total[p : p + r].view(shape),
                                          chosen_tokens=counts[:p], rejected_tokens=counts[p : p + r].view(shape)),
                         nll_sum=total[p + r], nll_tokens=num_nll_tokens)


def forward_pairs_parallel(model: Any, batch: PackedBatch, mesh: Mesh, chunk_size: int | None = None,
                           attention_backend: str = "sdpa") -> ForwardOutput:
    """`forward_pairs` on this rank's shard, gathered over the SP group (the model must be `parallelize`d)."""
    if mesh.sp_size == 1:
        return forward_pairs(model, batch, chunk_size, attention_backend)
    shard = shard_batch(batch, mesh)
    local = forward_pairs(model, shard, chunk_size, attention_backend)
    return gather_stats(local, mesh, shard.num_nll_tokens)


# ---------------------------------------------------------------- Ulysses attention


@dataclass(frozen=True)
class HeadPlan:
    """Which query heads each SP rank computes, and which kv heads it needs for them."""

    q_ranges: tuple[tuple[int, int], ...]  # per rank: [start, end) of its query heads
    kv_ranges: tuple[tuple[int, int], ...]  # per rank: [start, end) of the kv heads those use

    @property
    def q_counts(self) -> list[int]:
        return [b - a for a, b in self.q_ranges]


@lru_cache(maxsize=64)
def plan_heads(num_heads: int, num_kv_heads: int, sp_size: int) -> HeadPlan:
    """Split `num_heads` query heads over `sp_size` ranks as evenly as possible; kv heads follow."""
    assert num_heads % num_kv_heads == 0, f"{num_heads} query heads not a multiple of {num_kv_heads} kv heads"
    if num_heads < sp_size:
        raise ValueError(f"sp_size={sp_size} exceeds the {num_heads} attention heads: a rank would get no head; "
                         f"use sp_size <= {num_heads}")
    n_rep = num_heads // num_kv_heads
    base, extra = divmod(num_heads, sp_size)
    q_ranges, kv_ranges, start = [], [], 0
    for r in range(sp_size):
        end = start + base + (r < extra)
        q_ranges.append((start, end))
        kv_ranges.append((start // n_rep, (end - 1) // n_rep + 1))
        start = end
    return HeadPlan(q_ranges=tuple(q_ranges), kv_ranges=tuple(kv_ranges))


class _AllToAll(torch.autograd.Function):
    """all_to_all_single along dim 0 with (possibly uneven) splits; backward is the reverse exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, send: list[int], recv: list[int], group: Any) -> torch.Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        x = x.contiguous()
        out = x.new_empty((sum(recv), *x.shape[1:]))
        dist.all_to_all_single(out, x, output_split_sizes=recv, input_split_sizes=send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        grad = grad.contiguous()
        out = grad.new_empty((sum(ctx.send), *grad.shape[1:]))
        dist.all_to_all_single(out, grad, output_split_sizes=ctx.send, input_split_sizes=ctx.recv, group=ctx.group)
        return out, None, None, None


def _seq_to_heads(x: torch.Tensor, ranges: tuple[tuple[int, int], ...], rank: int, group: Any) -> torch.Tensor:
    """(B, H, T/sp, D) sequence shard, all heads -> (B, h_rank, T, D) full sequence, this rank's heads."""
    sp = len(ranges)
    b, _, ts, d = x.shape
    send = torch.cat([x[:, a:e] for a, e in ranges], dim=1) if sp > 1 else x  # replicas side by side
    counts = [e - a for a, e in ranges]
    out = _AllToAll.apply(send.transpose(0, 1), counts, [counts[rank]] * sp, group)  # (sp * h, B, Ts, D)
    h = counts[rank]
    return out.view(sp, h, b, ts, d).permute(2, 1, 0, 3, 4).reshape(b, h, sp * ts, d)


def _heads_to_seq(o: torch.Tensor, q_counts: list[int], rank: int, group: Any) -> torch.Tensor:
    """(B, h_rank, T, D) this rank's heads -> (B, T/sp, H, D) sequence shard, all heads."""
    sp = len(q_counts)
    b, h, t, d = o.shape
    send = o.view(b, h, sp, t // sp, d).permute(2, 1, 0, 3, 4).reshape(sp * h, b, t // sp, d)
    out = _AllToAll.apply(send, [h] * sp, q_counts, group)  # (H, B, Ts, D)
    return out.permute(1, 2, 0, 3)


class _GatherSequence(torch.autograd.Function):
    """all_gather of (B, H, L, D) along the sequence (dim 2) in group-rank order; backward: the gradients of
    the whole gathered sequence summed over the group (every rank's queries used these keys), this rank's slice.

    (A reduce-scatter would move less; gloo has none, and all_reduce + slice is the same sum on every backend.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group, ctx.rank, ctx.length = group, dist.get_rank(group), x.shape[2]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[:, :, ctx.rank * ctx.length : (ctx.rank + 1) * ctx.length], None


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Any, group: Any,
                      scaling: float | None = None, backend: str = "sdpa", block_mask: Any = None,
                      opts: AttentionOptions | None = None, kv_group: Any = None) -> torch.Tensor:
    """Shared-prefix attention of sequence-sharded q (B, H, T/sp, D), k/v (B, Hkv, T/sp, D); (B, T/sp, H, D).

    `group` is the Ulysses group (heads are split over it). With `kv_group` (sequence parallel past the head
    count, `parallelize`): the Ulysses group holds segment g of r = |kv_group| contiguous segments of the row;
    after the all-to-all its keys / values are all-gathered over `kv_group` (the ranks with the same heads in
    the other segments) and the segment's queries attend to the whole row (`query_range`).
    Windows and softcapping apply to every head alike; sinks are per query head, so each rank keeps its own."""
    sp, rank = dist.get_world_size(group), dist.get_rank(group)
    plan = plan_heads(q.shape[1], k.shape[1], sp)
    qa, qb = plan.q_ranges[rank]
    ka, kb = plan.kv_ranges[rank]
    n_rep = q.shape[1] // k.shape[1]
    q_full = _seq_to_heads(q, plan.q_ranges, rank, group)  # (B, h, T, D); T/r with kv_group
    k_full = _seq_to_heads(k, plan.kv_ranges, rank, group)  # (B, hkv, T, D)
    v_full = _seq_to_heads(v, plan.kv_ranges, rank, group)
    query_range = None
    if kv_group is not None:
        segment, g = q_full.shape[2], dist.get_rank(kv_group)
        k_full, v_full = _GatherSequence.apply(k_full, kv_group), _GatherSequence.apply(v_full, kv_group)
        query_range = (g * segment, (g + 1) * segment)
    h, hkv = qb - qa, kb - ka
    kv_of_q = torch.arange(qa, qb) // n_rep - ka  # local kv head of each local query head
    grouped = h % hkv == 0 and torch.equal(kv_of_q, torch.arange(h) // (h // hkv))
    if not grouped:  # the split cut a kv group unevenly: give each query head its own copy
        idx = kv_of_q.to(k_full.device)
        k_full, v_full = k_full.index_select(1, idx), v_full.index_select(1, idx)
    opts = opts or AttentionOptions(scaling=scaling)
    if opts.sinks is not None:
        opts = replace(opts, sinks=opts.sinks[qa:qb])
    out = shared_prefix_attention(q_full, k_full, v_full, layout, backend=backend, block_mask=block_mask, opts=opts,
                                  query_range=query_range)
    return _heads_to_seq(out, plan.q_counts, rank, group)


def _make_hf_ulysses_attention(backend: str, group: Any, kv_group: Any = None):
    plain = make_hf_attention(backend)

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layout = kwargs.get(LAYOUT_KWARG)
        if layout is None or query.shape[2] == layout.total_len:  # unsharded input: the core as is
            return plain(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        assert dropout == 0.0, "shared-prefix attention does not implement attention dropout"
        block_mask = kwargs.pop(BLOCK_MASK_KWARG, None)
        kwargs.pop(LAYOUT_KWARG)
        opts = attention_options(module, scaling, kwargs)
        return ulysses_attention(query, key, value, layout, group, backend=backend, block_mask=block_mask,
                                 opts=opts, kv_group=kv_group), None

    return attention


def ulysses_attention_name(backend: str) -> str:
    return f"longpo_ulysses_{REGISTERED[backend]}"


def parallelize(model: Any, mesh: Mesh, backend: str = "sdpa") -> Any:
    """Point `model` at Ulysses shared-prefix attention over `mesh.sp_group` (sp_size 1: the core's)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if mesh.sp_size == 1:
        set_attention(model, register_shared_prefix_attention(backend))
        return model
    heads = model.config.num_attention_heads
    u = ulysses_size(mesh.sp_size, heads)
    plan_heads(heads, getattr(model.config, "num_key_value_heads", None) or heads, u)  # fail early
    group, kv_group = mesh.sp_group, None
    if u < mesh.sp_size:
        if backend != "sdpa":
            raise ValueError(f"sp_size={mesh.sp_size} exceeds the {heads} attention heads, which needs "
                             f"attention_backend=sdpa (keys / values gathered across {mesh.sp_size // u} groups)")
        group, kv_group = split_sp_group(mesh, u)
    name = register_shared_prefix_attention(backend, name=ulysses_attention_name(backend),
                                            fn=_make_hf_ulysses_attention(backend, group, kv_group))
    set_attention(model, name)
    return model


def split_sp_group(mesh: Mesh, u: int) -> tuple[Any, Any]:
    """(Ulysses group, key/value group) of this rank: SP rank s = g * u + j is rank j of Ulysses group g (segment
    g of the row, since `shard_batch` gives rank s the s-th slice) and rank g of key/value group j. Every rank
    creates every group, in the same order."""
    sp, r = mesh.sp_size, mesh.sp_size // u
    mine: dict[str, Any] = {}
    for d in range(mesh.dp_size):
        for g in range(r):
            ranks = [d * sp + g * u + j for j in range(u)]
            group = dist.new_group(ranks)
            if mesh.rank in ranks:
                mine["ulysses"] = group
        for j in range(u):
            ranks = [d * sp + g * u + j for g in range(r)]
            group = dist.new_group(ranks)
            if mesh.rank in ranks:
                mine["kv"] = group
    return mine["ulysses"], mine["kv"]

"""The policy forward over packed pairs, and the pair statistics the loss needs.

Log-probs come from `longpo.models.chunked_target_logps` (lm_head and log-softmax a chunk of
positions at a time, no full-vocabulary logits), the kernel the backends' scoring uses too.

`forward_pairs` is the fast path (shared-prefix packing); `forward_pairs_plain` the plain one
(M + 1 full sequences per pair, full logits) that every parity test and benchmark compares with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from longpo.data.records import TokenizedPair
from longpo.families import final_logit_softcap
from longpo.models import chunked_target_logps, upcast_logits
from longpo.train.attention import BLOCK_MASK_KWARG, LAYOUT_KWARG, BlockMasks
from longpo.train.config import NLL_MODES
from longpo.train.loss import PairLogps
from longpo.train.packing import LogpTargets, PackedBatch, rejected_count


@dataclass
class ForwardOutput:
    policy: PairLogps  # summed response log-probs on the long sequences: chosen (P,), rejected (P,) or (P, M)
    nll_sum: torch.Tensor  # scalar: -sum of log-probs over NLL tokens
    nll_tokens: int


def pair_stats(logps: torch.Tensor, targets: LogpTargets, num_pairs: int, num_rejected: int = 1) -> ForwardOutput:
    """Sum per-target log-probs (N,) into per-pair chosen (P,) / rejected sums, their token counts, and the
    NLL sum; rejected is (P,) for one rejected answer per pair, (P, M) for M > 1."""
    width = num_rejected + 1  # slots per pair: chosen, then the M rejected answers
    resp = targets.slot >= 0
    sums = logps.new_zeros(width * num_pairs).index_add(0, targets.slot[resp], logps[resp]).view(num_pairs, width)
    counts = torch.bincount(targets.slot[resp], minlength=width * num_pairs).view(num_pairs, width)
    rejected = slice(1, None) if num_rejected > 1 else 1
    return ForwardOutput(
        policy=PairLogps(chosen=sums[:, 0], rejected=sums[:, rejected], chosen_tokens=counts[:, 0],
                         rejected_tokens=counts[:, rejected]),
        nll_sum=-(logps * targets.nll).sum(),
        nll_tokens=int(targets.nll.sum()),
    )


def forward_hidden(model: Any, batch: PackedBatch, attention_backend: str = "sdpa") -> torch.Tensor:
    """Final hidden states (1, T, D) of the packed row under the shared-prefix layout."""
    kwargs = {LAYOUT_KWARG: batch.layout}
    if attention_backend == "flex":
        kwargs[BLOCK_MASK_KWARG] = BlockMasks(batch.layout, batch.input_ids.device)  # one per sliding window
    out = model.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **kwargs)
    return out.last_hidden_state


def forward_pairs(model: Any, batch: PackedBatch, chunk_size: int | None = None,
                  attention_backend: str = "sdpa") -> ForwardOutput:
    """Fast path: one packed forward, log-probs gathered only where a target needs them, in chunks."""
    hidden = forward_hidden(model, batch, attention_backend)[0]  # (T, D)
    selected = hidden.index_select(0, batch.targets.src)  # (N, D)
    logps = chunked_target_logps(selected, model.get_output_embeddings(), batch.targets.tgt, chunk_size,
                                 softcap=final_logit_softcap(model.config))
    return pair_stats(logps, batch.targets, batch.num_pairs, batch.num_rejected)


def _sequence_logps(model: Any, ids: list[int]) -> torch.Tensor:
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    logits = upcast_logits(model(input_ids=input_ids, use_cache=False).logits[0, :-1])  # (T-1, V), all of it
    return torch.log_softmax(logits, dim=-1).gather(-1, input_ids[0, 1:, None]).squeeze(-1)


def forward_pairs_plain(model: Any, pairs: list[TokenizedPair], nll_mode: str = "full") -> ForwardOutput:
    """Plain path: each pair as M + 1 full sequences (chosen, each rejected answer) with full-vocabulary logits
    (for parity and benchmarks)."""
    assert nll_mode in NLL_MODES, f"nll_mode must be one of {NLL_MODES}, got {nll_mode!r}"
    rejected_count(pairs)  # one M for all pairs, as packed
    chosen, rejected, counts, nll_sum, nll_tokens = [], [], [], 0.0, 0
    for pair in pairs:
        p = len(pair.prefix)
        lc = _sequence_logps(model, pair.prefix + pair.chosen)  # token j+1 predicted at j
        c_mask = torch.tensor([False] * p + pair.chosen_mask, device=lc.device)[1:]
        chosen.append(lc[c_mask].sum())
        row, n = [], [int(c_mask.sum())]
        for ids, mask in pair.rejected_branches():
            lr = _sequence_logps(model, pair.prefix + ids)
            r_mask = torch.tensor([False] * p + mask, device=lr.device)[1:]
            row.append(lr[r_mask].sum())
            n.append(int(r_mask.sum()))
        rejected.append(torch.stack(row))
        counts.append(n)
        never = torch.tensor([False] * p + (pair.chosen_unproduced or [False] * len(pair.chosen)), device=lc.device)[1:]
        nll_mask = {"full": ~never, "responses": c_mask, "off": torch.zeros_like(c_mask)}[nll_mode]
        nll_sum = nll_sum - lc[nll_mask].sum()
        nll_tokens += int(nll_mask.sum())
    nll_sum = nll_sum if torch.is_tensor(nll_sum) else torch.tensor(nll_sum)
    tokens = torch.tensor(counts, dtype=torch.long, device=nll_sum.device)  # (P, M + 1)
    rejected = torch.stack(rejected)  # (P, M)
    if rejected.shape[1] == 1:
        rejected, r_tokens = rejected[:, 0], tokens[:, 1]
    else:
        r_tokens = tokens[:, 1:]
    return ForwardOutput(policy=PairLogps(torch.stack(chosen), rejected, tokens[:, 0], r_tokens),
                         nll_sum=nll_sum, nll_tokens=nll_tokens)

"""Shared-prefix packing: the long prompt once, then the chosen and the rejected branches.

One row holds several pairs back to back, each laid out as

    [ prefix (p) | chosen branch (c) | rejected branch 1 (r1) | ... | rejected branch M (rM) ]

Positions of every branch continue from the prefix (p, p+1, ...), and the attention layout
lets each branch see the prefix and itself only, so the row computes exactly what M+1 separate
sequences `prefix + chosen`, `prefix + rejected_j` would, with the prefix paid for once. Every
pair of a row holds the same M (one M per run: the trainer refuses a file that mixes them).

Log-probs are gathered at `targets`: entry n says "the hidden state at packed position
`src[n]` predicts token `tgt[n]`", belonging to response slot `slot[n]` ((M+1)*pair for chosen,
(M+1)*pair + j for rejected answer j = 1..M, -1 for none) and counted in the NLL when `nll[n]`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from longpo.data.records import TokenizedPair
from longpo.train.config import NLL_MODES


@dataclass(frozen=True)
class SharedPrefixLayout:
    """Where each pair sits in a packed row: (offset, prefix_len, chosen_len, rejected_len_1, ..., rejected_len_M)."""

    pairs: tuple[tuple[int, ...], ...]
    total_len: int  # row length, padding included

    def branches(self) -> list[tuple[int, int, list[tuple[int, int]]]]:
        """Per pair: (offset, prefix_len, [(start, length) of each branch: chosen, then the rejected ones])."""
        out = []
        for o, p, *lengths in self.pairs:
            start, spans = o + p, []
            for n in lengths:
                spans.append((start, n))
                start += n
            out.append((o, p, spans))
        return out

    def spans(self) -> list[tuple[int, int, tuple[tuple[int, int], ...]]]:
        """Attention calls: (query start, query end, key ranges); causal aligned to the last key."""
        out = []
        for o, p, branches in self.branches():
            prefix = (o, o + p)
            out.append((o, o + p, (prefix,)))
            for start, n in branches:
                if n:
                    out.append((start, start + n, (prefix, (start, start + n))))
        return out

    def token_ids(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token pair index (-1 on padding) and branch (0 prefix, 1 chosen, 1 + j rejected answer j)."""
        pair = torch.full((self.total_len,), -1, dtype=torch.long)
        branch = torch.zeros((self.total_len,), dtype=torch.long)
        for i, (o, p, branches) in enumerate(self.branches()):
            pair[o : o + p + sum(n for _, n in branches)] = i
            for b, (start, n) in enumerate(branches, start=1):
                branch[start : start + n] = b
        return pair.to(device), branch.to(device)

    def positions(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Per-token position id: the prefix counts from 0, each branch continues from the prefix (padding: 0)."""
        pos = torch.zeros((self.total_len,), dtype=torch.long)
        for o, p, branches in self.branches():
            pos[o : o + p] = torch.arange(p)
            for start, n in branches:
                pos[start : start + n] = torch.arange(p, p + n)
        return pos.to(device)

    def allowed(self, device: torch.device | str | None = None, window: int | None = None) -> torch.Tensor:
        """The (T, T) boolean attention mask this layout means (for tests and small inputs only); with a
        sliding `window`, a key is visible only from queries fewer than `window` positions after it."""
        pair, branch = self.token_ids(device)
        q = torch.arange(self.total_len, device=device)
        same_pair = (pair[:, None] == pair[None, :]) & (pair[:, None] >= 0)
        visible = (branch[None, :] == 0) | (branch[None, :] == branch[:, None])
        mask = same_pair & visible & (q[None, :] <= q[:, None])
        if window is not None:
            pos = self.positions(device)
            mask = mask & (pos[:, None] - pos[None, :] < window)
        return mask | torch.eye(self.total_len, dtype=torch.bool, device=device)  # padding sees itself


@dataclass
class LogpTargets:
    src: torch.Tensor  # (N,) packed position whose hidden state predicts the target
    tgt: torch.Tensor  # (N,) target token id
    slot: torch.Tensor  # (N,) (M+1)*pair (chosen) / (M+1)*pair + j (rejected answer j) for response tokens, else -1
    nll: torch.Tensor  # (N,) bool, counted in the NLL


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (1, T)
    position_ids: torch.Tensor  # (1, T)
    layout: SharedPrefixLayout
    targets: LogpTargets
    ref_chosen: torch.Tensor | None  # (P,)
    ref_rejected: torch.Tensor | None  # (P,) for M = 1, else (P, M)
    num_pairs: int
    num_nll_tokens: int
    num_tokens: int  # T without padding
    ids: tuple[str, ...] = ()
    # per pair, per rejected answer: True where the chosen and that rejected branch are the same tokens.
    # Such a (pair, answer) has equal policy (and reference) log-probs on both sides, so its preference term
    # is a constant with zero gradient; the trainer leaves it out of the preference mean, keeps the NLL.
    equal_answers: tuple[tuple[bool, ...], ...] = ()
    num_rejected: int = 1  # M, the same for every pair of the row


def _pair_targets(pair: TokenizedPair, o: int, nll_mode: str) -> tuple[list[int], list[int], list[int], list[bool]]:
    """Targets of one pair at offset o; `slot` here is 0 (chosen) / j (rejected answer j, 1..M) / -1."""
    p, c = len(pair.prefix), len(pair.chosen)
    src, tgt, slot, nll = [], [], [], []
    # The chosen long sequence is contiguous: token j of prefix+chosen sits at o+j.
    chosen_seq = pair.prefix + pair.chosen
    is_response = [False] * p + list(pair.chosen_mask)
    never = [False] * p + list(pair.chosen_unproduced or [False] * c)  # cut answers' end-of-turn tokens
    for j in range(1, p + c):
        in_nll = (nll_mode == "full" and not never[j]) or (nll_mode == "responses" and is_response[j])
        if in_nll or is_response[j]:
            src.append(o + j - 1)
            tgt.append(chosen_seq[j])
            slot.append(0 if is_response[j] else -1)
            nll.append(in_nll)
    # Rejected answer b: its first token is predicted by the last prefix token, the rest inside its branch.
    start = o + p + c
    for b, (ids, mask) in enumerate(pair.rejected_branches(), start=1):
        for j, (token, resp) in enumerate(zip(ids, mask)):
            if resp:
                src.append(o + p - 1 if j == 0 else start + j - 1)
                tgt.append(token)
                slot.append(b)
                nll.append(False)
        start += len(ids)
    return src, tgt, slot, nll


def rejected_count(pairs: list[TokenizedPair]) -> int:
    """The M shared by `pairs`; a clear error where they differ (one row packs one M)."""
    counts = sorted({p.num_rejected for p in pairs})
    if len(counts) > 1:
        raise ValueError(f"pairs with {counts} rejected answers in one batch ({[p.id for p in pairs]}): a batch "
                         f"packs one number of rejected answers; give every record of the run the same M")
    return counts[0]


def pack_pairs(pairs: list[TokenizedPair], nll_mode: str = "full", pad_to_multiple_of: int = 1,
               pad_token_id: int = 0) -> PackedBatch:
    """Pack pairs (each with the same M rejected answers) into one row with their layout, positions and targets."""
    assert pairs, "pack_pairs needs at least one pair"
    assert nll_mode in NLL_MODES, f"nll_mode must be one of {NLL_MODES}, got {nll_mode!r}"
    m = rejected_count(pairs)
    ids, positions, spans = [], [], []
    src, tgt, slot, nll = [], [], [], []
    for i, pair in enumerate(pairs):
        o, p, c = len(ids), len(pair.prefix), len(pair.chosen)
        rejected = [r for r, _ in pair.rejected_branches()]
        ids += pair.prefix + pair.chosen + [t for r in rejected for t in r]
        positions += list(range(p)) + list(range(p, p + c)) + [k for r in rejected for k in range(p, p + len(r))]
        spans.append((o, p, c, *(len(r) for r in rejected)))
        s, t, sl, n = _pair_targets(pair, o, nll_mode)
        src += s
        tgt += t
        slot += [(m + 1) * i + k if k >= 0 else -1 for k in sl]
        nll += n
    num_tokens = len(ids)
    total = -(-num_tokens // pad_to_multiple_of) * pad_to_multiple_of
    ids += [pad_token_id] * (total - num_tokens)
    positions += list(range(total - num_tokens))
    has_ref = all(p.ref_chosen_logp is not None and p.ref_rejected_logp is not None for p in pairs)
    ref_rejected = None
    if has_ref:
        ref_rejected = torch.tensor([p.ref_rejected() for p in pairs], dtype=torch.float64)  # (P, M)
        ref_rejected = ref_rejected[:, 0] if m == 1 else ref_rejected
    return PackedBatch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        layout=SharedPrefixLayout(pairs=tuple(spans), total_len=total),
        targets=LogpTargets(
            src=torch.tensor(src, dtype=torch.long),
            tgt=torch.tensor(tgt, dtype=torch.long),
            slot=torch.tensor(slot, dtype=torch.long),
            nll=torch.tensor(nll, dtype=torch.bool),
        ),
        ref_chosen=torch.tensor([p.ref_chosen_logp for p in pairs], dtype=torch.float64) if has_ref else None,
        ref_rejected=ref_rejected,
        num_pairs=len(pairs),
        num_nll_tokens=int(sum(nll)),
        num_tokens=num_tokens,
        ids=tuple(p.id for p in pairs),
        equal_answers=tuple(tuple(p.chosen == r and p.chosen_mask == mask for r, mask in p.rejected_branches())
                            for p in pairs),
        num_rejected=m,
    )


def batch_to(batch: PackedBatch, device: torch.device | str) -> PackedBatch:
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return replace(
        batch,
        input_ids=move(batch.input_ids),
        position_ids=move(batch.position_ids),
        targets=LogpTargets(*(move(getattr(batch.targets, f)) for f in ("src", "tgt", "slot", "nll"))),
        ref_chosen=move(batch.ref_chosen),
        ref_rejected=move(batch.ref_rejected),
    )

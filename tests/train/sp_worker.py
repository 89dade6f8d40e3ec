"""torchrun worker of test_parallel.py: data x sequence parallel against one process, same samples.

    OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 tests/train/sp_worker.py --suite sp2 --out result.json

Every rank also computes the one-process reference itself (tiny float64 models, cheap), so each
rank checks its own loss and metrics; the gradients are checked after summing them over all ranks
(what a data-parallel wrapper's world average times the world size gives, see `parallel.py`).
Any mismatch raises, so the launch exits non-zero; rank 0 writes the largest errors to --out.

The step loss, per sample (micro-batch) s of a step over samples S:

    L_s = nll_sum_s / sum_S nll_tokens + lam * sum_pairs(-log sigmoid(beta * margin)) / sum_S pairs

and the step gradient is grad sum_s L_s.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
from dataclasses import dataclass

import torch
import torch.distributed as dist

BETA, LAM = 0.02, 0.5
VALUE_TOL = dict(rtol=1e-10, atol=1e-9)  # summed log-probs, losses: float64 rounding
GRAD_TOL = dict(rtol=1e-8, atol=1e-11)  # per-token math is identical; only sum order differs


@dataclass
class Case:
    name: str
    arch: str
    heads: int
    kv_heads: int
    hidden: int
    n_turns: int = 1
    nll_mode: str = "full"
    sp: int = 2
    samples: int = 1  # samples per step (one per DP group)
    pairs: int = 2  # pairs packed per sample
    odd_length: bool = False  # make the row length not a multiple of sp
    steps: int = 1  # > 1: optimizer steps, compare weights
    rejected: int = 1  # M rejected answers per turn (rejected log-probs (P, M) when M > 1)


SUITES = {
    "sp2": [
        Case("llama-sp2", "llama", 4, 2, 64, n_turns=1),
        Case("mistral-sp2-multiturn-oddlen", "mistral", 6, 2, 48, n_turns=2, nll_mode="responses", odd_length=True),
        Case("qwen2-sp2-9heads-oddlen", "qwen2", 9, 3, 72, n_turns=2, odd_length=True),
        Case("qwen2-sp2-kv1", "qwen2", 3, 1, 48, n_turns=1),
        Case("llama-sp2-3steps", "llama", 4, 2, 64, n_turns=2, steps=3),
        Case("mistral-sp2-2rejected-oddlen", "mistral", 4, 2, 48, n_turns=2, odd_length=True, rejected=2),
    ],
    "sp4": [
        Case("llama-sp4-multiturn", "llama", 4, 2, 64, n_turns=2, sp=4),
        Case("mistral-sp4-10heads-oddlen", "mistral", 10, 2, 80, nll_mode="responses", sp=4, odd_length=True),
        Case("qwen2-sp4-6heads-multiturn", "qwen2", 6, 3, 48, n_turns=2, sp=4, odd_length=True),
        Case("llama-dp2xsp2", "llama", 4, 2, 64, n_turns=2, sp=2, samples=2),
        Case("qwen2-dp2xsp2-3heads", "qwen2", 3, 1, 48, n_turns=1, sp=2, samples=2, odd_length=True),
    ],
    "past_heads": [  # sp_size above the head count: Ulysses groups of u ranks x r key/value-gathering groups
        Case("llama-sp4-2heads", "llama", 2, 1, 32, n_turns=2, sp=4, odd_length=True),  # u 2 x r 2
        Case("qwen2-sp4-3heads", "qwen2", 3, 1, 48, n_turns=1, sp=4),  # u 2 (heads 2 + 1) x r 2
        Case("mistral-sp4-1head", "mistral", 1, 1, 32, nll_mode="responses", sp=4),  # u 1 x r 4
        Case("llama-dp2xsp2-1head", "llama", 1, 1, 32, n_turns=2, sp=2, samples=2, steps=2),  # u 1 x r 2, dp 2
    ],
}


def make_samples(case: Case, tokenizer, step: int):
    """`case.samples` packed rows of `case.pairs` pairs each, with reference log-probs."""
    from longpo.data.records import tokenize_pair
    from longpo.train.packing import pack_pairs
    from tests.conftest import make_record

    rng = random.Random(1000 * step + case.n_turns)
    out = []
    for s in range(case.samples):
        pairs = []
        for i in range(case.pairs):
            record = make_record(f"s{s}p{i}", n_turns=case.n_turns, doc_words=30 + 7 * i + 5 * s, seed=rng.randrange(10**6))
            for t, turn in enumerate(record["turns"]):
                turn["ref_chosen_logp"] = -rng.uniform(20, 80)
                turn["ref_rejected_logp"] = -rng.uniform(20, 80)
                if case.rejected > 1:
                    turn["rejected"] = [turn["rejected"]] + [f"Maybe {j + 3 * t} codes." for j in range(1, case.rejected)]
                    turn["ref_rejected_logp"] = [-rng.uniform(20, 80) for _ in range(case.rejected)]
            pairs.append(tokenize_pair(tokenizer, record))
        batch = pack_pairs(pairs, case.nll_mode)
        t = batch.input_ids.shape[1]
        if case.odd_length and t % case.sp == 0:
            batch = pack_pairs(pairs, case.nll_mode, pad_to_multiple_of=t + 1)
        if not case.odd_length and t % case.sp:
            batch = pack_pairs(pairs, case.nll_mode, pad_to_multiple_of=case.sp)
        assert (batch.input_ids.shape[1] % case.sp != 0) == case.odd_length, f"{case.name}: row length setup"
        assert batch.num_rejected == case.rejected, f"{case.name}: {batch.num_rejected} rejected answers packed"
        out.append(batch)
    return out


def sample_loss(out, batch, nll_tokens: float, num_pairs: float):
    """One sample's share of the step loss and its metrics (all detached but the loss)."""
    from longpo.train.loss import PairLogps, combine_loss, preference_losses

    pref = preference_losses(out.policy, PairLogps(batch.ref_chosen, batch.ref_rejected), BETA)
    loss = combine_loss(out.nll_sum, nll_tokens, pref.losses.sum(), num_pairs, 1.0, LAM)
    metrics = {
        "loss": loss.detach(),
        "nll_sum": out.nll_sum.detach(),
        "nll_tokens": torch.tensor(float(out.nll_tokens), dtype=torch.float64),
        "logps_chosen": out.policy.chosen.detach(),
        "logps_rejected": out.policy.rejected.detach(),
        "tokens_chosen": out.policy.chosen_tokens.double(),  # summed over the SP group, as the length-normalised modes need
        "tokens_rejected": out.policy.rejected_tokens.double(),
        "rewards_chosen": pref.chosen_rewards,
        "rewards_rejected": pref.rejected_rewards,
        "margins": pref.chosen_rewards - pref.rejected_rewards,
        "accuracy": (pref.chosen_rewards > pref.rejected_rewards).double(),
        "pref_losses": pref.losses.detach(),
    }
    return loss, metrics


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / (b.abs() + 1e-12)).max()) if a.numel() else 0.0


def run_case(case: Case, tokenizer, report: dict) -> None:
    from torch.testing import assert_close

    from longpo.toy.tiny import build_tiny_model
    from longpo.train.attention import use_shared_prefix_attention
    from longpo.train.logps import forward_pairs
    from longpo.train.parallel import forward_pairs_parallel, init_mesh, parallelize, shard_batch

    world, rank = dist.get_world_size(), dist.get_rank()
    assert case.sp * case.samples == world, f"{case.name}: sp {case.sp} x samples {case.samples} != world {world}"
    mesh = init_mesh(case.sp)
    assert mesh.dp_size == case.samples
    ref_model = build_tiny_model(case.arch, seed=7, dtype=torch.float64, hidden_size=case.hidden,
                                 num_heads=case.heads, num_kv_heads=case.kv_heads, num_layers=2)
    sp_model = copy.deepcopy(ref_model)
    use_shared_prefix_attention(ref_model)
    parallelize(sp_model, mesh)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01) for m in (ref_model, sp_model)]
    worst = {"value": 0.0, "grad": 0.0, "weight": 0.0, "min_targets_per_shard": 10**9}
    for step in range(case.steps):
        samples = make_samples(case, tokenizer, step)
        n_tok = sum(b.num_nll_tokens for b in samples)
        n_pairs = sum(b.num_pairs for b in samples)

        # One process: every sample, global counts, gradients accumulated.
        ref_metrics = []
        for batch in samples:
            loss, m = sample_loss(forward_pairs(ref_model, batch, chunk_size=37), batch, n_tok, n_pairs)
            loss.backward()
            ref_metrics.append(m)

        # This rank: its DP group's sample, sequence-sharded; counts reduced over the DP group only.
        batch = samples[mesh.dp_rank]
        counts = torch.tensor([batch.num_nll_tokens, batch.num_pairs], dtype=torch.float64)
        if mesh.dp_group is not None:
            dist.all_reduce(counts, group=mesh.dp_group)
        assert counts.tolist() == [n_tok, n_pairs], f"{case.name}: reduced counts {counts.tolist()}"
        out = forward_pairs_parallel(sp_model, batch, mesh, chunk_size=37)
        local = torch.tensor([len(shard_batch(batch, mesh).targets.src)])
        dist.all_reduce(local, op=dist.ReduceOp.MIN)
        worst["min_targets_per_shard"] = min(worst["min_targets_per_shard"], int(local))
        loss, metrics = sample_loss(out, batch, float(counts[0]), float(counts[1]))
        loss.backward()
        for key, value in metrics.items():
            assert_close(value, ref_metrics[mesh.dp_rank][key], **VALUE_TOL,
                         msg=lambda m, key=key, step=step: f"{case.name} rank {rank} step {step} metric {key}: {m}")
            worst["value"] = max(worst["value"], max_rel(value, ref_metrics[mesh.dp_rank][key]))

        # Per-rank gradients are shares: their sum over all ranks is the step gradient.
        for (name, p_ref), p_sp in zip(ref_model.named_parameters(), sp_model.parameters()):
            g = p_sp.grad if p_sp.grad is not None else torch.zeros_like(p_sp)
            dist.all_reduce(g)
            p_sp.grad = g
            assert_close(g, p_ref.grad, **GRAD_TOL,
                         msg=lambda m, name=name, step=step: f"{case.name} rank {rank} step {step} grad {name}: {m}")
            worst["grad"] = max(worst["grad"], float((g - p_ref.grad).abs().max() / p_ref.grad.abs().max()))
        for opt in opts:
            opt.step()
            opt.zero_grad()
    if case.steps > 1:
        for (name, p_ref), p_sp in zip(ref_model.named_parameters(), sp_model.parameters()):
            assert_close(p_sp, p_ref, rtol=1e-6, atol=1e-8, msg=lambda m, name=name: f"{case.name} weight {name}: {m}")
            worst["weight"] = max(worst["weight"], float((p_sp - p_ref).detach().abs().max()))
    report[case.name] = worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--cases", nargs="*", help="run only these cases")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from longpo.toy.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    report: dict = {}
    for case in SUITES[args.suite]:
        if not args.cases or case.name in args.cases:
            run_case(case, tokenizer, report)
    if dist.get_rank() == 0 and args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

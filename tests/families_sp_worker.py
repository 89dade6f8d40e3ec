"""torchrun worker of test_families.py: every family's packed forward with Ulysses sp_size=2 against one process.

    OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 tests/families_sp_worker.py --out result.json

Each rank builds the same float64 model, computes the one-process packed forward and its gradients,
then the sequence-parallel forward on its shard; gradients are summed over the ranks (the contract of
`longpo.train.parallel`). Rank 0 writes the largest relative errors per family to --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import os

import torch
import torch.distributed as dist


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from longpo.data.records import tokenize_pair
    from longpo.toy.tiny import build_tiny_tokenizer
    from longpo.train.attention import use_shared_prefix_attention
    from longpo.train.logps import forward_pairs
    from longpo.train.packing import pack_pairs
    from longpo.train.parallel import forward_pairs_parallel, init_mesh, parallelize
    from tests.conftest import make_record
    from tests.families import FAMILIES, build_family_model, float64_throughout

    tokenizer = build_tiny_tokenizer()
    pairs = [tokenize_pair(tokenizer, make_record(f"r{i}", n_turns=1 + i % 2, seed=i)) for i in range(2)]
    batch = pack_pairs(pairs, "full")
    mesh = init_mesh(2)
    report = {}
    for name in sorted(FAMILIES):
        with float64_throughout():
            model = build_family_model(name)
            one = copy.deepcopy(model)
            use_shared_prefix_attention(one)
            ref = forward_pairs(one, batch)
            parallelize(model, mesh)
            out = forward_pairs_parallel(model, batch, mesh)

            def objective(o):
                return 0.3 * o.policy.chosen.sum() - 0.7 * o.policy.rejected.sum() + 0.05 * o.nll_sum

            g_ref = torch.autograd.grad(objective(ref), list(one.parameters()), allow_unused=True)
            g_sp = torch.autograd.grad(objective(out), list(model.parameters()), allow_unused=True)
        values = max(max_rel(out.policy.chosen, ref.policy.chosen), max_rel(out.policy.rejected, ref.policy.rejected),
                     max_rel(out.nll_sum.reshape(1), ref.nll_sum.reshape(1)))
        grads = 0.0
        for a, b in zip(g_sp, g_ref):
            a = torch.zeros_like(b) if a is None and b is not None else a
            if b is None:
                continue
            a = a.clone()
            dist.all_reduce(a)  # each rank back-propagates its shard's share
            grads = max(grads, max_rel(a, b))
        report[name] = {"values": values, "grads": grads}
    if dist.get_rank() == 0 and args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

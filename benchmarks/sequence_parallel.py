"""Sequence parallel on CPU: per-rank activation memory and step time for sp_size 1, 2, 4.

    python benchmarks/sequence_parallel.py                          # 8K-token prompt, sp 1 2 4
    python benchmarks/sequence_parallel.py --length 16384 --sp 1 2 --steps 1

One pair (a prompt of --length tokens, two 256-token answers), packed with the shared prefix, on a
small Llama (4 layers, hidden 256, 8 heads / 4 kv heads, vocabulary 32K, random weights, float32,
SDPA). Each sp_size runs as its own torchrun launch on gloo; a step is forward + backward of the
LongPO statistics. Memory is the growth of each rank's peak RSS over its RSS just before the
measured steps (a warm-up step has already allocated the gradients): activations plus transient
buffers (all-to-all, attention, logits chunk). "Saved activations" counts the tensors autograd keeps
for the backward (each storage once, parameters excluded). The table shows the worst rank. CPU step times with more processes than cores
measure nothing useful about speed: the point here is memory per rank.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memory import peak_mb, rss_mb  # benchmarks/memory.py (this folder is on sys.path)

ANSWER_TOKENS = 256


def make_pair(length: int, vocab: int, seed: int):
    import random

    from longpo.data.records import TokenizedPair

    rng = random.Random(seed)
    ids = lambda n: [rng.randrange(3, vocab) for _ in range(n)]  # noqa: E731
    return TokenizedPair(id=f"bench-{length}", prefix=ids(length), chosen=ids(ANSWER_TOKENS),
                         chosen_mask=[True] * ANSWER_TOKENS, rejected=ids(ANSWER_TOKENS),
                         rejected_mask=[True] * ANSWER_TOKENS, ref_chosen_logp=-500.0, ref_rejected_logp=-520.0)


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from longpo.toy.tiny import build_tiny_model
    from longpo.train.loss import PairLogps, combine_loss, preference_losses
    from longpo.train.packing import pack_pairs
    from longpo.train.parallel import forward_pairs_parallel, init_mesh, parallelize

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    sp = args.sp[0]
    mesh = init_mesh(sp)
    model = build_tiny_model("llama", seed=0, vocab_size=32000, hidden_size=256, num_layers=4, num_heads=8,
                             num_kv_heads=4, max_position_embeddings=1 << 20)
    parallelize(model, mesh)

    saved: dict[int, int] = {}

    def pack(t):  # tally each storage saved for backward once: the activation memory proper
        if t.device.type == "cpu" and not isinstance(t, torch.nn.Parameter):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    def step(batch) -> float:
        start = time.perf_counter()
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = forward_pairs_parallel(model, batch, mesh, args.chunk_size)
        pref = preference_losses(out.policy, PairLogps(batch.ref_chosen, batch.ref_rejected), 0.01)
        combine_loss(out.nll_sum, out.nll_tokens, pref.losses.sum(), batch.num_pairs, 1.0, 0.01).backward()
        return time.perf_counter() - start

    step(pack_pairs([make_pair(64, 32000, 1)]))  # warm-up: allocates the gradients
    batch = pack_pairs([make_pair(args.length, 32000, 0)])
    dist.barrier()
    base = rss_mb()
    times = [step(batch) for _ in range(args.steps)]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved_mb = sum(n for ptr, n in saved.items() if ptr not in params) / 2**20
    result = torch.tensor([max(peak_mb() - base, 0.0), min(times), saved_mb], dtype=torch.float64)
    dist.all_reduce(result, op=dist.ReduceOp.MAX)
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps({"sp": sp, "tokens": int(batch.num_tokens),
                                              "peak_mb": float(result[0]), "step_s": float(result[1]),
                                              "saved_mb": float(result[2])}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=8192, help="prompt tokens (the row adds two 256-token answers)")
    parser.add_argument("--sp", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=2, help="measured steps (the fastest is reported)")
    parser.add_argument("--chunk-size", type=int, default=None, help="log-prob chunk (default: auto, ~64 MB logits)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    rows = []
    for sp in args.sp:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={sp}",
                   __file__, "--worker", "--sp", str(sp), "--length", str(args.length), "--steps", str(args.steps),
                   *(["--chunk-size", str(args.chunk_size)] if args.chunk_size else []), "--out", str(out)]
            subprocess.run(cmd, check=True, env=env, cwd=root)
            rows.append(json.loads(out.read_text()))
    base = rows[0] if rows[0]["sp"] == 1 else None
    print("\n| sp_size | row tokens | saved activations MB per rank | vs sp 1 | peak RSS growth MB per rank | vs sp 1 "
          "| step s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = {k: f"{r[k] / base[k]:.2f}x" if base else "-" for k in ("saved_mb", "peak_mb")}
        print(f"| {r['sp']} | {r['tokens']} | {r['saved_mb']:.0f} | {ratio['saved_mb']} | {r['peak_mb']:.0f} "
              f"| {ratio['peak_mb']} | {r['step_s']:.1f} |")

if __name__ == "__main__":
    main()

"""Training-step throughput and peak memory: packed LongPO path vs plain path vs TRL's DPOTrainer.

    python benchmarks/train_step.py                      # 2K, 4K, 8K, 16K prompts; prints a table
    python benchmarks/train_step.py --lengths 2048 --steps 2 --methods packed plain

The same pairs (long prompt of L tokens, two ~256-token answers) for all three methods, on one
tiny model (4 layers, hidden 256, vocabulary 32K, random weights, float32, SDPA), AdamW steps:
  packed: one row per pair, prefix once, chunked log-probs (longpo.train.logps.forward_pairs)
  plain:  chosen and rejected as two full sequences with full-vocabulary logits
  trl:    trl.DPOTrainer, loss_type ["sigmoid", "sft"], reference log-probs precomputed
Each (method, length) runs in its own process; peak memory is the growth of peak RSS over the
RSS just before the first step (model, optimizer state and data excluded alike for all three).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from memory import peak_mb, rss_mb  # benchmarks/memory.py (this folder is on sys.path)

WORDS = ("alpha beta gamma delta river city stone paper light green north quiet market garden "
         "winter silver engine letter window number").split()


def make_records(tokenizer, prompt_tokens: int, answer_tokens: int, n: int) -> list[dict]:
    import random

    rng = random.Random(0)

    def text(n_tokens: int) -> str:
        words = []
        while True:
            words += [rng.choice(WORDS) for _ in range(64)]
            if len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) >= n_tokens:
                break
        # trim to roughly n_tokens
        ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][:n_tokens]
        return tokenizer.decode(ids)

    records = []
    for i in range(n):
        records.append({
            "id": f"bench-{i}",
            "document": text(prompt_tokens),
            "turns": [{"question": "According to the passage above, what is it about?", "chunk": "c",
                       "chosen": text(answer_tokens), "rejected": text(answer_tokens),
                       "ref_chosen_logp": -300.0, "ref_rejected_logp": -310.0}],
        })
    return records


def build(vocab: int):
    import torch

    from longpo.toy.tiny import build_tiny_model, build_tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model("llama", vocab_size=vocab, hidden_size=256, num_layers=4, num_heads=4,
                             num_kv_heads=4, intermediate_size=688, max_position_embeddings=65536)
    return tokenizer, model


def run_ours(method: str, length: int, args) -> dict:
    import torch

    from longpo.data.records import tokenize_pair
    from longpo.train.attention import use_shared_prefix_attention
    from longpo.train.logps import forward_pairs, forward_pairs_plain
    from longpo.train.loss import PairLogps, combine_loss, preference_losses
    from longpo.train.packing import pack_pairs

    tokenizer, model = build(args.vocab)
    pairs = [tokenize_pair(tokenizer, r) for r in make_records(tokenizer, length, args.response, args.pairs)]
    if method == "packed":
        use_shared_prefix_attention(model)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batches = [pack_pairs([p]) for p in pairs]

    def step(i: int) -> None:
        pair = pairs[i % len(pairs)]
        if method == "packed":
            batch = batches[i % len(batches)]
            out = forward_pairs(model, batch)
            ref = PairLogps(batch.ref_chosen, batch.ref_rejected)
        else:
            out = forward_pairs_plain(model, [pair])
            ref = PairLogps(torch.tensor([pair.ref_chosen_logp]), torch.tensor([pair.ref_rejected_logp]))
        pref = preference_losses(out.policy, ref, beta=0.01)
        loss = combine_loss(out.nll_sum, out.nll_tokens, pref.losses.sum(), 1, 1.0, 0.01)
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    step(0)  # warm-up; also creates the optimizer state outside the measured peak
    base = rss_mb()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i + 1)
    elapsed = time.perf_counter() - t0
    return {"pairs_per_s": args.steps / elapsed, "peak_mb": max(peak_mb() - base, 0.0)}


def run_trl(length: int, args) -> dict:
    import copy

    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tokenizer, model = build(args.vocab)
    rows = []
    for r in make_records(tokenizer, length, args.response, args.pairs):
        turn = r["turns"][0]
        rows.append({"prompt": [{"role": "user", "content": f"{r['document']}\n\n{turn['question']}"}],
                     "chosen": [{"role": "assistant", "content": turn["chosen"]}],
                     "rejected": [{"role": "assistant", "content": turn["rejected"]}]})
    times, marks = [], {}

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            marks["t"] = time.perf_counter()
            if state.global_step == 1:
                marks["base"] = rss_mb()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - marks["t"])

    cfg = DPOConfig(output_dir=os.path.join(args.tmp, f"trl-{length}"), per_device_train_batch_size=1,
                    max_steps=args.steps + 1, learning_rate=1e-5, optim="adamw_torch", beta=0.01,
                    loss_type=["sigmoid", "sft"], loss_weights=[0.01, 1.0], precompute_ref_log_probs=True,
                    max_length=None, report_to=[], save_strategy="no", logging_steps=1000, use_cpu=True,
                    dataloader_num_workers=0, disable_tqdm=True, bf16=False, seed=0)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=cfg,
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[Timer()])
    torch.manual_seed(0)
    trainer.train()
    return {"pairs_per_s": args.steps / sum(times[1:]), "peak_mb": max(peak_mb() - marks["base"], 0.0)}


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    result = run_trl(args.length, args) if args.method == "trl" else run_ours(args.method, args.length, args)
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    ap.add_argument("--methods", nargs="+", default=["packed", "plain", "trl"])
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="measured steps after one warm-up step")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tmp", default="/tmp/longpo-bench")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    results: dict[tuple[str, int], dict] = {}
    for length in args.lengths:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--worker", "--method", method, "--length", str(length),
                   "--response", str(args.response), "--pairs", str(args.pairs), "--steps", str(args.steps),
                   "--vocab", str(args.vocab), "--threads", str(args.threads), "--tmp", args.tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                print(f"# {method} at {length}: failed: {' | '.join(tail)}", file=sys.stderr)
                continue
            results[(method, length)] = json.loads(line[0][7:])
            print(f"# {method:>6} {length:>6}: {results[(method, length)]}", file=sys.stderr, flush=True)

    print(f"\nprompt + 2 x {args.response}-token answers; tiny Llama (4 layers, hidden 256, vocab {args.vocab}), "
          f"float32, CPU, {args.threads} threads, AdamW\n")
    print("| prompt tokens | method | pairs/s | peak MB | packed speed-up | packed memory ratio |")
    print("|---:|---|---:|---:|---:|---:|")
    for length in args.lengths:
        ours = results.get(("packed", length))
        for method in args.methods:
            r = results.get((method, length))
            if r is None:
                print(f"| {length} | {method} | failed | | | |")
                continue
            speed = f"{ours['pairs_per_s'] / r['pairs_per_s']:.2f}x" if ours and method != "packed" else ""
            mem = f"{ours['peak_mb'] / r['peak_mb']:.2f}x" if ours and method != "packed" and r["peak_mb"] else ""
            print(f"| {length} | {method} | {r['pairs_per_s']:.3f} | {r['peak_mb']:.0f} | {speed} | {mem} |")


if __name__ == "__main__":
    main()

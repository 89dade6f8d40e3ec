"""Rejected-answer throughput of the HF backend: the document's KV cache reused vs recomputed per question.

    python benchmarks/generate.py                       # 4K and 8K-token documents, 4 questions each
    python benchmarks/generate.py --lengths 4096 --questions 2 4 8

The rejected answers of several questions on one long document share the document as prompt
prefix. `HFBackend` prefills it once and continues each question from a copy of its cache
(min_shared_prefix=64); the baseline recomputes the whole prompt for every question
(min_shared_prefix=inf). Same tiny Llama (4 layers, hidden 256, random weights, float32, SDPA),
same prompts, greedy decoding; both produce the same answers (checked).
"""

from __future__ import annotations

import argparse
import random
import time


def main() -> None:
    import torch

    from longpo.data.backends.base import Sampling
    from longpo.data.backends.hf import HFBackend
    from longpo.data.records import user_content
    from longpo.tiny import build_tiny_model, build_tiny_tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--questions", type=int, nargs="+", default=[4])
    ap.add_argument("--documents", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4,
                             intermediate_size=688, max_position_embeddings=16384)
    rng = random.Random(0)
    words = "alpha beta gamma delta river city stone paper light green north quiet market garden".split()
    sampling = Sampling(temperature=0.0, max_new_tokens=args.new_tokens)
    rows = []
    for length in args.lengths:
        for k in args.questions:
            prompts = []
            for _ in range(args.documents):
                ids = tok(" ".join(rng.choice(words) for _ in range(length)), add_special_tokens=False)["input_ids"]
                doc = tok.decode(ids[:length])
                for q in range(k):
                    messages = [{"role": "user", "content": user_content(doc, f"Question {q}: what is said about {words[q]}?")}]
                    prompts.append(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            timings, answers = {}, {}
            for name, shared in (("recomputed", 10**9), ("reused", 64)):
                backend = HFBackend(model, tok, min_shared_prefix=shared)
                start = time.perf_counter()
                answers[name] = backend.generate(prompts, sampling)
                timings[name] = time.perf_counter() - start
            assert answers["reused"] == answers["recomputed"], "KV reuse changed the answers"
            rows.append((length, k, len(prompts) / timings["recomputed"], len(prompts) / timings["reused"]))
            print(f"# {length} tokens, {k} questions: {timings}", flush=True)

    print(f"\nrejected answers/s, HF backend, tiny Llama (4 layers, hidden 256), {args.new_tokens} new tokens, "
          f"greedy, CPU {args.threads} threads, {args.documents} documents per row\n")
    print("| document tokens | questions | recomputed (answers/s) | KV reused (answers/s) | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for length, k, slow, fast in rows:
        print(f"| {length} | {k} | {slow:.2f} | {fast:.2f} | {fast / slow:.2f}x |")


if __name__ == "__main__":
    main()

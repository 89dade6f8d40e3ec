"""Rejected-answer throughput of the HF backend: the document's KV cache reused vs recomputed.

    python benchmarks/generate.py                       # 4K and 8K-token documents, 4 questions each
    python benchmarks/generate.py --lengths 4096 --questions 2 4 8

Two ways several rejected answers share one long document, both measured:
- questions: k questions on one document in one call. `HFBackend` prefills the document once and
  continues each question from a copy of its cache (min_shared_prefix=64).
- turns: k turns of one conversation over the document, one call each (what `longpo generate`
  does with num_turns=k). With `reuse_across_calls` the backend keeps the last prompt+answer cache
  and turn i+1 prefills only its new tail.
The baseline recomputes the whole prompt for every answer (min_shared_prefix=inf). Same tiny Llama
(4 layers, hidden 256, random weights, float32, SDPA), same prompts, greedy decoding; both give the
same answers (checked).
"""

from __future__ import annotations

import argparse
import random
import time


def main() -> None:
    import torch

    from longpo.backends.base import Sampling
    from longpo.backends.hf import HFBackend
    from longpo.data.records import user_content
    from longpo.toy.tiny import build_tiny_model, build_tiny_tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--questions", type=int, nargs="+", default=[4])
    ap.add_argument("--modes", nargs="+", default=["questions", "turns"], choices=["questions", "turns"])
    ap.add_argument("--documents", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="alternate the two sides this often, keep the fastest "
                                                             "(a shared machine's noise only ever adds time)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4,
                             intermediate_size=688, max_position_embeddings=16384)
    rng = random.Random(0)
    words = "alpha beta gamma delta river city stone paper light green north quiet market garden".split()
    sampling = Sampling(temperature=0.0, max_new_tokens=args.new_tokens)

    def chat(messages):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def questions(backend, doc, k):  # k prompts on the document, one call
        return backend.generate([chat([{"role": "user", "content": user_content(doc, f"Question {q}: what about "
                                                                                     f"{words[q]}?")}])
                                 for q in range(k)], sampling)

    def turns(backend, doc, k):  # k turns, each after the previous answer, one call per turn
        messages, answers = [], []
        for q in range(k):
            text = f"Question {q}: what about {words[q]}?"
            messages.append({"role": "user", "content": user_content(doc, text) if q == 0 else text})
            answers += backend.generate([chat(messages)], sampling)
            messages.append({"role": "assistant", "content": answers[-1]})
        return answers

    questions(HFBackend(model, tok), "warm up " * 64, 2)  # first-call costs stay out of both timings
    rows = []
    for mode in args.modes:
        run = questions if mode == "questions" else turns
        for length in args.lengths:
            for k in args.questions:
                docs = []
                for _ in range(args.documents):
                    ids = tok(" ".join(rng.choice(words) for _ in range(length)), add_special_tokens=False)["input_ids"]
                    docs.append(tok.decode(ids[:length]))
                timings: dict[str, float] = {}
                answers, prefill = {}, {}
                # Both sides decode one answer at a time: a batched baseline would measure CPU batching
                # (slower here), not KV reuse.
                for _ in range(args.repeats):
                    for name, kw in (("recomputed", {"min_shared_prefix": 10**9, "batch_size": 1}),
                                     ("reused", {"min_shared_prefix": 64, "reuse_across_calls": mode == "turns"})):
                        backend = HFBackend(model, tok, **kw)
                        start = time.perf_counter()
                        answers[name] = [a for doc in docs for a in run(backend, doc, k)]
                        timings[name] = min(timings.get(name, float("inf")), time.perf_counter() - start)
                        prefill[name] = backend.stats["prefill_tokens"]
                assert answers["reused"] == answers["recomputed"], "KV reuse changed the answers"
                n = len(answers["reused"])
                rows.append((mode, length, k, prefill["recomputed"], prefill["reused"], n / timings["recomputed"],
                             n / timings["reused"]))
                print(f"# {mode}: {length} tokens, {k} per document: {timings}", flush=True)

    print(f"\nrejected answers/s, HF backend, tiny Llama (4 layers, hidden 256), {args.new_tokens} new tokens, "
          f"greedy, CPU {args.threads} threads, {args.documents} documents per row, fastest of {args.repeats}\n")
    print("| shared by | document tokens | per document | prefill tokens recomputed / reused | recomputed (answers/s) "
          "| KV reused (answers/s) | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, length, k, p_slow, p_fast, slow, fast in rows:
        shared = "questions in one call" if mode == "questions" else "turns, one call each"
        print(f"| {shared} | {length} | {k} | {p_slow} / {p_fast} | {slow:.2f} | {fast:.2f} | {fast / slow:.2f}x |")


if __name__ == "__main__":
    main()

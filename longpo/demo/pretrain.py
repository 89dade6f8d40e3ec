"""Train the toy base model on SHORT documents: answering a fact question and writing questions.

    python -m longpo.demo.pretrain --out runs/toy_base --steps 3000

Seeded and deterministic on CPU. Loss on assistant tokens only. Progress lines report the loss on
the answer token against chance (ln of the number of values) and the answer accuracy on held-out
short and long documents (teacher-forced argmax of the single answer token, which is what greedy
decoding would produce first).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

from longpo.demo.world import VALUES, ask_messages, build_tokenizer, make_doc, qa_messages


def encode(tok: Any, messages: list[dict]) -> tuple[list[int], list[bool]]:
    from longpo.data.records import tokenize_conversation

    return tokenize_conversation(tok, messages)


def sample_example(rng: random.Random, max_facts: int, ask_share: float) -> list[dict]:
    doc = make_doc(rng, rng.randint(1, max_facts))
    if rng.random() < ask_share:
        return ask_messages(doc, k=min(len(doc.facts), rng.randint(1, 4)))
    name, value = rng.choice(doc.facts)
    return qa_messages(doc, name, value)


def batch_tensors(tok: Any, examples: list[list[dict]]) -> tuple[Any, Any, Any]:
    import torch

    encoded = [encode(tok, m) for m in examples]
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), tok.pad_token_id)
    labels = torch.full((len(encoded), width), -100)
    attn = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (x, m) in enumerate(encoded):
        ids[i, : len(x)] = torch.tensor(x)
        attn[i, : len(x)] = 1
        labels[i, : len(x)] = torch.where(torch.tensor(m), torch.tensor(x), torch.tensor(-100))
    return ids, attn, labels


def answer_accuracy(model: Any, tok: Any, n_facts: int, n: int, seed: int) -> float:
    """Share of questions whose first answer token is the right value under argmax."""
    import torch

    rng = random.Random(seed)
    correct = 0
    with torch.no_grad():
        for _ in range(n):
            doc = make_doc(rng, n_facts)
            name, value = rng.choice(doc.facts)
            prompt = tok.apply_chat_template(qa_messages(doc, name, None), tokenize=False, add_generation_prompt=True)
            ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
            pred = model(input_ids=ids).logits[0, -1].argmax().item()
            correct += int(pred == tok.convert_tokens_to_ids(value))
    return correct / n


def train(out: str, steps: int = 3000, batch: int = 64, lr: float = 3e-3, seed: int = 0, layers: int = 3,
          hidden: int = 128, max_facts: int = 4, long_facts: int = 16, ask_share: float = 0.15,
          threads: int = 2, log_every: int = 250) -> dict:
    import torch

    from longpo.tiny import build_tiny_model

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tok = build_tokenizer()
    model = build_tiny_model("llama", seed=seed, vocab_size=len(tok), hidden_size=hidden, num_layers=layers,
                             num_heads=4, num_kv_heads=4, intermediate_size=2 * hidden, max_position_embeddings=4096,
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    rng = random.Random(seed)
    value_ids = set(tok.convert_tokens_to_ids(VALUES))
    log, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        facts_now = min(max_facts, 1 + step * max_facts // max(1, steps // 3))  # curriculum: 1 fact first
        ids, attn, labels = batch_tensors(tok, [sample_example(rng, facts_now, ask_share) for _ in range(batch)])
        out_ = model(input_ids=ids, attention_mask=attn, labels=labels)
        out_.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == steps:
            with torch.no_grad():  # loss on value tokens only, against chance ln(#values)
                logp = torch.log_softmax(out_.logits[:, :-1].float(), -1)
                tgt = labels[:, 1:]
                is_value = torch.tensor([[t in value_ids for t in row] for row in tgt.tolist()])
                value_loss = -logp.gather(-1, tgt.clamp(min=0)[..., None]).squeeze(-1)[is_value].mean().item()
            model.eval()
            row = {"step": step, "loss": round(out_.loss.item(), 4), "answer_loss": round(value_loss, 4),
                   "chance": round(math.log(len(VALUES)), 4),
                   "short_acc": answer_accuracy(model, tok, max_facts, 100, seed + 1),
                   "long_acc": answer_accuracy(model, tok, long_facts, 100, seed + 2),
                   "seconds": round(time.perf_counter() - start, 1)}
            model.train()
            log.append(row)
            print(json.dumps(row), flush=True)
    out_dir = Path(out)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    meta = {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "layers": layers, "hidden": hidden,
            "max_facts": max_facts, "long_facts": long_facts, "ask_share": ask_share, "log": log}
    (out_dir / "pretrain.json").write_text(json.dumps(meta, indent=2))
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/toy_base")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    train(args.out, steps=args.steps, batch=args.batch, lr=args.lr, layers=args.layers, hidden=args.hidden,
          seed=args.seed, threads=args.threads)


if __name__ == "__main__":
    main()

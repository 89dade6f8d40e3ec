"""Train the toy base model on SHORT documents: answering fact questions and writing questions.

    python -m longpo.demo.pretrain --out longpo/demo/base_model      # the shipped weights (~12 min)

Seeded and deterministic on CPU (same torch build, same thread count: the shipped weights record
both). Loss on assistant tokens only. Progress lines report the loss on the value tokens against
chance (ln of the number of values) and the exact-match accuracy of single answers on held-out
short documents and on long ones (teacher-forced argmax over every answer token, which is exactly
what greedy decoding produces).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from longpo.data.records import tokenize_conversation
from longpo.files import atomic_write_json
from longpo.toy.tiny import build_tiny_model
from longpo.toy.world import (
    MAX_QUESTIONS,
    SHORT_FILLER,
    VALUES,
    ask_messages,
    build_tokenizer,
    make_long_doc,
    qa_messages,
    repeat_messages,
    short_doc,
)


@dataclass(kw_only=True)
class PretrainConfig:
    steps: int = 3000
    batch: int = 32
    lr: float = 3e-3
    warmup: int = 200
    seed: int = 0
    layers: int = 2
    hidden: int = 128
    heads: int = 4
    max_turns: int = 4  # questions per QA conversation (multi-turn, as LongPO's records)
    ask_share: float = 0.15  # conversations that ask for questions
    repeat_share: float = 0.2  # conversations that copy the document (forms the lookup circuit)
    max_filler: int = SHORT_FILLER
    rope_theta: float = 10000.0
    threads: int = 1
    eval_every: int = 250
    eval_long_length: int = 512

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def sample_example(rng: random.Random, cfg: PretrainConfig) -> list[dict]:
    ask_share, max_turns, repeat_share = cfg.ask_share, cfg.max_turns, cfg.repeat_share
    doc = short_doc(rng, cfg.max_filler)
    if repeat_share and rng.random() < repeat_share:
        return repeat_messages(doc)
    if rng.random() < ask_share:
        names = [n for n, _ in doc.facts]
        return ask_messages(doc, rng.sample(names, rng.randint(1, min(MAX_QUESTIONS, len(names)))))
    return qa_messages(doc, rng.sample(doc.facts, rng.randint(1, min(max_turns, len(doc.facts)))))


def batch_tensors(tok: Any, conversations: list[list[dict]]) -> tuple[Any, Any, Any]:
    """Right-padded ids, attention mask and labels (-100 outside assistant tokens)."""
    encoded = [tokenize_conversation(tok, m) for m in conversations]
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), tok.pad_token_id)
    labels = torch.full((len(encoded), width), -100)
    attn = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (x, m) in enumerate(encoded):
        ids[i, : len(x)] = torch.tensor(x)
        attn[i, : len(x)] = 1
        labels[i, : len(x)] = torch.where(torch.tensor(m), torch.tensor(x), torch.tensor(-100))
    return ids, attn, labels


def exact_match(model: Any, tok: Any, docs: list, rng: random.Random, batch: int = 32) -> float:
    """Share of single questions whose whole answer is right under teacher-forced argmax (= greedy)."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(docs), batch):
            convs = [qa_messages(d, [rng.choice(d.facts)]) for d in docs[start : start + batch]]
            ids, attn, labels = batch_tensors(tok, convs)
            pred = model(input_ids=ids, attention_mask=attn).logits[:, :-1].argmax(-1)
            tgt = labels[:, 1:]
            correct += int(((pred == tgt) | (tgt == -100)).all(-1).sum())
    return correct / len(docs)


def train(cfg: PretrainConfig, out: str | Path, log: Any = print) -> dict:
    torch.set_num_threads(cfg.threads)
    tok = build_tokenizer()
    model = build_tiny_model("llama", seed=cfg.seed, vocab_size=len(tok), hidden_size=cfg.hidden,
                             num_layers=cfg.layers, num_heads=cfg.heads, num_kv_heads=cfg.heads,
                             intermediate_size=2 * cfg.hidden, max_position_embeddings=4096,
                             rope_theta=cfg.rope_theta, pad_token_id=tok.pad_token_id,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))))
    rng = random.Random(cfg.seed)
    eval_rng = random.Random(cfg.seed + 1)
    short_docs = [short_doc(eval_rng, cfg.max_filler) for _ in range(200)]
    long_docs = [make_long_doc(eval_rng, cfg.eval_long_length) for _ in range(100)]
    value_ids = torch.tensor(tok.convert_tokens_to_ids(VALUES))
    history, start = [], time.perf_counter()
    for step in range(1, cfg.steps + 1):
        ids, attn, labels = batch_tensors(tok, [sample_example(rng, cfg)
                                                for _ in range(cfg.batch)])
        result = model(input_ids=ids, attention_mask=attn, labels=labels)
        result.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            with torch.no_grad():  # loss on value tokens only, against chance ln(#values)
                logp = torch.log_softmax(result.logits[:, :-1].float(), -1)
                tgt = labels[:, 1:]
                is_value = torch.isin(tgt, value_ids)
                value_loss = -logp.gather(-1, tgt.clamp(min=0)[..., None]).squeeze(-1)[is_value].mean().item()
            model.eval()
            row = {"step": step, "loss": round(result.loss.item(), 4), "value_loss": round(value_loss, 4),
                   "chance": round(math.log(len(VALUES)), 4),
                   "short_acc": exact_match(model, tok, short_docs, random.Random(1)),
                   "long_acc": exact_match(model, tok, long_docs, random.Random(2)),
                   "seconds": round(time.perf_counter() - start, 1)}
            model.train()
            history.append(row)
            log(json.dumps(row))
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    meta = {"config": asdict(cfg), "config_digest": cfg.digest(), "torch": torch.__version__, "log": history}
    atomic_write_json(out / "pretrain.json", meta)
    return meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/toy_base", help="model folder to write")
    for name, default in asdict(PretrainConfig()).items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = vars(ap.parse_args(argv))
    out = args.pop("out")
    train(PretrainConfig(**args), out, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()

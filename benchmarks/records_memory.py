"""Resident memory of one training rank against the number of records: in-memory list vs memory-mapped table.

    python benchmarks/records_memory.py                          # 1K and 8K records of ~100K characters
    python benchmarks/records_memory.py --counts 1000 8000 --chars 100000 --steps 3

Writes synthetic JSONL records (one turn, a ~`--chars`-character document each, reference
log-probs filled) once into `--work`, then for each count and reader runs, in a fresh process,
`Trainer` setup (tiny Mistral, one rank) plus `--steps` optimizer steps of one pair each, and
reports that process's memory growth from just before the setup to just after the last step:
VmRSS (all resident pages; file-backed pages of the mapped Arrow table count while they stay
in the page cache, and the kernel can drop them) and RssAnon (private memory, which it cannot).

Readers: `table` = what `longpo train` does now (`longpo.data.sources.open_records`: a
memory-mapped `datasets` table read by position); `memory` = the former reader kept here for the
comparison (`read_records`: every record a Python dict, held for the whole run). The goal: growth
independent of the record count (the 8K row within 10% of the 1K row).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

WORDS = ("the river city book value number code name magic secret vault long short paper passage question "
         "answer chapter section model context summary key theorem proof data").split()


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def write_records(path: Path, count: int, chars: int, seed: int = 0) -> None:
    """`count` distinct records of ~`chars` characters (16 base texts, each record its own prefix)."""
    rng = random.Random(seed)
    bases = []
    for _ in range(16):
        words, n = [], 0
        while n < chars:
            w = rng.choice(WORDS)
            words.append(w)
            n += len(w) + 1
        bases.append(" ".join(words))
    with open(path, "w") as f:
        for i in range(count):
            doc = f"Record {i}. " + bases[i % 16]
            turn = {"question": f"According to the passage above, what is value {i}?", "chunk": doc[:2000],
                    "chosen": f"The value is {i} and the city is {WORDS[i % len(WORDS)]}.",
                    "rejected": f"I think it might be {i % 97}.", "ref_chosen_logp": -40.0 - i % 7,
                    "ref_rejected_logp": -30.0 - i % 5}
            f.write(json.dumps({"id": f"rec-{i:05d}", "document": doc, "turns": [turn]}) + "\n")


def in_memory_reader(path, require_reference=False):
    """The reader `longpo train` used before: a list of every validated record, held by every rank."""
    from longpo.data.records import read_records

    return read_records(path, require_reference=require_reference)


def settle() -> None:
    """Collect garbage and hand the allocator's free pages back to the kernel (glibc malloc_trim), so
    RssAnon counts memory still held, not heap the allocator kept after a large temporary."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: growth then includes the allocator's free pages
        pass


def child(reader: str, records: str, model_dir: str, out_dir: str, steps: int) -> dict:
    import longpo.train.trainer as trainer_module
    from longpo.train.trainer import Config, Trainer

    if reader == "memory":
        trainer_module.open_records = in_memory_reader
    settle()
    rss0, anon0 = status_kb("VmRSS"), status_kb("RssAnon")
    start = time.perf_counter()
    trainer = Trainer(Config(model=model_dir, train_file=records, output_dir=out_dir, loss="longpo",
                             max_length=131072, pairs_per_micro_batch=1, gradient_accumulation_steps=1,
                             max_steps=steps, optimizer="adamw", learning_rate=1e-4, warmup_ratio=0.0,
                             progress_bar=False, seed=1))
    setup_s = time.perf_counter() - start
    trainer.train()
    settle()
    return {"rss_mb": (status_kb("VmRSS") - rss0) / 1024, "anon_mb": (status_kb("RssAnon") - anon0) / 1024,
            "peak_mb": status_kb("VmHWM") / 1024, "setup_s": setup_s, "total_s": time.perf_counter() - start,
            "records": len(trainer.records)}


def build_model(model_dir: Path) -> None:
    import torch

    from longpo.toy.tiny import build_tiny_model, build_tiny_tokenizer

    build_tiny_model("mistral", dtype=torch.float32, max_position_embeddings=131072).save_pretrained(model_dir)
    build_tiny_tokenizer().save_pretrained(model_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 8000])
    ap.add_argument("--chars", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--readers", nargs="+", default=["memory", "table"])
    ap.add_argument("--work", default="/tmp/longpo-records-memory")
    ap.add_argument("--child", nargs=4, metavar=("READER", "RECORDS", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, steps=args.steps)))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        build_model(model_dir)
    rows = []
    for count in args.counts:
        records = work / f"records-{count}-{args.chars}.jsonl"
        if not records.exists():
            write_records(records, count, args.chars)
        for reader in args.readers:
            shutil.rmtree(work / f"run-{reader}-{count}", ignore_errors=True)  # a fresh run, not a resumed one
            cmd = [sys.executable, __file__, "--steps", str(args.steps), "--child", reader, str(records),
                   str(model_dir), str(work / f"run-{reader}-{count}")]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{reader} x {count} failed:\n{done.stderr[-3000:]}")
            out = done.stdout.strip().splitlines()[-1]
            rows.append({"reader": reader, "count": count, "file_mb": records.stat().st_size / 2**20,
                         **json.loads(out)})
            print(f"done: {reader} {count}", file=sys.stderr)
    print(f"\n{args.steps} steps, 1 rank, records of ~{args.chars} characters\n")
    print("| reader | records | file MB | RSS growth MB | RssAnon growth MB | peak RSS MB | setup s | total s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['reader']} | {r['count']} | {r['file_mb']:.0f} | {r['rss_mb']:.0f} | {r['anon_mb']:.0f} | "
              f"{r['peak_mb']:.0f} | {r['setup_s']:.1f} | {r['total_s']:.1f} |")


if __name__ == "__main__":
    main()

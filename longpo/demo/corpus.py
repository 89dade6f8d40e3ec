"""Seeded corpora of long toy documents in the format `longpo generate` reads (JSON lines: id, text).

    python -m longpo.demo.corpus --out runs/toy/corpus_512.jsonl --length 512 --documents 64 --seed 0
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from longpo.files import atomic_write_jsonl
from longpo.toy.world import make_long_doc


def write_corpus(path: str | Path, documents: int, length: int, seed: int) -> Path:
    """`documents` long documents of at most `length` tokens; an existing file is kept (same seed, same file)."""
    path = Path(path)
    if not path.exists():
        rng = random.Random(f"corpus:{seed}:{length}")
        atomic_write_jsonl(path, [{"id": f"doc-{length}-{i:04d}", "text": make_long_doc(rng, length).text}
                                  for i in range(documents)])
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSONL file to write")
    ap.add_argument("--length", type=int, default=512, help="most tokens per document")
    ap.add_argument("--documents", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(write_corpus(args.out, args.documents, args.length, args.seed))


if __name__ == "__main__":
    main()

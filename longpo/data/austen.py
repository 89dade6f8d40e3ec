"""Jane Austen's six novels as a corpus of long human-written documents (for real-model runs).

    python -m longpo.data.austen fetch                        # apt-get download + unpack (no R needed)
    python -m longpo.data.austen corpus OUT.jsonl --tokenizer MODEL_DIR --doc-tokens 3000 --docs-per-novel 2

The Debian package `r-cran-janeaustenr` (MIT; the texts are public domain) stores the novels as
R character vectors, one printed line each, in a lazy-load database (`data/Rdata.rdx` indexes
`data/Rdata.rdb`). It is read here with the PyPI `rdata` package, so R itself is not needed.
Lines are joined into paragraphs (a blank line ends one), and consecutive paragraphs of one novel
are packed into documents of about `doc_tokens` tokens of the given tokenizer. The JSONL written
(`id`, `text`, `novel`) is a corpus that `longpo generate corpus=...` reads as it is. These texts
differ from RULER's haystacks (Paul Graham essays, SQuAD, HotpotQA).
"""

from __future__ import annotations

import argparse
import bz2
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Any

PACKAGE = "r-cran-janeaustenr"
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
_DATA = Path("usr/lib/R/site-library/janeaustenr/data")


def cache_dir() -> Path:
    return Path(os.environ.get("LONGPO_CACHE", Path.home() / ".cache" / "longpo")) / "janeaustenr"


def find_data_dir() -> Path | None:
    """The package's `data/` folder: $LONGPO_JANEAUSTENR, the `fetch` cache, or an installed R library."""
    candidates = [Path(p) for p in (os.environ.get("LONGPO_JANEAUSTENR"),) if p]
    candidates += [cache_dir() / _DATA, Path("/") / _DATA]
    return next((p for p in candidates if (p / "Rdata.rdx").is_file() and (p / "Rdata.rdb").is_file()), None)


def fetch(dest: Path | None = None) -> Path:
    """Download the .deb with apt-get and unpack it under `dest` (default: the cache); returns the data folder."""
    dest = dest or cache_dir()
    if (dest / _DATA / "Rdata.rdx").is_file():
        return dest / _DATA
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", PACKAGE]
        if subprocess.run(download, cwd=tmp, capture_output=True).returncode != 0:
            # A fresh container has no package lists yet (needs root); then try once more.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            got = subprocess.run(download, cwd=tmp, capture_output=True, text=True)
            if got.returncode != 0:
                raise RuntimeError(f"`apt-get download {PACKAGE}` failed: {got.stderr.strip()[-300:]}")
        deb = next(Path(tmp).glob("*.deb"))
        unpacked = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copytree(unpacked, dest, dirs_exist_ok=True)
    return dest / _DATA


def _decompress(blob: bytes, compressed: int, where: str) -> bytes:
    """One lazy-load entry: 4 bytes of length, then (type 2/3: a type byte and) the compressed body."""
    size = int.from_bytes(blob[:4], "big")
    if compressed in (2, 3):
        kind, body = blob[4:5], blob[5:]
        data = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}[kind](body)
    else:
        data = zlib.decompress(blob[4:])
    if len(data) != size:
        raise ValueError(f"{where}: entry decompresses to {len(data)} bytes, its header says {size}")
    return data


def read_novels(data_dir: str | Path | None = None) -> dict[str, list[str]]:
    """Each novel's printed lines, by its R name (e.g. "emma"), in the package's order."""
    import rdata

    data_dir = Path(data_dir) if data_dir else find_data_dir()
    if data_dir is None:
        raise FileNotFoundError(f"{PACKAGE} not found: run `python -m longpo.data.austen fetch` or set "
                                "LONGPO_JANEAUSTENR to its data/ folder")
    with warnings.catch_warnings():  # rdata warns that .rdx is "RDS with a wrong extension": it is
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(rdata.parser.parse_file(data_dir / "Rdata.rdx"))
        blob = (data_dir / "Rdata.rdb").read_bytes()
        compressed = int(index["compressed"][0])
        novels = {}
        for name, (offset, length) in index["variables"].items():
            raw = _decompress(blob[int(offset) : int(offset) + int(length)], compressed, f"{data_dir}/Rdata.rdb:{name}")
            lines = rdata.conversion.convert(rdata.parser.parse_data(raw))
            novels[str(name)] = ["" if line is None else str(line) for line in lines]
    missing = [n for n in NOVELS if n not in novels]
    if missing:
        raise ValueError(f"{data_dir}: novels {missing} missing (found {sorted(novels)})")
    return novels


def paragraphs(lines: list[str]) -> list[str]:
    """Printed lines joined into paragraphs; a blank line ends a paragraph."""
    out, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(current))
            current = []
    return out


def split_documents(tokenizer: Any, paras: list[str], doc_tokens: int, max_docs: int | None = None) -> list[str]:
    """Consecutive paragraphs packed into documents of at most `doc_tokens` tokens (and at least half).

    Documents are cut at paragraph breaks only; a paragraph longer than the whole budget is skipped
    (Austen has none near 1K tokens). Paragraphs within a document are joined by a blank line.
    """
    docs, current, size = [], [], 0
    for p in paras:
        n = len(tokenizer(p + "\n\n", add_special_tokens=False)["input_ids"])
        if n > doc_tokens:
            continue
        if size + n > doc_tokens:
            if size >= doc_tokens // 2:
                docs.append("\n\n".join(current))
                if max_docs is not None and len(docs) >= max_docs:
                    return docs
            current, size = [], 0
        current.append(p)
        size += n
    if current and size >= doc_tokens // 2:
        docs.append("\n\n".join(current))
    return docs[:max_docs] if max_docs is not None else docs


def corpus_rows(tokenizer: Any, doc_tokens: int, docs_per_novel: int | None = None, novels: tuple = NOVELS,
                skip_paragraphs: int = 0, data_dir: str | Path | None = None) -> list[dict]:
    """Corpus rows `{"id", "text", "novel"}`, novel by novel; `skip_paragraphs` skips each novel's opening
    (title pages, tables of contents)."""
    texts = read_novels(data_dir)
    rows = []
    for name in novels:
        paras = paragraphs(texts[name])[skip_paragraphs:]
        for i, text in enumerate(split_documents(tokenizer, paras, doc_tokens, docs_per_novel)):
            rows.append({"id": f"{name}-{doc_tokens}-{i:03d}", "text": text, "novel": name})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m longpo.data.austen", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help=f"apt-get download {PACKAGE} and unpack it into the cache")
    f.add_argument("--dest", default=None, help="folder to unpack into (default: ~/.cache/longpo/janeaustenr)")
    c = sub.add_parser("corpus", help="write a JSONL corpus of documents of a token length")
    c.add_argument("output", help="JSONL file to write")
    c.add_argument("--tokenizer", required=True, help="tokenizer folder that measures document lengths")
    c.add_argument("--doc-tokens", type=int, default=4096, help="most tokens per document")
    c.add_argument("--docs-per-novel", type=int, default=None, help="most documents per novel (default: all)")
    c.add_argument("--skip-paragraphs", type=int, default=20, help="paragraphs skipped at each novel's start")
    args = ap.parse_args(argv)
    if args.cmd == "fetch":
        try:
            print(f"-> {fetch(Path(args.dest) if args.dest else None)}")
        except (RuntimeError, FileNotFoundError, subprocess.CalledProcessError) as e:
            print(f"austen fetch: {e}", file=sys.stderr)
            return 2
        return 0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    rows = corpus_rows(tok, args.doc_tokens, args.docs_per_novel, skip_paragraphs=args.skip_paragraphs)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    print(f"{len(rows)} documents -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Long documents in: JSONL, Parquet, a folder of text files, or a `datasets` folder saved to disk.

Every document comes out as `Document(id, text, where)`; `where` names the file and line (or row)
for error messages. A document without an id field gets a stable id from its text's hash, so
reruns, shards and merges agree on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from longpo.errors import InputError

TEXT_SUFFIXES = (".txt", ".md", ".tex", ".rst", ".py", ".c", ".cpp", ".h", ".java", ".js", ".ts", ".go", ".rs")


class CorpusError(InputError):
    """A corpus that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    where: str


def stable_id(text: str) -> str:
    return "doc-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _from_row(row: dict, where: str, text_field: str, id_field: str | None) -> Document:
    if text_field not in row:
        raise CorpusError(f"{where}: field {text_field!r} is missing (fields: {sorted(row)}); set text_field=")
    text = row[text_field]
    if not isinstance(text, str):
        raise CorpusError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
    rid = row.get(id_field) if id_field else None
    return Document(id=str(rid) if rid not in (None, "") else stable_id(text), text=text, where=where)


def _jsonl(path: Path, text_field: str, id_field: str | None) -> Iterator[Document]:
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}:{i}: not valid UTF-8 (byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{i}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise CorpusError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
            yield _from_row(row, f"{path}:{i}", text_field, id_field)


def _parquet(path: Path, text_field: str, id_field: str | None) -> Iterator[Document]:
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise CorpusError(f"{path}: cannot be read as Parquet: {e}") from None
    n = 0
    for batch in table.iter_batches():
        for row in batch.to_pylist():
            yield _from_row(row, f"{path} row {n}", text_field, id_field)
            n += 1


def _saved_dataset(path: Path, text_field: str, id_field: str | None) -> Iterator[Document]:
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    for n, row in enumerate(ds):
        yield _from_row(row, f"{path} row {n}", text_field, id_field)


def _text_folder(path: Path, skipped: dict) -> Iterator[Document]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    for file in files:
        try:
            text = file.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            skipped["undecodable_file"] = skipped.get("undecodable_file", 0) + 1
            continue
        yield Document(id=str(file.relative_to(path)), text=text, where=str(file))


def iter_documents(path: str | Path, text_field: str = "text", id_field: str | None = "id",
                   skipped: dict | None = None) -> Iterator[Document]:
    """Documents of a corpus in a fixed order. Undecodable files of a text folder are skipped and
    counted in `skipped`; any other bad input raises `CorpusError` naming file and line."""
    path = Path(path)
    skipped = skipped if skipped is not None else {}
    if not path.exists():
        raise CorpusError(f"corpus {path}: no such file or folder")
    try:
        if path.is_dir() and any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json")):
            yield from _saved_dataset(path, text_field, id_field)
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".parquet"))
            if files:
                for file in files:
                    yield from iter_documents(file, text_field, id_field, skipped)
            else:
                yield from _text_folder(path, skipped)
        elif path.suffix in (".jsonl", ".json"):
            yield from _jsonl(path, text_field, id_field)
        elif path.suffix == ".parquet":
            yield from _parquet(path, text_field, id_field)
        elif path.suffix in TEXT_SUFFIXES:
            yield Document(id=path.name, text=path.read_text(encoding="utf-8"), where=str(path))
        else:
            raise CorpusError(f"corpus {path}: unknown format (use .jsonl, .parquet, a folder of text files, "
                              "or a datasets folder saved with save_to_disk)")
    except PermissionError as e:
        raise CorpusError(f"corpus {path}: cannot be read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not valid UTF-8 (byte {e.start})") from None

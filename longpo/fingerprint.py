"""Run fingerprints: a rerun into an output folder resumes only with the settings that made it.

Every stage calls `guard(...)` before it reads or writes anything. The fingerprint is the
stage's resolved config flattened to dotted keys, without the keys that do not change its
results (each stage lists them beside its Config as `FINGERPRINT_EXEMPT`), plus the identity of
its input files (`identity`). It is stored as `<stage>.fingerprint.json` in the output folder:

- no fingerprint there: the folder is new (or holds no outputs of this stage): it is written;
- the same fingerprint: the run resumes (generate from its manifest, train from its newest
  checkpoint, eval from its prediction files, ...);
- a different one: `FingerprintMismatch` (an InputError, one line) lists every key that differs,
  old -> new, and says how to proceed: `overwrite=true` (the stage removes its own outputs, and
  only those, and starts over) or a new output folder.

Identity of an input: a SHA-256 over every file's relative path, size and content (hidden files
skipped), reading at most `READ_BUDGET` bytes per input in all: a file within its share of the
budget is read whole, a larger one as `SAMPLES` evenly spaced blocks of that share. So a 15 GB
checkpoint or a corpus of 5,000 files costs 64 MiB of reading at each start, not the whole input;
any change of size, any file added or removed, and any change inside a read block is seen.
Content, not mtime, so a copied or re-exported but identical model still matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from longpo.config import config_to_dict
from longpo.errors import InputError
from longpo.files import atomic_write_json, check_writable

READ_BUDGET = 64 << 20
SAMPLES = 16
MIN_SHARE = 64 << 10  # the least read of one file, however many files share the budget
VERSION = 2


class FingerprintMismatch(InputError):
    """The output folder holds a run made with other settings or inputs."""


def _file_digest(path: Path, share: int) -> str:
    """Size and content of a file: whole up to `share` bytes, else `SAMPLES` evenly spaced blocks."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= share:
            h.update(f.read())
        else:
            block = max(share // SAMPLES, 1)
            for i in range(SAMPLES):
                f.seek((size - block) * i // (SAMPLES - 1))
                h.update(f.read(block))
    return h.hexdigest()


def identity(path: str | os.PathLike | None, suffixes: tuple[str, ...] | None = None,
             budget: int = READ_BUDGET) -> str | None:
    """A digest of a file's or folder's content (None for None; "missing" when it does not exist),
    reading at most about `budget` bytes in all.

    `suffixes` restricts a folder to the files the stage reads (e.g. records: .jsonl, .parquet).
    """
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        return _file_digest(p, budget)
    if not p.is_dir():
        return "missing"
    files = []
    for f in sorted(p.rglob("*")):
        rel = f.relative_to(p)
        if not f.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if suffixes is not None and (f.suffix not in suffixes or len(rel.parts) > 1):
            continue
        files.append((rel, f))
    share = max(budget // max(len(files), 1), MIN_SHARE)
    h = hashlib.sha256()
    for rel, f in files:
        h.update(f"{rel.as_posix()}\0{_file_digest(f, share)}\n".encode())
    return h.hexdigest()


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}` (lists kept whole: a changed list is one changed key)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def settings(cfg: Any, exempt: Iterable[str] = ()) -> dict[str, Any]:
    """The config's dotted keys that determine results: everything but `exempt` (and "overwrite")."""
    tree = cfg if isinstance(cfg, dict) else config_to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    drop = set(exempt) | {"overwrite"}
    return {k: v for k, v in flatten(json.loads(json.dumps(tree, default=str))).items()
            if k not in drop and not any(k.startswith(d + ".") for d in drop)}


def path_of(folder: str | os.PathLike, stage: str) -> Path:
    return Path(folder) / f"{stage}.fingerprint.json"


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for every key whose value differs (inputs as `inputs.<name> (content)`)."""
    def value(tree: dict, key: str) -> Any:
        # an empty section is no keys at all: `generate: {}` before and `generate: {progress: false}` now
        # (progress exempt, so the section flattens to nothing) are the same run
        v = tree.get(key, "<absent>")
        return "<absent>" if v == {} else v

    out = []
    for section in ("settings", "inputs"):
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if value(a, key) != value(b, key):
                if section == "inputs":
                    out.append(f"inputs.{key} (its files changed)")
                else:
                    out.append(f"{key}: {_show(value(a, key))} -> {_show(value(b, key))}")
    return out


def guard(stage: str, folder: str | os.PathLike, cfg: Any, exempt: Iterable[str] = (),
          inputs: dict[str, str | None] | None = None, overwrite: bool = False,
          clear: Any = None, write: bool = True, target: Path | None = None) -> dict:
    """Refuse a rerun whose fingerprint differs from the one in `folder`; record it otherwise.

    `clear()` removes the stage's outputs in `folder` (called with overwrite=true before the new
    fingerprint is written). With `write=False` (non-main ranks) it only compares. `target`: the
    fingerprint file, when not `<folder>/<stage>.fingerprint.json`.
    """
    folder = Path(folder)
    new = {"version": VERSION, "stage": stage, "settings": settings(cfg, exempt),
           "inputs": {k: v for k, v in (inputs or {}).items() if v is not None}}
    target = target or path_of(folder, stage)
    if overwrite:
        if write and clear is not None:
            clear()
        if write:
            target.unlink(missing_ok=True)
    elif target.is_file():
        try:
            old = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise FingerprintMismatch(f"{target}: cannot be read ({e}); rerun with overwrite=true to start over, "
                                      f"or use a new folder") from e
        same_scheme = old.get("version") == VERSION  # else its input digests were computed another way
        diff = differences(old, new) if same_scheme else differences({**old, "inputs": {}}, {**new, "inputs": {}})
        if diff:
            raise FingerprintMismatch(
                f"{folder} holds an earlier {stage} run with other settings: {'; '.join(diff)}. Rerun with the "
                f"same settings to resume it, with overwrite=true to start over (removes that run's outputs), or "
                f"choose a new folder")
        return new
    if write:
        check_writable(folder, f"{stage} output folder")
        atomic_write_json(target, new)
    return new


def remove(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Delete the named files / folders (globs allowed) inside `folder`; used by the stages' `clear`."""
    folder = Path(folder)
    for pattern in names:
        for p in folder.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)

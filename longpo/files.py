"""Small file helpers shared by every stage: atomic writes, JSON lines, resumable outputs."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from longpo.errors import InputError


class WriteError(InputError):
    """A file could not be written: no space left, read-only or not permitted (the message says which)."""


def write_error(path: str | os.PathLike, e: OSError) -> WriteError:
    """One line naming the file, the cause and what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return WriteError(f"{path}: no space left on device ({free_text(Path(path).parent)}); free some space or "
                          f"choose another folder, then rerun the same command (it resumes)")
    return WriteError(f"{path}: cannot write ({e.strerror or e}); make the folder writable or choose another one")


def free_text(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(_existing(folder)).free / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"


def _existing(folder: Path) -> Path:
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create `folder` if needed and prove a file can be written there, before any work is done."""
    folder = Path(folder)
    probe = folder / f".longpo-write-test.{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise WriteError(f"{what} {folder}: not writable ({e.strerror or e}); make it writable or choose "
                         f"another folder") from e
    return folder


def require_free(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse (one line) when `folder`'s file system has less than `needed` bytes free."""
    free = shutil.disk_usage(_existing(Path(folder))).free
    if free < needed:
        raise WriteError(f"{folder}: {what} needs about {needed / 2**20:.1f} MiB, only {free / 2**20:.1f} MiB "
                         f"free; free some space or choose another folder, then rerun the same command "
                         f"(it resumes from the last complete checkpoint)")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file and `os.replace`, so a crash leaves old or new.

    A failed write (disk full, read-only) removes the temporary file and raises `WriteError`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from e
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one row and flush: a crash loses at most the row being written (readers skip a torn tail)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a torn last line is dropped by the readers on resume
        raise write_error(path, e) from e


def read_jsonl(path: str | os.PathLike, tolerate_torn_tail: bool = False) -> Iterator[dict]:
    """Yield rows of a JSON-lines file; errors name the file and line.

    With `tolerate_torn_tail`, an unparsable LAST line (a write cut by a crash) is ignored.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:  # line by line: a file of long documents is never held whole
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                # Only a last line can lack its newline, so that alone marks a torn tail.
                if tolerate_torn_tail and not line.endswith("\n"):
                    return
                raise InputError(f"{path}:{i}: invalid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise InputError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
            yield row


def truncate_torn_tail(path: str | os.PathLike, block: int = 1 << 20) -> None:
    """End a JSON-lines file at its last complete row: an unparsable last line without its newline (a
    write cut by a crash) is cut off, a complete one gets its newline. Reads back from the end only."""
    with open(path, "rb+") as f:
        end = pos = f.seek(0, os.SEEK_END)
        start = 0
        while pos > 0:
            lo = max(0, pos - block)
            f.seek(lo)
            cut = f.read(pos - lo).rfind(b"\n")
            if cut >= 0:
                start = lo + cut + 1
                break
            pos = lo
        if start == end:
            return
        f.seek(start)
        try:
            json.loads(f.read())
        except ValueError:
            f.truncate(start)
            return
        f.write(b"\n")


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 90) -> Path:
    """Write a matplotlib figure atomically (a temporary file, then a rename) and close it."""
    import matplotlib.pyplot as plt

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(target, e) from e
    finally:
        plt.close(fig)
    return target

"""Model and tokenizer paths checked without loading anything (no torch, no transformers).

The CLI checks a stage's model folder right after parsing its config, before the heavy imports, so a
typo in `model=` is reported in a second; `longpo.models` re-exports these for the loaders.
"""

from __future__ import annotations

import re
from pathlib import Path

from longpo.errors import InputError


class ModelPathError(InputError, FileNotFoundError):
    """A model or tokenizer path that is not a local folder holding one."""


def check_local(path: str | Path, what: str = "model", need: str = "config.json") -> Path:
    """`path` as a local folder holding `need`; else a message saying a local folder is required."""
    folder = Path(path)
    if not folder.is_dir():
        hint = (" (it looks like a hub id: download the model yourself and pass its folder)"
                if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) else "")
        raise ModelPathError(f"{what} {str(path)!r}: not a local {what} folder ({path} does not exist); longpo "
                             f"loads models from local folders only and never downloads{hint}")
    if need and not (folder / need).is_file():
        raise ModelPathError(f"{what} {str(path)!r}: no {need} in this folder; give a folder written by "
                             f"save_pretrained (config.json, *.safetensors, tokenizer files)")
    return folder

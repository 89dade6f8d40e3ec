"""The loss modes: a plain dict from a name to a `LossMode` (base.py), one file per mode.

Adding a mode is one file here, one line below and its tests; the trainer, the config's check and
help, and the docs' table read this dict. Importing it loads no torch.
"""

from __future__ import annotations

from longpo.train.losses import dpo, logo, longpo, orpo, sft, simpo
from longpo.train.losses.base import LONG_PROMPT, NO_REFERENCE, SHORT_PROMPT, Defaults, LossMode

MODES: dict[str, LossMode] = {m.name: m for m in (longpo.MODE, dpo.MODE, sft.MODE, logo.MODE, simpo.MODE, orpo.MODE)}
DEFAULT_MODE = longpo.MODE.name


def describe() -> str:
    """One line per mode for `longpo train --help`."""
    return "; ".join(f"{m.name}: {m.summary}" for m in MODES.values())


__all__ = ["MODES", "DEFAULT_MODE", "LossMode", "Defaults", "SHORT_PROMPT", "LONG_PROMPT", "NO_REFERENCE", "describe"]

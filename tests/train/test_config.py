"""The train config's choice names, kept without torch in longpo/train/config.py, match what the
torch side accepts (the CLI validates against the names before torch loads)."""

from longpo.models import DTYPES
from longpo.train import attention, memory
from longpo.train.config import (
    ATTENTION_BACKENDS,
    CHECKPOINT_MODES,
    DTYPE_NAMES,
    Config,
)


def test_dtype_names_are_the_dtypes_models_can_load():
    assert set(DTYPE_NAMES) == set(DTYPES), "update DTYPE_NAMES in longpo/train/config.py with longpo.models.DTYPES"


def test_the_torch_modules_read_the_same_names():
    assert attention.BACKENDS == ATTENTION_BACKENDS and memory.CHECKPOINT_MODES == CHECKPOINT_MODES
    for dtype in DTYPE_NAMES:
        assert Config(dtype=dtype).dtype == dtype


def test_unset_loss_settings_take_the_modes_defaults_and_explicit_ones_win():
    from longpo.train.losses import MODES

    for name, mode in MODES.items():
        cfg = Config(loss=name)
        assert (cfg.beta, cfg.lam, cfg.nll_weight, cfg.nll_mode, cfg.margin) == (
            mode.defaults.beta, mode.defaults.lam, mode.defaults.nll_weight, mode.defaults.nll_mode,
            mode.defaults.margin), name
    assert Config(loss="simpo", beta=0.5).beta == 0.5
    assert Config().beta == 0.01 and Config().lam == 0.01  # the released LongPO script's values


def test_help_lists_every_mode_from_the_registry():
    from dataclasses import fields

    from longpo.train.losses import MODES

    text = next(f for f in fields(Config) if f.name == "loss").metadata["help"]
    assert all(f"{name}:" in text for name in MODES), text

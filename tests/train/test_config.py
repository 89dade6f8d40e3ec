"""The train config's choice names, kept without torch in longpo/train/config.py, match what the
torch side accepts (the CLI validates against the names before torch loads)."""

from longpo.models import DTYPES
from longpo.train import attention, loss, memory
from longpo.train.config import (
    ATTENTION_BACKENDS,
    CHECKPOINT_MODES,
    DTYPE_NAMES,
    LOSS_MODES,
    NLL_MODES,
    Config,
)


def test_dtype_names_are_the_dtypes_models_can_load():
    assert set(DTYPE_NAMES) == set(DTYPES), "update DTYPE_NAMES in longpo/train/config.py with longpo.models.DTYPES"


def test_the_torch_modules_read_the_same_names():
    assert (loss.LOSS_MODES, loss.NLL_MODES) == (LOSS_MODES, NLL_MODES)
    assert attention.BACKENDS == ATTENTION_BACKENDS and memory.CHECKPOINT_MODES == CHECKPOINT_MODES
    for dtype in DTYPE_NAMES:
        assert Config(dtype=dtype).dtype == dtype

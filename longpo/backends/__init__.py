"""Generation backends behind one interface (`base.Backend`), looked up by name.

    hf      transformers, CPU or GPU (always available)
    vllm    vLLM, GPU (optional extra `longpo[vllm]`)
    openai  any OpenAI-compatible HTTP server (standard library only, no extra needed)
"""

from __future__ import annotations

import importlib
from typing import Any

BACKENDS = {
    "hf": ("longpo.backends.hf", "HFBackend"),
    "vllm": ("longpo.backends.vllm", "VLLMBackend"),
    "openai": ("longpo.backends.openai", "OpenAIBackend"),
}


def make_backend(name: str, **kwargs: Any) -> Any:
    """Build backend `name` with its keyword arguments (model=..., tokenizer=..., ...)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"backend {name!r} is not available here: {e}") from e
    return getattr(mod, cls)(**kwargs)

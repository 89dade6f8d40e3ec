"""Generation backends behind one interface (`base.Backend`), looked up by name in `BACKENDS`.

Each entry is a `BackendSpec`: where the backend's class lives (imported only when one is built, so
this module stays torch-free for the CLI's config checks) and what it can do. Stages ask the spec
(`backend_spec(name).local_model`, `.rope_override`, ...) and never compare a backend's name.

    hf      transformers, CPU or GPU (always available)
    vllm    vLLM, GPU (optional extra `longpo[vllm]`)
    openai  any OpenAI-compatible HTTP server (standard library only, no extra needed)

Adding a backend: its module in this folder (a class with `tokenizer`, `generate`, `score`, `close`),
its entry below, its tests (docs/contributing.md, "Adding a backend").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class BackendSpec:
    """What a backend is and what it can do; every stage decides from these, not from the name."""

    target: str  # "module:Class" (or any callable taking the backend's keyword arguments)
    local_model: bool = True  # `model` is a local folder: checked, fingerprinted, its max positions read
    transformers_forward: bool = True  # logits come from transformers' model code: the family check applies
    rope_override: bool = True  # rope_theta / max_position_embeddings reach the engine
    tensor_parallel: bool = False  # backend_args.tensor_parallel_size spreads one engine over that many devices
    prefix_cache: bool = False  # prompts of one call that share a long prefix (a document) prefill it once
    reuse_across_calls: bool = False  # keeps a document's KV cache between calls: fed one document at a time
    scores: bool = True  # `score` gives exact summed log-probs (reference log-probs)
    one_engine_per_process: bool = False  # two models (original + RoPE-raised) need two processes (phases)
    length_arg: str | None = None  # backend_args key capping the engine's context (vLLM's max_model_len)
    doc: str = ""  # one line for help texts

    def build(self, **kwargs: Any) -> Any:
        """The backend itself (imports its module now)."""
        if callable(self.target):
            return self.target(**kwargs)
        module, _, cls = self.target.partition(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(f"backend {self.target!r} is not available here: {e}") from e
        return getattr(mod, cls)(**kwargs)


DEFAULT_BACKEND = "hf"
BACKENDS: dict[str, BackendSpec] = {
    "hf": BackendSpec(target="longpo.backends.hf:HFBackend", prefix_cache=True, reuse_across_calls=True,
                      doc="transformers, CPU or GPU"),
    "vllm": BackendSpec(target="longpo.backends.vllm:VLLMBackend", transformers_forward=False,
                        tensor_parallel=True, prefix_cache=True, one_engine_per_process=True,
                        length_arg="max_model_len", doc="vLLM, GPU (extra longpo[vllm])"),
    "openai": BackendSpec(target="longpo.backends.openai:OpenAIBackend", local_model=False,
                          transformers_forward=False, rope_override=False,
                          doc="an OpenAI-compatible HTTP server (model: the served name)"),
}


def backend_spec(name: str) -> BackendSpec:
    """The spec of backend `name`; a ValueError naming the choices otherwise (config checks call this)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]


def backend_names() -> str:
    """'hf, vllm or openai': the registered backends, for help texts."""
    names = list(BACKENDS)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def make_backend(name: str, **kwargs: Any) -> Any:
    """Build backend `name` with its keyword arguments (model=..., tokenizer=..., ...)."""
    return backend_spec(name).build(**kwargs)

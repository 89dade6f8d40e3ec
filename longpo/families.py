"""Model families: what each one's attention, logits and RoPE need, checked from config.json before any work.

longpo trains with its own shared-prefix attention and its own chunked log-probs, so a family is only
supported when every feature its transformers code uses is implemented here and tested against
transformers' own forward (tests/test_families.py; the table in docs/models.md):

- attention: causal softmax(q k^T * scaling) v, GQA; per-layer sliding windows (`sliding_window` for
  the layers whose `layer_types` entry is sliding_attention, or every layer for Mistral / Phi-3),
  attention logit softcapping (Gemma-2), attention sinks (gpt-oss), any `scaling`
  (`query_pre_attn_scalar`); see `longpo.train.attention.AttentionOptions`.
- logits: final logit softcapping (Gemma-2 / Gemma-3), applied by `longpo.models.chunked_target_logps`.
- RoPE: the rotary frequencies must not depend on how long a forward is (packing puts several
  sequences in one forward); an override of the base must mean what it says for the rope type.

Anything else is refused in one line naming the feature, the family and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longpo.backends import DEFAULT_BACKEND, backend_spec
from longpo.errors import InputError
from longpo.paths import check_local

# model_type -> the family name users know; each one is a row of the matrix test.
SUPPORTED = {
    "llama": "Llama 2 / 3.x, SmolLM2", "mistral": "Mistral", "ministral": "Ministral", "qwen2": "Qwen2 / Qwen2.5",
    "qwen3": "Qwen3", "qwen3_moe": "Qwen3-MoE", "gemma2": "Gemma-2", "gemma3_text": "Gemma-3 (text)",
    "phi3": "Phi-3 / Phi-4", "olmo2": "OLMo-2", "smollm3": "SmolLM3", "gpt_oss": "gpt-oss",
}
# Rope types whose frequencies are fixed at build time; their base may be raised.
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
# Frequencies chosen per forward from its longest position: a packed row of several sequences would
# get other frequencies than each sequence alone.
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


class UnsupportedModelError(InputError):
    """A model family or feature longpo does not implement exactly."""


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def rope_sets(config: Any) -> dict[str, dict]:
    """The RoPE parameter dicts of a config by layer type ("all" when one dict serves every layer)."""
    params = getattr(_text_config(config), "rope_parameters", None)
    if not isinstance(params, dict):
        return {}
    if "rope_type" in params or "rope_theta" in params:
        return {"all": params}
    return {kind: p for kind, p in params.items() if isinstance(p, dict)}


def extended_rope_sets(config: Any) -> list[str]:
    """Layer types whose RoPE base a context extension raises: all of them, except sliding-window layers
    with a base of their own (Gemma-3's local base): those never see more than `sliding_window` tokens,
    which the original model already handles, so their frequencies stay."""
    sets = rope_sets(config)
    return [kind for kind in sets if not (kind == "sliding_attention" and len(sets) > 1)]


def _refuse(config: Any, feature: str, what_to_do: str) -> UnsupportedModelError:
    kind = getattr(_text_config(config), "model_type", type(config).__name__)
    family = SUPPORTED.get(kind, kind)
    return UnsupportedModelError(f"{feature} ({family}, model_type {kind!r}) is not supported: {what_to_do}")


def check_rope_override(config: Any, rope_theta: float | None, max_position_embeddings: int | None) -> None:
    """Refuse a RoPE base / length override whose meaning is not a plain change of base for this rope type."""
    if rope_theta is None and max_position_embeddings is None:
        return
    sets = rope_sets(config)
    if rope_theta is not None and not sets:
        raise _refuse(config, "a rope_theta override without rope_parameters in config.json",
                      "leave rope_theta unset")
    for params in sets.values():
        rope_type = params.get("rope_type", "default")
        if rope_type not in STATIC_ROPE:
            raise _refuse(config, f"a RoPE override on rope_type {rope_type!r}",
                          "its frequencies and attention factor follow max_position_embeddings and the sequence "
                          "length, so a new base has no single meaning; leave rope_theta and max_position_embeddings "
                          "unset")
        if rope_type == "yarn" and params.get("factor") is None and max_position_embeddings is not None:
            raise _refuse(config, "a max_position_embeddings override on rope_type 'yarn' without a 'factor'",
                          "transformers would derive YaRN's factor from the new length; write the factor into "
                          "config.json's rope_parameters first")


def check_model(config: Any, *, training: bool = False, attention_backend: str = "sdpa",
                rope_theta: float | None = None, max_position_embeddings: int | None = None) -> None:
    """Refuse, in one line, a model whose family or features longpo would not compute exactly.

    `training`: the model runs under shared-prefix packing (train, and loss=dpo's reference); otherwise
    under transformers' own attention (generation, scoring, evaluation).
    """
    text = _text_config(config)
    kind = getattr(text, "model_type", None)
    if kind not in SUPPORTED:
        raise UnsupportedModelError(
            f"model_type {kind!r} is not among the families longpo computes exactly "
            f"({', '.join(sorted(SUPPORTED))}): its attention, logits and RoPE are unchecked. Use one of them, or "
            f"add the family to longpo/families.py with a row in tests/test_families.py (docs/models.md)")
    if text is not config:
        raise _refuse(config, "a multimodal checkpoint", "save its text model (e.g. Gemma3ForCausalLM) on its own "
                                                         "and pass that folder")
    check_rope_override(config, rope_theta, max_position_embeddings)
    if getattr(text, "use_bidirectional_attention", False):
        raise _refuse(config, "bidirectional attention (use_bidirectional_attention: true)",
                      "longpo trains causal decoders; set it to false")
    if not training:
        return
    for params in rope_sets(config).values():
        rope_type = params.get("rope_type", "default")
        if rope_type in LENGTH_DEPENDENT_ROPE:
            raise _refuse(config, f"training with rope_type {rope_type!r}",
                          "its frequencies switch with the longest position of each forward, which packing shares "
                          "between sequences; convert rope_parameters to a static type (default, linear, llama3, yarn)")
    if (getattr(text, "attention_dropout", 0.0) or 0.0) > 0:
        raise _refuse(config, f"attention dropout ({text.attention_dropout})",
                      "set attention_dropout to 0 in config.json (the released recipes train without it)")
    if attention_backend == "flex" and kind == "gpt_oss":
        raise _refuse(config, "attention sinks with attention_backend=flex", "use attention_backend=sdpa")


def plain_attention(config: Any) -> str:
    """The attention implementation that computes what the family's own code means outside training:
    transformers' SDPA path drops attention logit softcapping, and gpt-oss has no SDPA path (sinks)."""
    text = _text_config(config)
    if getattr(text, "attn_logit_softcapping", None) is not None and text.model_type == "gemma2":
        return "eager"
    if text.model_type == "gpt_oss":
        return "eager"
    return "sdpa"


def final_logit_softcap(config: Any) -> float | None:
    """Gemma's final logit softcapping (logits -> cap * tanh(logits / cap)); None for every other family."""
    return getattr(_text_config(config), "final_logit_softcapping", None)


def check_model_folder(path: str | Path, backend: str = DEFAULT_BACKEND, *, training: bool = False,
                       attention_backend: str = "sdpa", rope_theta: float | None = None,
                       max_position_embeddings: int | None = None) -> None:
    """Before a stage reads anything: `path` is a local model folder whose family longpo computes exactly
    for this use (`families.check_model`; only config.json is read). A backend that runs its own attention
    and logits (vLLM) gets only the RoPE override checked; one without a local model (an OpenAI-compatible
    server) nothing here. `backend` is a name of `longpo.backends.BACKENDS`."""
    spec = backend_spec(backend)
    if not spec.local_model:
        return
    from transformers import AutoConfig  # here: stages check before they import torch

    config = AutoConfig.from_pretrained(str(check_local(path)), trust_remote_code=False, local_files_only=True)
    if not spec.transformers_forward:
        check_rope_override(config, rope_theta, max_position_embeddings)
        return
    check_model(config, training=training, attention_backend=attention_backend, rope_theta=rope_theta,
                max_position_embeddings=max_position_embeddings)

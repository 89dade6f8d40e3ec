"""Tiny random configs of every supported model family (built locally, nothing downloaded).

Each config is small (hidden 64, 3 layers, 4 query / 2 kv heads, head_dim 16) but keeps what makes
its family's attention, logits and RoPE differ: sliding windows of 16 positions (shorter than the
test sequences, so they cut across the shared prefix), softcapping, sinks, query_pre_attn_scalar,
per-layer-type RoPE, NoPE layers, mixtures of experts.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

BASE = dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, intermediate_size=96, max_position_embeddings=4096, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, tie_word_embeddings=False)
WINDOW = 16
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

# name -> (model_type, config keys beyond BASE)
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama3": ("llama", {"rope_parameters": LLAMA3_ROPE}),
    "mistral": ("mistral", {"sliding_window": None}),
    "mistral_sw": ("mistral", {"sliding_window": WINDOW}),
    "ministral": ("ministral", {"sliding_window": WINDOW,
                                "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}),
    "qwen2": ("qwen2", {"use_sliding_window": False}),
    "qwen2_sw": ("qwen2", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
    "qwen3": ("qwen3", {}),
    "qwen3_moe": ("qwen3_moe", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}),
    "gemma2": ("gemma2", {"sliding_window": WINDOW, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0,
                          "query_pre_attn_scalar": 24}),
    "gemma3_text": ("gemma3_text", {"sliding_window": WINDOW, "query_pre_attn_scalar": 24,
                                    "final_logit_softcapping": 4.0,
                                    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"]}),
    "phi3": ("phi3", {}),
    "phi3_sw": ("phi3", {"sliding_window": WINDOW}),
    "olmo2": ("olmo2", {}),
    "smollm3": ("smollm3", {"no_rope_layers": [1, 1, 0]}),
    "gpt_oss": ("gpt_oss", {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": WINDOW,
                            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}),
}
MOE = {"qwen3_moe", "gpt_oss"}


def family_config(name: str) -> Any:
    model_type, extra = FAMILIES[name]
    return AutoConfig.for_model(model_type, **{**BASE, **extra})


def build_family_model(name: str, dtype: torch.dtype = torch.float64, attn_implementation: str | None = None,
                       seed: int = 0) -> Any:
    """A random model of the family under transformers' own attention (`families.plain_attention`: SDPA,
    or eager where SDPA would drop a feature). Random sinks: gpt-oss initialises them to zero, which
    would hide a sink that is computed wrong."""
    from longpo.families import plain_attention

    attn_implementation = attn_implementation or plain_attention(family_config(name))
    torch.manual_seed(seed)
    kwargs = {"experts_implementation": "eager"} if name in MOE else {}  # grouped_mm takes no float64
    model = AutoModelForCausalLM.from_config(family_config(name), attn_implementation=attn_implementation,
                                             dtype=dtype, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "sinks"):
                module.sinks.normal_(0.0, 1.0)
    return model


@contextlib.contextmanager
def float64_throughout():
    """Keep float64 models in float64: transformers' RMSNorms and eager softmaxes cast to float32 even for
    float64 inputs, which would put float32 rounding (1e-7) between two paths that agree to 1e-13 and
    hide a wrong mask under the tolerance. Only casts from float64 to float32 are skipped."""
    to, to_float, softmax = torch.Tensor.to, torch.Tensor.float, F.softmax

    def keep_to(self, *args, **kwargs):
        if self.dtype == torch.float64 and (torch.float32 in args or kwargs.get("dtype") is torch.float32):
            return self
        return to(self, *args, **kwargs)

    def keep_float(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else to_float(self, *args, **kwargs)

    def keep_softmax(x, dim=None, _stacklevel=3, dtype=None):
        return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 and dtype is torch.float32 else dtype)

    torch.Tensor.to, torch.Tensor.float, F.softmax = keep_to, keep_float, keep_softmax
    try:
        yield
    finally:
        torch.Tensor.to, torch.Tensor.float, F.softmax = to, to_float, softmax

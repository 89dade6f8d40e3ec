"""The model layer every stage shares: local-only loading, the RoPE / max-positions override, log-probs.

- `load_model` / `load_tokenizer`: local folders only (nothing is fetched from a hub), safetensors
  only, no remote code, a pad token where the tokenizer has none. A path that is not a local folder
  (a hub-style id such as `org/name`) is refused with `ModelPathError` before transformers sees it.
- `rope_overrides`: the config changes that give a model a new RoPE base and length. The trained
  policy, the HF generation backend and the vLLM engine (`hf_overrides`) all get theirs from here,
  so the model that writes the rejected answers runs the same rotary frequencies as the policy
  trained on them; the rest of `rope_parameters` (llama3 / yarn scaling) is kept.
- `chunked_target_logps`: log-probs of target tokens without full-vocabulary logits, used by
  training and by the backends' scoring alike.

transformers 5 computes the rotary frequencies when a model is built, so overrides are applied to
the config BEFORE `from_pretrained`; editing a built model's config changes nothing.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from longpo.families import (
    UnsupportedModelError,
    check_model,
    check_rope_override,
    extended_rope_sets,
    plain_attention,
)
from longpo.paths import ModelPathError, check_local  # re-exported: `from longpo.models import check_local`

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


# ------------------------------------------------------------------------------------- RoPE


def rope_overrides(config: PretrainedConfig, rope_theta: float | None = None,
                   max_position_embeddings: int | None = None) -> dict:
    """Config attributes to set for a new RoPE base / length: `{"rope_parameters": ..., ...}`.

    transformers 5 keeps the base in `rope_parameters`: one dict, or one per layer type. Only
    `rope_theta` changes, in the layer types a context extension concerns (`families.extended_rope_sets`:
    not Gemma-3's local sliding-window base); the type and its scaling keys (llama3 factor, yarn) stay.
    A rope type for which a new base has no single meaning (longrope, dynamic) is refused.
    """
    check_rope_override(config, rope_theta, max_position_embeddings)
    out: dict = {}
    if rope_theta is not None:
        params = copy.deepcopy(getattr(config, "rope_parameters", None))
        extended = extended_rope_sets(config)
        targets = [params] if extended == ["all"] else [params[kind] for kind in extended]
        for p in targets:
            p["rope_theta"] = float(rope_theta)
        out["rope_parameters"] = params
    if max_position_embeddings is not None:
        out["max_position_embeddings"] = int(max_position_embeddings)
    return out


def load_config(path: str | Path, rope_theta: float | None = None,
                max_position_embeddings: int | None = None) -> PretrainedConfig:
    """A local model's config with the RoPE / length overrides applied."""
    config = AutoConfig.from_pretrained(str(check_local(path)), trust_remote_code=False, local_files_only=True)
    for key, value in rope_overrides(config, rope_theta, max_position_embeddings).items():
        setattr(config, key, value)
    return config


def vllm_hf_overrides(path: str | Path, rope_theta: float | None = None,
                      max_position_embeddings: int | None = None) -> dict:
    """vLLM's `hf_overrides` for the same change `load_model` makes (read from the local config)."""
    if rope_theta is None and max_position_embeddings is None:
        return {}
    config = AutoConfig.from_pretrained(str(check_local(path)), trust_remote_code=False, local_files_only=True)
    return rope_overrides(config, rope_theta, max_position_embeddings)


# ------------------------------------------------------------------------------------- loading


def load_model(path: str | Path, dtype: str | torch.dtype = "auto", device: str | None = None,
               rope_theta: float | None = None, max_position_embeddings: int | None = None,
               attn_implementation: str = "auto") -> Any:
    """A local causal LM (safetensors, no remote code) with the overrides applied before it is built.

    `device=None` leaves it where transformers put it (CPU; accelerate moves training models).
    `attn_implementation="auto"`: what computes the family's own attention (`families.plain_attention`:
    eager where transformers' SDPA path would drop a feature); "sdpa" there is refused.
    """
    config = load_config(path, rope_theta, max_position_embeddings)
    check_model(config)
    exact = plain_attention(config)
    if attn_implementation == "auto":
        attn_implementation = exact
    elif attn_implementation == "sdpa" and exact != "sdpa":
        raise UnsupportedModelError(f"attn_implementation=sdpa for {config.model_type}: transformers' SDPA path "
                                    f"drops a feature of this family (softcapping or sinks); use {exact} or auto")
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) and dtype in DTYPES else dtype
    model = AutoModelForCausalLM.from_pretrained(
        str(path), config=config, dtype=torch_dtype, use_safetensors=True, trust_remote_code=False,
        local_files_only=True, attn_implementation=attn_implementation,
    )
    return model if device is None else model.to(device)


def load_tokenizer(path: str | Path) -> Any:
    """A local tokenizer (no remote code); pad token = eos token where it has none."""
    tok = AutoTokenizer.from_pretrained(str(check_local(path, "tokenizer", need="")), trust_remote_code=False,
                                        local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def max_positions(path: str | Path) -> int | None:
    """`max_position_embeddings` of a local checkpoint (None when it is not stated or not local)."""
    try:
        config = AutoConfig.from_pretrained(str(check_local(path)), trust_remote_code=False, local_files_only=True)
    except ModelPathError:
        return None
    config = getattr(config, "text_config", None) or config
    return getattr(config, "max_position_embeddings", None)


# ------------------------------------------------------------------------------------- log-probs


def upcast_logits(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits to float32 for the log-softmax; float64 stays float64 (parity tests)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _chunk_logps(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                 softcap: float | None = None) -> torch.Tensor:
    logits = upcast_logits(lm_head(hidden))  # (n, V), one chunk only
    if softcap is not None:  # Gemma's final logit softcapping, as its forward applies it
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def auto_chunk_size(vocab_size: int) -> int:
    """Positions per chunk so that one chunk's float32 logits stay near 64 MB (16M entries)."""
    return max(64, (1 << 24) // max(vocab_size, 1))


def chunked_target_logps(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor,
                         chunk_size: int | None = None, softcap: float | None = None) -> torch.Tensor:
    """log softmax(lm_head(hidden))[targets] for (N, D) hidden states, in chunks; (N,) float32 or wider.

    Each chunk runs under activation checkpointing when gradients are needed: the forward keeps no
    logits, the backward recomputes one chunk's at a time, so peak memory is one chunk x vocabulary.
    `chunk_size=None` picks `auto_chunk_size` of the head's vocabulary; `softcap` is the model's final
    logit softcapping (`final_logit_softcap(model.config)`), which its own forward applies to the logits.
    """
    chunk_size = chunk_size or auto_chunk_size(lm_head.out_features)  # not .weight: ZeRO-3 partitions it
    assert hidden.shape[0] == targets.shape[0], f"{hidden.shape[0]} hidden states for {targets.shape[0]} targets"
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in lm_head.parameters()))
    outs = []
    # No targets (a sequence-parallel shard can hold none) still runs lm_head once, on no rows: every
    # rank then calls it, DDP sees its gradient (zero) and ZeRO-3's gathers stay in step.
    for start in range(0, max(hidden.shape[0], 1), chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if needs_grad:
            outs.append(checkpoint(_chunk_logps, lm_head, h, t, softcap, use_reentrant=False))
        else:
            outs.append(_chunk_logps(lm_head, h, t, softcap))
    return torch.cat(outs)

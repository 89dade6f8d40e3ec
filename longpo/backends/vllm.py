"""vLLM backend (GPU, optional extra `longpo[vllm]`): prefix caching, tensor parallel, prompt log-probs.

Prompts go in as token ids (`{"prompt_token_ids": ...}`), so what vLLM sees is exactly what the
HF tokenizer produced; every question on one document hits vLLM's prefix cache for the
document. Reference scores use `prompt_logprobs`, which always include the prompt's own token.
"""

from __future__ import annotations

from typing import Any

from longpo.backends.base import Sampling
from longpo.models import load_tokenizer, vllm_hf_overrides


def engine_kwargs(model: str, tokenizer: str | None = None, dtype: str = "auto", tensor_parallel_size: int = 1,
                  max_model_len: int | None = None, gpu_memory_utilization: float = 0.9,
                  rope_theta: float | None = None, max_position_embeddings: int | None = None,
                  seed: int = 0, enable_prefix_caching: bool = True, **extra: Any) -> dict:
    """Arguments of `vllm.LLM`: safetensors only, no remote code, RoPE overrides through hf_overrides
    (the same `rope_parameters` the HF backend and the trained policy get, scaling keys kept)."""
    overrides = vllm_hf_overrides(model, rope_theta, max_position_embeddings)
    kwargs = dict(model=model, tokenizer=tokenizer or model, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                  gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=enable_prefix_caching,
                  trust_remote_code=False, load_format="safetensors", seed=seed)
    if max_model_len is not None:
        kwargs["max_model_len"] = int(max_model_len)
    if overrides:
        kwargs["hf_overrides"] = overrides
    kwargs.update(extra)
    return kwargs


def sampling_params(vllm: Any, sampling: Sampling, index: int = 0) -> Any:
    """One request's SamplingParams; each request gets its own seed so results do not depend on batching."""
    if sampling.temperature > 0:
        return vllm.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                   max_tokens=sampling.max_new_tokens, seed=sampling.seed * 1_000_003 + index)
    return vllm.SamplingParams(temperature=0.0, max_tokens=sampling.max_new_tokens)


def score_params(vllm: Any) -> Any:
    # prompt_logprobs=0 returns, at every position, the log-prob of the prompt's own token.
    return vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)


def sum_prompt_logprobs(prompt_logprobs: list, ids: list[int], mask: list[bool]) -> float:
    """Sum the entries of vLLM's per-position prompt log-probs where mask is True."""
    total = 0.0
    for j, (token, keep) in enumerate(zip(ids, mask)):
        if not keep:
            continue
        entry = prompt_logprobs[j]
        if entry is None or token not in entry:
            raise RuntimeError(f"vLLM returned no log-prob for prompt position {j} (token {token})")
        value = entry[token]
        total += float(getattr(value, "logprob", value))
    return total


class VLLMBackend:
    """`Backend` over an in-process vLLM engine."""

    def __init__(self, model: str, tokenizer: str | None = None, **kwargs: Any):
        try:
            import vllm
        except ImportError as e:
            raise ImportError("backend=vllm needs the optional extra: pip install 'longpo[vllm]' (GPU only)") from e
        self._vllm = vllm
        self.tokenizer = load_tokenizer(tokenizer or model)
        self.llm = vllm.LLM(**engine_kwargs(model, tokenizer, **kwargs))

    def _prompts(self, prompts: list[str]) -> list[dict]:
        return [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]

    def generate(self, prompts: list[str], sampling: Sampling) -> list[str]:
        params = [sampling_params(self._vllm, sampling, i) for i in range(len(prompts))]
        outputs = self.llm.generate(self._prompts(prompts), params, use_tqdm=False)
        self.finish_reasons = [out.outputs[0].finish_reason for out in outputs]  # "stop", "length" (or "abort")
        return [out.outputs[0].text.strip() for out in outputs]

    def score(self, sequences: list[list[int]], masks: list[list[bool]]) -> list[float]:
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in sequences], score_params(self._vllm),
                                    use_tqdm=False)
        return [sum_prompt_logprobs(out.prompt_logprobs, ids, mask)
                for out, ids, mask in zip(outputs, sequences, masks)]

    def close(self) -> None:
        self.llm = None

"""Hugging Face transformers backend (CPU or GPU): batched generation, exact scoring, shared-prefix reuse.

Prompts that start with the same long document (the rejected answers of every question on one
document) share one prefill: the document's KV cache is computed once and copied for each
question. With `reuse_across_calls`, the backend also keeps the KV cache of its last prompt and
answer between calls, so the next turn on the same document (`[document; q1] a1 q2`) prefills
only what is new; `longpo generate` then feeds it one document at a time. Greedy prompts without
a shared prefix are generated in left-padded batches; sampled prompts one at a time with a
per-prompt seed, so a prompt's sample does not depend on which other prompts share its batch
(resumed runs reproduce uninterrupted ones).
"""

from __future__ import annotations

import copy
import zlib
from array import array
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from longpo.backends.base import Sampling
from longpo.families import final_logit_softcap
from longpo.models import chunked_target_logps, load_model, load_tokenizer


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class HFBackend:
    """`Backend` over a local transformers model."""

    def __init__(self, model: Any, tokenizer: Any = None, dtype: str = "auto", device: str | None = None,
                 rope_theta: float | None = None, max_position_embeddings: int | None = None,
                 batch_size: int = 8, min_shared_prefix: int = 64, attn_implementation: str = "auto",
                 reuse_across_calls: bool = False, batch_shared_greedy: bool = False):
        if isinstance(model, (str, Path)):
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            self.model = load_model(str(model), dtype, device, rope_theta, max_position_embeddings,
                                    attn_implementation).eval()
            self.tokenizer = load_tokenizer(str(tokenizer or model)) if not hasattr(tokenizer, "encode") else tokenizer
        else:  # an already built model (tests, the demo, `longpo reference` on a live policy)
            self.model = model.eval()
            self.tokenizer = tokenizer if hasattr(tokenizer, "encode") else load_tokenizer(str(tokenizer))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size
        self.min_shared_prefix = min_shared_prefix
        self.reuse_across_calls = reuse_across_calls
        # Greedy answers over one shared prefix decoded as one batch: exact (tested), but on CPU it
        # measured 2.2x slower than one at a time (4 answers on a 4K-token document); unmeasured on GPU.
        self.batch_shared_greedy = batch_shared_greedy
        self._kept: tuple[list[int], Any] | None = None  # (token ids, KV cache of exactly those tokens)
        self.stats = {"prefill_tokens": 0, "reused_prefix_tokens": 0, "generated_tokens": 0}
        self.finish_reasons: list[str] | None = None  # of the last generate call: "stop" or "length"

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------- generation
    def _encode(self, prompts: list[str]) -> list[list[int]]:
        return [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

    def _gen_kwargs(self, sampling: Sampling) -> dict:
        kw = {"max_new_tokens": sampling.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if self.tokenizer.eos_token_id is not None:
            kw["eos_token_id"] = self.tokenizer.eos_token_id
        if sampling.temperature > 0:
            kw.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def _decode(self, ids: list[int]) -> str:
        self.stats["generated_tokens"] += len(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _finished(self, ids: list[int], sampling: Sampling) -> tuple[str, str]:
        """The completion's text and why it ended: "stop" when it holds an end-of-sequence token (rows of
        a batch that ended early are padded after it), else "length"."""
        eos = self._gen_kwargs(sampling).get("eos_token_id", self.model.generation_config.eos_token_id)
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        return self._decode(ids), "stop" if eos.intersection(ids) else "length"

    def _seed(self, sampling: Sampling, ids: list[int]) -> None:
        if sampling.temperature > 0:
            torch.manual_seed(sampling.seed * 1_000_003 + zlib.crc32(array("q", ids).tobytes()))

    def generate(self, prompts: list[str], sampling: Sampling) -> list[str]:
        """Completions in prompt order (why each ended in `finish_reasons`); runs of prompts sharing a long
        prefix reuse one prefill."""
        encoded = self._encode(prompts)
        out: list[tuple[str, str] | None] = [None] * len(prompts)
        batched = []
        for group, shared in self._group_by_prefix(encoded):
            if shared:
                for i, text in zip(group, self._generate_shared([encoded[i] for i in group], shared, sampling)):
                    out[i] = text
            elif sampling.temperature > 0 or (self.reuse_across_calls and len(encoded[group[0]]) > self.min_shared_prefix):
                ids = encoded[group[0]]  # one at a time: its cache may be kept for the next turn
                out[group[0]] = self._generate_one(ids, sampling, self._start_cache(ids, len(ids) - 1))
            else:
                batched.append(group[0])
        for start in range(0, len(batched), self.batch_size):
            idx = batched[start : start + self.batch_size]
            for i, text in zip(idx, self._generate_batch([encoded[i] for i in idx], sampling)):
                out[i] = text
        done = [t if t is not None else ("", "stop") for t in out]
        self.finish_reasons = [reason for _, reason in done]
        return [text for text, _ in done]

    def _group_by_prefix(self, encoded: list[list[int]]) -> list[tuple[list[int], int]]:
        """Consecutive prompts sharing >= min_shared_prefix tokens form a group (with the shared length)."""
        groups: list[tuple[list[int], int]] = []
        i = 0
        while i < len(encoded):
            group, shared = [i], len(encoded[i])
            j = i + 1
            while j < len(encoded):
                s = common_prefix_length(encoded[i], encoded[j])
                if s < self.min_shared_prefix:
                    break
                group.append(j)
                shared = min(shared, s)
                j += 1
            groups.append((group, shared - 1 if len(group) > 1 else 0))  # keep >= 1 token to feed generate
            i = j
        return groups

    def _start_cache(self, ids: list[int], upto: int) -> Any:
        """A KV cache to continue `ids` from: the kept one cropped to the tokens it shares with
        `ids[:upto]` when that is at least `min_shared_prefix` tokens, else an empty one (or None
        when nothing is kept between calls)."""
        if self._kept is not None:
            kept_ids, cache = self._kept
            n = min(common_prefix_length(kept_ids, ids), upto)
            if n >= self.min_shared_prefix:
                self._kept = None  # handed over: generation extends it in place
                cache.crop(n - cache.get_seq_length())  # a negative count removes that many tokens
                self.stats["reused_prefix_tokens"] += n
                return cache
        return DynamicCache(config=self.model.config) if self.reuse_across_calls else None

    def _prefill(self, ids: list[int], upto: int, cache: Any) -> Any:
        """Extend `cache` with ids[cached:upto] (decoder only: no logits over the document)."""
        cached = cache.get_seq_length()
        if upto > cached:
            with torch.no_grad():
                self.model.get_decoder()(input_ids=torch.tensor([ids[cached:upto]], device=self.device),
                                         past_key_values=cache, use_cache=True)
            self.stats["prefill_tokens"] += upto - cached
        return cache

    def _generate_one(self, ids: list[int], sampling: Sampling, cache: Any = None, keep: bool = True
                      ) -> tuple[str, str]:
        self._seed(sampling, ids)
        input_ids = torch.tensor([ids], device=self.device)
        cached = cache.get_seq_length() if cache is not None else 0
        self.stats["prefill_tokens"] += len(ids) - cached
        with torch.no_grad():
            result = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                         past_key_values=cache, **self._gen_kwargs(sampling))
        if self.reuse_across_calls and keep and cache is not None and _croppable(cache):
            # The cache now holds the prompt and the answer but its last token: the next turn's prefix.
            self._kept = (result[0, : cache.get_seq_length()].tolist(), cache)
        return self._finished(result[0, len(ids):].tolist(), sampling)

    def _generate_shared(self, group: list[list[int]], shared: int, sampling: Sampling) -> list[tuple[str, str]]:
        """Prefill the shared prefix once, then continue each prompt from a copy of its cache (greedy
        prompts together in one batch with `batch_shared_greedy`)."""
        base = self._start_cache(group[0], shared)
        base = self._prefill(group[0], shared, DynamicCache(config=self.model.config) if base is None else base)
        self.stats["reused_prefix_tokens"] += shared * (len(group) - 1)
        if self.batch_shared_greedy and sampling.temperature == 0 and not self.reuse_across_calls:
            texts = []
            for start in range(0, len(group), self.batch_size):
                part = group[start : start + self.batch_size]
                cache = base if start + self.batch_size >= len(group) else copy.deepcopy(base)
                texts += self._generate_after_prefix(part, shared, cache, sampling)
            return texts
        texts = []
        for k, ids in enumerate(group):
            last = k == len(group) - 1
            texts.append(self._generate_one(ids, sampling, cache=base if last else copy.deepcopy(base), keep=last))
        return texts

    def _generate_after_prefix(self, batch: list[list[int]], shared: int, cache: Any, sampling: Sampling
                               ) -> list[tuple[str, str]]:
        """Greedy answers of prompts that all start with the `shared` tokens held in `cache`.

        The cache is repeated over the batch; each prompt's own tail is padded on its left, between
        the prefix and the tail, and masked out, so positions (from the mask) stay those of the
        unpadded prompt.
        """
        tails = [ids[shared:] for ids in batch]
        width = max(len(t) for t in tails)
        pad = self.tokenizer.pad_token_id
        cache.batch_repeat_interleave(len(batch))
        input_ids = torch.tensor([batch[0][:shared] + [pad] * (width - len(t)) + t for t in tails], device=self.device)
        mask = torch.tensor([[1] * shared + [0] * (width - len(t)) + [1] * len(t) for t in tails], device=self.device)
        self.stats["prefill_tokens"] += sum(len(t) for t in tails)
        with torch.no_grad():
            result = self.model.generate(input_ids=input_ids, attention_mask=mask, past_key_values=cache,
                                         **self._gen_kwargs(sampling))
        return [self._finished(row[shared + width:].tolist(), sampling) for row in result]

    def _generate_batch(self, batch: list[list[int]], sampling: Sampling) -> list[tuple[str, str]]:
        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=self.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.device)
        self.stats["prefill_tokens"] += sum(len(ids) for ids in batch)
        with torch.no_grad():
            result = self.model.generate(input_ids=input_ids, attention_mask=mask, **self._gen_kwargs(sampling))
        return [self._finished(row[width:].tolist(), sampling) for row in result]

    # ---------------------------------------------------------------- scoring
    def score(self, sequences: list[list[int]], masks: list[list[bool]]) -> list[float]:
        """Summed log-prob of masked tokens, each predicted from the tokens before it (exact, no full logits).

        Consecutive sequences sharing a long prompt (the chosen and the rejected answer of one short
        prompt) prefill it once; each continues from a copy of its KV cache.
        """

        sources = []
        for n, (ids, mask) in enumerate(zip(sequences, masks)):
            assert len(ids) == len(mask), f"sequence {n}: {len(ids)} tokens but {len(mask)} mask entries"
            assert not mask[0], f"sequence {n}: the first token cannot be scored (nothing precedes it)"
            sources.append([j - 1 for j in range(1, len(ids)) if mask[j]])  # positions whose output is scored
        head, decoder = self.model.get_output_embeddings(), self.model.get_decoder()
        out = [0.0] * len(sequences)
        for group, shared in self._group_by_prefix(sequences):
            # Cache only tokens before every scored position of the group: their outputs are not needed.
            start = min([shared] + [src[0] for src in (sources[i] for i in group) if src]) if shared else 0
            cache = None
            if start > 0:
                cache = self._prefill(sequences[group[0]], start, DynamicCache(config=self.model.config))
                self.stats["reused_prefix_tokens"] += start * (len(group) - 1)
            for k, i in enumerate(group):
                if not sources[i]:
                    continue
                ids = torch.tensor([sequences[i]], device=self.device)
                past = None if cache is None else cache if k == len(group) - 1 else copy.deepcopy(cache)
                with torch.no_grad():
                    hidden = decoder(input_ids=ids[:, start:], past_key_values=past,
                                     use_cache=past is not None).last_hidden_state[0]  # (T - start, H)
                    idx = torch.tensor(sources[i], dtype=torch.long, device=self.device)
                    logps = chunked_target_logps(hidden.index_select(0, idx - start), head, ids[0, idx + 1],
                                                 softcap=final_logit_softcap(self.model.config))
                out[i] = float(logps.double().sum())
        return out

    def close(self) -> None:
        self.model = None
        self._kept = None


def _croppable(cache: Any) -> bool:
    """Only full (non-sliding) attention caches can be cut back to a shared prefix."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)

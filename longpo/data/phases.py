"""Generation in two processes: the short steps from the original model, the long step from the generator.

With a RoPE override the method asks for two models: pi_S, the ORIGINAL short-context model, writes
the questions and the chosen answers (short prompts); the RoPE-raised generator writes the rejected
answers on the whole document. Two vLLM engines in one process would share one GPU, so `longpo
generate phase=short` and then `phase=long` run them as separate processes over one output folder:

    phase=short   runs the pipeline with the original model for the two short calls (questions, chosen
                  answers) and no long model at all; it saves, per document group, the replies of those
                  calls with a digest of each prompt (`short-s<shard>-g<group>.json`, marked done in
                  `manifest.short.json`)
    phase=long    runs the same deterministic pipeline again with the generator for the long call; the
                  two short calls are answered from the saved replies (`Replay`), which checks that every
                  prompt is the one the short phase answered

Reference log-probs need the rejected answers too, so they come after both phases (`longpo reference`
with the original model).
"""

from __future__ import annotations

import hashlib
from typing import Any

from longpo.backends.base import generate_with_reasons
from longpo.errors import InputError


def digest(prompt: str) -> str:
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]


class Recording:
    """Wraps the original model's backend; keeps every generate call's prompts (digests) and replies."""

    def __init__(self, backend: Any):
        self.backend, self.tokenizer, self.calls = backend, backend.tokenizer, []

    def generate(self, prompts: list[str], sampling: Any) -> list[str]:
        replies, reasons = generate_with_reasons(self.backend, prompts, sampling) if prompts else ([], [])
        self.calls.append({"prompts": [digest(p) for p in prompts], "replies": list(replies),
                           "finish_reasons": list(reasons)})
        self.finish_reasons = list(reasons)  # what the filters need to know of a cut-off answer
        return replies


class NoLongModel:
    """Stands in for the generator in phase=short: the long call is not made there (empty answers, which
    the filters drop; the records of that pass are discarded)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def generate(self, prompts: list[str], sampling: Any) -> list[str]:
        return [""] * len(prompts)


class Replay:
    """Answers the short calls of phase=long from what phase=short saved, prompt by prompt."""

    def __init__(self, calls: list[dict], tokenizer: Any, where: str):
        self.calls, self.tokenizer, self.where, self.next = list(calls), tokenizer, where, 0

    def generate(self, prompts: list[str], sampling: Any) -> list[str]:
        if self.next >= len(self.calls):
            raise InputError(f"{self.where}: phase=short saved {len(self.calls)} calls, phase=long asks for more; "
                             "the two phases ran with different settings: rerun phase=short into a fresh output_dir")
        call = self.calls[self.next]
        self.next += 1
        if call["prompts"] != [digest(p) for p in prompts]:
            raise InputError(f"{self.where}: call {self.next} of phase=long sends other prompts than phase=short "
                             "answered (another corpus, tokenizer, seed or prompt setting); use the same config for "
                             "both phases, or rerun phase=short into a fresh output_dir")
        self.finish_reasons = list(call.get("finish_reasons") or [None] * len(call["replies"]))
        return list(call["replies"])


def short_file(shard_index: int, group: int) -> str:
    return f"short-s{shard_index:03d}-g{group:06d}.json"

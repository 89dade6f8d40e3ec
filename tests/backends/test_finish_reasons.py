"""Every backend says why each completion ended ("stop" or "length"); `generate_with_reasons` reads it."""

import types

import pytest
import torch

from longpo.backends.base import Sampling, generate_with_reasons
from longpo.backends.hf import HFBackend
from longpo.backends.openai import OpenAIBackend
from longpo.backends.vllm import VLLMBackend
from longpo.data.records import user_content
from longpo.toy.tiny import build_tiny_model
from tests.data.ending import end_answers
from tests.data.loopback import LoopbackServer

LIMIT = Sampling(temperature=0.0, max_new_tokens=6)


@pytest.mark.parametrize("kwargs", [{"min_shared_prefix": 10**9}, {"min_shared_prefix": 8}, {"min_shared_prefix": 8, "batch_shared_greedy": True},
                                    {"reuse_across_calls": True, "min_shared_prefix": 8}])
def test_hf_reports_stop_exactly_when_eos_was_generated(tokenizer, kwargs):
    """Answers end after 2 + len(prompt) % 8 new tokens: under 6 they emit EOS ("stop"), else "length"."""
    model = end_answers(build_tiny_model("llama", dtype=torch.float32, seed=1), tokenizer.eos_token_id,
                        after=lambda ids: 2 + len(ids) % 8)
    doc = " ".join(["the river city book value"] * 20)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": user_content(doc, "why" + "?" * i)}],
                                             tokenize=False, add_generation_prompt=True) for i in range(8)]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    texts, reasons = generate_with_reasons(HFBackend(model, tokenizer, **kwargs), prompts, LIMIT)
    assert len(texts) == 8
    assert reasons == ["stop" if 2 + n % 8 < LIMIT.max_new_tokens else "length" for n in lengths]
    assert set(reasons) == {"stop", "length"}


def test_unknown_and_stale_reasons_read_as_none(tokenizer):
    class Plain:
        def generate(self, prompts, sampling):
            return ["x"] * len(prompts)

    class Stale(Plain):
        finish_reasons = ["stop", "stop"]  # set once, never by generate

    assert generate_with_reasons(Plain(), ["a", "b"], LIMIT) == (["x", "x"], [None, None])
    assert generate_with_reasons(Stale(), ["a", "b"], LIMIT)[1] == [None, None]


def test_vllm_finish_reason_is_passed_through(tokenizer):
    class LLM:
        def generate(self, prompts, params, use_tqdm=False):
            done = lambda text, why: types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text, finish_reason=why)])  # noqa: E731
            return [done(" ended ", "stop"), done(" cut", "length")][: len(prompts)]

    backend = VLLMBackend.__new__(VLLMBackend)  # no vLLM here: the engine is replaced
    backend._vllm, backend.tokenizer, backend.llm = types.SimpleNamespace(SamplingParams=lambda **kw: kw), tokenizer, LLM()
    assert generate_with_reasons(backend, ["p", "q"], LIMIT) == (["ended", "cut"], ["stop", "length"])


def test_openai_finish_reason_is_passed_through(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    reply = lambda payload, headers: (200, {"choices": [  # noqa: E731
        {"text": payload["prompt"][::-1], **({"finish_reason": "length"} if "long" in payload["prompt"] else
                                             {"finish_reason": "stop"} if "short" in payload["prompt"] else {})}]})
    server = LoopbackServer(reply)
    try:
        backend = OpenAIBackend("served", str(tmp_path / "tok"), base_url=server.url, backoff=0.01)
        texts, reasons = generate_with_reasons(backend, ["a long one", "a short one", "neither"], LIMIT)
        assert texts == ["eno gnol a", "eno trohs a", "rehtien"] and reasons == ["length", "stop", None]
    finally:
        server.close()

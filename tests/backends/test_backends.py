"""vLLM request building (without vLLM) and the OpenAI-compatible backend against a real loopback server."""

import json
import time
import types

import pytest

from longpo.backends import make_backend
from longpo.backends.base import Sampling
from longpo.backends.openai import OpenAIBackend, ServerError
from longpo.backends.vllm import engine_kwargs, sampling_params, score_params, sum_prompt_logprobs
from longpo.toy.tiny import tiny_model_config
from tests.data.loopback import LoopbackServer


def fake_vllm():
    return types.SimpleNamespace(SamplingParams=lambda **kw: kw)


def test_vllm_engine_and_request_building(tmp_path):
    m = str(tmp_path / "m")
    tiny_model_config("llama").save_pretrained(m)  # the overrides are computed from the local config
    kw = engine_kwargs(m, dtype="bfloat16", tensor_parallel_size=4, rope_theta=1e7, max_position_embeddings=131072,
                       max_model_len=131072)
    assert kw["trust_remote_code"] is False and kw["load_format"] == "safetensors"
    assert kw["enable_prefix_caching"] and kw["tensor_parallel_size"] == 4 and kw["tokenizer"] == m
    assert kw["hf_overrides"]["rope_parameters"]["rope_theta"] == 1e7
    assert kw["hf_overrides"]["max_position_embeddings"] == 131072
    assert "hf_overrides" not in engine_kwargs(m)
    vllm = fake_vllm()
    greedy = sampling_params(vllm, Sampling(temperature=0.0, max_new_tokens=40))
    assert greedy == {"temperature": 0.0, "max_tokens": 40}
    a, b = (sampling_params(vllm, Sampling(temperature=0.7, top_p=0.9, seed=1), i) for i in (0, 1))
    assert a["top_p"] == 0.9 and a["seed"] != b["seed"]
    assert score_params(vllm)["prompt_logprobs"] == 0


def test_vllm_prompt_logprob_sum():
    lp = lambda v: types.SimpleNamespace(logprob=v)  # noqa: E731
    prompt_logprobs = [None, {5: lp(-1.0), 9: lp(-0.1)}, {7: lp(-2.0)}, {8: lp(-0.5)}]
    assert sum_prompt_logprobs(prompt_logprobs, [1, 5, 7, 8], [False, False, True, True]) == -2.5
    with pytest.raises(RuntimeError, match="position 1"):
        sum_prompt_logprobs(prompt_logprobs, [1, 6, 7, 8], [False, True, False, False])


def test_vllm_backend_without_vllm_says_how_to_install(tokenizer):
    with pytest.raises(ImportError, match=r"longpo\[vllm\]"):
        make_backend("vllm", model="/nowhere")


class Server(LoopbackServer):
    """Canned completions; some prompts fail or stall on their first request."""

    def __init__(self):
        self.seen: dict[str, int] = {}
        self.auth: list[str] = []
        super().__init__(self.reply)

    def reply(self, payload, headers):
        self.auth.append(headers.get("Authorization", ""))
        prompt = payload["prompt"]
        key = json.dumps(prompt)
        self.seen[key] = self.seen.get(key, 0) + 1
        first = self.seen[key] == 1
        if isinstance(prompt, list):  # echo scoring: token j gets -0.5 * (j % 3), the first None
            values = [None] + [-0.5 * (j % 3) for j in range(1, len(prompt))] + [-9.0]
            return 200, {"choices": [{"text": "x", "logprobs": {"token_logprobs": values}}]}
        if "ALWAYS_500" in prompt or ("FAIL_ONCE" in prompt and first):
            return 500, {"error": "boom"}
        if "BAD_REQUEST" in prompt:
            return 400, {"error": "prompt too long"}
        if "SLOW_ONCE" in prompt and first:
            time.sleep(1.5)
        return 200, {"choices": [{"text": f" reply to {prompt[-12:]}"}]}


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def tokenizer_dir(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    return str(tmp_path / "tok")


def test_openai_backend_retries_errors_and_timeouts_in_order(server, tokenizer_dir, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    backend = make_backend("openai", model="served", tokenizer=tokenizer_dir, base_url=server.url,
                           api_key_env="MY_KEY", concurrency=3, timeout=0.5, max_retries=3, backoff=0.05)
    prompts = [f"prompt {i}" for i in range(5)] + ["p FAIL_ONCE", "p SLOW_ONCE"]
    replies = backend.generate(prompts, Sampling(temperature=0.0, max_new_tokens=8))
    assert replies == [f"reply to {p[-12:]}" for p in prompts]
    assert backend.retries == 2  # one server error, one timeout
    assert set(server.auth) == {"Bearer sk-secret-123"}
    assert "sk-secret" not in repr(backend)


def test_openai_backend_scores_by_echo(server, tokenizer_dir):
    backend = OpenAIBackend("served", tokenizer_dir, base_url=server.url, backoff=0.01)
    scores = backend.score([[1, 2, 3, 4], [1, 2]], [[False, True, True, True], [False, True]])
    assert scores == [-0.5 - 1.0 + 0.0, -0.5]


def test_openai_backend_gives_up_with_a_clear_error(server, tokenizer_dir, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-logged")
    backend = OpenAIBackend("served", tokenizer_dir, base_url=server.url, max_retries=2, backoff=0.01)
    with pytest.raises(ServerError, match="failed after 3 attempts; last error: HTTP 500"):
        backend.generate(["x ALWAYS_500"], Sampling())
    with pytest.raises(ServerError, match="HTTP 400: .*prompt too long"):
        backend.generate(["x BAD_REQUEST"], Sampling())
    assert "sk-never-logged" not in caplog.text
    with pytest.raises(ValueError, match="needs tokenizer="):
        OpenAIBackend("served", None, base_url=server.url)

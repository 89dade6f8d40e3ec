"""Backend over any OpenAI-compatible completions server (vLLM, SGLang, TGI, a hosted API).

Uses the plain `/completions` endpoint with fully rendered prompts (the chat template is applied
here, with the model's local tokenizer, so the server never guesses it). Scoring sends token ids
with `echo=true, logprobs=0` (supported by vLLM's server). Requests run `concurrency` at a time;
a 429, a 5xx, a refused connection or a timeout is retried with exponential backoff; any other
HTTP error stops with the server's message. The API key is read from the environment variable
named by `api_key_env` and is never logged or put in an error message.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from longpo.backends.base import Sampling
from longpo.models import load_tokenizer

logger = logging.getLogger("longpo.backends.openai")
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class ServerError(RuntimeError):
    """The server refused a request, or kept failing after every retry."""


class OpenAIBackend:
    """`Backend` over an OpenAI-compatible HTTP server."""

    def __init__(self, model: str, tokenizer: str | None = None, base_url: str = "http://127.0.0.1:8000/v1",
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8, timeout: float = 600.0,
                 max_retries: int = 5, backoff: float = 1.0):
        if not tokenizer:
            raise ValueError("backend=openai needs tokenizer=<local folder with the served model's tokenizer>: "
                             "prompts are rendered and scored locally")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError(f"concurrency={concurrency} (>= 1), max_retries={max_retries} (>= 0), "
                             f"timeout={timeout} (> 0)")
        self.model = model
        self.tokenizer = load_tokenizer(tokenizer)
        self.base_url = base_url.rstrip("/")
        self._api_key = os.environ.get(api_key_env) or None
        self.concurrency, self.timeout = concurrency, timeout
        self.max_retries, self.backoff = max_retries, backoff
        self.retries = 0  # requests retried so far (for stats)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, concurrency={self.concurrency})"

    def _post(self, path: str, payload: dict) -> dict:
        url = f"{self.base_url}{path}"
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
                delay = self.backoff * 2 ** (attempt - 1) * (1 + random.random() * 0.25)
                logger.warning("retrying %s in %.1fs after: %s", url, delay, last)
                time.sleep(delay)
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:300]
                if e.code not in RETRY_STATUS:
                    raise ServerError(f"{url}: HTTP {e.code}: {detail}") from None
                last = f"HTTP {e.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        raise ServerError(f"{url}: failed after {self.max_retries + 1} attempts; last error: {last}")

    def _map(self, fn: Any, items: list) -> list:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(fn, items))

    def generate(self, prompts: list[str], sampling: Sampling) -> list[str]:
        """Completions in order; `finish_reasons` holds the server's finish_reason of each ("length" at
        max_tokens; None where the server gives none)."""

        def one(item: tuple[int, str]) -> tuple[str, str | None]:
            i, prompt = item
            payload = {"model": self.model, "prompt": prompt, "max_tokens": sampling.max_new_tokens,
                       "temperature": sampling.temperature, "top_p": sampling.top_p}
            if sampling.temperature > 0:
                payload["seed"] = sampling.seed * 1_000_003 + i
            reply = self._post("/completions", payload)
            try:
                return reply["choices"][0]["text"].strip(), reply["choices"][0].get("finish_reason")
            except (KeyError, IndexError, TypeError):
                raise ServerError(f"{self.base_url}/completions: reply without choices[0].text: "
                                  f"{json.dumps(reply)[:200]}") from None

        done = self._map(one, list(enumerate(prompts)))
        self.finish_reasons = [reason for _, reason in done]
        return [text for text, _ in done]

    def score(self, sequences: list[list[int]], masks: list[list[bool]]) -> list[float]:
        def one(item: tuple[list[int], list[bool]]) -> float:
            ids, mask = item
            reply = self._post("/completions", {"model": self.model, "prompt": ids, "max_tokens": 1, "echo": True,
                                                "logprobs": 0, "temperature": 0.0})
            try:
                values = reply["choices"][0]["logprobs"]["token_logprobs"]
            except (KeyError, IndexError, TypeError):
                raise ServerError(f"{self.base_url}/completions: echo reply without logprobs.token_logprobs "
                                  "(does the server support echo with logprobs?)") from None
            if len(values) < len(ids):
                raise ServerError(f"server echoed {len(values)} log-probs for a {len(ids)}-token prompt")
            return float(sum(values[j] for j, keep in enumerate(mask) if keep))

        return self._map(one, list(zip(sequences, masks)))

    def close(self) -> None:
        pass

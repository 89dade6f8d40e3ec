"""LLM-judge calls through an OpenAI-compatible `/chat/completions` endpoint, resumable and auditable.

`run_judgements(client, requests, path)` sends each request (a system and a user prompt) to the judge,
parses the reply into a score, and appends one JSON line per request to `path` as soon as it is judged:
the judge model, both prompts, every raw reply, the score and a status. A rerun reads that file and
judges only the requests not in it, so a killed run (even kill -9) never pays twice for a judgement.

- A reply that does not parse is asked again (`parse_tries` in all); if none parses the row is recorded
  with `score: null, status: "unparsable"` - it is counted and shown, never averaged as 0.
- HTTP 408/409/429/5xx, refused connections and timeouts are retried with exponential backoff; any other
  HTTP error, or a server that keeps failing, stops the run with the server's message (what is judged so
  far is kept).
- The API key is read from the environment variable named by `api_key_env` when a request is sent; it is
  never stored on the config, logged, put in an error message or written to a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from longpo.config import help_field
from longpo.files import append_jsonl, read_jsonl

logger = logging.getLogger("longpo.eval.judge")
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass(kw_only=True)
class JudgeConfig:
    model: str = help_field("gpt-4", "judge model name sent to the endpoint (FastChat and LongAlign judge with gpt-4)")
    base_url: str = help_field("https://api.openai.com/v1", "OpenAI-compatible base URL (…/v1)")
    api_key_env: str = help_field("OPENAI_API_KEY", "name of the environment variable that holds the key "
                                  "(the key itself is never put in a config, log or output)")
    concurrency: int = help_field(4, "judge requests in flight at once")
    timeout: float = help_field(120.0, "seconds per HTTP request")
    max_retries: int = help_field(5, "retries of a request after a transient HTTP error")
    backoff: float = help_field(2.0, "first retry delay in seconds (doubles each retry)")
    parse_tries: int = help_field(3, "judge calls per item until a reply parses; then it is recorded as unparsable")
    max_tokens: int = help_field(2048, "most tokens of a judgement (FastChat: 2048)")
    temperature: float = help_field(0.0, "judge sampling temperature (FastChat and LongAlign: 0)")

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_retries < 0 or self.parse_tries < 1 or self.timeout <= 0:
            raise ValueError(f"judge: concurrency={self.concurrency} (>= 1), max_retries={self.max_retries} (>= 0), "
                             f"parse_tries={self.parse_tries} (>= 1), timeout={self.timeout} (> 0)")


class JudgeError(RuntimeError):
    """The judge endpoint refused a request or kept failing; judgements made so far are saved."""


class JudgeClient:
    """Chat completions against one judge model; thread-safe (one urllib request per call)."""

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.retries = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"JudgeClient(model={self.cfg.model!r}, url={self.url!r})"

    def complete(self, system: str, user: str) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        payload = {"model": self.cfg.model, "messages": messages, "n": 1, "temperature": self.cfg.temperature,
                   "max_tokens": self.cfg.max_tokens}
        body = json.dumps(payload).encode()
        key = os.environ.get(self.cfg.api_key_env)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
                delay = self.cfg.backoff * 2 ** (attempt - 1) * (1 + random.random() * 0.25)
                logger.warning("judge: retrying %s in %.1fs after: %s", self.url, delay, last)
                time.sleep(delay)
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.cfg.timeout) as response:
                    reply = json.loads(response.read().decode())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:300]
                if e.code not in RETRY_STATUS:
                    raise JudgeError(f"{self.url}: HTTP {e.code}: {detail}") from None
                last = f"HTTP {e.code}"
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
                continue
            except json.JSONDecodeError:
                last = "a reply that is not JSON"
                continue
            try:
                content = reply["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise JudgeError(f"{self.url}: reply without choices[0].message.content: "
                                 f"{json.dumps(reply)[:200]}") from None
            return content if isinstance(content, str) else ""
        raise JudgeError(f"{self.url}: failed after {self.cfg.max_retries + 1} attempts; last error: {last}")


# ---------------------------------------------------------------------------------------------
# Reply parsers: text -> score, or None when the reply holds no rating


_FASTCHAT_ONE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_FASTCHAT_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_fastchat_rating(text: str) -> float | None:
    """FastChat `run_judge_single`: the first "[[x]]", else the first "[x]", x an integer or decimal."""
    m = _FASTCHAT_ONE.search(text) or _FASTCHAT_BACKUP.search(text)
    return float(m.group(1)) if m else None


def parse_longbench_chat_rating(text: str) -> float | None:
    """LongAlign `get_score`: the LAST "[[...]]", then the first number inside it."""
    boxed = re.findall(r"\[\[([^\]]+)\]\]", text)
    if not boxed:
        return None
    numbers = re.findall(r"\d+\.\d+|\d+", boxed[-1])
    return float(numbers[0]) if numbers else None


# ---------------------------------------------------------------------------------------------


def prompt_digest(system: str, user: str) -> str:
    return hashlib.sha1(f"{system}\x00{user}".encode()).hexdigest()[:16]


def cut_torn_tail(path: Path) -> None:
    """Drop an unterminated last line (a kill mid-write) so that appends start on a fresh line."""
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "rb+") as f:
                f.truncate(data.rfind(b"\n") + 1)


def load_judgements(path: Path) -> dict[str, dict]:
    """Saved judgement rows by key (a torn last line is cut off first)."""
    if not path.exists():
        return {}
    cut_torn_tail(path)
    done = {}
    for row in read_jsonl(path):
        if "key" not in row or "status" not in row:
            raise ValueError(f"{path}: a row lacks 'key' or 'status'; it was not written by longpo's judge")
        done[row["key"]] = row
    return done


def run_judgements(client: JudgeClient, requests: list[dict], path: str | os.PathLike,
                   parse: Callable[[str], float | None], progress: bool = True) -> list[dict]:
    """Judge every request not yet in `path`; return the rows of all requests, in request order.

    A request is `{"key", "system", "user", **fields}`; extra fields (question id, turn, category)
    are copied into its row. A saved row whose prompts differ from the request's means the answers,
    questions or judge prompts changed since: that is refused rather than mixed.
    """
    path = Path(path)
    done = load_judgements(path)
    keys = [r["key"] for r in requests]
    if len(set(keys)) != len(keys):
        raise ValueError("run_judgements: request keys must be unique")
    todo = []
    for req in requests:
        row = done.get(req["key"])
        if row is None:
            todo.append(req)
        elif row.get("prompt_sha1") != prompt_digest(req["system"], req["user"]):
            raise ValueError(f"{path}: the saved judgement of {req['key']} was made from a different prompt "
                             "(answers or questions changed); use a new out_dir or delete the file")
    bar = None
    if progress and todo:
        bar = tqdm(total=len(requests), initial=len(requests) - len(todo), desc=f"judge {path.stem}", unit="item")

    def judge_one(req: dict) -> dict:
        replies, score = [], None
        for _ in range(client.cfg.parse_tries):
            replies.append(client.complete(req["system"], req["user"]))
            score = parse(replies[-1])
            if score is not None:
                break
        fields = {k: v for k, v in req.items() if k not in ("key", "system", "user")}
        return {"key": req["key"], **fields, "judge_model": client.cfg.model, "score": score,
                "status": "ok" if score is not None else "unparsable", "judgements": replies,
                "system_prompt": req["system"], "user_prompt": req["user"],
                "prompt_sha1": prompt_digest(req["system"], req["user"])}

    with ThreadPoolExecutor(max_workers=client.cfg.concurrency) as pool:
        futures = [pool.submit(judge_one, req) for req in todo]
        try:
            for future in as_completed(futures):
                row = future.result()
                append_jsonl(path, row)  # only the main thread writes: one whole line per judgement
                done[row["key"]] = row
                if bar is not None:
                    bar.update(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
    return [done[k] for k in keys]


def mean_score(rows: list[dict]) -> float | None:
    """Mean over the rows that parsed (FastChat's show_result drops score -1 the same way)."""
    scores = [r["score"] for r in rows if r["status"] == "ok"]
    return sum(scores) / len(scores) if scores else None

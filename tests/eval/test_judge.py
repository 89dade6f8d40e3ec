"""MT-Bench and LongBench-Chat end to end against a loopback OpenAI-compatible judge.

Protocol sources: lm-sys/FastChat fastchat/llm_judge (common.py `run_judge_single`, judge_prompts.jsonl,
show_result.py) and THUDM/LongAlign LongBench_Chat/eval.py (`get_score`, prompt_fs.txt).
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from longpo.cli import main as cli_main
from longpo.eval.judge import parse_fastchat_rating, parse_longbench_chat_rating
from longpo.eval.judge_prompts import MT_BENCH_PROMPTS
from longpo.eval.tasks.longbench_chat import LongBenchChatConfig, load_cases, truncate_prompt
from longpo.eval.tasks.mtbench import judge_requests
from tests.data.loopback import LoopbackServer

pytestmark = pytest.mark.slow
KEY = "sk-test-NEVER-IN-OUTPUTS-3141592653"
REPO = Path(__file__).resolve().parents[2]

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rivers.", "Now make it rhyme."]},
    {"question_id": 111, "category": "math", "turns": ["What is 2 + 3?", "And 2 * 3?"]},
    {"question_id": 91, "category": "roleplay", "turns": ["Pretend to be a pirate.", "Say goodbye as one."]},
]
REFERENCES = [{"question_id": 111, "choices": [{"index": 0, "turns": ["5", "6"]}]}]
# reply per (question marker, turn); a list is the sequence of replies to successive calls
MT_REPLIES = {("haiku", 1): ["Fine. Rating: [[8]]"], ("haiku", 2): ["[[6]]"],
              ("2 + 3", 1): ["Correct. [[4]]"], ("2 + 3", 2): ["Rating: [5]"],           # backup "[x]" pattern
              ("pirate", 1): ["I cannot rate this.", "[[9]]"],                            # malformed, then fine
              ("pirate", 2): ["no score here", "still none"]}                             # unparsable
LBC_REPLIES = {"Q-ONE": "The answer misses a detail. [[7]]", "Q-TWO": "First [[3]], on reflection [[6]]"}


def _write_inputs(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = {k: root / n for k, n in [("q", "question.jsonl"), ("ref", "gpt-4.jsonl"), ("cases", "test_cases.json"),
                                      ("shots", "few_shots.json")]}
    paths["q"].write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    paths["ref"].write_text("".join(json.dumps(r) + "\n" for r in REFERENCES))
    long_doc = " ".join(f"word{i}" for i in range(400))
    cases = [{"idx": 1, "query": "Q-ONE", "prompt": f"{long_doc}\nQ-ONE", "answer": "ref one"},
             {"idx": 2, "query": "Q-TWO", "prompt": f"{long_doc}\nQ-TWO", "answer": "ref two"}]
    paths["cases"].write_text(json.dumps(cases))
    paths["shots"].write_text(json.dumps([[{"answer": f"shot {i}{k}", "score": k + 2} for k in range(3)]
                                          for i in range(2)]))
    return paths


class Judge:
    """The judge side of the loopback server: scripted replies, a request log, an optional stall."""

    def __init__(self, stall_after: int | None = None):
        self.calls: list[tuple[str, str]] = []   # (item, user prompt)
        self.auth: set[str] = set()
        self.stall_after = stall_after
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.server = LoopbackServer(self.reply)

    def _item(self, user: str) -> tuple:
        for q in LBC_REPLIES:
            if f"[Question]\n{q}\n" in user:
                return ("lbc", q)
        marker = next(m for m, _ in MT_REPLIES if m in user)
        return (marker, 2 if "### User:" in user else 1)

    def reply(self, payload, headers):
        user = payload["messages"][-1]["content"]
        with self.lock:
            self.auth.add(headers.get("Authorization", ""))
            item = self._item(user)
            seen = sum(1 for i, _ in self.calls if i == item)
            self.calls.append((item, user))
            stall = self.stall_after is not None and len(self.calls) > self.stall_after
        if stall:
            self.release.wait(60)
        text = LBC_REPLIES[item[1]] if item[0] == "lbc" else MT_REPLIES[item][min(seen, len(MT_REPLIES[item]) - 1)]
        return 200, {"choices": [{"message": {"role": "assistant", "content": text}}],
                     "usage": {"total_tokens": 10}}


def _args(checkpoint, paths, out, url):
    return [f"model={checkpoint}", f"out_dir={out}", "progress=false", "ruler.enabled=false",
            "infinitebench.enabled=false", "mt_bench.enabled=true", f"mt_bench.questions={paths['q']}",
            f"mt_bench.reference_answers={paths['ref']}", "mt_bench.max_new_tokens=4",
            "longbench_chat.enabled=true", f"longbench_chat.test_cases={paths['cases']}",
            f"longbench_chat.few_shots={paths['shots']}", "longbench_chat.max_length=64",
            "longbench_chat.max_new_tokens=4", f"judge.base_url={url}", "judge.api_key_env=LONGPO_TEST_JUDGE_KEY",
            "judge.model=judge-x", "judge.concurrency=2", "judge.parse_tries=2", "judge.backoff=0.01",
            "judge.timeout=30"]


def _assert_key_nowhere(out: Path, *texts: str) -> None:
    for p in out.rglob("*"):
        if p.is_file():
            assert KEY not in p.read_text(encoding="utf-8", errors="replace"), f"key written to {p}"
    for t in texts:
        assert KEY not in t


# --------------------------------------------------------------------------------------------- parsers


def test_fastchat_rating_parser():
    """common.py run_judge_single: re.search(r"\\[\\[(\\d+\\.?\\d*)\\]\\]"), else r"\\[(\\d+\\.?\\d*)\\]"; -1 (here None) if neither."""
    assert parse_fastchat_rating("Rating: [[7]]") == 7.0
    assert parse_fastchat_rating("[[8.5]] and later [[2]]") == 8.5      # the first one
    assert parse_fastchat_rating("Rating: [6]") == 6.0                  # backup pattern
    assert parse_fastchat_rating("[[ten]]") is None
    assert parse_fastchat_rating("") is None


def test_longbench_chat_rating_parser():
    """eval.py get_score: re.findall(r"\\[\\[([^\\]]+)\\]\\]")[-1], then the first r"\\d+\\.\\d+|\\d+" in it."""
    assert parse_longbench_chat_rating("[[3]] ... finally [[6]]") == 6.0  # the last one
    assert parse_longbench_chat_rating("[[rating: 7.5/10]]") == 7.5
    assert parse_longbench_chat_rating("Rating: 7") is None
    assert parse_longbench_chat_rating("[[none]]") is None


def test_mtbench_judge_prompts_follow_fastchat():
    """run_judge_single: turn 1 single-v1 (math: single-math-v1 with ref_answer_1), turn 2 the multi-turn prompt."""
    answers = {81: ["A1", "A2"], 111: ["5", "six"], 91: ["arr", "bye"]}
    refs = {111: ["5", "6"]}
    reqs = {r["key"]: r for r in judge_requests(QUESTIONS, answers, refs)}
    assert reqs["81/turn1"]["system"] == "You are a helpful assistant."
    assert reqs["81/turn1"]["user"].endswith("[Question]\nWrite a haiku about rivers.\n\n[The Start of Assistant's "
                                             "Answer]\nA1\n[The End of Assistant's Answer]")
    assert "[The Start of Reference Answer]\n5\n[The End of Reference Answer]" in reqs["111/turn1"]["user"]
    assert reqs["111/turn2"]["system"] == MT_BENCH_PROMPTS["single-math-v1-multi-turn"]["system_prompt"]
    assert "### User:\nAnd 2 * 3?\n\n### Reference answer:\n6" in reqs["111/turn2"]["user"]
    assert "### Assistant A:\nA2\n\n<|The End of Assistant A's Conversation with User|>" in reqs["81/turn2"]["user"]


def test_longbench_chat_truncation(tokenizer, tmp_path):
    """eval.py get_predictions: ids without special tokens; above max_length, decode(ids[:half]) + decode(ids[-half:])."""
    text = " ".join(f"w{i}" for i in range(300))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert truncate_prompt(tokenizer, text, 64) == tokenizer.decode(ids[:32], skip_special_tokens=True) + \
        tokenizer.decode(ids[-32:], skip_special_tokens=True)
    assert truncate_prompt(tokenizer, text, len(ids)) == text
    paths = _write_inputs(tmp_path)
    cases = load_cases(LongBenchChatConfig(test_cases=str(paths["cases"]), few_shots=str(paths["shots"])))
    assert [c["shots"][2]["score"] for c in cases] == [4, 4]


# --------------------------------------------------------------------------------------------- end to end


def test_judged_benchmarks_end_to_end(tmp_path, checkpoint, monkeypatch, capsys, caplog):
    """Answers from the HF backend, judgements from the loopback judge; per-category and overall scores.

    MT-Bench ratings: writing 8, 6; math 4, 5 (backup "[5]"); roleplay 9 (after one malformed reply),
    turn 2 unparsable twice -> left out.  writing 7, math 4.5, roleplay 9; turn 1 (8+4+9)/3 = 7,
    turn 2 (6+5)/2 = 5.5, overall 32/5 = 6.4.  LongBench-Chat: 7 and the last of [[3]], [[6]] -> 6.5.
    """
    monkeypatch.setenv("LONGPO_TEST_JUDGE_KEY", KEY)
    judge = Judge()
    out = tmp_path / "run"
    try:
        assert cli_main(["eval", *_args(checkpoint, _write_inputs(tmp_path / "in"), out, judge.server.url)]) == 0
    finally:
        judge.server.close()
    summary = json.loads((out / "summary.json").read_text())
    mt = summary["mt_bench"]
    assert mt["categories"] == {"math": 4.5, "roleplay": 9.0, "writing": 7.0}
    assert (mt["turn1"], mt["turn2"], mt["overall"]) == (7.0, 5.5, pytest.approx(6.4))
    assert (mt["n"], mt["unparsable"], mt["judge_model"]) == (5, 1, "judge-x")
    assert summary["longbench_chat"]["overall"] == 6.5
    rows = {r["key"]: r for r in map(json.loads, (out / "mt_bench" / "judgements.jsonl").read_text().splitlines())}
    assert rows["91/turn2"]["status"] == "unparsable" and rows["91/turn2"]["score"] is None
    assert rows["91/turn2"]["judgements"] == ["no score here", "still none"]   # raw replies kept
    assert rows["91/turn1"]["judgements"] == ["I cannot rate this.", "[[9]]"] and rows["91/turn1"]["score"] == 9.0
    assert rows["81/turn1"]["system_prompt"] == "You are a helpful assistant." and "[Question]" in rows["81/turn1"]["user_prompt"]
    assert len(judge.calls) == 6 + 2 + 2 and judge.auth == {f"Bearer {KEY}"}
    md = (out / "summary.md").read_text()
    assert "## MT-Bench (judge: judge-x)" in md and "| 4.50 | 9.00 | 7.00 | 7.00 | 5.50 | 6.40 |" in md
    assert "1 unparsable" in md and "## LongBench-Chat" in md

    assert cli_main(["eval", "compare", str(out), str(out)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"MT-Bench writing\s+7\.00\s+7\.00\s+\+0\.00", table)
    assert re.search(r"LongBench-Chat overall\s+6\.50\s+6\.50", table)
    _assert_key_nowhere(out, table, caplog.text)

    # the question and case files are the run's inputs: another file is another run, refused before any work
    paths = _write_inputs(tmp_path / "in")
    paths["cases"].write_text(paths["cases"].read_text().replace("Q-TWO", "Q-2"))
    assert cli_main(["eval", *_args(checkpoint, paths, out, "http://127.0.0.1:9")]) == 2
    assert "longbench_chat.test_cases" in capsys.readouterr().err
    assert (out / "mt_bench" / "judgements.jsonl").exists() and (out / "longbench_chat").is_dir()


def test_kill_9_mid_judging_then_rerun_resumes_without_rejudging(tmp_path, checkpoint, monkeypatch, capsys):
    """A `longpo eval` subprocess is killed with SIGKILL after 3 judgements are saved; the rerun judges only
    the rest (no saved item's prompt is sent again) and ends with the same scores as an uninterrupted run."""
    paths = _write_inputs(tmp_path / "in")
    out = tmp_path / "run"
    judge = Judge(stall_after=3)
    env = {**os.environ, "LONGPO_TEST_JUDGE_KEY": KEY, "PYTHONPATH": str(REPO)}
    code = "import sys; from longpo.cli import main; sys.exit(main([\"eval\", *sys.argv[1:]]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *_args(checkpoint, paths, out, judge.server.url)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    saved = out / "mt_bench" / "judgements.jsonl"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if saved.exists() and len(saved.read_text().splitlines()) >= 3 and len(judge.calls) > 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read()}"
        os.kill(proc.pid, signal.SIGKILL)
        logs = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        judge.release.set()
    assert proc.returncode == -signal.SIGKILL
    before = {r["key"]: r for r in map(json.loads, saved.read_text().splitlines())}
    assert len(before) == 3
    first_prompts = {r["user_prompt"] for r in before.values()}

    judge.calls.clear()
    judge.stall_after = None
    monkeypatch.setenv("LONGPO_TEST_JUDGE_KEY", KEY)
    try:
        assert cli_main(["eval", *_args(checkpoint, paths, out, judge.server.url)]) == 0
    finally:
        judge.server.close()
    assert not first_prompts & {user for _, user in judge.calls}, "a saved judgement was asked again"
    after = {r["key"]: r for r in map(json.loads, saved.read_text().splitlines())}
    assert len(after) == 6 and all(after[k] == row for k, row in before.items())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mt_bench"]["categories"] == {"math": 4.5, "roleplay": 9.0, "writing": 7.0}
    assert summary["longbench_chat"]["overall"] == 6.5
    _assert_key_nowhere(out, logs, capsys.readouterr().out)


def test_judge_client_retries_transient_errors_and_stops_on_others(monkeypatch):
    """429/5xx are retried with backoff; a 401 stops at once with the server's message, never the key."""
    from longpo.eval.judge import JudgeClient, JudgeConfig, JudgeError

    monkeypatch.setenv("LONGPO_TEST_JUDGE_KEY", KEY)
    script = iter([(503, {"error": "busy"}), (429, {"error": "slow down"}),
                   (200, {"choices": [{"message": {"content": "[[7]]"}}]}), (401, {"error": "bad key"})])
    server = LoopbackServer(lambda payload, headers: next(script))
    try:
        client = JudgeClient(JudgeConfig(base_url=server.url, api_key_env="LONGPO_TEST_JUDGE_KEY", backoff=0.01,
                                         max_retries=3))
        assert client.complete("sys", "user") == "[[7]]" and client.retries == 2
        with pytest.raises(JudgeError, match="HTTP 401") as err:
            client.complete("sys", "user")
        assert KEY not in str(err.value) and KEY not in repr(client)
    finally:
        server.close()

"""`longpo eval` end to end on a tiny local model (HF backend, CPU): RULER + depth sweep + InfiniteBench,
a killed run that continues from its saved predictions, compare, and clear errors on bad input."""

import json

import pytest

from longpo.cli import main as cli_main
from longpo.eval import run as eval_run

pytestmark = pytest.mark.slow


def _args(checkpoint, data_dir, out_dir, *extra):
    return [
        f"model={checkpoint}", f"out_dir={out_dir}", "batch_size=2", "progress=false",
        "ruler.tasks=niah_single_1,niah_multikey_2,vt,cwe,qa_1,qa_2", "ruler.lengths=[1536]", "ruler.num_samples=2",
        f"ruler.squad={data_dir / 'squad.json'}",  # hotpotqa unset: qa_2 is skipped (a missing configured file would stop the run)
        "ruler.depth_sweep=true", "ruler.depth_task=niah_single_1", "ruler.depths=[0,100]", "ruler.depth_samples=1",
        f"infinitebench.data_dir={data_dir / 'infinitebench'}", "infinitebench.tasks=en_qa,en_mc",
        "infinitebench.max_length=700", "infinitebench.num_samples=2", *extra,
    ]


class Killed(Exception):
    pass


def test_eval_end_to_end_resumes_after_a_kill(tmp_path, checkpoint, data_dir, monkeypatch, capsys):
    out = tmp_path / "run"
    real_make_backend = eval_run.make_backend
    calls = {"n": 0, "limit": 3}

    def make_backend(cfg):
        backend = real_make_backend(cfg)
        generate = backend.generate

        def counted(prompts, sampling):
            if calls["n"] >= calls["limit"]:
                raise Killed()
            calls["n"] += 1
            return generate(prompts, sampling)

        backend.generate = counted
        return backend

    monkeypatch.setattr(eval_run, "make_backend", make_backend)
    with pytest.raises(Killed):
        cli_main(["eval", *_args(checkpoint, data_dir, out)])
    saved = sorted(p.relative_to(out / "predictions").as_posix() for p in (out / "predictions").rglob("*.jsonl"))
    assert saved == ["ruler/1536/niah_multikey_2.jsonl", "ruler/1536/niah_single_1.jsonl", "ruler/1536/vt.jsonl"]
    assert (out / "resolved_config.yaml").is_file()

    calls.update(n=0, limit=100)
    assert cli_main(["eval", *_args(checkpoint, data_dir, out)]) == 0
    # 3 batches were done; left: cwe and qa_1 (1 batch each), en_qa and en_mc, 2 depth cells
    assert calls["n"] == 6, calls
    summary = json.loads((out / "summary.json").read_text())
    ruler = {r["task"]: r for r in summary["tasks"] if r["suite"] == "ruler" and "depth" not in r}
    assert sorted(ruler) == ["cwe", "niah_multikey_2", "niah_single_1", "qa_1", "vt"]
    assert all(r["n"] == 2 for r in ruler.values())
    assert 0.0 <= summary["ruler"]["groups"]["AVG"]["1536"] <= 100.0
    assert summary["ruler"]["coverage"]["AGG"] == "1/2" and summary["ruler"]["coverage"]["QA"] == "1/2"
    assert any(s["task"] == "ruler/1536/qa_2" and "no local file configured" in s["reason"] for s in summary["skipped"])
    assert "qa_2" in (out / "summary.md").read_text().split("## Skipped")[1]
    assert set(summary["infinitebench"]) == {"en_qa", "en_mc", "avg", "en_mc_lenient"}  # lenient beside official
    assert summary["niah_depth"]["depths"] == [0.0, 100.0]
    assert (out / "niah_depth.png").read_bytes()[:4] == b"\x89PNG"
    assert "| RULER | 1536 | Avg |" in (out / "summary.md").read_text()
    for p in (out / "predictions").rglob("*.jsonl"):
        rows = [json.loads(x) for x in p.read_text().splitlines()]
        assert sorted(r["index"] for r in rows) == list(range(len(rows))), p
        assert all(isinstance(r["prediction"], str) for r in rows)

    # a third run has nothing left to generate and gives the same summary
    calls.update(n=0)
    assert cli_main(["eval", *_args(checkpoint, data_dir, out)]) == 0
    assert calls["n"] == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["ruler"]["groups"] == summary["ruler"]["groups"]

    capsys.readouterr()
    assert cli_main(["eval", "compare", str(out), str(out)]) == 0
    assert "RULER AVG 1536" in capsys.readouterr().out


def test_eval_bad_inputs(tmp_path, checkpoint, data_dir, capsys):
    assert cli_main(["eval", f"model={tmp_path / 'no_such_ckpt'}", f"out_dir={tmp_path}"]) == 2
    assert "no_such_ckpt does not exist" in capsys.readouterr().err

    assert cli_main(["eval", f"model={checkpoint}", f"out_dir={tmp_path}", "ruler.lengths=[4096,8192]"]) == 2
    err = capsys.readouterr().err
    assert "ruler.lengths=8192" in err and "holds at most 4096 tokens" in err

    bad = tmp_path / "ib"
    bad.mkdir()
    (bad / "longbook_qa_eng.jsonl").write_text('{"id": 0, "context": "x", "input": "q", "answer": ["a"]}\n{oops\n')
    assert cli_main(["eval", f"model={checkpoint}", f"out_dir={tmp_path / 'o'}", "ruler.enabled=false",
                         f"infinitebench.data_dir={bad}", "infinitebench.tasks=en_qa",
                         "infinitebench.max_length=1024"]) == 2
    assert "longbook_qa_eng.jsonl:2: invalid JSON" in capsys.readouterr().err

    assert cli_main(["eval", f"model={checkpoint}", "ruler.tasks=niah_single_9"]) == 2
    assert "unknown ['niah_single_9']" in capsys.readouterr().err
    assert cli_main(["eval", "compare", str(tmp_path)]) == 2
    assert cli_main(["eval", "compare", str(tmp_path), str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err

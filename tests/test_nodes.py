"""`python -m longpo.nodes`: a node runs only its own workers of a wave's plan, marks itself done, and a rerun of a
finished node starts nothing. Workers are one-line Python processes (no torch)."""

import sys

import pytest

from longpo import nodes
from longpo.launcher import Worker


def plan(tmp_path, fail=False):
    def worker(rank, k):
        code = "raise SystemExit(3)" if fail and rank == 1 else f"open({str(tmp_path / f'ran-{rank}-{k}')!r}, 'a').write('x')"
        return Worker(f"all-{2 * rank + k}", [sys.executable, "-c", code], {"CUDA_VISIBLE_DEVICES": str(k)},
                      tmp_path / "logs" / f"all-{2 * rank + k}.log")
    path = nodes.plan_path(tmp_path, "all")
    nodes.write_plan(path, "it1: generate", tmp_path, "all", [[worker(r, k) for k in range(2)] for r in range(2)])
    return path


def test_a_node_runs_its_own_workers_once(tmp_path, monkeypatch, capsys):
    path = plan(tmp_path)
    monkeypatch.setenv("NODE_RANK", "1")
    assert nodes.main([str(path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == ["ran-1-0", "ran-1-1"]
    assert nodes.missing_nodes(tmp_path, "all", 2) == [0]
    assert nodes.main([str(path)]) == 0                      # finished before: nothing runs again
    assert (tmp_path / "ran-1-0").read_text() == "x" and "node 1: finished before, skipped" in capsys.readouterr().out
    monkeypatch.delenv("NODE_RANK")
    monkeypatch.setenv("SLURM_NODEID", "0")                  # srun's name for it
    assert nodes.main([str(path)]) == 0 and nodes.missing_nodes(tmp_path, "all", 2) == []


def test_a_failed_worker_fails_its_node_and_leaves_no_marker(tmp_path, capsys):
    path = plan(tmp_path, fail=True)
    assert nodes.main([str(path), "--rank", "1"]) == 1
    err = capsys.readouterr().err
    assert "it1: generate [all] node 1: worker all-2 exited with status 3" in err or "worker all-3" in err, err
    assert nodes.missing_nodes(tmp_path, "all", 2) == [0, 1]
    assert nodes.main([str(path), "--rank", "2"]) == 1
    assert "outside the plan's 2 node(s)" in capsys.readouterr().err


@pytest.mark.parametrize("env,rank", [({}, 0), ({"SLURM_NODEID": "3"}, 3), ({"NODE_RANK": "1", "SLURM_NODEID": "3"}, 1)])
def test_node_rank(env, rank):
    assert nodes.node_rank(env) == rank

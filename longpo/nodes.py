"""One wave of shard workers across several nodes: the per-node command of generate, reference and eval.

With `nodes=N` and `n` device groups per node a stage has `N * n` shards; node r runs shards
`r*n .. r*n + n-1` on its own devices. The driver writes the wave's plan (every node's workers) to
`<stage folder>/nodes/<wave>.json` on the shared file system and starts

    python -m longpo.nodes <stage folder>/nodes/<wave>.json

once on every node through the same `launcher` template as train (e.g. srun). Each copy reads its
rank from `NODE_RANK` (torchrun's and accelerate's name), else `SLURM_NODEID`, else 0; runs its
workers (each resumes from its own output, as on one node) and writes `nodes/<wave>/<rank>.done`, so a
rerun skips the nodes that finished. The driver merges once every node's marker exists.

This module imports neither torch nor the stages: a node's command starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from longpo.files import atomic_write_json
from longpo.launcher import StageFailed, Worker, run_workers


def plan_path(folder: Path, wave: str) -> Path:
    return folder / "nodes" / f"{wave}.json"


def done_path(folder: Path, wave: str, rank: int) -> Path:
    return folder / "nodes" / wave / f"{rank}.done"


def node_argv(plan: Path) -> list[str]:
    """The per-node command; the launcher template runs it on every node."""
    return [sys.executable, "-m", "longpo.nodes", str(plan)]


def write_plan(path: Path, label: str, folder: Path, wave: str, nodes: list[list[Worker]]) -> None:
    atomic_write_json(path, {"label": label, "folder": str(folder), "wave": wave, "nodes": [
        [{"name": w.name, "argv": w.argv, "env": w.env, "log": str(w.log)} for w in workers] for workers in nodes]})


def node_rank(environ: dict[str, str] | os._Environ = os.environ) -> int:
    return int(environ.get("NODE_RANK", environ.get("SLURM_NODEID", "0")))


def run_node(plan: Path, rank: int) -> None:
    """Run node `rank`'s workers of the wave in `plan` unless its marker says they finished."""
    spec = json.loads(plan.read_text())
    if not 0 <= rank < len(spec["nodes"]):
        raise StageFailed(f"{plan}: node rank {rank} outside the plan's {len(spec['nodes'])} node(s); start the "
                          f"launcher on as many nodes as nodes= says")
    done = done_path(Path(spec["folder"]), spec["wave"], rank)
    if done.exists():
        print(f"{spec['label']} [{spec['wave']}] node {rank}: finished before, skipped", flush=True)
        return
    workers = [Worker(w["name"], w["argv"], w["env"], Path(w["log"])) for w in spec["nodes"][rank]]
    print(f"{spec['label']} [{spec['wave']}] node {rank}: {', '.join(w.name for w in workers)}", flush=True)
    run_workers(f"{spec['label']} [{spec['wave']}] node {rank}", workers)
    atomic_write_json(done, {"finished": time.strftime("%Y-%m-%d %H:%M:%S")})


def missing_nodes(folder: Path, wave: str, nodes: int) -> list[int]:
    return [r for r in range(nodes) if not done_path(folder, wave, r).exists()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longpo.nodes", description=__doc__.split("\n")[0])
    parser.add_argument("plan", type=Path, help="the wave's plan, <stage folder>/nodes/<wave>.json")
    parser.add_argument("--rank", type=int, default=None, help="this node's rank (default: $NODE_RANK, "
                                                               "$SLURM_NODEID, 0)")
    args = parser.parse_args(argv)
    try:
        run_node(args.plan, node_rank() if args.rank is None else args.rank)
    except StageFailed as e:
        print(f"longpo evolve: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

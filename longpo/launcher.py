"""Process launching of `longpo evolve`: the topology of each stage, its command lines, its workers.

A node has `devices` (GPU ids, or simulated ones on a machine without GPUs). The stages run as
separate processes, never inside the driver:

    generate / reference / eval   one worker per device group (`CUDA_VISIBLE_DEVICES` set per worker,
                                  a group is `tensor_parallel_size` devices for one vLLM engine), each
                                  a deterministic shard of the work; the driver merges their outputs
    train                         one `torch.distributed.run` (torchrun) or `accelerate launch` over
                                  every device, per node, wrapped by `launcher` on several nodes

Every worker writes its stdout and stderr into `<stage folder>/logs/<worker>.log`; a worker that
fails stops the others and fails the stage with the tail of its log.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from longpo.errors import InputError

LOG_TAIL_LINES = 40


class StageFailed(RuntimeError):
    """A worker of a stage exited with an error; the message holds the tail of its log."""


@dataclass
class Worker:
    name: str = field(metadata={"help": "worker name, also its log file's stem"})
    argv: list[str] = field(metadata={"help": "the command line"})
    env: dict[str, str] = field(default_factory=dict, metadata={"help": "environment set on top of the driver's"})
    log: Path | None = field(default=None, metadata={"help": "where its stdout and stderr go"})

    def line(self) -> str:
        """The command as one shell line (environment first), for dry runs and logs."""
        return " ".join([f"{k}={shlex.quote(v)}" for k, v in self.env.items()] + [shlex.quote(a) for a in self.argv])


def normalize_devices(devices: int | str | list) -> list[str]:
    """`8` -> ["0", ..., "7"]; "0,1" or [0, 1] -> ["0", "1"]; the ids go into CUDA_VISIBLE_DEVICES."""
    if isinstance(devices, bool):
        raise InputError(f"devices={devices!r}: give a count (8) or a list of device ids ([0, 1, 2, 3])")
    if isinstance(devices, int):
        if devices < 1:
            raise InputError(f"devices={devices}: need at least 1")
        return [str(i) for i in range(devices)]
    items = devices.split(",") if isinstance(devices, str) else list(devices)
    ids = [str(d).strip() for d in items if str(d).strip()]
    if not ids or len(set(ids)) != len(ids):
        raise InputError(f"devices={devices!r}: give a count or a list of distinct device ids")
    return ids


def device_groups(devices: list[str], per_worker: int, where: str) -> list[list[str]]:
    """Split a node's devices into groups of `per_worker` (one vLLM engine with tensor parallel each)."""
    if per_worker < 1 or len(devices) % per_worker:
        raise InputError(f"{where}: tensor_parallel_size={per_worker} must divide the {len(devices)} device(s) "
                         f"{devices}; change devices or tensor_parallel_size")
    return [devices[i : i + per_worker] for i in range(0, len(devices), per_worker)]


def stage_argv(stage: str, config_file: Path) -> list[str]:
    """`longpo <stage> --config FILE` as run by this interpreter."""
    return [sys.executable, "-m", "longpo.cli", stage, "--config", str(config_file)]


def train_argv(config_file: Path, nproc: int, nodes: int, port: int, rdzv_endpoint: str,
               accelerate_config: str | None) -> list[str]:
    """The per-node launch of `longpo train` over `nproc` processes (torchrun, or accelerate with a config)."""
    if accelerate_config:
        head = ["accelerate", "launch", "--config_file", accelerate_config, "--num_processes", str(nproc * nodes),
                "--num_machines", str(nodes)]
        if nodes > 1:
            host, _, p = rdzv_endpoint.partition(":")
            head += ["--machine_rank", "${NODE_RANK:-${SLURM_NODEID:-0}}", "--main_process_ip", host,
                     "--main_process_port", p or str(port), "--rdzv_backend", "c10d"]
        elif port:
            head += ["--main_process_port", str(port)]
        return head + ["-m", "longpo.cli", "train", "--config", str(config_file)]
    head = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nodes > 1:
        head += [f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    else:
        head += ["--standalone"] if port == 0 else ["--nnodes=1", f"--master-port={port}"]
    return head + ["-m", "longpo.cli", "train", "--config", str(config_file)]


def wrap(template: str, argv: list[str], **fields: object) -> list[str]:
    """Put a command into a launcher template, e.g. "srun --nodes={nodes} --ntasks-per-node=1 {command}";
    the result runs through bash so that the template may use the job's environment ($SLURM_NODEID)."""
    if not template:
        return argv
    if "{command}" not in template:
        raise InputError(f"launcher={template!r} must contain {{command}} where the per-node command goes")
    command = " ".join(a if a.startswith("${") else shlex.quote(a) for a in argv)
    try:
        line = template.format(command=command, **fields)
    except KeyError as e:
        raise InputError(f"launcher={template!r}: unknown placeholder {e}; use {{command}}, "
                         f"{{{'}, {'.join(fields)}}}") from e
    return ["bash", "-c", line]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_workers(label: str, workers: list[Worker], poll_s: float = 0.2) -> None:
    """Start every worker, wait for all; the first failure stops the rest and raises StageFailed."""
    procs = []
    try:
        for w in workers:
            assert w.log is not None, f"{label}: worker {w.name} has no log file"
            w.log.parent.mkdir(parents=True, exist_ok=True)
            with open(w.log, "ab") as log:
                log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {w.line()}\n".encode())
                log.flush()
                procs.append(subprocess.Popen(w.argv, env={**os.environ, **w.env}, stdout=log,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        running = dict(enumerate(procs))
        while running:
            for i, proc in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[i]
                if rc != 0:
                    w = workers[i]
                    raise StageFailed(f"{label}: worker {w.name} exited with status {rc}; last lines of "
                                      f"{w.log}:\n{log_tail(w.log)}")
            time.sleep(poll_s)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

"""Ulysses sequence parallel under the sharding wrappers: `longpo train sp_size=2` on 2 CPU processes
(gloo) under FSDP2 and under DeepSpeed ZeRO-3, through accelerate, launched by torchrun (accelerate reads
its plugin from ACCELERATE_USE_* variables) and by `accelerate launch` with the shipped config files,
writes the same metrics, checkpoint step and exported weights as one process on the same data.

Why this is a real check of the gradient contract (`longpo/train/parallel.py`): with sp_size = world size
the DP size is 1, yet FSDP2's reduce-scatter and ZeRO-3's gradient reduction average over ALL ranks. Each
SP rank holds only its shard's share of the step gradient, so the average alone would halve it; the
trainer multiplies the loss by the world size (`Trainer.backward_scale`) and the shares' average times
the world is their sum, the step gradient. A wrong factor shows in `grad_norm` and in the weights.

The runs are float32 (DeepSpeed keeps no float64 weights) with SGD: AdamW's first step moves every weight
by about +-lr whatever its gradient's size, so float32 rounding in a near-zero gradient would flip whole
updates, while SGD's update is linear in the gradient. The sharded runs reduce in other orders than one
process, hence rtol 1e-5.

FSDP2 on CPU: accelerate 1.15 enables FSDP only on GPU-type devices, so these launches run
`cpu_fsdp_launch.py`, which changes only that decision (see its docstring). DeepSpeed runs unpatched; its
first start JIT-compiles a shared-memory op (about a minute) into TORCH_EXTENSIONS_DIR, cached after.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
FSDP_LAUNCH = Path(__file__).with_name("cpu_fsdp_launch.py")
TRAIN = ["train", "--config", "tiny", "tiny_records=8", "max_steps=2", "optimizer=sgd",
         "learning_rate=0.5", "lr_scheduler=constant", "warmup_ratio=0.0", "progress_bar=false",
         "attention_backend=sdpa"]  # tiny.yaml checkpoints at the last step: sharded save_state runs too
TIMING = {"tokens_per_s", "pairs_per_s", "seconds"}


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "longpo-torch-extensions"))
    env.update(extra)
    return env


def _run(name: str, cmd: list[str], env: dict) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
    return proc.stdout + proc.stderr


def _torchrun(script: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *script]


def _accelerate_launch(config: str, script: list[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "--num_processes", "2",
            "--main_process_port", "0", "--mixed_precision", "no", *script]


def _load(out: Path) -> tuple[list[dict], dict]:
    from safetensors.torch import load_file

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, load_file(next((out / "final").glob("*.safetensors")))


def _assert_equal_runs(one: Path, other: Path, label: str) -> None:
    rows_one, weights_one = _load(one)
    rows, weights = _load(other)
    assert [r["step"] for r in rows] == [r["step"] for r in rows_one] == [1, 2], label
    for a, b in zip(rows_one, rows):
        assert a.keys() == b.keys(), label
        for key in a.keys() - TIMING:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=2e-6), f"{label} step {a['step']} {key}: {b[key]} != {a[key]}"
    assert weights.keys() == weights_one.keys(), label
    for key, w in weights_one.items():
        assert weights[key].dtype == w.dtype == torch.float32, f"{label} {key}: {weights[key].dtype}"
        torch.testing.assert_close(weights[key], w, rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{label} {key}: {m}")
    assert (other / "checkpoint-0000002" / "trainer_state.json").is_file(), f"{label}: no final checkpoint"


def _check_runs(label: str, kind: str, runs: dict, one_process: Path, tmp_path: Path) -> None:
    """Each launch {name: (command, env)} runs under `kind` with sp 2 and equals the one-process run."""
    for i, (name, (cmd, env)) in enumerate(runs.items()):
        out = tmp_path / f"run{i}"
        log = _run(f"{label} {name}", [*cmd, f"output_dir={out}"], env)
        assert f"2 rank(s) ({kind}, sp_size 2)" in log, f"{name}: not a {kind} run:\n{log[-3000:]}"
        _assert_equal_runs(one_process, out, f"{label} {name}")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    _run("one process", [sys.executable, "-m", "longpo.cli", *TRAIN, f"output_dir={out}"], _env())
    return out


@pytest.mark.slow
def test_fsdp2_with_sp_size_2_equals_one_process(one_process, tmp_path):
    """FSDP2 x sp 2: torchrun with the plugin from the environment (no auto-wrap: the whole model is one
    FSDP unit) and `accelerate launch` with longpo/recipes/accelerate/fsdp2.yaml (one unit per decoder layer)."""
    script = [str(FSDP_LAUNCH), *TRAIN, "sp_size=2"]
    runs = {
        "torchrun": (_torchrun(script), _env(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2")),
        "accelerate launch": (_accelerate_launch("longpo/recipes/accelerate/fsdp2.yaml", script), _env()),
    }
    _check_runs("FSDP2 sp2", "FSDP", runs, one_process, tmp_path)


@pytest.mark.slow
def test_zero3_with_sp_size_2_equals_one_process(one_process, tmp_path):
    """DeepSpeed ZeRO-3 (longpo/recipes/deepspeed/zero3.json, no optimizer block) x sp 2: torchrun and `accelerate launch`."""
    pytest.importorskip("deepspeed")
    script = ["-m", "longpo.cli", *TRAIN, "sp_size=2"]
    runs = {
        "torchrun": (_torchrun(script), _env(ACCELERATE_USE_DEEPSPEED="true",
                                             ACCELERATE_DEEPSPEED_CONFIG_FILE=str(ROOT / "longpo/recipes/deepspeed/zero3.json"))),
        "accelerate launch": (_accelerate_launch("longpo/recipes/accelerate/zero3.yaml", script), _env()),
    }
    _check_runs("ZeRO-3 sp2", "DEEPSPEED", runs, one_process, tmp_path)


@pytest.mark.slow
def test_zero3_with_offloaded_states_equals_one_process(one_process, tmp_path):
    """longpo/recipes/accelerate/zero3_offload.yaml (parameters and optimizer state in host memory, the torch
    optimizer stepping there) x sp 2 on 2 processes, with the tiled MLP and full checkpointing: the wiring
    of the one-GPU recipe, equal to one process (on CPU the host is the device, so this checks the
    configuration and the optimizer path, not a transfer)."""
    pytest.importorskip("deepspeed")
    script = ["-m", "longpo.cli", *TRAIN, "sp_size=2", "mlp_tile_tokens=16", "activation_checkpointing=full"]
    runs = {"accelerate launch": (_accelerate_launch("longpo/recipes/accelerate/zero3_offload.yaml", script), _env())}
    _check_runs("ZeRO-3 offload sp2", "DEEPSPEED", runs, one_process, tmp_path)


@pytest.mark.slow
def test_fsdp2_with_offloaded_states_equals_one_process(one_process, tmp_path):
    """longpo/recipes/accelerate/fsdp2_offload.yaml (CPUOffloadPolicy) x sp 2 on 2 processes, with the tiled
    MLP and full checkpointing, equal to one process."""
    script = [str(FSDP_LAUNCH), *TRAIN, "sp_size=2", "mlp_tile_tokens=16", "activation_checkpointing=full"]
    runs = {"accelerate launch": (_accelerate_launch("longpo/recipes/accelerate/fsdp2_offload.yaml", script), _env())}
    _check_runs("FSDP2 offload sp2", "FSDP", runs, one_process, tmp_path)


@pytest.fixture(scope="module")
def one_head(one_process, tmp_path_factory) -> tuple[list[str], Path]:
    """The tiny run's tokenizer and records with a 1-query-head model (so sp 2 is past the head count: Ulysses
    groups of 1 rank, keys and values gathered across 2 segments), and its one-process run."""
    import shutil

    from longpo.toy.tiny import build_tiny_model

    folder = tmp_path_factory.mktemp("one_head") / "model"
    shutil.copytree(one_process / "original_model", folder)  # tokenizer files; config and weights replaced below
    model = build_tiny_model("llama", seed=0, num_heads=1, num_kv_heads=1, max_position_embeddings=2048)
    model.save_pretrained(folder, safe_serialization=True)
    args = [*TRAIN, f"model={folder}", f"train_file={one_process / 'tiny_records.jsonl'}"]
    out = folder.parent / "run"
    _run("one process, 1 head", [sys.executable, "-m", "longpo.cli", *args, f"output_dir={out}"], _env())
    return args, out


@pytest.mark.slow
@pytest.mark.parametrize("kind,config,launcher", [
    ("DEEPSPEED", "zero3", ["-m", "longpo.cli"]),
    ("FSDP", "fsdp2", [str(FSDP_LAUNCH)]),
])
def test_sp_past_the_head_count_under_sharding_equals_one_process(one_head, tmp_path, kind, config, launcher):
    """sp 2 on a 1-head model (key/value all-gather across the 2 row segments, `parallel.split_sp_group`) under
    ZeRO-3 and FSDP2 (accelerate launch with the shipped config), equal to one process: the all-gather's
    backward returns each segment's key/value gradients to their rank, and the wrappers' world-average times
    the world (`Trainer.backward_scale`) is their sum."""
    if kind == "DEEPSPEED":
        pytest.importorskip("deepspeed")
    args, one = one_head
    runs = {"accelerate launch": (_accelerate_launch(f"longpo/recipes/accelerate/{config}.yaml",
                                                     [*launcher, *args, "sp_size=2"]), _env())}
    _check_runs(f"{config} sp2 past 1 head", kind, runs, one, tmp_path)


# ---------------------------------------------------------------- launch checks, in this process


@pytest.mark.parametrize("env,expected", [
    ({}, {"cpu": True}),  # plain torchrun on CPU: DDP over gloo
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "gloo"),
    ({"ACCELERATE_USE_FSDP": "true"}, "gloo"),  # then refused by check_distributed, unless a GPU-type device
])
def test_a_cpu_launch_gets_a_backend(monkeypatch, env, expected):
    from longpo.train.launch import accelerator_kwargs

    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"WORLD_SIZE": "2", **env}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    kwargs = accelerator_kwargs()
    if expected == "gloo":
        assert [h.backend for h in kwargs["kwargs_handlers"]] == ["gloo"]
    else:
        assert kwargs == expected
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert accelerator_kwargs() == {}


@pytest.mark.parametrize("env,kind,processes,message,accepted", [
    ({"ACCELERATE_USE_FSDP": "true"}, "NO", 2, "asked for FSDP .* chose NO on cpu: accelerate 1.15 enables FSDP only",
     "FSDP"),
    ({"ACCELERATE_USE_FSDP": "true"}, "MULTI_CPU", 2, "asked for FSDP .* chose MULTI_CPU", "FSDP"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "MULTI_CPU", 2, "DeepSpeed needs ACCELERATE_USE_CPU unset", "DEEPSPEED"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DEEPSPEED", 1, "accelerate counts 1 process", "DEEPSPEED"),
    ({}, "NO", 2, "gradients would not be synchronised", "MULTI_CPU"),
])
def test_a_launch_that_accelerate_would_run_otherwise_is_refused(monkeypatch, env, kind, processes, message, accepted):
    """accelerate falls back silently (DDP for a DeepSpeed / FSDP request, one process per rank without a
    backend); the trainer refuses instead of training with the wrong sharding or gradient scale."""
    import torch.distributed as dist
    from accelerate.utils import DistributedType

    from longpo.train.launch import check_distributed

    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    with pytest.raises(RuntimeError, match=message):
        check_distributed(SimpleNamespace(distributed_type=DistributedType(kind), num_processes=processes, device="cpu"))
    check_distributed(SimpleNamespace(distributed_type=DistributedType(accepted), num_processes=2, device="cpu"))

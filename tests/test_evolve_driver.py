"""`longpo evolve` as a driver: stages as worker processes over simulated devices, the same run on 1 and on
2 devices, a SIGKILL of the whole job and a rerun, and a dry run of the paper's recipe."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from longpo.config import build_config, load_config
from longpo.data.records import read_records
from longpo.toy.tiny import build_tiny_model
from tests.data.loopback import LoopbackServer
from tests.data.test_generate import canned, small, write_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup(tmp_path, tokenizer):
    base = tmp_path / "base"
    build_tiny_model("llama", seed=1).save_pretrained(base)
    tokenizer.save_pretrained(base)
    server = LoopbackServer(canned(delay=0.1))
    corpus = write_corpus(tmp_path / "corpus.jsonl", 6)
    gen = small(corpus=str(corpus), backend="openai", tokenizer=str(base),
                backend_args={"base_url": server.url, "concurrency": 1, "backoff": 0.01})
    gen.pop("model")
    evaluation = {"backend": "openai", "tokenizer": str(base), "progress": False,
                  "backend_args": {"base_url": server.url, "concurrency": 1},
                  "ruler": {"tasks": ["niah_single_1", "vt"], "lengths": [768], "num_samples": 2},
                  "infinitebench": {"enabled": False}}

    def values(out, devices, accumulation):
        train = {"max_steps": 2, "pairs_per_micro_batch": 1, "gradient_accumulation_steps": accumulation,
                 "learning_rate": 1e-3, "optimizer": "adamw", "save_steps": 1, "progress_bar": False,
                 "max_length": 4096, "seed": 3, "rope_theta": 20000.0}
        return {"base_model": str(base), "output_dir": str(out), "devices": devices, "eval_base": False,
                "iterations": [{"name": "it1", "generate": gen, "train": train, "eval": evaluation}]}

    yield values
    server.close()


def launch(values, tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, "-m", "longpo.cli", "evolve", "--config", str(path)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def by_id(folder):
    return sorted(read_records(folder), key=lambda r: r["id"])


@pytest.mark.slow
def test_two_devices_equal_one_device_and_a_killed_run_resumes(setup, tmp_path):
    """2 simulated devices: generate (with its reference log-probs) and eval as 2 shard workers plus merge, train as 2 gloo
    processes (1 pair x accumulation 1 x 2 ranks); 1 device: 1 worker each, train 1 pair x accumulation 2.
    Same pairs per step, so the same records, the same eval scores and the same final weights (up to the
    order of the gradient sum). The 2-device job is killed (its whole process group, as a scheduler does)
    during generation and rerun."""
    one = launch(setup(tmp_path / "one", 1, 2), tmp_path, "one")
    assert one.wait(timeout=600) == 0, one.stderr.read()[-3000:]

    out = tmp_path / "two"
    proc = launch(setup(out, 2, 1), tmp_path, "two")
    manifests = [out / "it1" / "generate" / "shards" / str(k) / "manifest.json" for k in range(2)]
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if any(m.exists() and json.loads(m.read_text())["done_groups"] for m in manifests):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "evolve finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert not (out / "it1" / "generate.done").exists()
    rerun = launch(setup(out, 2, 1), tmp_path, "two")
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()[-3000:]

    logs = {p.name for p in out.glob("*/*/logs/*.log")}
    assert {"all-0.log", "all-1.log", "eval-0.log", "eval-1.log", "summary-0.log", "train.log"} <= logs, logs
    train_log = (out / "it1" / "train" / "logs" / "train.log").read_text()
    assert "2 pairs per step (1 per micro-batch x 1 accumulation x 2 data-parallel)" in train_log, train_log[-2000:]
    assert "on 2 rank(s)" in train_log
    assert "2 pairs per step (1 per micro-batch x 2 accumulation x 1 data-parallel)" in (
        tmp_path / "one" / "it1" / "train" / "logs" / "train.log").read_text()
    for shard in range(2):  # each shard worker wrote its own part, then the merge put them together
        assert json.loads(manifests[shard].read_text())["num_shards"] == 2

    a, b = by_id(tmp_path / "one" / "it1" / "generate"), by_id(out / "it1" / "generate")
    assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) >= 4
    assert a == b and all(t["ref_chosen_logp"] is not None for r in a for t in r["turns"])
    scores = [json.loads((d / "evolve.json").read_text()) for d in (tmp_path / "one", out)]
    assert [s["scores"] for s in scores[0]] == [s["scores"] for s in scores[1]]
    w1, w2 = (load_file(str(d / "it1" / "train" / "final" / "model.safetensors")) for d in (tmp_path / "one", out))
    base = load_file(str(tmp_path / "base" / "model.safetensors"))
    assert any(not torch.equal(w1[k], base[k]) for k in w1), "training changed nothing"
    for name, tensor in w1.items():
        torch.testing.assert_close(w2[name], tensor, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.slow
def test_a_failed_worker_fails_the_stage_with_its_log_tail(setup, tmp_path):
    values = setup(tmp_path / "bad", 2, 1)
    values["iterations"][0]["generate"] = {**values["iterations"][0]["generate"], "corpus": str(tmp_path / "nope")}
    proc = launch(values, tmp_path, "bad")
    assert proc.wait(timeout=300) == 1
    err = proc.stderr.read()
    assert "it1: generate [all]: worker all-" in err and "exited with status 2" in err, err[-3000:]
    assert "nope" in err  # the worker's own message, from the tail of its log
    assert not (tmp_path / "bad" / "it1" / "generate.done").exists()


def test_dry_run_of_the_paper_recipe_against_a_32k_model(tmp_path, capsys):
    """The recipe evolve_mistral-7b against a fake 32K-position Mistral (config.json only): every stage
    resolves with its topology and command lines, nothing runs and nothing is written."""
    from longpo import evolve
    from longpo.toy.tiny import tiny_model_config

    model = tmp_path / "mistral-32k"
    config = tiny_model_config("mistral")
    config.max_position_embeddings = 32768
    config.save_pretrained(model)
    out = tmp_path / "run"
    cfg = load_config(evolve.Config, ROOT / "longpo" / "recipes" / "evolve_mistral-7b.yaml",
                      [f"base_model={model}", f"output_dir={out}", "dry_run=true"])
    assert evolve.main(cfg) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    stages = [" ".join(line.split()[:2]).rstrip(":") for line in text.splitlines() if not line.startswith("  ")]
    assert stages == ["base: eval"] + [f"{n}: {s}" for n in ("128k", "256k", "512k")
                                       for s in ("generate", "reference", "train", "eval")]
    base = text.splitlines()[0]
    assert "ruler/65536/vt" in base and "ruler/131072/niah_single_1" in base and "ruler/32768/vt" not in base
    assert "max_position_embeddings (32768)" in base
    assert text.count("[short] CUDA_VISIBLE_DEVICES=") == 8 + 8 + 4 and text.count("[long] CUDA_VISIBLE_DEVICES=") == 20
    assert "[long] CUDA_VISIBLE_DEVICES=6,7 " in text  # 512K: tensor parallel 2, 4 engines
    assert text.count("/train/configs/zero3.yaml --num_processes 8") == 3  # the packaged recipe, copied there
    assert text.count("sp_size 8, 8 pairs per step") == 3


def test_gpu_memory_gib_fills_the_unset_layout_keys_from_the_planner(tmp_path, capsys):
    """evolve_mistral-7b on a Mistral-7B shape (config.json only) with gpu_memory_gib=80: the 512k iteration,
    its layout keys and accelerate_config removed, gets the planner's layout (`longpo.train.plan.fill_train_keys`);
    the others keep sp_size 8, accumulation 8 and full checkpointing as given; the dry run says what was chosen."""
    from longpo import evolve
    from longpo.toy.tiny import tiny_model_config
    from longpo.train import plan as layout_plan

    model = tmp_path / "mistral-7b"
    tiny_model_config("mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=32,
                      num_heads=32, num_kv_heads=8, max_position_embeddings=32768).save_pretrained(model)
    values = yaml.safe_load((ROOT / "longpo" / "recipes" / "evolve_mistral-7b.yaml").read_text())
    last = values["iterations"][-1]
    last.pop("accelerate_config")
    for key in ("sp_size", "gradient_accumulation_steps", "gradient_checkpointing"):
        last["train"].pop(key)
    values.update(base_model=str(model), output_dir=str(tmp_path / "run"), dry_run=True, gpu_memory_gib=80)
    cfg = build_config(evolve.Config, values)
    trains = {s.label: s.inline[1] for s in evolve.plan(cfg) if s.label.endswith("train")}
    expected = layout_plan.fill_train_keys(layout_plan.read_model_shape(model), 524288, 8, 80.0, {})
    assert expected.keys["sp_size"] < 8  # the planner's own choice, not the recipe's
    assert {k: getattr(trains["512k: train"], k) for k in expected.keys} == expected.keys
    for name in ("128k", "256k"):
        t = trains[f"{name}: train"]
        assert (t.sp_size, t.gradient_accumulation_steps, t.gradient_checkpointing) == (8, 8, True)
    assert evolve.main(cfg) == 0
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.startswith("512k: train"))
    assert f"longpo plan set sp_size={expected.keys['sp_size']}" in line and "accelerate_config=accelerate/zero3" in line
    assert f"predicted peak {expected.layout.peak_bytes / 2**30:.1f} GiB per GPU" in line
    assert f"sp_size {expected.keys['sp_size']}," in line
    assert "longpo plan set mlp_tile_tokens=" in next(x for x in text.splitlines() if x.startswith("128k: train"))
    values.pop("gpu_memory_gib")
    assert "longpo plan" not in "".join(s.topology for s in evolve.plan(build_config(evolve.Config, values)))


def test_base_eval_keeps_the_lengths_the_base_holds(tmp_path):
    from longpo import evolve
    from longpo.eval import run as eval_run
    from longpo.toy.tiny import tiny_model_config

    model = tmp_path / "m"
    config = tiny_model_config("llama")
    config.max_position_embeddings = 1024
    config.save_pretrained(model)
    cfg = build_config(evolve.Config, {"base_model": str(model), "output_dir": str(tmp_path / "run"),
                                       "iterations": [{"name": "it1", "generate": {"corpus": "c.jsonl"},
                                                       "eval": {"ruler": {"tasks": ["vt"], "lengths": [512, 1024, 4096]},
                                                                "infinitebench": {"enabled": False}}}]})
    base = evolve.base_eval_config(cfg)
    skipped = eval_run.skip_beyond_max_positions(base)
    assert base.ruler.lengths == [512, 1024]
    assert skipped == [{"task": "ruler/4096/vt", "reason": "longer than the model's max_position_embeddings (1024)"}]



def test_dry_run_is_a_bare_flag():
    from longpo.cli import split_args

    assert split_args(["--config", "e.yaml", "--dry-run"]) == ("e.yaml", ["dry_run=true"], False)
    assert split_args(["--dry-run", "base_model=/m", "--devices", "8"])[1] == ["dry_run=true", "base_model=/m",
                                                                              "devices=8"]
    assert split_args(["--launcher", "srun --nodes={nodes} {command}"])[1] == ["launcher=srun --nodes={nodes} {command}"]


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The launcher of a two-node job, simulated on this machine: the per-node command twice, as srun would start it.
TWO_NODES = "(export NODE_RANK=0; {command}) & a=$!; (export NODE_RANK=1; {command}); b=$?; wait $a && exit $b"


@pytest.mark.slow
def test_two_simulated_nodes_run_every_stage_and_a_rerun_skips_a_finished_node(setup, tmp_path):
    """nodes=2 x 1 device through a launcher template that starts the per-node command twice (NODE_RANK 0 and 1):
    generate, reference and eval have 2 shards, one per node, each node's command starting its worker and marking
    nodes/<wave>/<rank>.done; train is one torchrun per node (c10d rendezvous, 2 gloo ranks); the driver merges.
    Then node 1's generate marker is removed: the rerun skips node 0 and reruns node 1 only."""
    out = tmp_path / "nodes"
    values = setup(out, 1, 1)
    values.update(nodes=2, launcher=TWO_NODES, rdzv_endpoint=f"127.0.0.1:{free_port()}")
    values["iterations"][0]["generate"] = {**values["iterations"][0]["generate"], "reference": False}
    proc = launch(values, tmp_path, "nodes")
    assert proc.wait(timeout=900) == 0, proc.stderr.read()[-3000:]

    it = out / "it1"
    for stage, wave, worker in (("generate", "all", "all"), ("reference", "reference", "reference"),
                                ("eval", "eval", "eval")):
        log = (it / stage / "logs" / f"{wave}-nodes.log").read_text()
        for rank in range(2):
            assert (it / stage / "nodes" / wave / f"{rank}.done").exists(), (stage, rank)
            assert f"[{wave}] node {rank}: {worker}-{rank}" in log, log[-2000:]
            assert (it / stage / "logs" / f"{worker}-{rank}.log").exists()
    for rank in range(2):  # each node's generate worker took its own shard of the corpus
        manifest = json.loads((it / "generate" / "shards" / str(rank) / "manifest.json").read_text())
        assert (manifest["num_shards"], manifest["shard_index"]) == (2, rank)
    train_log = (it / "train" / "logs" / "train.log").read_text()
    assert "on 2 rank(s)" in train_log, train_log[-2000:]
    records = by_id(it / "generate")
    pairs = sorted(read_records(it / "pairs.jsonl"), key=lambda r: r["id"])
    assert len(records) >= 4 and [r["id"] for r in pairs] == [r["id"] for r in records]
    assert all(t["ref_chosen_logp"] is not None for r in pairs for t in r["turns"])
    assert (it / "eval" / "summary.json").exists() and (out / "evolve.json").exists()

    for marker in (it / "generate.done", it / "generate" / "logs" / "all.done",
                   it / "generate" / "nodes" / "all" / "1.done"):
        marker.unlink()
    rerun = launch(values, tmp_path, "nodes")
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()[-3000:]
    log = (it / "generate" / "logs" / "all-nodes.log").read_text()
    assert log.count("[all] node 0: finished before, skipped") == 1 and log.count("[all] node 1: all-1") == 2, log
    assert (it / "generate" / "logs" / "all-0.log").read_text().count("====") == 1
    assert (it / "generate" / "logs" / "all-1.log").read_text().count("====") == 2
    assert by_id(it / "generate") == records


def test_dry_run_of_the_paper_recipe_on_two_nodes(tmp_path, capsys):
    """evolve_mistral-7b with nodes=2 x 8 devices: generate, reference and eval have 16 shards, 8 per node, each
    wave started by the launcher template as `python -m longpo.nodes <plan>`; train spans both nodes; merges and
    the eval summary stay on the driver's node."""
    from longpo import evolve
    from longpo.toy.tiny import tiny_model_config

    model = tmp_path / "mistral-32k"
    config = tiny_model_config("mistral")
    config.max_position_embeddings = 32768
    config.save_pretrained(model)
    cfg = load_config(evolve.Config, ROOT / "longpo" / "recipes" / "evolve_mistral-7b.yaml",
                      [f"base_model={model}", f"output_dir={tmp_path / 'run'}", "dry_run=true", "nodes=2",
                       "rdzv_endpoint=head:29500", "launcher=srun --nodes={nodes} --ntasks-per-node=1 {command}"])
    assert evolve.main(cfg) == 0
    text = capsys.readouterr().out
    waves = [("base", "eval", "eval", 16)] + [
        (n, stage, wave, 8 if n == "512k" and stage == "generate" else 16)
        for n in ("128k", "256k", "512k") for stage, wave in (("generate", "short"), ("generate", "long"),
                                                              ("reference", "reference"), ("eval", "eval"))]
    for name, stage, wave, shards in waves:
        block = text.split(f"[{wave}] bash -c 'srun --nodes=2 --ntasks-per-node=1 ")[1:]
        plan = f"-m longpo.nodes {tmp_path}/run/{name}/{stage}/nodes/{wave}.json'"
        mine = [b for b in block if b.startswith(sys.executable) and plan in b.splitlines()[0]]
        assert len(mine) == 1, (name, stage, wave)
        lines = [line for line in mine[0].splitlines()[1:] if line.startswith("    node ")][:shards]
        assert [line.split(":")[0].strip() for line in lines] == ["node 0"] * (shards // 2) + ["node 1"] * (shards // 2)
        assert f"configs/{wave}-{shards - 1}.yaml" in lines[-1]
    assert text.count("--num_processes 16 --num_machines 2 --machine_rank") == 3  # train: across both nodes
    assert text.count("[merge] in the driver") == 1 + 3 * 3 and text.count("[summary] CUDA_VISIBLE_DEVICES=0 ") == 4

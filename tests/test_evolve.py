"""`longpo evolve`: two iterations through the real stages; a SIGKILL mid-iteration, then a rerun,
ends exactly where an uninterrupted run ends, without redoing finished stages."""

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

from longpo.toy.tiny import build_tiny_model
from tests.data.loopback import LoopbackServer
from tests.data.test_generate import canned, small, write_corpus


@pytest.fixture
def setup(tmp_path, tokenizer):
    base = tmp_path / "base"
    build_tiny_model("llama", seed=1).save_pretrained(base)
    tokenizer.save_pretrained(base)
    server = LoopbackServer(canned(delay=0.02))
    corpus = write_corpus(tmp_path / "corpus.jsonl", 6)
    gen = small(corpus=str(corpus), backend="openai", tokenizer=str(base),
                backend_args={"base_url": server.url, "concurrency": 1, "backoff": 0.01})
    gen.pop("model")
    train = {"max_steps": 2, "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "optimizer": "adamw",
             "save_steps": 1, "progress_bar": False, "max_length": 4096, "seed": 3}
    evaluation = {"backend": "openai", "tokenizer": str(base), "progress": False,
                  "backend_args": {"base_url": server.url, "concurrency": 1},
                  "ruler": {"tasks": ["niah_single_1", "vt"], "lengths": [768], "num_samples": 2},
                  "infinitebench": {"enabled": False}}
    iterations = [{"name": "it1", "generate": gen, "train": {**train, "rope_theta": 20000.0}, "eval": evaluation},
                  {"name": "it2", "generate": {**gen, "reference": False}, "reference": {"progress": False},
                   "train": {**train, "rope_theta": 40000.0}, "eval": evaluation}]
    # inline: the stages as library calls in one process (the driver's worker processes: test_evolve_driver.py)
    yield lambda out: {"base_model": str(base), "output_dir": str(out), "launch": "inline", "iterations": iterations}
    server.close()


def launch(values, tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.Popen([sys.executable, "-m", "longpo.cli", "evolve", "--config", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def weights(folder):
    return load_file(str(folder / "it2" / "train" / "final" / "model.safetensors"))


@pytest.mark.slow
def test_evolve_killed_mid_iteration_resumes_to_the_same_end(setup, tmp_path):
    full = launch(setup(tmp_path / "full"), tmp_path, "full")
    assert full.wait(timeout=600) == 0, full.stderr.read()[-3000:]
    report = json.loads((tmp_path / "full" / "evolve.json").read_text())
    assert [r["model"] for r in report] == ["base", "it1", "it2"]
    assert all(r["scores"] for r in report)
    for it, theta in (("it1", 20000.0), ("it2", 40000.0)):  # each iteration trains from the previous model
        config = json.loads((tmp_path / "full" / it / "train" / "final" / "config.json").read_text())
        assert config["rope_parameters"]["rope_theta"] == theta
    assert (tmp_path / "full" / "it2" / "pairs.jsonl").exists()  # reference as its own stage there

    out = tmp_path / "killed"
    proc = launch(setup(out), tmp_path, "killed")
    manifest = out / "it2" / "generate" / "manifest.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and json.loads(manifest.read_text())["done_groups"]:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "evolve finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "it2" / "generate.done").exists()
    finished_it1 = (out / "it1" / "train.done").read_text()
    rerun = launch(setup(out), tmp_path, "killed")
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()[-3000:]
    assert (out / "it1" / "train.done").read_text() == finished_it1, "a finished stage was redone"
    assert json.loads((out / "evolve.json").read_text())[1:] == [
        {**r, "path": r["path"].replace(str(tmp_path / "full"), str(out)),
         "eval": r["eval"].replace(str(tmp_path / "full"), str(out))} for r in report[1:]]
    for name, tensor in weights(tmp_path / "full").items():
        torch.testing.assert_close(weights(out)[name], tensor, rtol=0, atol=0)


@pytest.mark.slow
def test_toy_evolve_killed_mid_iteration_resumes_to_the_same_end(tmp_path):
    """The demo's loop on the shipped toy model (real generation, no server): SIGKILL inside the second
    iteration's generation, rerun, and the report and final weights equal an uninterrupted run's."""
    from longpo.config import config_to_dict
    from longpo.demo.run import Config, evolve_config

    def values(out):
        cfg = Config(output_dir=str(out), documents=12, threads=1, generate={"documents_per_group": 3},
                     iterations=[{"name": "it1", "length": 256, "rope_theta": 20000.0},
                                 {"name": "it2", "length": 384, "rope_theta": 40000.0}],
                     train={"gradient_accumulation_steps": 1, "num_epochs": 1, "save_steps": 1},
                     eval={"toy": {"lengths": [256], "num_samples": 8}})
        return config_to_dict(evolve_config(cfg, str(Path(__file__).parents[1] / "longpo/demo/base_model")))

    full = launch(values(tmp_path / "full"), tmp_path, "full")
    assert full.wait(timeout=600) == 0, full.stderr.read()[-3000:]
    report = json.loads((tmp_path / "full" / "evolve.json").read_text())
    assert [r["model"] for r in report] == ["base", "it1", "it2"]

    out = tmp_path / "killed"
    proc = launch(values(out), tmp_path, "killed")
    manifest = out / "it2" / "generate" / "manifest.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and json.loads(manifest.read_text())["done_groups"]:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "evolve finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "it2" / "generate.done").exists() and (out / "it1" / "eval.done").exists()
    rerun = launch(values(out), tmp_path, "killed")
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()[-3000:]
    again = json.loads((out / "evolve.json").read_text())
    assert [r["scores"] for r in again] == [r["scores"] for r in report]
    for name, tensor in weights(tmp_path / "full").items():
        torch.testing.assert_close(weights(out)[name], tensor, rtol=0, atol=0)

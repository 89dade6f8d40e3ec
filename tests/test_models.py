"""The model layer: one RoPE override for the policy, the HF backend and vLLM; local folders only."""

import socket

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from longpo.backends.hf import HFBackend
from longpo.backends.vllm import engine_kwargs
from longpo.cli import main as cli_main
from longpo.models import ModelPathError, load_model, load_tokenizer, rope_overrides
from longpo.toy.tiny import build_tiny_model, build_tiny_tokenizer
from longpo.train.model import load_policy
from longpo.train.trainer import Config as TrainConfig

LLAMA3 = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 256}


@pytest.fixture(params=["default", "llama3"])
def model_dir(request, tmp_path):
    extra = {} if request.param == "default" else {"rope_parameters": dict(LLAMA3)}
    model = build_tiny_model("llama", seed=0, max_position_embeddings=2048, **extra)
    model.save_pretrained(tmp_path / "m")
    build_tiny_tokenizer().save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def inv_freq(model) -> torch.Tensor:
    return model.model.rotary_emb.inv_freq.double()


def test_same_rope_override_gives_the_same_frequencies_everywhere(model_dir):
    """theta' and L' reach the trained policy, the HF backend's model and vLLM's config alike.

    Default RoPE: inv_freq_i = theta'^(-2i/d). llama3: the same base, then the llama3 frequency
    scaling (factor 8 etc.) - the override must keep the scaling keys, so the scaled frequencies
    differ from default-type ones with the same theta.
    """
    theta, length = 1e7, 65536
    policy = load_policy(TrainConfig(model=str(model_dir), train_file="unused", rope_theta=theta,
                                     max_position_embeddings=length))
    backend = HFBackend(str(model_dir), dtype="float32", device="cpu", rope_theta=theta,
                        max_position_embeddings=length)
    overrides = engine_kwargs(str(model_dir), rope_theta=theta, max_position_embeddings=length)["hf_overrides"]
    config = AutoModelForCausalLM.from_pretrained(model_dir).config  # what vLLM reads, then its overrides
    for key, value in overrides.items():
        setattr(config, key, value)
    vllm_like = AutoModelForCausalLM.from_config(config)

    for model in (policy, backend.model, vllm_like):
        assert model.config.max_position_embeddings == length
        assert model.config.rope_parameters["rope_theta"] == theta
    assert_close(inv_freq(backend.model), inv_freq(policy), rtol=0, atol=0)
    assert_close(inv_freq(vllm_like), inv_freq(policy), rtol=0, atol=0)

    original = load_model(model_dir, "float32")
    rope_type = original.config.rope_parameters["rope_type"]
    assert policy.config.rope_parameters["rope_type"] == rope_type  # scaling kept, not reset to default
    dim = policy.config.hidden_size // policy.config.num_attention_heads
    plain = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if rope_type == "default":
        assert_close(inv_freq(policy), plain, rtol=1e-6, atol=0)
    else:
        assert overrides["rope_parameters"]["factor"] == LLAMA3["factor"]
        assert not torch.allclose(inv_freq(policy), plain, rtol=1e-3), "llama3 scaling was dropped"
    assert not torch.allclose(inv_freq(original), inv_freq(policy)), "the override changed nothing"


def test_rope_overrides_per_layer_type_and_errors():
    """Per-layer-type RoPE (Gemma-3): the global layers get the new base, the sliding-window layers keep
    their local base (they never see more than their window, which the original model handles)."""
    config = build_tiny_model("llama").config
    config.rope_parameters = {"full_attention": {"rope_type": "default", "rope_theta": 1e4},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    out = rope_overrides(config, 1e6)
    assert {k: v["rope_theta"] for k, v in out["rope_parameters"].items()} == {"full_attention": 1e6,
                                                                             "sliding_attention": 1e4}
    assert config.rope_parameters["full_attention"]["rope_theta"] == 1e4, "the source config was changed"
    assert rope_overrides(config) == {}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


HUB_ID = "mistralai/Mistral-7B-Instruct-v0.2"


def test_loaders_refuse_hub_ids(no_network, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    for load in (load_model, load_tokenizer):
        with pytest.raises(ModelPathError, match="not a local .* folder.*never downloads.*hub id"):
            load(HUB_ID)
    with pytest.raises(ModelPathError, match="not a local model folder"):
        HFBackend(HUB_ID)
    with pytest.raises(ModelPathError, match="not a local model folder"):
        engine_kwargs(HUB_ID, rope_theta=1e7)


def test_every_stage_refuses_a_hub_id(no_network, tmp_path, monkeypatch, capsys):
    """Each stage's command with a hub id as its model exits 2 with one line naming the id."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.jsonl").write_text('{"id": "d", "text": "some text"}\n')
    (tmp_path / "records.jsonl").write_text("")
    commands = {
        "generate": ["generate", f"model={HUB_ID}", "corpus=corpus.jsonl", "min_doc_tokens=1", "output_dir=g"],
        "reference": ["reference", f"model={HUB_ID}", "input=records.jsonl", "output=r.jsonl"],
        "train": ["train", f"model={HUB_ID}", "train_file=records.jsonl", "output_dir=t"],
        "eval": ["eval", f"model={HUB_ID}", "out_dir=e"],
        "evolve": ["evolve", f"base_model={HUB_ID}", "output_dir=v", "iterations=[{name: a}]"],
    }
    for stage, argv in commands.items():
        assert cli_main(argv) == 2, stage
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"longpo {stage}: "), (stage, err)
        assert f"{HUB_ID!r}: not a local" in err[0] and "never downloads" in err[0], (stage, err)

"""Backends are looked up by name and asked what they can do: a backend defined in this test alone (no
edit anywhere in longpo) runs through `longpo generate` and `longpo reference` on the command line."""

import functools
import hashlib

import pytest
import yaml

from longpo import cli
from longpo.backends import BACKENDS, BackendSpec, backend_spec
from longpo.data.records import read_records
from tests.data.test_generate import MARK, QUESTIONS, small, write_corpus


class Echo:
    """Scripted answers; a score of -1 per scored token; notes what it was built with and asked."""

    built: list[dict] = []

    def __init__(self, tok, **kwargs):
        self.tokenizer, self.calls = tok, []
        self.reuse_across_calls = kwargs.get("reuse_across_calls", False)
        Echo.built.append(kwargs)

    def generate(self, prompts, sampling):
        self.calls.append(len(prompts))
        self.finish_reasons = ["stop"] * len(prompts)
        return [QUESTIONS if MARK in p else f"The echo says {hashlib.sha1(p.encode()).hexdigest()[:8]}."
                for p in prompts]

    def score(self, sequences, masks):
        return [-float(sum(mask)) for mask in masks]

    def close(self):
        pass


@pytest.fixture
def echo(monkeypatch, tokenizer):
    Echo.built = []
    spec = BackendSpec(target=functools.partial(Echo, tokenizer), local_model=False, transformers_forward=False,
                       rope_override=False)
    monkeypatch.setitem(BACKENDS, "echo", spec)
    return spec


def write(path, values):
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_a_backend_added_in_a_test_runs_through_generate_and_reference(tmp_path, echo):
    corpus = str(write_corpus(tmp_path / "c.jsonl", 3))
    gen = write(tmp_path / "gen.yaml", small(corpus=corpus, backend="echo", reference=False,
                                              output_dir=str(tmp_path / "gen")))
    assert cli.main(["generate", "--config", gen]) == 0
    assert Echo.built == [{"model": "served", "tokenizer": None}]  # no model folder was looked for
    pairs = tmp_path / "pairs.jsonl"
    assert cli.main(["reference", f"input={tmp_path / 'gen'}", f"output={pairs}", "model=served",
                     "backend=echo"]) == 0
    records = read_records(pairs, require_reference=True)
    assert len(records) == 3
    for record, counts in ((r, r["meta"]["answer_tokens"]) for r in records):
        for turn, (chosen, rejected) in zip(record["turns"], counts):
            assert (turn["ref_chosen_logp"], turn["ref_rejected_logp"]) == (-chosen, -rejected)


def test_generate_asks_the_spec_not_the_name(tmp_path, monkeypatch, echo):
    """reuse_across_calls: the backend is built with it and fed one document per rejected-answer call;
    rope_override=False refuses a RoPE override; scores=False is refused by `longpo reference`."""
    monkeypatch.setitem(BACKENDS, "echo", BackendSpec(target=echo.target, local_model=False,
                                                      transformers_forward=False, reuse_across_calls=True))
    gen = write(tmp_path / "gen.yaml", small(corpus=str(write_corpus(tmp_path / "c.jsonl", 2)), backend="echo",
                                             reference=False, output_dir=str(tmp_path / "gen")))
    assert cli.main(["generate", "--config", gen]) == 0
    assert Echo.built[0]["reuse_across_calls"] is True
    monkeypatch.setitem(BACKENDS, "echo", BackendSpec(target=echo.target, rope_override=False, scores=False,
                                                      local_model=False))
    assert cli.main(["generate", "--config", gen, "rope_theta=1e6", "overwrite=true"]) == 2
    assert cli.main(["reference", f"input={tmp_path / 'gen'}", f"output={tmp_path / 'p.jsonl'}", "model=served",
                     "backend=echo"]) == 2


def test_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown backend 'nope'; choose one of \['hf', 'openai', 'vllm'\]"):
        backend_spec("nope")
    assert cli.main(["generate", "model=m", "corpus=c", "backend=nope"]) == 2


def test_the_shipped_backends_declare_what_the_stages_ask():
    hf, vllm, openai = BACKENDS["hf"], BACKENDS["vllm"], BACKENDS["openai"]
    assert hf.reuse_across_calls and hf.transformers_forward and not hf.one_engine_per_process
    assert vllm.tensor_parallel and vllm.one_engine_per_process and not vllm.transformers_forward
    assert not openai.local_model and not openai.rope_override
    assert all(spec.scores and isinstance(spec.target, str) for spec in BACKENDS.values())

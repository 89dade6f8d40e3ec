"""Generation presets are looked up by name and asked for every rule: a preset defined in this test alone
(no edit anywhere in longpo) runs through `generate`, with its own prompt, parser, prefix, separators,
filters and turn rule."""

import pytest

from longpo.config import build_config
from longpo.data import generate as gen
from longpo.data.generate import Config, generate
from longpo.data.records import read_records
from tests.data.test_generate import Recorder, small, write_corpus

ASK = "One question about this, please:"


class OneQuestion:
    name = "one_question"
    keys = ()  # reads none of the project preset's keys
    summary = "asks for one question and keeps answers of at least 3 words"
    separator = "\n\n"
    paragraph_separator = None
    num_turns = 1
    independent_turns = True
    drop_reasons = ("too_short", "chosen_equals_rejected", "truncated", "short_prompt_too_long")

    def question_request(self, cfg, chunk):
        return f"{chunk}\n\n{ASK}"

    def parse_questions(self, cfg, reply):
        return [line.strip() for line in reply.splitlines() if line.strip().endswith("?")]

    def usable_questions(self, cfg, found, chunk, stats, earlier):
        stats["questions_parsed"] += bool(found)
        return found[:1]

    def pick_question(self, cfg, questions, rng):
        return "Q: " + questions[0]

    def drop_reason(self, cfg, chosen, rejected, branch, earlier):
        return "too_short" if len((chosen if branch == "chosen" else rejected).split()) < 3 else None


class Asker(Recorder):
    def generate(self, prompts, sampling):
        out = super().generate(prompts, sampling)
        return ["Where is the vault?\nnot a question" if ASK in p else text for p, text in zip(prompts, out)]


@pytest.fixture
def preset(monkeypatch):
    monkeypatch.setitem(gen.PRESETS, OneQuestion.name, OneQuestion())


def test_a_preset_added_in_a_test_runs_through_generate(tmp_path, tokenizer, preset):
    values = small(corpus=str(write_corpus(tmp_path / "c.jsonl", 3)), output_dir=str(tmp_path / "o"),
                   prompts="one_question", num_turns=None)
    del values["filters"]  # the project preset's filters: this preset has its own
    cfg = build_config(Config, values)
    assert cfg.num_turns == 1 and cfg.separator == "\n\n"  # the preset's defaults
    backend = Asker(tokenizer, "model")
    stats = generate(cfg, backend=backend, ref_backend=backend)
    records = read_records(tmp_path / "o", require_reference=True)
    assert len(records) == stats["records"] == 3
    assert all(len(r["turns"]) == 1 and r["turns"][0]["question"] == "Q: Where is the vault?" for r in records)
    assert sum(ASK in p for p in backend.prompts) == 3  # its own question request, one turn per document
    assert set(stats["dropped"]) == set(OneQuestion.drop_reasons)  # counted from 0, its own reasons


def test_a_preset_refuses_the_keys_it_does_not_read(preset):
    with pytest.raises(ValueError, match="prompts=one_question asks for one question .*; question_template apply to "
                                         "prompts=project"):
        build_config(Config, {"model": "m", "corpus": "c", "prompts": "one_question", "question_template": "small"})
    with pytest.raises(ValueError, match=r"choose one of \['project', 'released', 'one_question'\]"):
        Config(model="m", corpus="c", prompts="nope")

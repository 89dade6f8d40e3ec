"""`longpo generate phase=short` then `phase=long` over one output folder gives the records of `phase=all`;
the long phase refuses to run without the short phase's output, or with other prompts than it answered."""

import json

import pytest

from longpo.config import build_config
from longpo.data import generate
from longpo.data.records import read_records
from longpo.errors import InputError
from tests.data.loopback import LoopbackServer
from tests.data.test_generate import canned, small, write_corpus


@pytest.fixture
def values(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    server = LoopbackServer(canned())
    corpus = write_corpus(tmp_path / "c.jsonl", 5)
    yield small(corpus=str(corpus), backend="openai", tokenizer=str(tmp_path / "tok"), reference=False,
                backend_args={"base_url": server.url, "concurrency": 1, "backoff": 0.01})
    server.close()


def run(values, out, **extra):
    return generate.generate(build_config(generate.Config, {**values, "output_dir": str(out), **extra}))


def test_short_then_long_equals_one_pass(values, tmp_path):
    run(values, tmp_path / "all")
    run(values, tmp_path / "two", phase="short")
    short = json.loads((tmp_path / "two" / "manifest.short.json").read_text())
    assert short["done_groups"] == [0, 1, 2] and not list((tmp_path / "two").glob("*.jsonl"))
    saved = json.loads((tmp_path / "two" / "short-s000-g000000.json").read_text())
    assert [len(c["replies"]) for c in saved["calls"]] == [4, 4]  # 2 documents x 2 turns: questions, chosen
    run(values, tmp_path / "two", phase="long")
    a, b = read_records(tmp_path / "all"), read_records(tmp_path / "two")
    assert a == b and len(a) == 5
    counts = [{k: v for k, v in json.loads((tmp_path / d / "stats.json").read_text()).items() if k != "seconds"}
              for d in ("two", "all")]  # every count equal; the stage timings are wall clock
    assert counts[0] == counts[1]


def test_long_phase_needs_the_short_phase_and_the_same_prompts(values, tmp_path):
    with pytest.raises(InputError, match="group 0 has no phase=short output"):
        run(values, tmp_path / "out", phase="long")
    run(values, tmp_path / "other", phase="short")
    run({**values, "seed": 7}, tmp_path / "seeded", phase="short")
    for name in ("short-s000-g000000.json",):  # the short output of another seed under this folder
        (tmp_path / "other" / name).write_text((tmp_path / "seeded" / name).read_text())
    with pytest.raises(InputError, match="sends other prompts than phase=short answered"):
        run(values, tmp_path / "other", phase="long")

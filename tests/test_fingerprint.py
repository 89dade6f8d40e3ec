"""Run fingerprints: the same command resumes, other settings are refused before anything is done,
exempt keys (progress bars) resume, overwrite=true starts over cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longpo import cli
from longpo.config import build_config
from longpo.data.generate import Config as GenerateConfig
from longpo.data.generate import generate
from longpo.fingerprint import FingerprintMismatch, guard, identity

QUESTIONS = "1. What is the city?\n2. Which river is named?\n3. Who wrote the book?\n4. Why is the value secret?"


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (what 'byte-identical' compares)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------- the module


def test_guard_resumes_refuses_with_the_keys_and_overwrite_clears(tmp_path):
    cfg = {"learning_rate": 1e-3, "progress": True, "nested": {"k": 1}}
    guard("s", tmp_path, cfg, exempt=("progress",))
    guard("s", tmp_path, {**cfg, "progress": False}, exempt=("progress",))  # exempt: resumes
    with pytest.raises(FingerprintMismatch, match=r"learning_rate: 0.001 -> 0.5; nested.k: 1 -> 2.*overwrite=true"):
        guard("s", tmp_path, {**cfg, "learning_rate": 0.5, "nested": {"k": 2}}, exempt=("progress",))
    (tmp_path / "out.txt").write_text("old")
    guard("s", tmp_path, {**cfg, "learning_rate": 0.5}, overwrite=True,
          clear=lambda: (tmp_path / "out.txt").unlink())
    assert not (tmp_path / "out.txt").exists()
    guard("s", tmp_path, {**cfg, "learning_rate": 0.5})  # the new run's fingerprint is the one kept


def test_identity_follows_content_not_mtime(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text("x\n")
    first = identity(tmp_path / "d")
    (tmp_path / "d" / "a.jsonl").write_text("x\n")  # rewritten, same bytes
    assert identity(tmp_path / "d") == first
    (tmp_path / "d" / "a.jsonl").write_text("y\n")
    assert identity(tmp_path / "d") != first
    (tmp_path / "d" / "notes.txt").write_text("z")
    assert identity(tmp_path / "d", (".jsonl",)) == identity(tmp_path / "d", (".jsonl",))
    assert identity(tmp_path / "missing") == "missing"


# ------------------------------------------------------------------------------------- train


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def train(out: Path, *extra: str) -> int:
    reset_accelerate()
    return cli.main(["train", "model=tiny", f"output_dir={out}", "tiny_records=4", "pairs_per_micro_batch=2",
                     "gradient_accumulation_steps=1", "max_steps=2", "save_steps=1", "optimizer=adamw",
                     "learning_rate=1e-3", "warmup_ratio=0", "max_length=4096", "seed=3", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp") / "run"
    assert train(out) == 0
    return out


def test_train_same_command_resumes_and_a_progress_bar_change_resumes(trained, tmp_path, capsys):
    before = tree(trained)
    assert train(trained) == 0 and train(trained, "progress_bar=false") == 0
    assert "trained 2 steps" in capsys.readouterr().out
    rows = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # resumed at the end: nothing trained again
    after = tree(trained)
    for name in ("checkpoint-0000002/trainer_state.json", "checkpoint-0000002/model.safetensors",
                 "final/model.safetensors", "train.fingerprint.json"):
        assert after[name] == before[name], name


def test_train_changed_learning_rate_refuses_and_leaves_the_run_byte_identical(trained, capsys):
    before = tree(trained)
    assert train(trained, "learning_rate=0.5", "optimizer=sgd") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "learning_rate: 0.001 -> 0.5" in err and "optimizer: \"adamw\" -> \"sgd\"" in err
    assert "overwrite=true" in err and err.startswith("longpo train: ")
    assert tree(trained) == before


def test_train_overwrite_starts_over_cleanly(trained, tmp_path):
    out = tmp_path / "copy"
    import shutil

    shutil.copytree(trained, out)
    (out / "checkpoint-0000009").mkdir()  # an output of the old run that the new one would not write
    (out / "checkpoint-0000009" / "trainer_state.json").write_text("{}")
    (out / "mine.txt").write_text("not a train output")
    assert train(out, "learning_rate=0.002", "overwrite=true", "max_steps=1") == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0000001"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and rows[0]["lr"] == pytest.approx(0.002)
    assert (out / "mine.txt").read_text() == "not a train output"  # only the stage's outputs go
    assert train(out, "learning_rate=0.002", "max_steps=1") == 0  # and the new run resumes as usual


# ------------------------------------------------------------------------------------- generate


class Scripted:
    """Questions for the question step, an answer that depends on the prompt for the others."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def generate(self, prompts, sampling):
        return [QUESTIONS if "Number the questions" in p else f"The city is number {len(p) % 97}." for p in prompts]


def gen_cfg(tmp_path, **extra):
    import random

    corpus = tmp_path / "c.jsonl"
    if not corpus.exists():
        rng = random.Random(0)
        words = "the river city book value number code name magic secret vault".split()
        corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": "\n\n".join(
            " ".join(rng.choice(words) for _ in range(40)) + "." for _ in range(10))}) + "\n" for i in range(6)))
    values = dict(model="served", corpus=str(corpus), output_dir=str(tmp_path / "gen"), min_doc_tokens=100,
                  max_doc_tokens=4000, min_chunk_tokens=60, max_chunk_tokens=200, num_turns=2, documents_per_group=2,
                  progress=False, reference=False, backend="openai",
                  filters={"min_words": 0, "max_repeat_ratio": 1.0, "refusal_phrases": []})
    return build_config(GenerateConfig, values | extra)


def test_generate_changed_documents_per_group_refuses_before_writing(tmp_path, tokenizer):
    backend = Scripted(tokenizer)
    stats = generate(gen_cfg(tmp_path), backend=backend, ref_backend=None)
    assert stats["records"] == 6
    before = tree(tmp_path / "gen")
    with pytest.raises(FingerprintMismatch, match=r"documents_per_group: 2 -> 3"):
        generate(gen_cfg(tmp_path, documents_per_group=3), backend=backend, ref_backend=None)
    with pytest.raises(FingerprintMismatch, match=r"num_shards: 1 -> 2; shard_index: 0 -> 1"):
        generate(gen_cfg(tmp_path, num_shards=2, shard_index=1), backend=backend, ref_backend=None)
    assert tree(tmp_path / "gen") == before
    again = generate(gen_cfg(tmp_path, progress=True), backend=backend, ref_backend=None)  # exempt: resumes
    assert again["records"] == 6 and tree(tmp_path / "gen")["manifest.json"] == before["manifest.json"]
    fresh = generate(gen_cfg(tmp_path, documents_per_group=3, overwrite=True), backend=backend, ref_backend=None)
    assert fresh["records"] == 6  # not 6 + duplicates
    assert sorted(p.name for p in (tmp_path / "gen").glob("records-*")) == [
        "records-s000-g000000.jsonl", "records-s000-g000001.jsonl"]


# ------------------------------------------------------------------------------------- demo, evolve


def test_demo_with_another_seed_or_documents_refuses_before_anything(tmp_path):
    from longpo.demo import run as demo

    cfg = build_config(demo.Config, {"output_dir": str(tmp_path / "d")})
    demo.check_rerun(cfg)
    before = tree(tmp_path / "d")
    demo.check_rerun(build_config(demo.Config, {"output_dir": str(tmp_path / "d"), "threads": 1}))  # exempt
    with pytest.raises(FingerprintMismatch, match=r"documents: 64 -> 8; seed: 0 -> 1"):
        demo.check_rerun(build_config(demo.Config, {"output_dir": str(tmp_path / "d"), "seed": 1, "documents": 8}))
    assert tree(tmp_path / "d") == before


def test_evolve_checks_every_stage_up_front(tmp_path):
    """A finished stage is skipped by its .done marker, so evolve itself compares the stages' keys."""
    import dataclasses

    from longpo import evolve
    from longpo.config import load_config

    cfg = load_config(evolve.Config, "evolve_toy", [f"output_dir={tmp_path / 'e'}"])
    evolve.check_rerun(cfg)
    evolve.check_rerun(cfg)
    it = cfg.iterations[-1]
    changed = dataclasses.replace(cfg, iterations=[*cfg.iterations[:-1], dataclasses.replace(
        it, train={**it.train, "learning_rate": 0.5, "progress_bar": True})])
    with pytest.raises(FingerprintMismatch, match=rf"{it.name}.train.learning_rate: .* -> 0.5") as e:
        evolve.check_rerun(changed)
    assert "progress_bar" not in str(e.value)
    before = tree(tmp_path / "e")
    with pytest.raises(FingerprintMismatch):  # a dry run compares too ...
        evolve.check_rerun(changed, write=False)
    evolve.check_rerun(dataclasses.replace(changed, overwrite=True), write=False)  # ... unless it will start over
    assert tree(tmp_path / "e") == before  # and writes or removes nothing


def test_identity_reads_a_bounded_share_of_a_large_input(tmp_path, monkeypatch):
    from longpo import fingerprint

    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i:02d}.txt").write_bytes(bytes([i]) * 100_000)
    read = []

    class Counting:
        def __init__(self, *args):
            self.f = open(*args)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def seek(self, at):
            return self.f.seek(at)

        def read(self, n=-1):
            data = self.f.read(n)
            read.append(len(data))
            return data

    monkeypatch.setattr(fingerprint, "open", Counting, raising=False)
    first = identity(folder, budget=40 * 64 << 10)  # a 64 KiB share of each 100 KB file
    assert 0 < sum(read) <= 40 * 64 << 10
    data = bytearray((folder / "07.txt").read_bytes())
    data[0] ^= 1  # inside the first sampled block
    (folder / "07.txt").write_bytes(bytes(data))
    assert identity(folder, budget=40 * 64 << 10) != first
    (folder / "07.txt").write_bytes(bytes(data[:-1]))  # a size change, wherever it is
    assert identity(folder, budget=40 * 64 << 10) != first
    read.clear()
    identity(folder)  # the default budget: every file whole
    assert sum(read) == 40 * 100_000 - 1


def test_a_fingerprint_of_an_older_scheme_compares_settings_only(tmp_path):
    from longpo import fingerprint

    cfg = {"learning_rate": 0.1}
    guard("train", tmp_path, cfg, inputs={"model": "digest-a"})
    path = fingerprint.path_of(tmp_path, "train")
    old = json.loads(path.read_text())
    path.write_text(json.dumps({**old, "version": fingerprint.VERSION - 1}))
    guard("train", tmp_path, cfg, inputs={"model": "digest-b"})  # digests of another scheme: not compared
    with pytest.raises(FingerprintMismatch, match="learning_rate: 0.1 -> 0.2"):
        guard("train", tmp_path, {"learning_rate": 0.2}, inputs={"model": "digest-b"})


def test_an_exempt_key_in_an_empty_section_resumes(tmp_path):
    """`generate: {}` before, `generate: {progress: false}` now: the exempt key leaves an empty section, which
    is the same run (an older fingerprint kept the empty dict as a value)."""
    from longpo.demo import run as demo

    demo.check_rerun(build_config(demo.Config, {"output_dir": str(tmp_path / "d")}))
    demo.check_rerun(build_config(demo.Config, {"output_dir": str(tmp_path / "d"), "generate": {"progress": False},
                                                "eval": {"progress": False}}))
    with pytest.raises(FingerprintMismatch, match=r"generate.seed: \"<absent>\" -> 3"):
        demo.check_rerun(build_config(demo.Config, {"output_dir": str(tmp_path / "d"), "generate": {"seed": 3}}))
    guard("s", tmp_path, {"a": {}, "b": 1})
    guard("s", tmp_path, {"b": 1})
    with pytest.raises(FingerprintMismatch, match=r"a.k: \"<absent>\" -> 2"):
        guard("s", tmp_path, {"a": {"k": 2}, "b": 1})

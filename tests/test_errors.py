"""Every bad input and fault of issue 16 ends in one line `longpo <stage>: ...` naming the thing to fix,
exits 2, and leaves earlier outputs byte-identical."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from longpo import cli
from longpo.demo.run import SHIPPED
from longpo.eval.fitting import PromptTooLong
from longpo.eval.runner import run_task
from longpo.files import WriteError, atomic_write_text
from tests.conftest import make_record
from tests.test_fingerprint import Scripted, reset_accelerate, tree


def one_line(capsys, stage: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [x for x in err.splitlines() if x.startswith("longpo ") and not x.startswith("longpo eval: skipped ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"longpo {stage}: "), err
    return lines[0]


@pytest.fixture()
def earlier(tmp_path):
    """An output folder holding an earlier run's file."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    return out


@pytest.mark.parametrize("override, text", [
    ("max_length=abc", "max_length='abc' is not an integer"),
    ("skip_overlong=maybe", "skip_overlong='maybe' is not a boolean"),
    ("max_length=4096.5", "max_length=4096.5 is not an integer"),
    ("report_to=7", "report_to=7 is not a list"),
    ("learning_rate=fast", "learning_rate='fast' is not a number"),
])
def test_config_values_are_type_checked_with_the_key_named(override, text, earlier, capsys):
    before = tree(earlier)
    assert cli.main(["train", f"output_dir={earlier}", override]) == 2
    assert text in one_line(capsys, "train")
    assert tree(earlier) == before


def test_nested_config_values_are_checked_too(capsys):
    assert cli.main(["eval", "model=x", "ruler.lengths=[4096, big]"]) == 2
    assert "command line: ruler.lengths[1]='big' is not an integer" in one_line(capsys, "eval")
    assert cli.main(["generate", "model=x", "corpus=y", "filters.min_words=few"]) == 2
    assert "command line: filters.min_words='few' is not an integer" in one_line(capsys, "generate")


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: longpo\nmax_length: [4096\nbeta: 0.1\n")
    assert cli.main(["train", "--config", str(bad)]) == 2
    line = one_line(capsys, "train")
    assert f"{bad}:3: YAML syntax error" in line, line


def records_file(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_empty_records_file_is_named(tmp_path, earlier, capsys):
    empty = tmp_path / "pairs.jsonl"
    empty.write_bytes(b"")
    before = tree(earlier)
    assert cli.main(["train", f"model={SHIPPED}", f"train_file={empty}", f"output_dir={tmp_path / 'new'}"]) == 2
    assert f"{empty}: the file is empty (0 records)" in one_line(capsys, "train")
    assert tree(earlier) == before


def test_duplicate_ids_name_file_and_line(tmp_path, capsys):
    pairs = records_file(tmp_path / "pairs.jsonl", [make_record("a"), make_record("b"), make_record("a")])
    assert cli.main(["train", f"model={SHIPPED}", f"train_file={pairs}", f"output_dir={tmp_path / 'o'}",
                     "loss=sft"]) == 2
    assert f"{pairs}:3: id 'a' repeats the record at {pairs}:1" in one_line(capsys, "train")


def test_missing_model_folder_is_named(tmp_path, capsys):
    pairs = records_file(tmp_path / "pairs.jsonl", [make_record("a")])
    missing = tmp_path / "no-such-model"
    assert cli.main(["train", f"model={missing}", f"train_file={pairs}", f"output_dir={tmp_path / 'o'}"]) == 2
    assert str(missing) in one_line(capsys, "train")
    assert not (tmp_path / "o").exists()


@pytest.fixture()
def read_only(tmp_path):
    """A read-only folder: a read-only tmpfs as root (root ignores file modes), else chmod 555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)]).returncode:
            pytest.skip("root without mount: cannot make a read-only folder")
        yield folder
        subprocess.run(["umount", str(folder)])
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def test_read_only_export_dir_fails_before_training(tmp_path, read_only, capsys):
    reset_accelerate()
    out = tmp_path / "run"
    assert cli.main(["train", "model=tiny", f"output_dir={out}", f"export_dir={read_only / 'final'}",
                     "tiny_records=4", "max_steps=1", "save_steps=1"]) == 2
    assert f"export_dir's parent folder {read_only}: not writable" in one_line(capsys, "train")
    assert not list(out.glob("checkpoint-*")) and not (out / "metrics.jsonl").exists()


def test_read_only_output_dir_is_one_line(read_only, capsys):
    assert cli.main(["generate", "model=served", "backend=openai", f"corpus={read_only}",
                     f"output_dir={read_only / 'gen'}"]) == 2
    assert f"{read_only / 'gen'}" in one_line(capsys, "generate")


# ------------------------------------------------------------------------------------- stages


def test_a_step_whose_every_pair_is_overlong_is_skipped_and_counted(tmp_path, caplog):
    """pairs_per_step = 1: step s trains record order[s]; the first step's record is made overlong."""
    from longpo.toy.run import prepare_tiny_run
    from longpo.train.data import epoch_order

    model_dir, records_path = prepare_tiny_run(tmp_path / "tiny", 4)
    records = [json.loads(x) for x in records_path.read_text().splitlines()]
    first = epoch_order(len(records), 3, 0)[0]
    records[first]["document"] = " ".join([records[first]["document"]] * 8)
    pairs = records_file(tmp_path / "pairs.jsonl", records)
    reset_accelerate()
    with caplog.at_level("WARNING", logger="longpo.train"):
        assert cli.main(["train", f"model={model_dir}", f"train_file={pairs}", f"output_dir={tmp_path / 'o'}",
                         "max_length=1200", "pairs_per_micro_batch=1", "gradient_accumulation_steps=1",
                         "max_steps=2", "seed=3", "warmup_ratio=0", "progress_bar=false"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["skipped"] is True and rows[0]["skipped_overlong"] == 1 and "loss" not in rows[0]
    assert (rows[1]["pairs"], rows[1]["skipped_overlong"]) == (1, 0) and "skipped" not in rows[1]
    assert "step 1: every pair was over max_length=1200; step skipped" in caplog.text


def test_generate_that_keeps_no_pair_exits_2_with_the_reasons(tmp_path, tokenizer, monkeypatch, capsys):
    from longpo.data import generate
    from tests.test_fingerprint import gen_cfg

    cfg = gen_cfg(tmp_path, min_doc_tokens=3000)  # every document is shorter
    monkeypatch.setattr(generate, "_make_backends", lambda cfg: (Scripted(tokenizer), None))
    monkeypatch.setattr(generate, "check_model_folder", lambda *args, **kwargs: None)
    assert cli.main(["generate", f"corpus={cfg.corpus}", f"output_dir={cfg.output_dir}", "model=served",
                     "backend=openai", "min_doc_tokens=3000", "progress=false"]) == 2
    line = one_line(capsys, "generate")
    assert "no pair kept from 6 documents (skipped {'too_short': 6}" in line and "overwrite=true" in line


def test_eval_missing_infinitebench_file_exits_2_after_the_summary(tmp_path, capsys):
    data = tmp_path / "ib"
    data.mkdir()
    out = tmp_path / "ev"
    assert cli.main(["eval", f"model={SHIPPED}", f"out_dir={out}", "ruler.enabled=false", "progress=false",
                     f"infinitebench.data_dir={data}", "infinitebench.tasks=[en_qa]",
                     "infinitebench.max_length=2048"]) == 2
    line = one_line(capsys, "eval")
    assert "requested task(s) ['infinitebench/en_qa'] could not run" in line
    assert "longbook_qa_eng.jsonl" in (out / "summary.md").read_text()


def test_eval_configured_path_missing_and_nothing_to_run_exit_2(tmp_path, capsys):
    assert cli.main(["eval", f"model={SHIPPED}", f"out_dir={tmp_path / 'a'}", f"ruler.essays={tmp_path / 'pg'}"]) == 2
    assert f"ruler.essays={tmp_path / 'pg'}: no such file or folder" in one_line(capsys, "eval")
    assert not (tmp_path / "a").exists()
    assert cli.main(["eval", f"model={SHIPPED}", f"out_dir={tmp_path / 'b'}", "ruler.enabled=false",
                     "progress=false"]) == 2
    assert "no task ran (3 skipped" in one_line(capsys, "eval")


class Task:
    """Example 1 does not fit the task's length."""

    name, max_new_tokens = "fit/t", 2

    def num_examples(self):
        return 3

    def get_example(self, i):
        if i == 1:
            raise PromptTooLong("fit/t: example 1 does not fit 64 tokens")
        return {"prompt": f"p{i}", "answer": "a"}

    def score(self, example, prediction):
        return 1.0


class Echo:
    def generate(self, prompts, sampling):
        return ["a" for _ in prompts]


def test_an_example_that_does_not_fit_is_skipped_and_counted(tmp_path):
    from longpo.backends.base import Sampling

    result = run_task(Echo(), Task(), tmp_path, Sampling(temperature=0.0), batch_size=2, progress=False)
    assert result["n"] == 2 and result["skipped_too_long"] == 1 and result["score"] == 1.0


def test_eval_tiny_config_runs_on_the_tiny_model(tmp_path, capsys):
    """eval_tiny as written (its model is the shipped toy model), cut to two offline tasks."""
    out = tmp_path / "ev"
    assert cli.main(["eval", "--config", "eval_tiny", f"out_dir={out}", "ruler.lengths=[2048]",
                     "ruler.tasks=[niah_single_1, vt]", "ruler.num_samples=1", "ruler.depth_sweep=false",
                     "progress=false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {t["task"] for t in summary["tasks"]} == {"niah_single_1", "vt"}


@pytest.mark.slow
def test_eval_tiny_config_whole(tmp_path):
    out = tmp_path / "ev"
    assert cli.main(["eval", "--config", "eval_tiny", f"out_dir={out}", "ruler.num_samples=1",
                     "ruler.depth_samples=1", "progress=false"]) == 0
    assert (out / "summary.md").is_file()


# ------------------------------------------------------------------------------------- disk full


def test_disk_full_during_an_atomic_write_is_one_line_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "stats.json"
    target.write_text("old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match=rf"{target}: no space left on device .*rerun the same command"):
        atomic_write_text(target, "new\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"] and target.read_text() == "old\n"


@pytest.fixture()
def small_disk(tmp_path):
    """A 16 MiB tmpfs (root with mount), else skipped: test_checkpoint_write_failure_* patches the writer."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", str(disk)])


@pytest.mark.slow  # four tiny training runs (about a minute on 2 CPU cores)
def test_disk_full_at_a_checkpoint_is_one_line_keeps_the_last_one_and_resumes_once_space_is_back(
        small_disk, tmp_path, monkeypatch, capsys):
    """Step 1's checkpoint fits; then the disk is filled. Step 2's save is refused by the free-space
    check, and (with the check disabled) fails mid-write; both leave no temporary and checkpoint-1 as
    it was. With the space back the same command resumes from checkpoint-1 and ends as an
    uninterrupted run does."""
    import shutil

    from longpo.train import checkpoint, trainer

    args = ["model=tiny", "tiny_records=6", "pairs_per_micro_batch=2", "gradient_accumulation_steps=1",
            "max_steps=3", "save_steps=1", "keep_checkpoints=3", "optimizer=adamw", "learning_rate=1e-3",
            "warmup_ratio=0", "max_length=4096", "seed=3", "progress_bar=false"]
    reset_accelerate()
    assert cli.main(["train", f"output_dir={tmp_path / 'ref'}", *args]) == 0
    out, filler = small_disk / "run", small_disk / "filler"
    real_save, saved = trainer.save_checkpoint, {}

    def save_then_fill(accelerator, output_dir, state, keep):
        path = real_save(accelerator, output_dir, state, keep)
        if state["step"] == 1:
            saved.update(tree(path))
            filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - (300 << 10)))
        return path

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_fill)
    reset_accelerate()
    assert cli.main(["train", f"output_dir={out}", *args]) == 2
    line = one_line(capsys, "train")
    assert f"{out}: checkpoint-2 needs about" in line and "MiB free" in line, line

    def clean():
        assert not [p for p in out.rglob("*") if p.name.startswith(".tmp")], "stale temporaries"
        assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0000001"]
        assert tree(out / "checkpoint-0000001") == saved

    clean()
    monkeypatch.setattr(checkpoint, "checkpoint_bytes", lambda accelerator, output_dir: 0)
    reset_accelerate()
    assert cli.main(["train", f"output_dir={out}", *args]) == 2
    line = one_line(capsys, "train")
    assert "writing checkpoint-2 failed" in line and "the last complete checkpoint is intact" in line, line
    clean()
    filler.unlink()
    monkeypatch.undo()
    reset_accelerate()
    assert cli.main(["train", f"output_dir={out}", *args]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref], rel=1e-5)


def test_checkpoint_write_failure_from_a_patched_writer_leaves_no_temporary(tmp_path):
    """Without a tmpfs: `save_state` writes part of a file, then raises ENOSPC."""
    from longpo.train.checkpoint import save_checkpoint

    class Accelerator:
        is_main_process, num_processes, _models, _optimizers = True, 1, [], []

        def wait_for_everyone(self):
            pass

        def save_state(self, path):
            (Path(path) / "model.safetensors").write_bytes(b"\0" * 10)
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match="writing checkpoint-3 failed .*No space left"):
        save_checkpoint(Accelerator(), tmp_path, {"step": 3}, keep=2)
    assert list(tmp_path.iterdir()) == []

"""The trainer on tiny models built here: exact accumulation, exact resume, export, bad input.

Every run uses the built-in tiny Llama (`model: tiny` builds it and its records in output_dir) or
the original model such a run saved; nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from longpo.data.records import RecordError
from longpo.train.trainer import Config, Trainer, TrainingError

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(progress_bar=False, seed=3, optimizer="adamw", learning_rate=1e-3, warmup_ratio=0.0, beta=0.1,
            lam=0.1, max_length=4096)


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run(**kw):
    """One in-process training run from a fresh accelerate state; returns (trainer, result)."""
    reset_accelerate()
    trainer = Trainer(Config(**(FAST | kw)))
    return trainer, trainer.train()


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A short tiny run: its original model and records are reused by the other tests."""
    out = tmp_path_factory.mktemp("base")
    trainer, result = run(output_dir=str(out), tiny_records=8, pairs_per_micro_batch=2, gradient_accumulation_steps=2,
                          rope_theta=1e5, save_steps=1, keep_checkpoints=2)
    return out, result


def test_tiny_run_exports_a_loadable_model_with_the_new_rope_theta(base, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result = base
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss", "nll", "pref_loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy",
                "rewards/margin", "lr", "grad_norm", "tokens_per_s", "pairs_per_s"):
        assert math.isfinite(rows[-1][key]), f"{key} = {rows[-1][key]}"
    # Step 1: the reference is the ORIGINAL model on the short prompt, the policy the same weights on
    # the long prompt with another RoPE base, so the rewards are not zero, and the loss obeys
    # loss = nll + lam * pref_loss.
    assert rows[0]["loss"] == pytest.approx(rows[0]["nll"] + 0.1 * rows[0]["pref_loss"], rel=1e-6)
    assert (out / "resolved_config.yaml").is_file()
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-0000001", "checkpoint-0000002"]

    model = AutoModelForCausalLM.from_pretrained(result["export_dir"], use_safetensors=True)
    assert model.config.rope_parameters["rope_theta"] == 1e5
    original = AutoModelForCausalLM.from_pretrained(out / "original_model", use_safetensors=True)
    assert original.config.rope_parameters["rope_theta"] == 1e4
    assert not torch.equal(model.lm_head.weight, original.lm_head.weight), "training changed nothing"
    tok = AutoTokenizer.from_pretrained(result["export_dir"])
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the secret number?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 5 or generated[0, -1] == tok.eos_token_id


def test_batch_4x1_equals_batch_1x4_accumulation(base, tmp_path):
    """One SGD step: packing 4 pairs in one micro-batch or 1 pair in each of 4 accumulated
    micro-batches gives the same loss and the same updated weights (float64), because every
    micro-batch loss is divided by the GLOBAL counts of the step:

        L = sum_mb [ nll_sum_mb / N_tokens + lam * pref_sum_mb / N_pairs ]
    """
    src, _ = base
    common = dict(model=str(src / "original_model"), train_file=str(src / "tiny_records.jsonl"), dtype="float64",
                  optimizer="sgd", learning_rate=0.5, max_steps=1, max_grad_norm=0.0, rope_theta=1e5,
                  tiny_records=8)
    _, a = run(output_dir=str(tmp_path / "a"), pairs_per_micro_batch=4, gradient_accumulation_steps=1, **common)
    _, b = run(output_dir=str(tmp_path / "b"), pairs_per_micro_batch=1, gradient_accumulation_steps=4, **common)
    ma, mb = metrics(tmp_path / "a")[0], metrics(tmp_path / "b")[0]
    assert ma["pairs"] == mb["pairs"] == 4
    for key in ("loss", "nll", "pref_loss", "rewards/margin", "grad_norm"):
        assert ma[key] == pytest.approx(mb[key], rel=1e-10, abs=1e-12), key
    from safetensors.torch import load_file

    wa, wb = load_file(Path(a["export_dir"]) / "model.safetensors"), load_file(Path(b["export_dir"]) / "model.safetensors")
    w0 = load_file(src / "original_model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    moved = 0
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-10, atol=1e-12, msg=name)
        moved += not torch.equal(wa[name], w0[name].double())
    assert moved == len(wa), "every tensor gets a gradient"


@pytest.mark.slow
def test_two_data_parallel_ranks_equal_one_process(base, records, tmp_path):
    """2 gloo ranks x 2 micro-batches equal 1 process x 4 micro-batches (float64, SGD): the pair and
    token counts are summed over ranks and the DDP gradient average is undone. 7 records: the last
    step has 3 pairs, so one rank tops its share up with a weight-0 filler micro-batch."""
    from safetensors.torch import load_file

    src, _ = base
    path = write_jsonl(tmp_path / "seven.jsonl", records[:7])
    common = dict(model=str(src / "original_model"), train_file=str(path), dtype="float64", optimizer="sgd",
                  learning_rate=0.5, pairs_per_micro_batch=1, max_grad_norm=0.0)
    run(output_dir=str(tmp_path / "one"), gradient_accumulation_steps=4, **common)
    args = [f"{k}={v}" for k, v in (FAST | common).items()] + [f"output_dir={tmp_path / 'two'}",
                                                               "gradient_accumulation_steps=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "longpo.cli", "train", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["pairs"] for r in one] == [r["pairs"] for r in two] == [4, 3]
    for a, b in zip(one, two):
        for key in ("loss", "nll", "pref_loss", "rewards/margin", "grad_norm", "tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-10, abs=1e-12), (a["step"], key)
    wa, wb = load_file(tmp_path / "one" / "final" / "model.safetensors"), load_file(tmp_path / "two" / "final" / "model.safetensors")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.slow
def test_kill_and_resume_reproduces_an_uninterrupted_run(base, tmp_path):
    """Kill a real training process (SIGKILL) once it has checkpointed step 5 or later, resume:
    metrics.jsonl equals a run that was never interrupted (losses, rewards, lr, grad norms).
    A checkpoint every step keeps the window in which the kill lands wide on a fast machine."""
    from longpo.train.checkpoint import checkpoint_dirs

    src, _ = base
    common = dict(model=str(src / "original_model"), train_file=str(src / "tiny_records.jsonl"), rope_theta=1e5,
                  pairs_per_micro_batch=1, gradient_accumulation_steps=1, max_steps=20, num_epochs=3,
                  warmup_ratio=0.1)
    _, whole = run(output_dir=str(tmp_path / "whole"), **common)

    out = tmp_path / "killed"
    args = [f"{k}={v}" for k, v in (FAST | common).items()] + [f"output_dir={out}", "save_steps=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "longpo.cli", "train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not any(int(p.name.split("-")[1]) >= 5 for p in checkpoint_dirs(out)):
        assert proc.poll() is None, f"training exited before the kill:\n{proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "no step-5 checkpoint within 240 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed_at = max(r["step"] for r in metrics(out))
    assert killed_at < 20, "the process finished before it was killed"

    trainer, resumed = run(output_dir=str(out), save_steps=1, **common)
    assert resumed["steps"] == 20
    a, b = metrics(tmp_path / "whole"), metrics(out)
    assert [r["step"] for r in b] == list(range(1, 21)), "metrics.jsonl must hold each step once"
    for ra, rb in zip(a, b):
        for key in ("loss", "nll", "pref_loss", "rewards/margin", "lr", "grad_norm"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), (ra["step"], key)


def test_dpo_first_step_preference_loss_is_ln2_and_sft_has_no_preference_term_and_logs_to_tensorboard(base, tmp_path):
    """dpo: the reference is the initial policy on the same long prompt, so at step 1 every pair
    has margin 0 and -log sigmoid(0) = ln 2. sft: loss = nll."""
    src, _ = base
    common = dict(model=str(src / "original_model"), train_file=str(src / "tiny_records.jsonl"), max_steps=1,
                  pairs_per_micro_batch=2, gradient_accumulation_steps=1)
    run(output_dir=str(tmp_path / "dpo"), loss="dpo", **common)
    row = metrics(tmp_path / "dpo")[0]
    assert row["pref_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert row["rewards/margin"] == pytest.approx(0.0, abs=1e-6)
    run(output_dir=str(tmp_path / "sft"), loss="sft", report_to=["tensorboard"], **common)
    row = metrics(tmp_path / "sft")[0]
    assert "pref_loss" not in row and row["loss"] == pytest.approx(row["nll"], rel=1e-6)
    assert list((tmp_path / "sft" / "logs").rglob("events.out.tfevents.*")), "report_to=[tensorboard] wrote nothing"


# ------------------------------------------------------------------------------------- bad input


def snapshot(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("checkpoint-*/**/*")) if p.is_file()}


@pytest.fixture()
def records(base):
    src, _ = base
    return [json.loads(line) for line in (src / "tiny_records.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("damage, message", [
    (lambda r: r["turns"][0].pop("chosen"), r"id='tiny-0003'.*turns\[0\]\.chosen' is missing"),
    (lambda r: r["turns"][0].update(rejected="   "), r"id='tiny-0003'.*turns\[0\]\.rejected' is empty"),
    (lambda r: r["turns"][0].pop("ref_chosen_logp"), r"id='tiny-0003'.*ref_chosen_logp' is missing.*longpo reference"),
])
def test_bad_record_names_the_record_and_leaves_checkpoints_alone(base, records, tmp_path, damage, message):
    """The base run's own command, resumed after its records file was damaged (the run's fingerprint
    refuses any other settings in that folder: tests/test_fingerprint.py)."""
    src, _ = base
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    before = snapshot(copy)
    damage(records[3])
    write_jsonl(copy / "tiny_records.jsonl", records)
    with pytest.raises(RecordError, match=message):
        run(output_dir=str(copy), tiny_records=8, pairs_per_micro_batch=2, gradient_accumulation_steps=2,
            rope_theta=1e5, save_steps=1, keep_checkpoints=2)
    assert snapshot(copy) == before


def test_overlong_pairs_are_skipped_and_counted_or_refused(base, records, tmp_path, caplog):
    src, _ = base
    records[5]["document"] = " ".join([records[5]["document"]] * 6)
    path = write_jsonl(tmp_path / "long.jsonl", records)
    common = dict(model=str(src / "original_model"), train_file=str(path), max_length=1200,
                  pairs_per_micro_batch=2, gradient_accumulation_steps=2)
    with caplog.at_level("WARNING", logger="longpo.train"):
        _, result = run(output_dir=str(tmp_path / "skip"), **common)
    assert result["skipped_overlong"] == 1
    assert sum(r["skipped_overlong"] for r in metrics(tmp_path / "skip")) == 1
    assert sum(r["pairs"] for r in metrics(tmp_path / "skip")) == 7
    assert "skipped record 'tiny-0005'" in caplog.text
    with pytest.raises(RecordError, match=r"record 'tiny-0005': \d+ tokens .* exceeds max_length=1200"):
        run(output_dir=str(tmp_path / "refuse"), skip_overlong=False, **common)


def test_a_step_whose_pairs_are_all_overlong_is_logged_skipped_not_as_loss_zero(base, records, tmp_path):
    """One pair per step: the step of the long record trains nothing. Its metrics row says so
    (`skipped: true`, no loss), and the training plot leaves a gap there instead of a loss of 0."""
    from longpo.train.data import epoch_order
    from longpo.train.plots import metric_values, plot_training

    src, _ = base
    victim = epoch_order(len(records), FAST["seed"], 0)[2]  # step 3 of epoch 0 at one pair per step
    records[victim]["document"] = " ".join([records[victim]["document"]] * 6)
    path = write_jsonl(tmp_path / "long.jsonl", records)
    out = tmp_path / "run"
    _, result = run(output_dir=str(out), model=str(src / "original_model"), train_file=str(path), max_length=1200,
                    pairs_per_micro_batch=1, gradient_accumulation_steps=1, max_steps=4)
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["skipped"] is True and rows[2]["skipped_overlong"] == 1
    assert not {"loss", "nll", "pref_loss", "pairs"} & set(rows[2]), rows[2]
    assert all("skipped" not in r and math.isfinite(r["loss"]) for r in rows[:2] + rows[3:])
    values = metric_values(rows, "loss")
    assert math.isnan(values[2]) and values[:2] + values[3:] == [r["loss"] for r in rows[:2] + rows[3:]]
    assert plot_training(out) is not None and result["skipped_overlong"] == 1


def test_no_pair_within_max_length_fails_at_start_up_before_anything_is_trained(base, tmp_path):
    """`longpo train --config tiny max_length=16`: every pair is longer, so the run would export the
    start model unchanged. It stops (InputError: exit 2) before a model loads, on one line that says
    what max_length the pairs need."""
    from longpo.errors import InputError

    src, _ = base
    out = tmp_path / "none"
    with pytest.raises(InputError, match=r"^no pair fits max_length=16: 8 record\(s\), pair lengths (\d+)\.\.(\d+) "
                                         r"tokens .*; max_length >= \1 trains the shortest, >= \2 all of them$"):
        run(output_dir=str(out), model=str(src / "original_model"), train_file=str(src / "tiny_records.jsonl"),
            max_length=16)
    assert not list(out.glob("checkpoint-*")) and not (out / "final").exists() and not (out / "metrics.jsonl").exists()


def test_no_pair_within_max_length_beyond_the_start_up_scan_fails_before_the_export(base, tmp_path, monkeypatch):
    """When the start-up scan cannot read every record, the same check runs before the export."""
    from longpo.errors import InputError
    from longpo.train import trainer

    monkeypatch.setattr(trainer, "STARTUP_SCAN", 2)
    src, _ = base
    out = tmp_path / "late"
    with pytest.raises(InputError, match=r"^no pair fits max_length=16: 8 record\(s\), pair lengths \d+\.\.\d+ "):
        run(output_dir=str(out), model=str(src / "original_model"), train_file=str(src / "tiny_records.jsonl"),
            max_length=16, pairs_per_micro_batch=2, gradient_accumulation_steps=2)
    assert all(r.get("skipped") for r in metrics(out)) and not (out / "final").exists()


def test_non_finite_loss_stops_before_the_update_and_keeps_the_last_checkpoint(base, records, tmp_path):
    """A reference log-prob of -1e300 is finite in the record but -inf in float32: the step's loss
    is inf. Training stops naming the step and the record; the checkpoints before it stay loadable."""
    from longpo.train.data import epoch_order

    src, _ = base
    victim = epoch_order(len(records), FAST["seed"], 0)[5]  # 6th record of epoch 0: step 3 at 2 pairs per step
    records[victim]["turns"][0]["ref_chosen_logp"] = 1e300
    path = write_jsonl(tmp_path / "nan.jsonl", records)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=rf"non-finite loss .* at step 3.*'{records[victim]['id']}'"):
        run(output_dir=str(out), model=str(src / "original_model"), train_file=str(path),
            pairs_per_micro_batch=1, gradient_accumulation_steps=2, save_steps=1, keep_checkpoints=5)
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-0000001", "checkpoint-0000002"]
    assert not list(out.glob(".tmp-checkpoint-*"))
    assert [r["step"] for r in metrics(out)] == [1, 2]


def test_resume_ignores_a_checkpoint_cut_mid_save(base, tmp_path):
    from longpo.train.checkpoint import resolve_resume

    src, _ = base
    (src / ".tmp-checkpoint-0000003").mkdir()  # a save that crashed before its rename
    (src / "checkpoint-0000009").mkdir()  # a folder without trainer_state.json is not a checkpoint
    try:
        assert resolve_resume("auto", src).name == "checkpoint-0000002"
    finally:
        (src / ".tmp-checkpoint-0000003").rmdir()
        (src / "checkpoint-0000009").rmdir()


def test_bf16_mixed_precision_with_float32_master_weights(base, tmp_path):
    """The recipes' GPU setting (float32 weights, bf16 autocast) on CPU autocast: one step, finite loss."""
    src, _ = base
    _, result = run(output_dir=str(tmp_path / "bf16"), model=str(src / "original_model"),
                    train_file=str(src / "tiny_records.jsonl"), max_steps=1, mixed_precision="bf16",
                    gradient_checkpointing=True)
    assert math.isfinite(result["last"]["loss"])

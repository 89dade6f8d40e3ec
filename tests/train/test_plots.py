"""training.png from metrics.jsonl (`longpo plot RUN_DIR`), and the demo's accuracy figure."""

import json
import math

import pytest

from longpo import cli
from longpo.demo.run import plot_accuracy
from longpo.errors import InputError
from longpo.train.plots import PANELS, plot_training, read_metrics

pytest.importorskip("matplotlib")


def write_metrics(path, steps, preference=True):
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "loss": 2.0 - 0.1 * s, "nll": 1.5 - 0.1 * s}
        if preference:
            row |= {"pref_loss": math.log(2) - 0.01 * s, "rewards/chosen": 0.02 * s, "rewards/rejected": -0.01 * s,
                    "rewards/accuracy": min(1.0, 0.5 + 0.1 * s), "rewards/margin": 0.03 * s}
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_plot_redraws_a_live_run_and_keeps_the_last_row_of_a_resumed_step(tmp_path, capsys):
    rows = write_metrics(tmp_path / "metrics.jsonl", 6)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({**rows[-1], "loss": 0.5}) + "\n")  # step 6 again, after a resume
        f.write('{"step": 7, "loss": 1.')  # a line still being written by the live run
    got = read_metrics(tmp_path)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6] and got[-1]["loss"] == 0.5
    assert cli.main(["plot", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "training.png")
    assert (tmp_path / "training.png").stat().st_size > 10_000
    assert {m for _, series, _ in PANELS for m, _ in series} <= set(rows[0])


def test_an_sft_run_draws_the_loss_alone_and_a_missing_run_says_what_to_give(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", 3, preference=False)
    assert plot_training(tmp_path, tmp_path / "x" / "sft.png") == tmp_path / "x" / "sft.png"
    with pytest.raises(InputError, match="metrics.jsonl does not exist: give the output_dir"):
        plot_training(tmp_path / "nowhere")
    assert cli.main(["plot", str(tmp_path / "nowhere")]) == 2


def test_demo_figure_has_its_short_document_panel(tmp_path):
    table = [{"model": m, "accuracy": {"256": a, "512": a / 2, "short": 99.0}} for m, a in
             [("base", 60.0), ("DPO", 90.0), ("LongPO", 90.0)]]
    path = plot_accuracy(table, tmp_path / "accuracy.png")
    assert path.stat().st_size > 10_000

"""benchmarks/loss_ablation.py: the table from the cells, resume, and the refusal of other settings.

The full ablation (6 modes x 3 seeds, about 20 minutes on 2 cores) is a benchmark, not a test; the
end-to-end test here runs 2 modes x 1 seed on a few documents and questions (slow: about a minute).
"""

import importlib.util
import json
from pathlib import Path

import pytest

from longpo.config import build_config
from longpo.fingerprint import FingerprintMismatch
from longpo.train.losses import MODES

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("loss_ablation", ROOT / "benchmarks" / "loss_ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)

KEYS = {"beta": 0.1, "lam": 1.0, "nll_weight": 1.0, "nll_mode": "responses", "margin": 0.0}
TINY = ["documents=2", "eval.toy.lengths=[64]", "eval.toy.num_samples=4", "train.num_epochs=1"]


def cell(mode: str, seed: int, a256: float, a512: float, short: float) -> dict:
    return {"mode": mode, "seed": seed, "accuracy": {"256": a256, "512": a512, "short": short},
            "reference": MODES[mode].reference, "loss_keys": KEYS}


def test_table_holds_mean_and_sample_std_over_seeds():
    """Per mode and column: mean = sum(x) / n, sample std = sqrt(sum((x - mean)^2) / (n - 1)).
    dpo at 256 tokens: 90, 96, 93 -> mean 93, std sqrt((9 + 9 + 0) / 2) = 3; short: 100, 99, 100 -> mean
    299 / 3, std sqrt((1/9 + 4/9 + 1/9) / 2) = sqrt(1/3); one seed: no std."""
    results = [cell("dpo", 2, 93.0, 50.0, 100.0), cell("dpo", 0, 90.0, 40.0, 100.0), cell("dpo", 1, 96.0, 45.0, 99.0),
               cell("sft", 0, 80.0, 30.0, 98.0)]
    rows = ablation.summarise(results, ["sft", "dpo", "orpo"])
    assert [r["mode"] for r in rows] == ["sft", "dpo"]  # the order asked; a mode without cells left out
    dpo = rows[1]
    assert dpo["seeds"] == [0, 1, 2] and dpo["values"]["256"] == [90.0, 96.0, 93.0]
    assert dpo["mean"] == pytest.approx({"256": 93.0, "512": 45.0, "short": 299.0 / 3})
    assert dpo["std"] == pytest.approx({"256": 3.0, "512": 5.0, "short": (1 / 3) ** 0.5})
    assert rows[0]["std"] == {"256": None, "512": None, "short": None}
    text = ablation.markdown(rows)
    assert "| dpo | long prompt, a frozen copy of the initial policy | beta 0.1, lam 1, NLL responses x1 | " \
           "93.0 ± 3.0 | 45.0 ± 5.0 | 99.7 ± 0.6 |" in text
    assert "| sft | none | NLL responses x1 | 80.0 | 30.0 | 98.0 |" in text
    assert text.splitlines()[0] == "| mode | reference | loss keys | 256 tokens | 512 tokens | short docs |"


def test_finished_cells_are_read_not_run_again(tmp_path):
    """A cell's result is written once, atomically, when it is finished; a rerun runs only the cells
    without one (an unfinished cell has none), and adding a seed adds its cells."""
    ran = []

    def run_cell(mode, seed):
        ran.append((mode, seed))
        return cell(mode, seed, 10.0 * seed, 0.0, 100.0)

    first = ablation.run_cells(tmp_path, [("sft", 0), ("dpo", 0)], run_cell)
    assert ran == [("sft", 0), ("dpo", 0)]
    ablation.cell_result(tmp_path, "dpo", 0).unlink()  # as if the run stopped inside that cell
    again = ablation.run_cells(tmp_path, [("sft", 0), ("dpo", 0), ("sft", 1)], run_cell)
    assert ran == [("sft", 0), ("dpo", 0), ("dpo", 0), ("sft", 1)]
    assert again[:2] == first and again[2]["accuracy"]["256"] == 10.0
    assert json.loads(ablation.cell_result(tmp_path, "sft", 1).read_text()) == again[2]
    assert not list(tmp_path.rglob("*.tmp*"))


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    base = str(ablation.ROOT / "longpo" / "demo" / "base_model")
    ablation.check_rerun(ablation.demo_config(tmp_path, TINY), tmp_path, base)
    # The same keys, and keys that change no result (threads, progress bars), resume.
    ablation.check_rerun(ablation.demo_config(tmp_path, TINY), tmp_path, base)
    ablation.check_rerun(ablation.demo_config(tmp_path, [*TINY, "threads=1", "generate.progress=false"]), tmp_path, base)
    with pytest.raises(FingerprintMismatch, match=r"documents: 2 -> 3.*overwrite=true"):
        ablation.check_rerun(ablation.demo_config(tmp_path, [*TINY, "documents=3"]), tmp_path, base)
    with pytest.raises(FingerprintMismatch, match=r"train.num_epochs: 1 -> 2"):
        ablation.check_rerun(ablation.demo_config(tmp_path, [*TINY[:3], "train.num_epochs=2"]), tmp_path, base)
    # overwrite=true removes the ablation's outputs (and nothing else) and starts over with the new keys.
    (tmp_path / "cells" / "sft").mkdir(parents=True)
    (tmp_path / "table.md").write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    ablation.check_rerun(ablation.demo_config(tmp_path, [*TINY, "documents=3", "overwrite=true"]), tmp_path, base)
    assert not (tmp_path / "cells").exists() and not (tmp_path / "table.md").exists()
    assert (tmp_path / "notes.txt").exists()
    ablation.check_rerun(ablation.demo_config(tmp_path, [*TINY, "documents=3"]), tmp_path, base)


def test_a_cell_made_with_other_train_keys_is_refused(tmp_path):
    from longpo.demo.run import baseline_configs
    from longpo.train import trainer

    first = ablation.demo_config(tmp_path, TINY)
    train = {**first.train, "rope_theta": 40000.0, "max_length": 576}

    def configs(seed, lr=1e-3):
        return baseline_configs({**ablation.train_keys(train, "dpo", seed), "learning_rate": lr}, first.eval,
                                "base", tmp_path / "pairs.jsonl", tmp_path / "cell", "dpo")

    ablation.check_cell(tmp_path / "cell", *configs(0))
    ablation.check_cell(tmp_path / "cell", *configs(0))
    with pytest.raises(FingerprintMismatch, match=r"train.seed: 0 -> 1"):
        ablation.check_cell(tmp_path / "cell", *configs(1))
    with pytest.raises(FingerprintMismatch, match=r"train.learning_rate"):
        ablation.check_cell(tmp_path / "cell", *configs(0, lr=2e-3))
    assert isinstance(configs(0)[0], trainer.Config)


def test_the_demo_modes_keep_the_demo_loss_keys_and_the_others_their_own():
    from longpo.demo.config import TRAIN_KEYS
    from longpo.train.config import Config as TrainConfig

    first = {**TRAIN_KEYS, "rope_theta": 40000.0, "max_length": 576, "seed": 0}
    for mode in MODES:
        cfg = build_config(TrainConfig, {**ablation.train_keys(first, mode, 7), "model": "m", "train_file": "t.jsonl"})
        assert cfg.loss == mode and cfg.seed == 7 and cfg.learning_rate == TRAIN_KEYS["learning_rate"]
        expected = {**MODES[mode].defaults.__dict__}
        if mode in ("longpo", "dpo", "sft"):
            expected.update({k: TRAIN_KEYS[k] for k in ("beta", "lam", "nll_mode")})
        assert {k: getattr(cfg, k) for k in ablation.LOSS_KEYS} == expected, mode


def test_docs_block_and_plot_are_written_from_the_run(tmp_path):
    rows = ablation.summarise([cell("dpo", 0, 90.0, 40.0, 100.0), cell("dpo", 1, 96.0, 45.0, 99.0)], ["dpo"])
    (tmp_path / "table.md").write_text("measured here\n\n" + ablation.markdown(rows))
    ablation.plot(rows, tmp_path / "loss_ablation.png")
    page = tmp_path / "page.md"
    start, end = ablation.MARKERS
    page.write_text(f"# B\n\nbefore\n{start}\nold\n{end}\nafter\n")
    ablation.write_docs(tmp_path, tmp_path / "docs.png", page)
    assert (tmp_path / "docs.png").read_bytes() == (tmp_path / "loss_ablation.png").read_bytes()
    assert page.read_text() == f"# B\n\nbefore\n{start}\n{(tmp_path / 'table.md').read_text()}{end}\nafter\n"


@pytest.mark.slow
def test_two_modes_one_seed_end_to_end(tmp_path):
    out = tmp_path / "la"
    assert ablation.main(["--out", str(out), "--modes", "sft", "simpo", "--seeds", "0", "--", *TINY]) == 0
    table = json.loads((out / "table.json").read_text())
    assert [r["mode"] for r in table["rows"]] == ["sft", "simpo"]
    for r in table["cells"]:  # each cell's accuracy is its own evaluation's
        summary = json.loads((out / "cells" / r["mode"] / "seed0" / "eval" / "summary.json").read_text())
        assert r["accuracy"] == summary["toy"] and set(r["accuracy"]) == {"short", "64"}
    assert table["rows"][1]["loss_keys"]["beta"] == MODES["simpo"].defaults.beta
    assert (out / "loss_ablation.png").stat().st_size > 0 and "| simpo |" in (out / "table.md").read_text()
    stamps = {p: p.read_text() for p in out.rglob("seed0.json")}
    assert ablation.main(["--out", str(out), "--modes", "sft", "simpo", "--seeds", "0", "--", *TINY]) == 0
    assert {p: p.read_text() for p in out.rglob("seed0.json")} == stamps

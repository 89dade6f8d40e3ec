"""A task suite defined here alone, registered in `TASK_SUITES` for one test, configured under `suites.echo`
and run by `longpo eval` (the stage, on the tiny local checkpoint): its tasks, its input and length checks,
its summary section, its table, its csv rows and its compare lines come only from the suite object."""

import json

import pytest

from longpo.cli import main as cli_main
from longpo.eval.tables import fmt, md_table, mean
from longpo.eval.tasks import TASK_SUITES
from longpo.eval.tasks.base import Skipped, TaskSuite

pytestmark = pytest.mark.slow  # builds the tiny checkpoint and loads it through the stage


class EchoTask:
    """Example i asks for word i of the data file; the score is 100 for even i (whatever the random model says),
    so the suite's accuracy is the share of even indices."""

    max_new_tokens = 2

    def __init__(self, words: list[str], fmt, n: int):
        self.words, self.fmt, self.n = words, fmt, n
        self.name = f"echo/first_{n}"
        self.metadata = {"suite": "echo", "n_asked": n}

    def num_examples(self) -> int:
        return self.n

    def get_example(self, i: int) -> dict:
        return {"id": i, "prompt": self.fmt.render(f"Repeat the word: {self.words[i]}")}

    def score(self, example: dict, prediction: str) -> float:
        assert isinstance(prediction, str)
        return 100.0 if example["id"] % 2 == 0 else 0.0


class EchoSuite(TaskSuite):
    def inputs(self, section):
        return {"suites.echo.data": section.get("data")}

    def lengths(self, section):
        return {f"suites.echo.length={section['length']}": section["length"]} if "length" in section else {}

    def build(self, section, fmt):
        words = open(section["data"]).read().split()
        return [EchoTask(words, fmt, n) for n in section["sizes"]] + [Skipped("echo/first_99", "only 5 words")]

    def summarise(self, results, ran):
        return {"echo": {r["n_asked"]: r["score"] for r in results} | {"avg": mean([r["score"] for r in results])}} \
            if results else {}

    def markdown(self, summary):
        if "echo" not in summary:
            return []
        row = summary["echo"]
        return ["## Echo", md_table([str(k) for k in row], [[fmt(v) for v in row.values()]])]

    def csv_rows(self, summary):
        return [["echo-avg", "all", "", "", "mean", fmt(summary["echo"]["avg"]), ""]] if "echo" in summary else []

    def headline(self, summary):
        return {f"Echo {k}": v for k, v in summary.get("echo", {}).items()}


@pytest.fixture
def echo(monkeypatch):
    monkeypatch.setitem(TASK_SUITES, "echo", EchoSuite())  # removed again after the test


def _args(checkpoint, out, data, *extra):
    return [f"model={checkpoint}", f"out_dir={out}", "progress=false", "batch_size=2", "ruler.enabled=false",
            "infinitebench.enabled=false", "suites.echo.enabled=true", f"suites.echo.data={data}",
            "suites.echo.sizes=[2,3]", *extra]


def test_a_suite_from_a_test_runs_through_the_stage(echo, tmp_path, checkpoint, capsys):
    data = tmp_path / "words.txt"
    data.write_text("alpha beta gamma delta epsilon\n")
    out = tmp_path / "run"
    assert cli_main(["eval", *_args(checkpoint, out, data)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # first_2: ids 0, 1 -> 50; first_3: ids 0, 1, 2 -> 66.7; their mean 58.3
    assert summary["echo"] == {"2": 50.0, "3": pytest.approx(200 / 3), "avg": pytest.approx(175 / 3)}
    assert [(r["suite"], r["task"], r["n"]) for r in summary["tasks"]] == [("echo", "echo/first_2", 2),
                                                                           ("echo", "echo/first_3", 3)]
    assert summary["skipped"] == [{"task": "echo/first_99", "reason": "only 5 words"}]
    assert sorted(p.name for p in (out / "predictions" / "echo").iterdir()) == ["first_2.jsonl", "first_3.jsonl"]
    md = (out / "summary.md").read_text()
    assert "## Echo\n\n| 2 | 3 | avg |\n|---|---|---|\n| 50.0 | 66.7 | 58.3 |" in md
    assert "- echo/first_99: only 5 words" in md.split("## Skipped")[1]
    assert "echo-avg,all,,,mean,58.3," in (out / "summary.csv").read_text()
    capsys.readouterr()
    assert cli_main(["eval", "compare", str(out), str(out)]) == 0
    assert "Echo avg" in capsys.readouterr().out

    # its input is part of the run's fingerprint: changed words refuse a resume into the same folder
    data.write_text("one two three four five\n")
    assert cli_main(["eval", *_args(checkpoint, out, data)]) == 2
    assert "inputs.suites.echo.data (its files changed)" in capsys.readouterr().err


def test_the_stage_checks_a_suites_inputs_and_lengths(echo, tmp_path, checkpoint, capsys):
    assert cli_main(["eval", *_args(checkpoint, tmp_path / "a", tmp_path / "absent.txt")]) == 2
    assert f"suites.echo.data={tmp_path / 'absent.txt'}: no such file or folder" in capsys.readouterr().err
    (tmp_path / "w.txt").write_text("a b c")
    assert cli_main(["eval", *_args(checkpoint, tmp_path / "b", tmp_path / "w.txt", "suites.echo.length=8192")]) == 2
    assert "suites.echo.length=8192: the model at" in capsys.readouterr().err


def test_settings_for_an_unregistered_suite_are_refused(tmp_path, checkpoint, capsys):
    assert "echo" not in TASK_SUITES
    assert cli_main(["eval", f"model={checkpoint}", f"out_dir={tmp_path}", "suites.echo.enabled=true"]) == 2
    assert "suites.echo: no task suite 'echo' is registered here" in capsys.readouterr().err
    assert cli_main(["eval", f"model={checkpoint}", f"out_dir={tmp_path}", "suites.ruler.enabled=true"]) == 2
    assert "'ruler' has a section of its own; set ruler.* instead" in capsys.readouterr().err

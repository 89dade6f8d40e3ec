"""Short-context path: lm-evaluation-harness's HF model on a tiny local checkpoint and a tiny local task."""

import json

import pytest

TASK_YAML = """\
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
fewshot_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def tiny_task(tmp_path):
    """A folder holding the tiny multiple-choice task's YAML, its data beside it."""
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    data = tmp_path / "tiny_mc.jsonl"
    rows = [{"question": f"What colour is thing {i}?", "choices": ["red", "blue", "green"], "label": i % 3}
            for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks_dir / "tiny_mc.yaml").write_text(TASK_YAML.format(data=data))
    return tasks_dir


@pytest.mark.slow
def test_short_tasks_through_lm_eval(tmp_path, checkpoint):
    pytest.importorskip("lm_eval")
    from longpo.eval.lm_eval import run_short_tasks

    tasks_dir = tiny_task(tmp_path)

    scores = run_short_tasks(str(checkpoint), {"tiny_mc": 1}, tmp_path / "out", include_path=str(tasks_dir),
                             batch_size=2, dtype="float32", device="cpu")
    assert set(scores) == {"tiny_mc"} and 0.0 <= scores["tiny_mc"] <= 100.0
    saved = json.loads((tmp_path / "out" / "short" / "tiny_mc.json").read_text())
    assert saved["metric"] == "acc" and saved["num_fewshot"] == 1 and saved["score"] == scores["tiny_mc"]
    # a finished task is read back, not rerun
    assert run_short_tasks(str(checkpoint), {"tiny_mc": 1}, tmp_path / "out", include_path=str(tasks_dir)) == scores


@pytest.mark.slow
def test_longpo_eval_runs_short_tasks_with_no_device_given(tmp_path, checkpoint):
    """The stage's own path, device unset: lm-eval's default ("cuda") must not reach a CPU-only torch."""
    pytest.importorskip("lm_eval")
    from longpo.cli import main as cli_main

    out = tmp_path / "eval"
    assert cli_main(["eval", f"model={checkpoint}", f"out_dir={out}", "ruler.enabled=false", "short.enabled=true",
                     f"short.include_path={tiny_task(tmp_path)}", "short.tasks={tiny_mc: 1}", "short.batch_size=2",
                     "short.dtype=float32"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    saved = json.loads((out / "short" / "tiny_mc.json").read_text())
    assert summary["short"]["tiny_mc"] == saved["score"] and 0.0 <= saved["score"] <= 100.0


def test_short_tasks_bad_inputs(tmp_path, checkpoint):
    pytest.importorskip("lm_eval")
    from longpo.eval.lm_eval import run_short_tasks

    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_short_tasks(str(tmp_path / "nope"), {"arc_challenge": 25}, tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        run_short_tasks(str(checkpoint), {"arc_challenge": 25}, tmp_path, include_path=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="dataset_paths.arc_challenge"):
        run_short_tasks(str(checkpoint), {"arc_challenge": 25}, tmp_path,
                        dataset_paths={"arc_challenge": str(tmp_path / "no_arc")})

"""`longpo demo`'s progress lines: the ETA is the reference seconds of the stages left, scaled by this
machine's pace so far, on a clock the test moves by hand."""

import io
import time

import pytest

from longpo.demo.progress import REFERENCE_SECONDS, DemoProgress, format_seconds, reference_seconds


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(labels, table, **kw):
    clock, out = Clock(), io.StringIO()
    return DemoProgress(labels, table, out=out, clock=clock, **kw), clock, out


def test_eta_is_the_stages_left_at_the_pace_measured_so_far():
    """Reference: a 10 s, b 30 s, c 20 s. a takes 20 s here: pace 2, so b is expected to take 60 s and
    the demo to end in 2 x (30 + 20) = 100 s; 10 s into b, 90 s. b outlasting its 60 s (70 s) raises the
    pace to (20 + 70) / (10 + 30) = 2.25: b counts as about done, c as 45 s."""
    progress, clock, out = make(["x: a", "x: b", "x: c"], {"x: a": 10.0, "x: b": 30.0, "x: c": 20.0})
    assert progress.eta() == 60.0
    with progress.stage("x: a"):
        clock.now += 20
    with progress.stage("x: b"):
        assert progress.eta() == pytest.approx(100.0)
        clock.now += 10
        assert progress.eta() == pytest.approx(90.0)
        clock.now += 60
        assert progress.pace(clock.now) == pytest.approx(2.25)
        assert progress.eta() == pytest.approx(45.0)
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["longpo demo: stage 1/3 x: a (~10 s here); 0 s elapsed, demo ETA 1 min 00 s",
                         "longpo demo: x: a done in 20 s",
                         "longpo demo: stage 2/3 x: b (~1 min 00 s here); 20 s elapsed, demo ETA 1 min 40 s"]
    assert progress.summary() == {"total_seconds": 90.0, "stages": {"x: a": 20.0, "x: b": 70.0}, "resumed": []}


def test_a_stage_finished_by_an_earlier_run_takes_no_time_and_sets_no_pace():
    progress, clock, out = make(["x: a", "x: b"], {"x: a": 10.0, "x: b": 30.0})
    with progress.stage("x: a", done=True):
        clock.now += 1
    assert progress.pace(clock.now) == 1.0 and progress.eta() == 30.0
    assert "stage 1/2 x: a: done in an earlier run" in out.getvalue()


def test_a_long_stage_reports_itself_every_heartbeat():
    progress, clock, out = make(["x: a"], {"x: a": 10.0}, heartbeat_s=0.02)
    with progress.stage("x: a"):
        clock.now += 50
        time.sleep(0.2)
    beats = [line for line in out.getvalue().splitlines() if "running for 50 s" in line]
    assert beats and beats[0] == "longpo demo: stage 1/1 x: a running for 50 s; 50 s elapsed, demo ETA 0 s"


def test_stages_missing_from_the_table_count_as_the_mean_of_their_kind():
    table = {"it1: train": 10.0, "it2: train": 30.0, "it1: eval": 4.0}
    assert reference_seconds("it3: train", table) == 20.0
    assert reference_seconds("it3: merge", table) == pytest.approx(44.0 / 3)
    assert {"base: eval", "it1: generate", "it1: reference", "it1: train", "sft: train", "dpo: eval"} <= set(
        REFERENCE_SECONDS)
    assert [format_seconds(s) for s in (0.4, 59.6, 185, 3725)] == ["0 s", "1 min 00 s", "3 min 05 s", "1 h 02 min"]

"""Where `longpo demo` is: one line per stage with the demo's elapsed time and ETA.

    longpo demo: stage 4/12 it1: train (~9 s here); 41 s elapsed, demo ETA 52 s
    ... the stage's own bar (train: steps and tokens/s; reference, eval: records / examples) ...
    longpo demo: it1: train done in 10 s

The ETA comes from the stages' shares of a reference run (`REFERENCE_SECONDS`), scaled by how fast
this machine has been so far: pace = (seconds the finished stages took here) / (their reference
seconds), ETA = pace x (reference seconds of the stages still to run). Before the first stage
ends the pace is 1. A stage that outlasts its estimate raises the pace from its own elapsed time,
and one running longer than `heartbeat_s` reports itself every `heartbeat_s` seconds, so a slow
machine always shows a sign of life (generate's bar moves one group of documents at a time).
Stages finished by an earlier run (a resumed demo) take no time and do not count in the pace.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm.auto import tqdm

# Seconds of each stage of the default `longpo demo` on 2 idle cores, so that the first line's ETA is
# right there (the pace rescales them elsewhere). Shares from one full run on 2 cores shared with other
# work, 2026-12-06 (load average 0.5 at its start, 5 at its end; 997 s), each stage timed by its .done
# marker, the five evals (the same 4 x 300 questions) at the median of theirs; scaled to 85 s of stages
# in the 91 s that issue 24 measured on 2 idle cores. Rough: on an idle machine, the last line of
# `python benchmarks/demo_time.py` is the dict to paste here.
REFERENCE_SECONDS = {
    "base: eval": 7.6, "it1: generate": 2.1, "it1: reference": 0.2, "it1: train": 1.2, "it1: eval": 7.6,
    "it2: generate": 15.1, "it2: reference": 0.1, "it2: train": 13.9, "it2: eval": 7.6,
    "sft: train": 4.1, "sft: eval": 7.6, "dpo: train": 10.5, "dpo: eval": 7.6,
    "base: pretrain": 720.0,  # pretrain=true only: "about 12 minutes" (README)
}


def format_seconds(seconds: float) -> str:
    """41 s, 3 min 05 s, 1 h 02 min."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def reference_seconds(label: str, table: dict[str, float]) -> float:
    """A stage's reference seconds; a stage the table lacks (other iterations) counts as the mean of
    its kind (`<anything>: train` -> the mean of the trains), else as the mean stage."""
    if label in table:
        return table[label]
    kind = label.rsplit(": ", 1)[-1]
    same = [v for k, v in table.items() if k.rsplit(": ", 1)[-1] == kind] or list(table.values())
    return sum(same) / len(same)


class DemoProgress:
    """Times the demo's stages (`stage(label)`) and says where the demo is, with an ETA. `name`: what
    the lines call the whole run (another script of stages, e.g. benchmarks/loss_ablation.py, names its own)."""

    def __init__(self, labels: list[str], table: dict[str, float] | None = None, heartbeat_s: float = 30.0,
                 out: TextIO | None = None, clock: Callable[[], float] = time.monotonic, name: str = "demo"):
        self.labels = list(labels)
        self.name = name
        table = REFERENCE_SECONDS if table is None else table
        self.reference = {label: reference_seconds(label, table) for label in self.labels}
        self.heartbeat_s = heartbeat_s
        self.out = out
        self.clock = clock
        self.started = clock()
        self.seconds: dict[str, float] = {}  # stages run here: their wall time
        self.resumed: list[str] = []  # stages an earlier run finished
        self.current: tuple[str, float] | None = None  # (label, start)

    def pace(self, now: float) -> float:
        """This machine's seconds per reference second so far (1 before any stage ends here)."""
        took, ref = sum(self.seconds.values()), sum(self.reference[k] for k in self.seconds)
        if self.current is not None:
            label, start = self.current
            if now - start > self.reference[label] * (took / ref if ref else 1.0):  # past its estimate
                took, ref = took + now - start, ref + self.reference[label]
        return took / ref if ref else 1.0

    def eta(self, now: float | None = None) -> float:
        """Seconds left: the current stage's estimate less its elapsed time, plus the stages to come."""
        now = self.clock() if now is None else now
        pace = self.pace(now)
        left = [k for k in self.labels if k not in self.seconds and k not in self.resumed]
        total = 0.0
        for label in left:
            estimate = pace * self.reference[label]
            if self.current is not None and label == self.current[0]:
                estimate = max(estimate - (now - self.current[1]), 0.0)
            total += estimate
        return total

    def say(self, message: str) -> None:
        # tqdm.write: clears an open bar (the stage's own) and draws it again below the line.
        tqdm.write(f"longpo {self.name}: {message}", file=self.out or sys.stderr)

    @contextmanager
    def stage(self, label: str, done: bool = False) -> Iterator[None]:
        """Time one stage (`done`: an earlier run finished it, nothing runs)."""
        if label not in self.reference:  # not planned: counted from here on
            self.labels.append(label)
            self.reference[label] = reference_seconds(label, REFERENCE_SECONDS)
        number = f"{self.labels.index(label) + 1}/{len(self.labels)}"
        if done:
            self.resumed.append(label)
            self.say(f"stage {number} {label}: done in an earlier run")
            yield
            return
        now = self.clock()
        estimate = self.pace(now) * self.reference[label]
        self.current = (label, now)
        self.say(f"stage {number} {label} (~{format_seconds(estimate)} here); "
                 f"{format_seconds(now - self.started)} elapsed, {self.name} ETA {format_seconds(self.eta(now))}")
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(label, number, stop), daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            self.current = None
        self.seconds[label] = self.clock() - now
        self.say(f"{label} done in {format_seconds(self.seconds[label])}")

    def _heartbeat(self, label: str, number: str, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            now = self.clock()
            self.say(f"stage {number} {label} running for {format_seconds(now - self.current[1])}; "
                     f"{format_seconds(now - self.started)} elapsed, {self.name} ETA {format_seconds(self.eta(now))}")

    def summary(self) -> dict:
        """Wall time of the whole demo and of every stage run here (report/timings.json)."""
        return {"total_seconds": round(self.clock() - self.started, 2),
                "stages": {k: round(v, 2) for k, v in self.seconds.items()}, "resumed": self.resumed}

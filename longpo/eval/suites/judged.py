"""The LLM-judged benchmarks (config sections `mt_bench`, `longbench_chat`): each answers with the evaluated
model (through the backend, loaded only when answers are missing) and judges through `judge.*`, once, in
the summary run of sharded jobs. Ratings are on a 1-10 scale, shown with two decimals.

A benchmark whose files are missing is skipped with the reason, as RULER and InfiniteBench tasks are; a
judge endpoint that fails stops the run (saved work resumes)."""

from __future__ import annotations

from typing import Any

from longpo.eval.haystack import DataMissing
from longpo.eval.judge import JudgeClient
from longpo.eval.tables import fmt, md_table
from longpo.eval.tasks import longbench_chat, mtbench
from longpo.eval.tasks.base import EvalContext, TaskSuite


class JudgedSuite(TaskSuite):
    once = True
    inputs_checked = False  # a missing file skips the benchmark with its reason (not refused), as before
    digits = 2
    name = ""     # its section, and the folder of its answers and judgements in out_dir
    module: Any = None  # its `run(section, client, get_backend, fmt, out_dir, sampling, batch_size, progress)`

    def run(self, section: Any, ctx: EvalContext) -> dict | None:
        try:
            return self.module.run(section, JudgeClient(ctx.cfg.judge), lambda: ctx.backend, ctx.fmt, ctx.out,
                                   ctx.sampling, ctx.cfg.batch_size, ctx.cfg.progress)
        except DataMissing as e:
            ctx.skipped.append({"task": self.name, "reason": str(e)})
            return None

    def summarise(self, results: list[dict], ran: Any) -> dict[str, Any]:
        return {} if ran is None else {self.name: ran}

    def csv_rows(self, summary: dict) -> list[list]:
        rows = []
        for label, value in self.headline(summary).items():
            suite, _, task = label.partition(" ")
            rows.append([suite, task, "", "", "judge rating", fmt(value, 2), ""])
        return rows


class MTBenchSuite(JudgedSuite):
    name, module = "mt_bench", mtbench
    outputs = ("mt_bench",)

    def inputs(self, s: Any) -> dict[str, str | None]:
        return {"mt_bench.questions": s.questions, "mt_bench.reference_answers": s.reference_answers}

    def markdown(self, summary: dict) -> list[str]:
        if "mt_bench" not in summary:
            return []
        mt = summary["mt_bench"]
        cats = list(mt["categories"])
        return [f"## MT-Bench (judge: {mt.get('judge_model', '?')})",
                md_table(cats + ["Turn 1", "Turn 2", "Overall"],
                         [[fmt(mt["categories"][c], 2) for c in cats]
                          + [fmt(mt[k], 2) for k in ("turn1", "turn2", "overall")]]),
                f"{mt['n']} judgements parsed, {mt['unparsable']} unparsable (left out of the means)"]

    def headline(self, summary: dict) -> dict[str, float | None]:
        if "mt_bench" not in summary:
            return {}
        mt = summary["mt_bench"]
        flat = {f"MT-Bench {category}": value for category, value in mt["categories"].items()}
        return {**flat, "MT-Bench turn1": mt["turn1"], "MT-Bench turn2": mt["turn2"], "MT-Bench overall": mt["overall"]}


class LongBenchChatSuite(JudgedSuite):
    name, module = "longbench_chat", longbench_chat
    outputs = ("longbench_chat",)

    def inputs(self, s: Any) -> dict[str, str | None]:
        return {"longbench_chat.test_cases": s.test_cases, "longbench_chat.few_shots": s.few_shots}

    def markdown(self, summary: dict) -> list[str]:
        if "longbench_chat" not in summary:
            return []
        lc = summary["longbench_chat"]
        return [f"## LongBench-Chat (judge: {lc.get('judge_model', '?')})",
                md_table(["Overall"], [[fmt(lc["overall"], 2)]]),
                f"{lc['n']} judgements parsed, {lc['unparsable']} unparsable (left out of the mean)"]

    def headline(self, summary: dict) -> dict[str, float | None]:
        return {"LongBench-Chat overall": summary["longbench_chat"]["overall"]} if "longbench_chat" in summary else {}

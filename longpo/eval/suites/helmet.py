"""HELMET (config section `helmet`): recall (JSON KV), RAG, re-rank, ICL and long-document QA, each task
from its own file in longpo/eval/tasks/helmet*.py; a task runs when its test file is given (data_dir or
files). The summary adds HELMET's category means; `helmet.judge` adds the NarrativeQA judge score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longpo.eval.judge import JudgeClient
from longpo.eval.tables import fmt, md_table, mean
from longpo.eval.tasks import helmet
from longpo.eval.tasks.base import EvalContext, TaskSuite, attempt
from longpo.eval.tasks.helmet_icl import ICLTask
from longpo.eval.tasks.helmet_longqa import LongQATask
from longpo.eval.tasks.helmet_narrativeqa import NarrativeQATask
from longpo.eval.tasks.helmet_narrativeqa import judge_result as narrativeqa_judge
from longpo.eval.tasks.helmet_rerank import RerankTask

# a HELMET category (or a task whose class differs from its category's) -> its task class, each built from the
# helmet.* keys by its own `from_config`
KINDS = {"recall": helmet.HelmetTask, "rag": helmet.HelmetTask, "rerank": RerankTask, "icl": ICLTask,
         "longqa": LongQATask, "narrativeqa": NarrativeQATask}
LABELS = {"json_kv": "JSON KV", "nq": "NQ", "triviaqa": "TriviaQA", "hotpotqa": "HotpotQA", "popqa": "PopQA",
          "msmarco": "MS MARCO", "trec_coarse": "TREC Coarse", "trec_fine": "TREC Fine",
          "banking77": "BANKING77", "clinic150": "CLINC150", "nlu": "NLU", "narrativeqa": "NarrativeQA",
          "narrativeqa_f1": "NarrativeQA F1", "narrativeqa_substring_exact_match": "NarrativeQA sub-EM",
          "narrativeqa_judge": "NarrativeQA judge", "infbench_qa": "InfBench QA", "infbench_choice": "InfBench MC"}
# HELMET's Re-rank is MS MARCO alone; its LongQA averages the NarrativeQA judge score, InfBench QA and MC
AVG_LABELS = {"rag": "RAG avg", "icl": "ICL avg", "longqa": "LongQA avg"}
# shown beside its ROUGE-L F1: HELMET's other exact metrics, and the judge's score when helmet.judge is on
NARRATIVEQA_EXTRAS = ("f1", "substring_exact_match", "judge")
JUDGEMENTS = "helmet_narrativeqa_judge.jsonl"
NOTE = ("as princeton-nlp/HELMET: substring exact match (%) for JSON KV and RAG, NDCG@10 (x 100) for "
        "MS MARCO (Re-rank), label exact match (%) for ICL, ROUGE-L F1 (x 100) for NarrativeQA and InfBench QA "
        "(NarrativeQA F1: token F1, sub-EM: substring exact match, both x 100), exact match (%) for InfBench MC, "
        "the judge's fluency x correctness x 100 / 3 for NarrativeQA judge (HELMET's LongQA avg uses it, "
        "shown when judged); Recall = JSON KV here (HELMET's Recall also "
        "averages RULER niah_mk_2, niah_mk_3, niah_mv, reported in the RULER table)")


def helmet_files(h: Any) -> dict[str, tuple[Path, Path | None]]:
    """HELMET task -> (test file, demo file) for the enabled tasks whose test file is given; the rest do not run."""
    if not h.enabled:
        return {}
    root = Path(h.data_dir) if h.data_dir else None
    out = {}
    for name in h.tasks:
        path = h.files.get(name) or (root / helmet.DEFAULT_FILES[name] if root else None)
        if path is None:
            continue
        demo = h.demos.get(name) or (root / helmet.DEFAULT_DEMOS[name] if root and name in helmet.DEFAULT_DEMOS else None)
        out[name] = (Path(path), Path(demo) if demo else None)
    return out


def judge_narrativeqa(cfg: Any, fmt: Any, results: list[dict], out: Path) -> None:
    """helmet.judge: HELMET's GPT-4o rubric over the NarrativeQA predictions, put in its result as extra["judge"]."""
    for result in results:
        if result.get("suite") == "helmet" and result["task"] == "narrativeqa" and result["n"]:
            score = narrativeqa_judge(result, JudgeClient(cfg.judge), fmt.chat_template, out / JUDGEMENTS,
                                      cfg.progress)
            if score is not None:
                result.setdefault("extra", {})["judge"] = score


class HelmetSuite(TaskSuite):
    exempt = ("judge",)  # helmet.judge=true on a finished run judges its saved NarrativeQA predictions
    outputs = (JUDGEMENTS,)

    def runs(self, h: Any) -> bool:
        return bool(helmet_files(h))

    def inputs(self, h: Any) -> dict[str, str | None]:
        return {"helmet.data_dir": h.data_dir, **{f"helmet.files.{k}": v for k, v in h.files.items()},
                **{f"helmet.demos.{k}": v for k, v in h.demos.items()}}

    def lengths(self, h: Any) -> dict[str, int]:
        return {f"helmet.max_length={h.max_length}": h.max_length} if helmet_files(h) else {}

    def skip_beyond(self, h: Any, limit: int, reason: str) -> list[dict]:
        files = helmet_files(h)
        if not (files and h.max_length > limit):
            return []
        h.enabled = False
        return [{"task": f"helmet/{name}", "reason": f"helmet.max_length={h.max_length} is " + reason} for name in files]

    def build(self, h: Any, fmt: Any) -> list:
        out = []
        for name, (path, demo) in helmet_files(h).items():
            kind = KINDS.get(name) or KINDS[helmet.CATEGORY[name]]
            out.append(attempt(f"helmet/{name}", lambda name=name, path=path, demo=demo, kind=kind: kind.from_config(
                name, path, demo, fmt, h), configured=True))
        return out

    def after_evaluate(self, h: Any, results: list[dict], ctx: EvalContext) -> None:
        if h.judge:
            judge_narrativeqa(ctx.cfg, ctx.fmt, results, ctx.out)

    def summarise(self, results: list[dict], ran: Any) -> dict[str, Any]:
        scores = {r["task"]: r["score"] for r in results}
        if not scores:
            return {}
        rag = [scores[t] for t in ("nq", "triviaqa", "hotpotqa", "popqa") if t in scores]
        icl = [scores[t] for t in ("trec_coarse", "trec_fine", "banking77", "clinic150", "nlu") if t in scores]
        scores.update({f"narrativeqa_{k}": r["extra"][k] for r in results if r["task"] == "narrativeqa"
                       for k in NARRATIVEQA_EXTRAS if k in r.get("extra", {})})
        longqa = [scores.get(t) for t in ("narrativeqa_judge", "infbench_qa", "infbench_choice")]
        return {"helmet": {**scores, **({"recall": scores["json_kv"]} if "json_kv" in scores else {}),
                           **({"longqa": mean(longqa)} if None not in longqa else {}),
                           **({"rag": mean(rag)} if rag else {}), **({"icl": mean(icl)} if icl else {}),
                           **({"rerank": scores["msmarco"]} if "msmarco" in scores else {})}}

    def markdown(self, summary: dict) -> list[str]:
        if "helmet" not in summary:
            return []
        he = summary["helmet"]
        keys = [k for k in LABELS if k in he] + [k for k in AVG_LABELS if k in he]
        return ["## HELMET", md_table([{**LABELS, **AVG_LABELS}[k] for k in keys], [[fmt(he[k]) for k in keys]]), NOTE]

    def headline(self, summary: dict) -> dict[str, float | None]:
        he = summary.get("helmet", {})
        return {f"HELMET {label}": he[key] for key, label in {**LABELS, **AVG_LABELS}.items() if key in he}

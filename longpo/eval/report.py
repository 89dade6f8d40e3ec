"""Summaries in the paper's layout: RULER groups per length, InfiniteBench, short-context; and `compare`.

Beside them: HELMET (json_kv, the RAG tasks and their mean; substring exact match) and LongBench v2
(accuracy overall, easy / hard, short / medium / long, rounded to 1 decimal as its result.py).

RULER groups (as in the LongPO paper): NIAH = mean of the 8 niah tasks, VT, AGG = mean(cwe, fwe),
QA = mean(qa_1, qa_2), AVG = plain mean of the 13 tasks; each per length and averaged over lengths.
A group with members missing (skipped for lack of data) is the mean of those present and is marked
with `*` in the Markdown table and a coverage entry in the JSON. MT-Bench (per category, per turn,
overall) and LongBench-Chat are judge ratings on a 1-10 scale, shown with two decimals.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from longpo.errors import InputError
from longpo.eval.config import toy_length_label as toy_label
from longpo.files import atomic_write_json, atomic_write_text

RULER_GROUPS = {
    "NIAH": ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
             "niah_multikey_3", "niah_multivalue", "niah_multiquery"],
    "VT": ["vt"],
    "AGG": ["cwe", "fwe"],
    "QA": ["qa_1", "qa_2"],
}
RULER_GROUPS["AVG"] = [t for members in RULER_GROUPS.values() for t in members]
IB_LABELS = {"en_sum": "En.Sum", "en_qa": "En.QA", "en_mc": "En.MC"}
# secondary metrics (`extra` of a task result), shown beside the official ones and left out of every average
IB_EXTRA_LABELS = {"en_mc_lenient": "En.MC (lenient parser)"}
HELMET_LABELS = {"json_kv": "JSON KV", "nq": "NQ", "triviaqa": "TriviaQA", "hotpotqa": "HotpotQA", "popqa": "PopQA",
                 "msmarco": "MS MARCO", "trec_coarse": "TREC Coarse", "trec_fine": "TREC Fine",
                 "banking77": "BANKING77", "clinic150": "CLINC150", "nlu": "NLU", "narrativeqa": "NarrativeQA",
                 "narrativeqa_f1": "NarrativeQA F1", "narrativeqa_substring_exact_match": "NarrativeQA sub-EM",
                 "narrativeqa_judge": "NarrativeQA judge", "infbench_qa": "InfBench QA", "infbench_choice": "InfBench MC"}
# HELMET's Re-rank is MS MARCO alone; its LongQA averages the NarrativeQA judge score, InfBench QA and MC
HELMET_AVG_LABELS = {"rag": "RAG avg", "icl": "ICL avg", "longqa": "LongQA avg"}
# shown beside its ROUGE-L F1: HELMET's other exact metrics, and the judge's score when helmet.judge is on
NARRATIVEQA_EXTRAS = ("f1", "substring_exact_match", "judge")
LB2_LABELS = {"overall": "Overall", "easy": "Easy", "hard": "Hard", "short": "Short", "medium": "Medium",
              "long": "Long"}
SHORT_LABELS = {"mmlu": "MMLU", "arc_challenge": "ARC-C", "hellaswag": "HellaSwag", "winogrande": "Winogrande"}


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def length_label(length: int) -> str:
    return f"{length // 1024}K" if length % 1024 == 0 else str(length)


def summarize(results: list[dict], skipped: list[dict] | None = None, short: dict | None = None,
              judged: dict | None = None) -> dict:
    """Fold per-task results (from `evaluate`), short-context scores and judged benchmarks into the paper's tables."""
    ruler = [r for r in results if r.get("suite") == "ruler" and "depth" not in r]
    lengths = sorted({r["length"] for r in ruler})
    per_task: dict[str, dict[str, float]] = {}
    for r in ruler:
        per_task.setdefault(r["task"], {})[str(r["length"])] = r["score"]
    for scores in per_task.values():
        scores["avg"] = _mean([scores.get(str(n)) for n in lengths])
    groups, coverage = {}, {}
    for group, members in RULER_GROUPS.items():
        present = [m for m in members if m in per_task]
        if not present:
            continue
        coverage[group] = f"{len(present)}/{len(members)}"
        row = {str(n): _mean([per_task[m].get(str(n)) for m in present]) for n in lengths}
        row["avg"] = _mean([row[str(n)] for n in lengths])
        groups[group] = row
    summary: dict = {"tasks": results, "skipped": list(skipped or [])}
    if ruler:
        summary["ruler"] = {"lengths": lengths, "tasks": per_task, "groups": groups, "coverage": coverage}
    ib = {r["task"]: r["score"] for r in results if r.get("suite") == "infinitebench"}
    if ib:
        extra = {f"{r['task']}_{k}": v for r in results if r.get("suite") == "infinitebench"
                 for k, v in r.get("extra", {}).items()}
        summary["infinitebench"] = {**ib, "avg": _mean(list(ib.values())), **extra}
    helmet = {r["task"]: r["score"] for r in results if r.get("suite") == "helmet"}
    if helmet:
        rag = [helmet[t] for t in ("nq", "triviaqa", "hotpotqa", "popqa") if t in helmet]
        icl = [helmet[t] for t in ("trec_coarse", "trec_fine", "banking77", "clinic150", "nlu") if t in helmet]
        helmet.update({f"narrativeqa_{k}": r["extra"][k] for r in results if r.get("suite") == "helmet"
                       and r["task"] == "narrativeqa" for k in NARRATIVEQA_EXTRAS if k in r.get("extra", {})})
        longqa = [helmet.get(t) for t in ("narrativeqa_judge", "infbench_qa", "infbench_choice")]
        summary["helmet"] = {**helmet, **({"recall": helmet["json_kv"]} if "json_kv" in helmet else {}),
                             **({"longqa": _mean(longqa)} if None not in longqa else {}),
                             **({"rag": _mean(rag)} if rag else {}), **({"icl": _mean(icl)} if icl else {}),
                             **({"rerank": helmet["msmarco"]} if "msmarco" in helmet else {})}
    lb2 = [r for r in results if r.get("suite") == "longbench_v2"]
    if lb2:
        # result.py's table: accuracy overall, by difficulty and by length, each rounded to 1 decimal
        r = lb2[0]
        summary["longbench_v2"] = {"overall": round(r["score"], 1), "n": r["n"],
                                   **{k: round(v, 1) for k, v in r.get("extra", {}).items()}}
    if short:
        summary["short"] = {**short, "avg": _mean(list(short.values()))}
    toy = {toy_label(r["length"]): r["score"] for r in results if r.get("suite") == "toy"}
    if toy:
        summary["toy"] = toy
    for name, value in (judged or {}).items():
        summary[name] = value
    depth = [r for r in results if r.get("suite") == "ruler" and "depth" in r]
    if depth:
        summary["niah_depth"] = depth_grid(depth)
    return summary


def depth_grid(results: list[dict]) -> dict:
    depths = sorted({r["depth"] for r in results})
    lengths = sorted({r["length"] for r in results})
    cell = {(r["depth"], r["length"]): r["score"] for r in results}
    return {"task": results[0]["task"], "depths": depths, "lengths": lengths,
            "scores": [[cell.get((d, n)) for n in lengths] for d in depths]}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(summary: dict, title: str = "") -> str:
    parts = [f"# {title}" if title else ""]
    if "ruler" in summary:
        r = summary["ruler"]
        header = ["RULER"] + [length_label(n) for n in r["lengths"]] + ["Avg"]
        rows = []
        for group, row in r["groups"].items():
            mark = "" if r["coverage"][group].split("/")[0] == r["coverage"][group].split("/")[1] else "*"
            rows.append([group + mark] + [_fmt(row[str(n)]) for n in r["lengths"]] + [_fmt(row["avg"])])
        parts += ["## RULER", _md_table(header, rows)]
        if any(c.split("/")[0] != c.split("/")[1] for c in r["coverage"].values()):
            parts.append("`*` mean over the tasks that ran (coverage: "
                         + ", ".join(f"{g} {c}" for g, c in r["coverage"].items()) + ")")
        task_rows = [[t] + [_fmt(s.get(str(n))) for n in r["lengths"]] + [_fmt(s["avg"])]
                     for t, s in r["tasks"].items()]
        parts += ["### RULER tasks", _md_table(["task"] + header[1:], task_rows)]
    if "infinitebench" in summary:
        ib = summary["infinitebench"]
        keys = [k for k in IB_LABELS if k in ib]
        parts += ["## InfiniteBench", _md_table([IB_LABELS[k] for k in keys] + ["Avg"],
                                                [[_fmt(ib[k]) for k in keys] + [_fmt(ib["avg"])]])]
        extras = [k for k in IB_EXTRA_LABELS if k in ib]
        if extras:
            parts.append("Beside the official numbers (not in Avg): "
                         + ", ".join(f"{IB_EXTRA_LABELS[k]} {_fmt(ib[k])}" for k in extras))
    if "helmet" in summary:
        he = summary["helmet"]
        keys = [k for k in HELMET_LABELS if k in he] + [k for k in HELMET_AVG_LABELS if k in he]
        parts += ["## HELMET", _md_table([{**HELMET_LABELS, **HELMET_AVG_LABELS}[k] for k in keys],
                                         [[_fmt(he[k]) for k in keys]]),
                  "as princeton-nlp/HELMET: substring exact match (%) for JSON KV and RAG, NDCG@10 (x 100) for "
                  "MS MARCO (Re-rank), label exact match (%) for ICL, ROUGE-L F1 (x 100) for NarrativeQA and InfBench QA "
                  "(NarrativeQA F1: token F1, sub-EM: substring exact match, both x 100), exact match (%) for InfBench MC, "
                  "the judge's fluency x correctness x 100 / 3 for NarrativeQA judge (HELMET's LongQA avg uses it, "
                  "shown when judged); Recall = JSON KV here (HELMET's Recall also "
                  "averages RULER niah_mk_2, niah_mk_3, niah_mv, reported in the RULER table)"]
    if "longbench_v2" in summary:
        lb = summary["longbench_v2"]
        keys = [k for k in LB2_LABELS if k in lb]
        parts += ["## LongBench v2", _md_table([LB2_LABELS[k] for k in keys], [[_fmt(lb[k]) for k in keys]]),
                  f"{lb['n']} questions, accuracy (%) as THUDM/LongBench result.py"]
    if "short" in summary:
        sh = summary["short"]
        keys = [k for k in sh if k != "avg"]
        parts += ["## Short context", _md_table([SHORT_LABELS.get(k, k) for k in keys] + ["Avg"],
                                                [[_fmt(sh[k]) for k in keys] + [_fmt(sh["avg"])]])]
    if "toy" in summary:
        parts += ["## Toy fact lookup", _md_table(list(summary["toy"]), [[_fmt(v) for v in summary["toy"].values()]])]
    if "mt_bench" in summary:
        mt = summary["mt_bench"]
        cats = list(mt["categories"])
        parts += [f"## MT-Bench (judge: {mt.get('judge_model', '?')})",
                  _md_table(cats + ["Turn 1", "Turn 2", "Overall"],
                            [[_fmt(mt["categories"][c], 2) for c in cats]
                             + [_fmt(mt[k], 2) for k in ("turn1", "turn2", "overall")]]),
                  f"{mt['n']} judgements parsed, {mt['unparsable']} unparsable (left out of the means)"]
    if "longbench_chat" in summary:
        lc = summary["longbench_chat"]
        parts += [f"## LongBench-Chat (judge: {lc.get('judge_model', '?')})",
                  _md_table(["Overall"], [[_fmt(lc["overall"], 2)]]),
                  f"{lc['n']} judgements parsed, {lc['unparsable']} unparsable (left out of the mean)"]
    if summary.get("skipped"):
        parts += ["## Skipped", "\n".join(f"- {s['task']}: {s['reason']}" for s in summary["skipped"])]
    return "\n\n".join(p for p in parts if p) + "\n"


def to_csv(summary: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["suite", "task", "length", "depth", "metric", "score", "n"])
    for r in summary["tasks"]:
        writer.writerow([r.get("suite", ""), r.get("task", r.get("name", "")), r.get("length", ""),
                         r.get("depth", ""), r.get("metric", ""), _fmt(r["score"]), r.get("n", "")])
        for key, value in r.get("extra", {}).items():
            writer.writerow([r.get("suite", ""), f"{r.get('task', '')}_{key}", r.get("length", ""), "", key,
                             _fmt(value), r.get("n", "")])
    for group, row in summary.get("ruler", {}).get("groups", {}).items():
        for key, value in row.items():
            writer.writerow(["ruler-group", group, key, "", "mean", _fmt(value), ""])
    for key, value in summary.get("short", {}).items():
        writer.writerow(["short", key, "", "", "accuracy", _fmt(value), ""])
    for label, value in _judged_headline(summary).items():
        suite, _, task = label.partition(" ")
        writer.writerow([suite, task, "", "", "judge rating", _fmt(value, 2), ""])
    return buf.getvalue()


def write_summary(summary: dict, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    out = Path(out_dir)
    return {
        "json": atomic_write_json(out / "summary.json", summary),
        "csv": atomic_write_text(out / "summary.csv", to_csv(summary)),
        "md": atomic_write_text(out / "summary.md", to_markdown(summary, title)),
    }


# ---------------------------------------------------------------------------------------------


def headline(summary: dict) -> dict[str, float | None]:
    """Flat `label -> score` of a summary's tables, in display order."""
    flat: dict[str, float | None] = {}
    if "ruler" in summary:
        r = summary["ruler"]
        for group, row in r["groups"].items():
            for n in r["lengths"]:
                flat[f"RULER {group} {length_label(n)}"] = row[str(n)]
            flat[f"RULER {group} avg"] = row["avg"]
    for key, label in IB_LABELS.items():
        if key in summary.get("infinitebench", {}):
            flat[f"InfiniteBench {label}"] = summary["infinitebench"][key]
    if "infinitebench" in summary:
        flat["InfiniteBench avg"] = summary["infinitebench"]["avg"]
    for key, label in IB_EXTRA_LABELS.items():
        if key in summary.get("infinitebench", {}):
            flat[f"InfiniteBench {label}"] = summary["infinitebench"][key]
    for key, label in {**HELMET_LABELS, **HELMET_AVG_LABELS}.items():
        if key in summary.get("helmet", {}):
            flat[f"HELMET {label}"] = summary["helmet"][key]
    for key, label in LB2_LABELS.items():
        if key in summary.get("longbench_v2", {}):
            flat[f"LongBench v2 {label}"] = summary["longbench_v2"][key]
    for key, value in summary.get("short", {}).items():
        flat[f"short {SHORT_LABELS.get(key, key)}"] = value
    for key, value in summary.get("toy", {}).items():
        flat[f"fact QA {key}"] = value
    flat.update(_judged_headline(summary))
    return flat


def _judged_headline(summary: dict) -> dict[str, float | None]:
    flat: dict[str, float | None] = {}
    if "mt_bench" in summary:
        mt = summary["mt_bench"]
        for category, value in mt["categories"].items():
            flat[f"MT-Bench {category}"] = value
        flat.update({"MT-Bench turn1": mt["turn1"], "MT-Bench turn2": mt["turn2"], "MT-Bench overall": mt["overall"]})
    if "longbench_chat" in summary:
        flat["LongBench-Chat overall"] = summary["longbench_chat"]["overall"]
    return flat


def compare(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> str:
    """Two summaries side by side with B - A deltas; rows present in either run."""
    ha, hb = headline(a), headline(b)
    labels = list(ha) + [k for k in hb if k not in ha]
    width = max([len(x) for x in labels] + [6])
    col = max(len(name_a), len(name_b), 8)
    lines = [f"{'':<{width}}  {name_a:>{col}}  {name_b:>{col}}  {'delta':>8}"]
    for label in labels:
        va, vb = ha.get(label), hb.get(label)
        digits = 2 if label.startswith(("MT-Bench", "LongBench-Chat")) else 1  # 1-10 judge ratings
        delta = f"{vb - va:+8.{digits}f}" if va is not None and vb is not None else f"{'-':>8}"
        lines.append(f"{label:<{width}}  {_fmt(va, digits):>{col}}  {_fmt(vb, digits):>{col}}  {delta}")
    return "\n".join(lines)


def load_summary(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    if not p.is_file():
        raise InputError(f"{path}: no summary.json (is it the out_dir of a finished `longpo eval`?)")
    return json.loads(p.read_text(encoding="utf-8"))

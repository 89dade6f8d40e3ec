"""Summaries in the paper's layout: RULER groups per length, InfiniteBench, short-context; and `compare`.

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

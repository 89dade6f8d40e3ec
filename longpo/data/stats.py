"""Statistics of a `longpo generate` run: what a person needs to judge a data set before training on it.

Counts per stage (question replies -> questions -> chosen -> rejected -> pairs kept), seconds per
stage, questions per reply, truncation (answers that hit `max_new_tokens`), drops by reason (those of
the run's preset, `prompts`, each present from 0: `new_stats(drop_reasons)`), answer lengths, and the reference log-probs of chosen vs rejected, summed and per token, with the share of
pairs where the chosen answer is the more likely one each way. Stats of shards and resumed groups
are summed (`merge_stats`), so every value is a sum or a count; `summary` divides once.
"""

from __future__ import annotations

from collections import Counter

STAGES = ("question", "chosen", "rejected")
HISTOGRAMS = ("document_tokens", "chunk_tokens", "chosen_tokens", "rejected_tokens", "questions_per_reply")
REFERENCE_KEYS = ("pairs", "chosen_logp", "rejected_logp", "chosen_tokens", "rejected_tokens",
                  "chosen_logp_per_token", "rejected_logp_per_token", "chosen_wins_sum", "chosen_wins_per_token")


def power_of_two_bin(n: int) -> str:
    """Power-of-two length bin, keyed by its lower bound: "1024" holds lengths 1024..2047."""
    return str(1 << (max(n, 1).bit_length() - 1))


def new_stats(drop_reasons: tuple[str, ...] = ()) -> dict:
    """Zero stats; `drop_reasons` are entered in `dropped` at 0, so a reason that never fired still shows."""
    return {"documents": 0, "skipped": Counter(), "chunks": 0, "eligible_chunks": 0, "question_replies": 0,
            "questions_parsed": 0, "questions_unparsable": 0, "questions_found": 0, "questions_dropped": Counter(),
            "turns_without_question": Counter(), "generated": Counter(), "truncated": Counter(),
            "trimmed": Counter(), "kept_cut": Counter(), "finish_unknown": Counter(), "seconds": Counter(), "pairs_kept": 0,
            "rejected_kept": 0, "rejected_discarded": Counter(),
            "dropped": Counter(dict.fromkeys(drop_reasons, 0)), "chosen_equals_rejected": 0, "records": 0, "tokens": 0,
            "answer_tokens": Counter(), "reference": Counter(),
            "hist": {name: Counter() for name in HISTOGRAMS}}


def _add(total: dict, part: dict) -> dict:
    """Sum `part` into `total` key by key (nested dicts too; negative sums such as log-probs kept)."""
    for key, value in part.items():
        if isinstance(value, dict):
            total[key] = _add(Counter(total.get(key) or {}), value)
        else:
            total[key] = total.get(key, 0) + value
    return total


def merge_stats(total: dict, part: dict) -> dict:
    return _add(total, part)


def stats_json(stats: dict) -> dict:
    """Plain dicts, histograms sorted by bin."""
    out = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in stats.items() if k != "hist"}
    out["hist"] = {name: dict(sorted(dict(c).items(), key=lambda kv: int(kv[0])))
                   for name, c in stats.get("hist", {}).items()}
    return out


def add_reference_stats(stats: dict, records: list[dict]) -> None:
    """Chosen vs rejected reference log-probs of every turn holding both (tokens from meta.answer_tokens), one
    pair per rejected answer."""
    ref = stats["reference"]
    for record in records:
        counts = (record.get("meta") or {}).get("answer_tokens") or []
        for turn, (n_chosen, n_rejected) in zip(record["turns"], counts):
            c, rs = turn.get("ref_chosen_logp"), turn.get("ref_rejected_logp")
            if c is None or rs is None:
                continue
            for r, n_r in zip(*(v if isinstance(v, list) else [v] for v in (rs, n_rejected))):  # M answers
                _add_reference_pair(ref, c, r, n_chosen, n_r)


def _add_reference_pair(ref: Counter, c: float, r: float, n_chosen: int, n_rejected: int) -> None:
    if n_chosen and n_rejected:
        ref["pairs"] += 1
        ref["chosen_logp"] += c
        ref["rejected_logp"] += r
        ref["chosen_tokens"] += n_chosen
        ref["rejected_tokens"] += n_rejected
        ref["chosen_logp_per_token"] += c / n_chosen
        ref["rejected_logp_per_token"] += r / n_rejected
        ref["chosen_wins_sum"] += int(c > r)
        ref["chosen_wins_per_token"] += int(c / n_chosen > r / n_rejected)


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def summary(stats: dict) -> str:
    """The stats as a few lines of text (printed at the end of a run and by `longpo generate inspect`)."""
    s = stats_json(stats)
    gen, trunc = s.get("generated", {}), s.get("truncated", {})
    trim = merge_stats(dict(s.get("trimmed", {})), s.get("kept_cut", {}))
    sec = s.get("seconds", {})
    replies = s["question_replies"]
    lines = [
        f"documents {s['documents']}  skipped {sum(s['skipped'].values())} {s['skipped']}",
        f"chunks {s['chunks']} (eligible {s['eligible_chunks']})  question replies {replies} "
        f"parsed {s['questions_parsed']} unparsable {s['questions_unparsable']}  questions found "
        f"{s.get('questions_found', 0)} ({s.get('questions_found', 0) / max(replies, 1):.2f} per reply), dropped "
        f"{s.get('questions_dropped', {})}, turns without a question {s.get('turns_without_question', {})}",
        "stages (generated / hit max_new_tokens / trimmed or kept cut / seconds): " + ", ".join(
            f"{st} {gen.get(st, 0)} / {trunc.get(st, 0)} ({_share(trunc.get(st, 0), gen.get(st, 0))}) / "
            f"{trim.get(st, 0)} / {sec.get(st, 0.0):.1f}s" for st in STAGES)
        + f", reference {sec.get('reference', 0.0):.1f}s"
        + (f"  (finish reason unknown, guessed from length: {s['finish_unknown']})" if s.get("finish_unknown") else ""),
        f"pairs kept {s['pairs_kept']} in {s['records']} records  dropped {sum(s['dropped'].values())} "
        f"{ {k: v for k, v in s['dropped'].items() if v} }  "
        f"chosen == rejected {s['chosen_equals_rejected']}",
    ]
    kept, lengths = s["pairs_kept"], s.get("answer_tokens", {})
    rejected = s.get("rejected_kept") or kept  # rejected answers kept (M per turn); older stats: one per turn
    if rejected != kept or s.get("rejected_discarded"):
        lines.append(f"rejected answers kept {rejected} ({rejected / max(kept, 1):.1f} per turn), draws discarded "
                     f"{ {k: v for k, v in s.get('rejected_discarded', {}).items() if v} }")
    if kept:
        lines.append(f"answer tokens, mean: chosen {lengths.get('chosen', 0) / kept:.1f}, rejected "
                     f"{lengths.get('rejected', 0) / rejected:.1f}")
    ref = s.get("reference", {})
    if ref.get("pairs"):
        n = ref["pairs"]
        lines.append(
            f"reference log-prob over {n} pairs, mean summed: chosen {ref['chosen_logp'] / n:.2f}, rejected "
            f"{ref['rejected_logp'] / n:.2f} (chosen higher in {_share(ref['chosen_wins_sum'], n)}); mean per "
            f"token: chosen {ref['chosen_logp_per_token'] / n:.3f}, rejected {ref['rejected_logp_per_token'] / n:.3f} "
            f"(chosen higher in {_share(ref['chosen_wins_per_token'], n)})")
    for name, hist in s["hist"].items():
        if hist:
            kind = "count: replies" if name == "questions_per_reply" else "power-of-two bins, lower bound: count"
            lines.append(f"{name} ({kind}): " + ", ".join(f"{k}: {v}" for k, v in hist.items()))
    return "\n".join(lines)

"""`longpo generate`: self-generated short-to-long preference pairs from long documents.

    longpo generate --config configs/generate_tiny.yaml
    longpo generate --config configs/generate_mistral-7b-128k.yaml --num-shards 8 --shard-index 3
    longpo generate merge --inputs runs/gen/part0 runs/gen/part1 --output runs/gen/all

Per document (the method: README, "longpo generate"): chunk it; for up to `num_turns` chunks ask the model
for `num_questions` questions about the chunk and keep one (prefixed to point back at the text);
chosen = the model's answer given the chunk only; rejected = its answer given the whole document
(turn i after the earlier turns of its own branch); filter; add the original model's reference
log-probs on the short prompts. Documents are processed in fixed groups; a group's records are
written to their own shard file atomically and only then marked done in `manifest.json`, so
after a crash (even `kill -9`) the same command redoes at most the unfinished group and never
duplicates a pair. Outputs: `records-*.jsonl`, `manifest.json`, `stats.json`, `resolved_config.yaml`.
"""

from __future__ import annotations

import hashlib
import logging
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longpo.backends.base import Sampling
from longpo.config import help_field
from longpo.data.filters import DROP_REASONS, FilterConfig, chosen_drop_reason, drop_reason
from longpo.data.prompts import QUESTION_PREFIX, QUESTION_TEMPLATE
from longpo.errors import InputError
from longpo.fingerprint import guard, identity, remove
from longpo.models import check_local

log = logging.getLogger("longpo.generate")


@dataclass(kw_only=True)
class Config:
    model: str = help_field(help="the short-context generator: a local model folder (served name for openai)")
    tokenizer: str | None = help_field(None, "tokenizer folder; default: the model folder")
    backend: str = help_field("hf", "generation backend: hf, vllm or openai")
    backend_args: dict = help_field({}, "extra keyword arguments of the backend (dtype, tensor_parallel_size, "
                                        "base_url, concurrency, ...)")
    rope_theta: float | None = help_field(None, "RoPE base of the generator for the long-context (rejected) "
                                                "answers; the reference keeps the original")
    max_position_embeddings: int | None = help_field(None, "max positions of the generator (with rope_theta)")
    original_for_short_steps: bool = help_field(True, "with a RoPE override, questions and chosen answers come from "
                                                      "the original model (pi_S on short prompts) and only the "
                                                      "rejected answers from the generator; false: the generator "
                                                      "does every step (one engine, e.g. vLLM at 128K)")
    corpus: str = help_field(help="long documents: .jsonl, .parquet, a folder of text files or a saved dataset")
    text_field: str = help_field("text", "field holding a document's text (JSONL / Parquet / datasets)")
    id_field: str = help_field("id", "field holding a document's id; absent: a hash of the text")
    output_dir: str = help_field("runs/generate", "shards, manifest.json, stats.json, resolved config")
    doc_format: str = help_field("auto", "block splitting: auto, prose (paragraphs), latex (\\section), code")
    min_doc_tokens: int = help_field(65536, "skip (and count) shorter documents")
    max_doc_tokens: int = help_field(131072, "skip (and count) longer documents")
    min_chunk_tokens: int = help_field(16384, "shortest chunk a question is asked about")
    max_chunk_tokens: int = help_field(30000, "longest chunk")
    separator: str = help_field("\n\n", "joins chunks into the long context")
    num_questions: int = help_field(4, "questions asked per chunk; a reply with another count is skipped")
    num_turns: int = help_field(2, "turns per document, each about a different chunk")
    question_template: str = help_field(QUESTION_TEMPLATE, "user message asking for questions; placeholders "
                                                           "{chunk} and {k}")
    question_prefix: str = help_field(QUESTION_PREFIX, "put before the chosen question")
    question_sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7, top_p=0.9,
                                                                         max_new_tokens=1024),
                                        metadata={"help": "sampling of the question step"})
    answer_sampling: Sampling = field(default_factory=lambda: Sampling(temperature=1.0, top_p=1.0,
                                                                       max_new_tokens=1024),
                                      metadata={"help": "sampling of the chosen and rejected answers"})
    filters: FilterConfig = field(default_factory=FilterConfig, metadata={"help": "pair filters"})
    reference: bool = help_field(True, "add the original model's reference log-probs (else run "
                                       "`longpo reference` later)")
    documents_per_group: int = help_field(16, "documents per shard file (the unit redone after a crash)")
    num_shards: int = help_field(1, "split the corpus over this many independent jobs")
    shard_index: int = help_field(0, "which of them this job is (0-based)")
    seed: int = help_field(42, "seed of chunk and question choices and of sampling")
    progress: bool = help_field(True, "show a progress bar")
    overwrite: bool = help_field(False, "start over in output_dir: remove this stage's outputs there first; "
                                        "without it a rerun must use the same settings")

    def __post_init__(self) -> None:
        if not self.model or not self.corpus:
            raise ValueError("model= and corpus= are required")
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"shard_index={self.shard_index} must lie in [0, num_shards={self.num_shards})")
        if not 0 < self.min_chunk_tokens <= self.max_chunk_tokens:
            raise ValueError(f"need 0 < min_chunk_tokens ({self.min_chunk_tokens}) <= max_chunk_tokens "
                             f"({self.max_chunk_tokens})")
        if self.min_doc_tokens > self.max_doc_tokens:
            raise ValueError(f"min_doc_tokens ({self.min_doc_tokens}) > max_doc_tokens ({self.max_doc_tokens})")
        for name in ("num_questions", "num_turns", "documents_per_group"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if "{chunk}" not in self.question_template:
            raise ValueError("question_template must contain {chunk}")
        if self.backend == "openai" and (self.rope_theta or self.max_position_embeddings):
            raise ValueError("rope_theta / max_position_embeddings apply to the hf and vllm backends; an OpenAI-"
                             "compatible server's RoPE is set where the model is served")


# Keys that do not change the records (a rerun with other values resumes); every other key, the
# sharding of the corpus included (num_shards, shard_index, documents_per_group), is in the fingerprint.
FINGERPRINT_EXEMPT = ("output_dir", "progress")
OUTPUTS = ("records-s*-g*.jsonl", "manifest.json", "stats.json", "summary.txt", "resolved_config.yaml")


def check_rerun(cfg: Config, local_model: bool) -> None:
    """A rerun into output_dir resumes only with the same settings and inputs (longpo.fingerprint)."""
    inputs = {"corpus": identity(cfg.corpus)}
    if local_model:
        inputs |= {"model": identity(cfg.model), "tokenizer": identity(cfg.tokenizer)}
    guard("generate", cfg.output_dir, cfg, FINGERPRINT_EXEMPT, inputs, cfg.overwrite,
          lambda: remove(cfg.output_dir, OUTPUTS))


# ---------------------------------------------------------------------------------- stats


def _bin(n: int) -> str:
    """Power-of-two length bin, keyed by its lower bound: "1024" holds lengths 1024..2047."""
    return str(1 << (max(n, 1).bit_length() - 1))


def new_stats() -> dict:
    return {"documents": 0, "skipped": Counter(), "chunks": 0, "eligible_chunks": 0, "question_replies": 0,
            "questions_parsed": 0, "questions_unparsable": 0, "pairs_kept": 0, "dropped": Counter(),
            "chosen_equals_rejected": 0, "records": 0, "tokens": 0,
            "hist": {"document_tokens": Counter(), "chunk_tokens": Counter(), "answer_tokens": Counter()}}


def merge_stats(total: dict, part: dict) -> dict:
    for key, value in part.items():
        if key == "hist":
            for name, counts in value.items():
                total["hist"][name] = Counter(total["hist"].get(name, {})) + Counter(counts)
        elif isinstance(value, dict):
            total[key] = Counter(total.get(key, {})) + Counter(value)
        else:
            total[key] = total.get(key, 0) + value
    return total


def stats_json(stats: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in stats.items() if k != "hist"}
    out["hist"] = {name: dict(sorted(c.items(), key=lambda kv: int(kv[0]))) for name, c in stats["hist"].items()}
    for reason in DROP_REASONS:
        out["dropped"].setdefault(reason, 0)
    return out


def summary(stats: dict) -> str:
    s = stats_json(stats)
    lines = [f"documents {s['documents']}  skipped {sum(s['skipped'].values())} {s['skipped']}",
             f"chunks {s['chunks']} (eligible {s['eligible_chunks']})  question replies {s['question_replies']} "
             f"parsed {s['questions_parsed']} unparsable {s['questions_unparsable']}",
             f"pairs kept {s['pairs_kept']} in {s['records']} records  dropped {s['dropped']}  "
             f"chosen == rejected {s['chosen_equals_rejected']}"]
    for name, hist in s["hist"].items():
        lines.append(f"{name} (power-of-two bins, lower bound: count): " + ", ".join(f"{k}: {v}" for k, v in hist.items()))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- one group


@dataclass
class _Turn:
    chunk: str
    question: str = ""
    chosen: str = ""
    rejected: str = ""


def _chat(tokenizer: Any, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def process_group(cfg: Config, docs: list, backend: Any, ref_backend: Any | None) -> tuple[list[dict], dict]:
    """Records and stats of one group of documents (deterministic for the same inputs and seed).

    `backend` is the generator (RoPE override applied); `ref_backend` the original model, or None.
    """
    from longpo.data.chunking import chunk_document
    from longpo.data.prompts import parse_questions, pick_question, question_prompt
    from longpo.data.records import user_content
    from longpo.data.reference import add_reference_logps

    short = ref_backend if cfg.original_for_short_steps and ref_backend is not None else backend
    tok, stats = backend.tokenizer, new_stats()
    work: list[tuple[Any, Any, list[_Turn], random.Random]] = []
    for doc in docs:
        stats["documents"] += 1
        n = _n_tokens(tok, doc.text) if doc.text.strip() else 0
        if n == 0:
            stats["skipped"]["empty"] += 1
            continue
        stats["hist"]["document_tokens"][_bin(n)] += 1
        stats["tokens"] += n
        if n < cfg.min_doc_tokens or n > cfg.max_doc_tokens:
            stats["skipped"]["too_short" if n < cfg.min_doc_tokens else "too_long"] += 1
            continue
        chunked = chunk_document(tok, doc.text, cfg.min_chunk_tokens, cfg.max_chunk_tokens, cfg.separator,
                                 cfg.doc_format)
        stats["chunks"] += len(chunked.chunks)
        stats["eligible_chunks"] += len(chunked.eligible)
        for c in chunked.chunk_tokens:
            stats["hist"]["chunk_tokens"][_bin(c)] += 1
        if not chunked.eligible:
            stats["skipped"]["no_eligible_chunk"] += 1
            continue
        rng = random.Random(f"{cfg.seed}:{doc.id}")
        picked = sorted(rng.sample(chunked.eligible, min(cfg.num_turns, len(chunked.eligible))))
        work.append((doc, chunked, [_Turn(chunk=chunked.chunks[i]) for i in picked], rng))

    # Questions about each chosen chunk; a turn whose reply does not parse is skipped.
    asks = [(w, t) for w in work for t in w[2]]
    replies = short.generate([_chat(tok, [{"role": "user", "content": question_prompt(
        cfg.question_template, t.chunk, cfg.num_questions)}]) for _, t in asks], cfg.question_sampling)
    for (w, turn), reply in zip(asks, replies):
        stats["question_replies"] += 1
        questions = parse_questions(reply, cfg.num_questions)
        if questions is None:
            stats["questions_unparsable"] += 1
            continue
        stats["questions_parsed"] += 1
        turn.question = pick_question(questions, w[3], cfg.question_prefix)
    work = [(d, c, [t for t in turns if t.question], r) for d, c, turns, r in work]

    # Chosen answers on the chunk alone; short-prompt length and chosen filters before the long step.
    asks = [(w, t) for w in work for t in w[2]]
    answers = short.generate([_chat(tok, [{"role": "user", "content": user_content(t.chunk, t.question)}])
                                for _, t in asks], cfg.answer_sampling)
    for (_, turn), answer in zip(asks, answers):
        turn.chosen = answer

    # Rejected answers on the whole document, turn by turn (turn i follows turns < i of its branch). A
    # backend that keeps a document's KV cache between calls (hf) gets one document at a time, so turn
    # i + 1 continues from turn i's cache; batching backends (vllm, openai) get each turn of every
    # document at once and find the shared documents in their own prefix caches.
    kept: dict[int, int] = {id(w): 0 for w in work}
    batches = [[w] for w in work] if getattr(backend, "reuse_across_calls", False) else [work]
    for batch in batches:
        _rejected_turns(cfg, backend, batch, kept, stats)

    records = []
    for w in work:
        turns = w[2][: kept[id(w)]]
        if not turns:
            continue
        records.append({
            "id": w[0].id,
            "document": w[1].context,
            "turns": [{"question": x.question, "chunk": x.chunk, "chosen": x.chosen, "rejected": x.rejected}
                      for x in turns],
            "meta": {"source": w[0].where, "chunks": len(w[1].chunks)},
        })
    if records and cfg.reference and ref_backend is not None:
        add_reference_logps(ref_backend, ref_backend.tokenizer, records)
    stats["records"] = len(records)
    return records, stats


def _rejected_turns(cfg: Config, backend: Any, work: list, kept: dict[int, int], stats: dict) -> None:
    """Rejected answers of `work`'s documents, turn by turn; `kept[doc]` counts its turns that pass
    every filter (a document stops at its first dropped turn: later turns would follow a bad one)."""
    from longpo.data.records import conversation, user_content

    tok = backend.tokenizer
    alive = list(work)
    for t in range(cfg.num_turns):
        round_ = []
        for w in alive:  # filters that need no long answer first
            if len(w[2]) <= t:
                continue
            turn = w[2][t]
            short = _n_tokens(tok, user_content(turn.chunk, turn.question))
            reason = chosen_drop_reason(turn.chosen, short, cfg.filters)
            if reason:
                stats["dropped"][reason] += 1
            else:
                round_.append(w)
        prompts = []
        for w in round_:
            done = [{"question": x.question, "rejected": x.rejected} for x in w[2][:t]]
            messages = conversation(w[1].context, done, "rejected") if done else []
            question = w[2][t].question
            messages.append({"role": "user", "content": user_content(w[1].context, question) if t == 0 else question})
            prompts.append(_chat(tok, messages))
        alive = []
        for w, answer in zip(round_, backend.generate(prompts, cfg.answer_sampling) if prompts else []):
            turn = w[2][t]
            turn.rejected = answer
            reason = drop_reason(answer, cfg.filters)
            if reason:
                stats["dropped"][reason] += 1
                continue
            alive.append(w)
            kept[id(w)] = t + 1
            stats["pairs_kept"] += 1
            stats["chosen_equals_rejected"] += int(turn.chosen.strip() == turn.rejected.strip())
            for text in (turn.chosen, answer):
                n = _n_tokens(tok, text)
                stats["hist"]["answer_tokens"][_bin(n)] += 1
                stats["tokens"] += n


# ---------------------------------------------------------------------------------- the job


def in_shard(doc_id: str, num_shards: int, shard_index: int) -> bool:
    """Deterministic split by a hash of the document id (independent of corpus order)."""
    return int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % num_shards == shard_index


def _groups(cfg: Config, skipped: dict):
    from longpo.data.corpus import iter_documents

    group: list = []
    index = 0
    seen: set[str] = set()  # record ids are document ids: a repeated id would give two records of one id
    for doc in iter_documents(cfg.corpus, cfg.text_field, cfg.id_field, skipped):
        if not in_shard(doc.id, cfg.num_shards, cfg.shard_index):
            continue
        if doc.id in seen:
            log.warning("%s: document id %r seen before; skipped", doc.where, doc.id)
            skipped["duplicate_id"] = skipped.get("duplicate_id", 0) + 1
            continue
        seen.add(doc.id)
        group.append(doc)
        if len(group) == cfg.documents_per_group:
            yield index, group
            index, group = index + 1, []
    if group:
        yield index, group


def _make_backends(cfg: Config) -> tuple[Any, Any]:
    from longpo.backends import make_backend

    rope = {k: v for k, v in (("rope_theta", cfg.rope_theta), ("max_position_embeddings",
                                                                 cfg.max_position_embeddings)) if v is not None}
    # The hf generator keeps a document's KV cache from one turn to the next (see process_group).
    extra = {"reuse_across_calls": True} if cfg.backend == "hf" else {}
    backend = make_backend(cfg.backend, model=cfg.model, tokenizer=cfg.tokenizer, **rope, **{**extra, **cfg.backend_args})
    if not rope:
        return backend, backend
    if cfg.reference or cfg.original_for_short_steps:  # the ORIGINAL model, with its own RoPE
        return backend, make_backend(cfg.backend, model=cfg.model, tokenizer=cfg.tokenizer, **cfg.backend_args)
    return backend, None


def generate(cfg: Config, backend: Any = None, ref_backend: Any = None) -> dict:
    """Run (or resume) the job; returns the stats of everything generated so far in output_dir.

    Library use: pass ready backends (`backend` the generator, `ref_backend` the original model) or
    let them be built from the config.
    """
    from tqdm import tqdm

    from longpo.config import write_resolved_config
    from longpo.data.corpus import CorpusError, iter_documents
    from longpo.files import atomic_write_json, atomic_write_jsonl, atomic_write_text

    if backend is None and cfg.backend != "openai":
        check_local(cfg.model)  # before anything is read or written
    check_rerun(cfg, local_model=cfg.backend != "openai")
    out = Path(cfg.output_dir)
    write_resolved_config(cfg, out)
    manifest_path = out / "manifest.json"
    manifest = _load_manifest(manifest_path, cfg)
    skipped: dict = {}
    total_docs = len({d.id for d in iter_documents(cfg.corpus, cfg.text_field, cfg.id_field, {})
                      if in_shard(d.id, cfg.num_shards, cfg.shard_index)})
    if total_docs == 0:
        raise CorpusError(f"corpus {cfg.corpus}: no documents (in shard {cfg.shard_index} of {cfg.num_shards})")
    if backend is None:
        backend, ref_backend = _make_backends(cfg)
    stats = merge_stats(new_stats(), manifest["stats"])
    done = set(manifest["done_groups"])
    bar = tqdm(total=total_docs, unit="doc", desc="generate", disable=not cfg.progress, file=sys.stderr)
    start, tokens = time.perf_counter(), 0  # tokens read and written by this run (documents + answers)
    try:
        for index, docs in _groups(cfg, skipped):
            if index in done:
                bar.update(len(docs))
                continue
            records, part = process_group(cfg, docs, backend, ref_backend)
            name = f"records-s{cfg.shard_index:03d}-g{index:06d}.jsonl" if records else None
            if name:  # the shard first, then the manifest that marks it done; no empty files for readers
                atomic_write_jsonl(out / name, records)
            stats = merge_stats(stats, part)
            manifest["done_groups"].append(index)
            manifest["shards"][str(index)] = name
            manifest["stats"] = stats_json(stats)
            atomic_write_json(manifest_path, manifest)
            tokens += part["tokens"]
            bar.update(len(docs))
            bar.set_postfix(pairs=stats["pairs_kept"], tok_s=f"{tokens / max(time.perf_counter() - start, 1e-9):.0f}")
    finally:
        bar.close()
        for b in {id(backend): backend, id(ref_backend): ref_backend}.values():
            if b is not None and hasattr(b, "close"):
                b.close()
    stats["skipped"] = Counter(stats["skipped"]) + Counter(skipped)
    final = stats_json(stats)
    atomic_write_json(out / "stats.json", final)
    atomic_write_text(out / "summary.txt", summary(final) + "\n")
    return final


def _load_manifest(path: Path, cfg: Config) -> dict:
    import json

    fresh = {"num_shards": cfg.num_shards, "shard_index": cfg.shard_index, "done_groups": [], "shards": {},
             "stats": stats_json(new_stats())}
    if not path.exists():
        return fresh
    manifest = json.loads(path.read_text())
    if (manifest["num_shards"], manifest["shard_index"]) != (cfg.num_shards, cfg.shard_index):
        raise InputError(f"{path} belongs to shard {manifest['shard_index']} of {manifest['num_shards']}, not "
                         f"{cfg.shard_index} of {cfg.num_shards}: use another output_dir")
    return manifest


def merge(inputs: list[str], output: str) -> dict:
    """Combine the outputs of several shard jobs: records deduplicated by id, stats summed."""
    import json

    from longpo.data.records import read_records
    from longpo.files import atomic_write_json, atomic_write_jsonl

    records, seen, stats = [], set(), new_stats()
    for folder in inputs:
        folder_path = Path(folder)
        if not (folder_path / "manifest.json").exists():
            raise InputError(f"{folder}: no manifest.json (not a `longpo generate` output folder)")
        for rec in read_records(folder_path) if any(folder_path.glob("*.jsonl")) else []:
            if rec["id"] not in seen:
                seen.add(rec["id"])
                records.append(rec)
        stats_file = folder_path / "stats.json"
        part = json.loads(stats_file.read_text()) if stats_file.exists() else json.loads(
            (folder_path / "manifest.json").read_text())["stats"]
        stats = merge_stats(stats, part)
    stats["records"] = len(records)
    out = Path(output)
    if records:  # an empty file would not read back as records
        atomic_write_jsonl(out / "records-merged.jsonl", records)
    atomic_write_json(out / "stats.json", stats_json(stats))
    atomic_write_json(out / "manifest.json", {"merged_from": [str(p) for p in inputs], "records": len(records)})
    return stats_json(stats)


def main(cfg: Config) -> int:
    stats = generate(cfg)
    print(summary(stats))
    print(f"-> {cfg.output_dir}")
    if not stats["records"]:  # the next stage would only find an empty folder
        skipped = {k: v for k, v in stats["skipped"].items() if v}
        dropped = {k: v for k, v in stats["dropped"].items() if v}
        raise InputError(f"{cfg.output_dir}: no pair kept from {stats['documents']} documents (skipped {skipped}, "
                         f"dropped {dropped}, unparsable question replies {stats['questions_unparsable']}); "
                         f"loosen the document length or filter keys, then rerun with overwrite=true")
    return 0

"""`longpo generate`: self-generated short-to-long preference pairs from long documents.

    longpo generate --config generate_tiny
    longpo generate --config generate_mistral-7b-128k --num-shards 8 --shard-index 3
    longpo generate merge --inputs runs/gen/part0 runs/gen/part1 --output runs/gen/all
    longpo generate inspect runs/gen/all --n 5 --seed 0

Per document (the method: docs/method.md, "The data pipeline"): chunk it; for up to `num_turns` chunks ask the model
for `num_questions` questions about the chunk and keep one (prefixed to point back at the text);
chosen = the model's answer given the chunk only; rejected = its answer given the whole document
(turn i after the earlier turns of its own branch; with `prompts=released` on its own); filter; add
the original model's reference log-probs on the short prompts. `prompts` picks the question prompt,
parser, prefix, separators, filters and turns as one preset: `project` (ours) or `released` (the
released LongPO scripts, longpo/data/released_preset.py). Documents are processed in fixed groups;
a group's records are written to their own shard file atomically and only then marked done in
`manifest.json`, so after a crash (even `kill -9`) the same command redoes at most the unfinished
group and never duplicates a pair. Outputs: `records-*.jsonl`, `manifest.json`, `stats.json`, `resolved_config.yaml`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

from longpo.backends import BACKENDS, DEFAULT_BACKEND, backend_names, backend_spec
from longpo.backends.base import Sampling, generate_with_reasons
from longpo.config import help_field
from longpo.data import phases, project_preset, released_preset
from longpo.data.filters import FilterConfig, is_copy, trim_to_sentence
from longpo.data.presets import question_template
from longpo.data.prompts import QUESTION_PARSERS, QUESTION_PREFIX, QUESTION_TEMPLATE
from longpo.data.stats import (
    add_reference_stats,
    merge_stats,
    new_stats,
    power_of_two_bin,
    stats_json,
    summary,
)
from longpo.errors import InputError
from longpo.families import check_model_folder
from longpo.fingerprint import guard, identity, remove

log = logging.getLogger("longpo.generate")
PHASES = ("all", "short", "long")


class GenerationPreset(Protocol):
    """How questions are asked, read and chosen, how chunks are joined and answers filtered (`prompts=NAME`).

    The pipeline below asks the preset and holds no preset's rule; a preset is one file (its rules and
    this object, e.g. longpo/data/project_preset.py) and its entry in `PRESETS`.
    """

    name: str  # chosen by `prompts=NAME`
    keys: tuple[str, ...]  # config keys only it reads; a preset that does not read them refuses them when set
    summary: str  # what it asks and filters by, for that refusal
    separator: str  # default `separator`: joins chunks into the long context
    paragraph_separator: str | None  # joins blocks inside a chunk; None: `separator`
    num_turns: int  # default `num_turns`
    independent_turns: bool  # True: each rejected answer alone over the document, a dropped turn leaves the
    # others; False: turn i follows the rejected turns < i, and a document stops at its first dropped turn
    drop_reasons: tuple[str, ...]  # counted (from 0) in a run's stats: its filters', then the shared checks

    def question_request(self, cfg: Any, chunk: str) -> str: ...  # the user message asking about one chunk
    def parse_questions(self, cfg: Any, reply: str) -> list[str]: ...
    # `earlier`: the questions already picked for the document's earlier turns (for near-duplicates)
    def usable_questions(self, cfg: Any, found: list[str], chunk: str, stats: dict,
                         earlier: list[str]) -> list[str]: ...
    def pick_question(self, cfg: Any, questions: list[str], rng: random.Random) -> str: ...
    def drop_reason(self, cfg: Any, chosen: str, rejected: str | None, branch: str,
                    earlier: list[str]) -> str | None: ...


PRESETS: dict[str, GenerationPreset] = {p.name: p for p in (project_preset.PRESET, released_preset.PRESET)}


@dataclass(kw_only=True)
class Config:
    model: str = help_field(help="the short-context generator: a local model folder (served name for openai)")
    tokenizer: str | None = help_field(None, "tokenizer folder; default: the model folder")
    backend: str = help_field(DEFAULT_BACKEND, f"generation backend: {backend_names()}")
    backend_args: dict = help_field({}, "extra keyword arguments of the backend (dtype, tensor_parallel_size, "
                                        "base_url, concurrency, ...)")
    rope_theta: float | None = help_field(None, "RoPE base of the generator for the long-context (rejected) "
                                                "answers; the reference keeps the original")
    max_position_embeddings: int | None = help_field(None, "max positions of the generator (with rope_theta)")
    original_for_short_steps: bool = help_field(True, "with a RoPE override, questions and chosen answers come from "
                                                      "the original model (pi_S on short prompts) and only the "
                                                      "rejected answers from the generator; false: the generator "
                                                      "does every step (one engine, e.g. vLLM at 128K)")
    short_backend_args: dict = help_field({}, "backend_args overrides for the original model's engine (short steps "
                                              "and phase=short), e.g. {max_model_len: 32768} for a 32K model")
    phase: str = help_field("all", "all: every step in this process; short: questions and chosen answers from the "
                                   "original model only; long: then the rejected answers from the generator, into "
                                   "the same output_dir (separate processes: one engine each, see data/phases.py)")
    corpus: str = help_field(help="long documents: .jsonl, .parquet, a folder of text files or a saved dataset")
    text_field: str = help_field("text", "field holding a document's text (JSONL / Parquet / datasets)")
    id_field: str = help_field("id", "field holding a document's id; absent: a hash of the text")
    output_dir: str = help_field("runs/generate", "shards, manifest.json, stats.json, resolved config")
    doc_format: str = help_field("auto", "block splitting: auto, prose (paragraphs), latex (\\section), code")
    min_doc_tokens: int = help_field(65536, "skip (and count) shorter documents")
    max_doc_tokens: int = help_field(131072, "skip (and count) longer documents")
    min_chunk_tokens: int = help_field(16384, "shortest chunk a question is asked about")
    max_chunk_tokens: int = help_field(30000, "longest chunk")
    prompts: str = help_field(project_preset.PRESET.name, "question prompt, parser, prefix, separators, filters and turns as one "
                                         f"preset: {' or '.join(PRESETS)} (project: ours; released: the released "
                                         "LongPO data scripts; docs/stages/generate.md, 'Presets')")
    separator: str | None = help_field(None, "joins chunks into the long context; default: the preset's (project "
                                             "'\\n\\n', also between paragraphs; released '\\n\\n\\n', paragraphs "
                                             "joined by a space)")
    num_questions: int = help_field(4, "questions asked per chunk; the first this many questions of a reply are used")
    min_questions: int = help_field(1, "a reply with fewer questions is skipped and counted (num_questions: only "
                                       "replies with every question asked, the released rule)")
    question_parser: str = help_field("questions", "how questions are read from a reply: questions (only lines "
                                                   "that are questions, labels stripped, several per line split), "
                                                   "lines (every numbered / bulleted / plain line, the rule "
                                                   "before issue 18) or lenient (items up to their '?', the "
                                                   "example's questions dropped: small models, with "
                                                   "question_template=small)")
    num_turns: int | None = help_field(None, "turns per document, each about a different chunk; default: the "
                                             "preset's (project 2, released 4)")
    question_template: str = help_field(QUESTION_TEMPLATE, "user message asking for questions; placeholders "
                                                           "{chunk} and {k}; or a preset name: paper, small "
                                                           "(longpo/data/presets.py)")
    question_prefix: str = help_field(QUESTION_PREFIX, "put before the chosen question")
    question_sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7, top_p=0.9,
                                                                         max_new_tokens=1024),
                                        metadata={"help": "sampling of the question step"})
    answer_sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.0, max_new_tokens=1024),
                                      metadata={"help": "sampling of the chosen and rejected answers; default "
                                                        "greedy, as the paper's appendix says (the released "
                                                        "script samples at temperature 1.0, top_p 1.0)"})
    num_rejected: int = help_field(1, "rejected answers per turn (M). M > 1: M distinct answers sampled on the long "
                                      "document at rejected_temperature, each filtered like a single one (a draw "
                                      "that fails a filter or repeats another is discarded and counted); a turn "
                                      "still short of M after rejected_retries more rounds is dropped "
                                      "(too_few_rejected). The records' `rejected` is then a list of M")
    rejected_temperature: float = help_field(1.0, "sampling temperature of the rejected answers when num_rejected "
                                                  "> 1 (distinct answers need sampling; answer_sampling's top_p, "
                                                  "max_new_tokens and seed apply, each draw with its own seed)")
    rejected_retries: int = help_field(2, "with num_rejected > 1: further rounds of draws for the answers a turn "
                                          "still lacks")
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
        if self.prompts not in PRESETS:
            raise ValueError(f"prompts={self.prompts!r}: choose one of {list(PRESETS)}")
        preset = PRESETS[self.prompts]
        if self.separator is None:
            self.separator = preset.separator
        if self.num_turns is None:
            self.num_turns = preset.num_turns
        for name in ("num_questions", "num_turns", "documents_per_group", "num_rejected"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        self.question_template = question_template(self.question_template)
        if self.num_rejected > 1 and self.rejected_temperature <= 0:
            raise ValueError(f"num_rejected={self.num_rejected} needs rejected_temperature > 0: greedy decoding gives "
                             "one answer however often it is asked")
        if self.rejected_retries < 0:
            raise ValueError(f"rejected_retries={self.rejected_retries} must be at least 0")
        if not 1 <= self.min_questions <= self.num_questions:
            raise ValueError(f"min_questions={self.min_questions} must lie in [1, num_questions={self.num_questions}]")
        if self.question_parser not in QUESTION_PARSERS:
            raise ValueError(f"question_parser={self.question_parser!r}: choose one of {sorted(QUESTION_PARSERS)}")
        if "{chunk}" not in self.question_template:
            raise ValueError("question_template must contain {chunk}")
        for name, other in PRESETS.items():
            if name != self.prompts and (keys := _keys_set(self, [k for k in other.keys if k not in preset.keys])):
                raise ValueError(f"prompts={self.prompts} {preset.summary}; {', '.join(keys)} apply to "
                                 f"prompts={name}: drop them, or set prompts={name}")
        if self.phase not in PHASES:
            raise ValueError(f"phase={self.phase!r}: choose one of {list(PHASES)}")
        if self.phase != "all" and self.reference:
            raise ValueError(f"phase={self.phase}: the reference log-probs need the rejected answers of phase=long; "
                             "set reference=false and run `longpo reference` with the original model afterwards")
        if self.phase != "all" and not self.original_for_short_steps:
            raise ValueError(f"phase={self.phase} splits the original model's short steps from the generator's long "
                             "step; with original_for_short_steps=false use phase=all (one engine does every step)")
        spec = backend_spec(self.backend)
        if (self.phase == "all" and spec.one_engine_per_process and (self.rope_theta or self.max_position_embeddings)
                and (self.reference or self.original_for_short_steps)):
            raise ValueError(f"backend={self.backend} with a RoPE override needs the original model as well: two "
                             f"{self.backend} engines in one process would share one GPU. Run phase=short, then "
                             "phase=long (with reference=false; then `longpo reference`), or let `longpo evolve` do it")
        if not spec.rope_override and (self.rope_theta or self.max_position_embeddings):
            raise ValueError(f"rope_theta / max_position_embeddings apply to the backends "
                             f"{[n for n, b in BACKENDS.items() if b.rope_override]}; with backend={self.backend} "
                             "the RoPE is set where the model is served")


def _keys_set(cfg: Config, keys: list[str]) -> list[str]:
    """Those of `keys` (`name` or `filters.name`) that `cfg` sets to other than their defaults."""
    defaults, filters = {f.name: f.default for f in fields(Config)}, FilterConfig()
    return [k for k in keys if (getattr(cfg.filters, k[8:]) != getattr(filters, k[8:]) if k.startswith("filters.")
                                else getattr(cfg, k) != defaults[k])]


# Keys that do not change the records (a rerun with other values resumes); every other key, the
# sharding of the corpus included (num_shards, shard_index, documents_per_group), is in the fingerprint.
# Each phase keeps its own fingerprint (phase=short and phase=long share one output_dir by design).
FINGERPRINT_EXEMPT = ("output_dir", "progress", "phase")
OUTPUTS = {"all": ("records-s*-g*.jsonl", "manifest.json", "stats.json", "summary.txt", "resolved_config.yaml"),
           "short": ("short-s*-g*.json", "manifest.short.json", "resolved_config.short.yaml")}
OUTPUTS["long"] = OUTPUTS["all"]


def check_rerun(cfg: Config, local_model: bool) -> None:
    """A rerun into output_dir resumes only with the same settings and inputs (longpo.fingerprint)."""
    inputs = {"corpus": identity(cfg.corpus)}
    if local_model:
        inputs |= {"model": identity(cfg.model), "tokenizer": identity(cfg.tokenizer)}
    stage = "generate" if cfg.phase == "all" else f"generate.{cfg.phase}"
    guard(stage, cfg.output_dir, cfg, FINGERPRINT_EXEMPT, inputs, cfg.overwrite,
          lambda: remove(cfg.output_dir, OUTPUTS[cfg.phase]))


# ---------------------------------------------------------------------------------- one group


@dataclass
class _Turn:
    chunk: str
    question: str = ""
    chosen: str = ""
    rejected: list[str] = field(default_factory=list)  # M answers, kept ones in branch order
    chosen_cut: bool = False  # trimmed after hitting max_new_tokens: its end-of-turn token was not generated
    rejected_cut: list[bool] = field(default_factory=list)
    chosen_truncated: bool = False  # hit max_new_tokens and could not be used (truncated=drop, or no sentence)
    kept: bool = False  # passed every filter: a turn of the record


def _chat(tokenizer: Any, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _generate(backend: Any, prompts: list[str], sampling: Sampling, stage: str, stats: dict) -> list[tuple[str, bool]]:
    """(text, hit max_new_tokens) per prompt, with the stage's counts and seconds.

    A backend that does not report finish reasons is judged by length: a completion that re-tokenises
    to max_new_tokens tokens or more is taken as cut off (counted under finish_unknown).
    """
    if not prompts:
        return []
    start = time.perf_counter()
    texts, reasons = generate_with_reasons(backend, prompts, sampling)
    stats["seconds"][stage] += time.perf_counter() - start
    stats["generated"][stage] += len(prompts)
    out = []
    for text, reason in zip(texts, reasons):
        if reason is None:
            stats["finish_unknown"][stage] += 1
            reason = "length" if _n_tokens(backend.tokenizer, text) >= sampling.max_new_tokens else "stop"
        stats["truncated"][stage] += int(reason == "length")
        out.append((text, reason == "length"))
    return out


def _complete_answer(text: str, cut_off: bool, cfg: FilterConfig, stage: str, stats: dict) -> tuple[str, bool, bool]:
    """(answer, cut, unusable) of an answer that may have hit max_new_tokens: with truncated=trim it ends
    at its last complete sentence (unusable when it has none); with keep it stays as generated; with drop
    it is unusable. A cut answer is trained without an end-of-turn label (records.py)."""
    if not cut_off:
        return text, False, False
    if cfg.truncated == "keep":
        stats["kept_cut"][stage] += 1
        return text, True, False
    if cfg.truncated == "trim" and (trimmed := trim_to_sentence(text)):
        stats["trimmed"][stage] += 1
        return trimmed, True, False
    return text, False, True


def _questions(cfg: Config, reply: str, cut_off: bool, chunk: str, stats: dict, earlier: list[str]) -> list[str]:
    """The usable questions of one reply (empty: the turn is skipped, counted by reason); `earlier`: the
    questions picked for the document's earlier turns."""
    if cut_off:  # the last line may be a question cut in the middle: keep it only if it got its "?"
        lines = reply.rstrip().splitlines()
        if lines and not lines[-1].rstrip().endswith("?"):
            reply = "\n".join(lines[:-1])
    preset = PRESETS[cfg.prompts]
    found = preset.parse_questions(cfg, reply)
    stats["questions_found"] += len(found)
    stats["hist"]["questions_per_reply"][str(len(found))] += 1
    return preset.usable_questions(cfg, found, chunk, stats, earlier)


def process_group(cfg: Config, docs: list, backend: Any, ref_backend: Any | None) -> tuple[list[dict], dict]:
    """Records and stats of one group of documents (deterministic for the same inputs and seed).

    `backend` is the generator (RoPE override applied); `ref_backend` the original model, or None.
    """
    from longpo.data.chunking import chunk_document
    from longpo.data.records import tokenize_short, user_content
    from longpo.data.reference import add_reference_logps

    preset = PRESETS[cfg.prompts]
    short = ref_backend if cfg.original_for_short_steps and ref_backend is not None else backend
    reasons = preset.drop_reasons + (("too_few_rejected",) if cfg.num_rejected > 1 else ())
    tok, stats = backend.tokenizer, new_stats(reasons)
    work: list[tuple[Any, Any, list[_Turn], random.Random]] = []
    for doc in docs:
        stats["documents"] += 1
        n = _n_tokens(tok, doc.text) if doc.text.strip() else 0
        if n == 0:
            stats["skipped"]["empty"] += 1
            continue
        stats["hist"]["document_tokens"][power_of_two_bin(n)] += 1
        stats["tokens"] += n
        if n < cfg.min_doc_tokens or n > cfg.max_doc_tokens:
            stats["skipped"]["too_short" if n < cfg.min_doc_tokens else "too_long"] += 1
            continue
        chunked = chunk_document(tok, doc.text, cfg.min_chunk_tokens, cfg.max_chunk_tokens, cfg.separator,
                                 cfg.doc_format, preset.paragraph_separator)
        stats["chunks"] += len(chunked.chunks)
        stats["eligible_chunks"] += len(chunked.eligible)
        for c in chunked.chunk_tokens:
            stats["hist"]["chunk_tokens"][power_of_two_bin(c)] += 1
        if not chunked.eligible:
            stats["skipped"]["no_eligible_chunk"] += 1
            continue
        rng = random.Random(f"{cfg.seed}:{doc.id}")
        picked = sorted(rng.sample(chunked.eligible, min(cfg.num_turns, len(chunked.eligible))))
        work.append((doc, chunked, [_Turn(chunk=chunked.chunks[i]) for i in picked], rng))

    # Questions about each chosen chunk; a turn left without a usable question is skipped.
    asks = [(w, t) for w in work for t in w[2]]
    replies = _generate(short, [_chat(tok, [{"role": "user", "content": preset.question_request(cfg, t.chunk)}])
                                for _, t in asks], cfg.question_sampling, "question", stats)
    for (w, turn), (reply, cut_off) in zip(asks, replies):
        stats["question_replies"] += 1
        before = next(i for i, x in enumerate(w[2]) if x is turn)
        earlier = [x.question for x in w[2][:before] if x.question]  # this document's turns before this one
        questions = _questions(cfg, reply, cut_off, turn.chunk, stats, earlier)
        if questions:  # w[3]: the document's own rng (seed and id), so a rerun or resume picks the same
            turn.question = preset.pick_question(cfg, questions, w[3])
    work = [(d, c, [t for t in turns if t.question], r) for d, c, turns, r in work]

    # Chosen answers on the chunk alone; short-prompt length and chosen filters before the long step.
    asks = [(w, t) for w in work for t in w[2]]
    answers = _generate(short, [_chat(tok, [{"role": "user", "content": user_content(t.chunk, t.question)}])
                                for _, t in asks], cfg.answer_sampling, "chosen", stats)
    for (_, turn), (answer, cut_off) in zip(asks, answers):
        turn.chosen, turn.chosen_cut, turn.chosen_truncated = _complete_answer(answer, cut_off, cfg.filters,
                                                                                "chosen", stats)

    # Rejected answers on the whole document, turn by turn (turn i follows turns < i of its branch; with
    # independent turns, each on its own). A backend that keeps a document's KV cache between calls (hf) gets
    # one document at a time, so turn i + 1 continues from turn i's cache; batching backends (vllm,
    # openai) get each turn of every document at once and find the shared documents in their own prefix
    # caches.
    batches = [[w] for w in work] if getattr(backend, "reuse_across_calls", False) else [work]
    for batch in batches:
        _rejected_turns(cfg, backend, batch, stats)

    records = []
    for w in work:
        turns = [x for x in w[2] if x.kept]
        if not turns:
            continue
        out_turns, counts = [], []
        single = cfg.num_rejected == 1  # one rejected answer: a string, as records always held
        for x in turns:
            out = {"question": x.question, "chunk": x.chunk, "chosen": x.chosen,
                   "rejected": x.rejected[0] if single else x.rejected}
            if x.chosen_cut:
                out["chosen_cut"] = True
            if any(x.rejected_cut):
                out["rejected_cut"] = True if single else x.rejected_cut
            out_turns.append(out)
            # Response tokens of each short (reference) sequence: for per-token log-probs in the stats.
            n = [sum(tokenize_short(tok, x.chunk, x.question, a, cut)[1]) for a, cut in
                 [(x.chosen, x.chosen_cut), *zip(x.rejected, x.rejected_cut)]]
            counts.append(n if single else [n[0], n[1:]])
        records.append({
            "id": w[0].id,
            "document": w[1].context,
            "turns": out_turns,
            "meta": {"source": w[0].where, "chunks": len(w[1].chunks), "answer_tokens": counts},
        })
    if records and cfg.reference and ref_backend is not None:
        start = time.perf_counter()
        add_reference_logps(ref_backend, ref_backend.tokenizer, records)
        stats["seconds"]["reference"] += time.perf_counter() - start
        add_reference_stats(stats, records)
    stats["records"] = len(records)
    return records, stats


def _turn_drop_reason(cfg: Config, turn: _Turn, branch: str, truncated: bool, earlier: list[str],
                      rejected: str | None = None) -> str | None:
    """Why the turn's `branch` answer (already trimmed where allowed; for "rejected", the answer `rejected`)
    cannot be trained on, or None (the preset's filters; `earlier`: the answers of the turns before, for copies)."""
    if truncated:
        return "truncated"
    return PRESETS[cfg.prompts].drop_reason(cfg, turn.chosen, rejected, branch, earlier)


def _rejected_sampling(cfg: Config, round_: int, j: int) -> Sampling:
    """The sampling of draw (round, answer j): `answer_sampling` itself for M = 1; for M > 1 at
    `rejected_temperature`, each draw with its own seed (the same prompt, asked again, gives another answer)."""
    if cfg.num_rejected == 1:
        return cfg.answer_sampling
    return replace(cfg.answer_sampling, temperature=cfg.rejected_temperature,
                   seed=cfg.answer_sampling.seed + round_ * cfg.num_rejected + j)


def _rejected_prompt(cfg: Config, w: Any, t: int, j: int, tok: Any) -> str:
    """The long prompt of turn t's rejected answer j: turn t alone (independent turns), or after the turns
    < t of rejected branch j."""
    from longpo.data.records import conversation, user_content

    question = w[2][t].question
    if PRESETS[cfg.prompts].independent_turns:  # one user message: the whole document and this question
        messages = [{"role": "user", "content": user_content(w[1].context, question)}]
    else:
        done = [{"question": x.question, "rejected": x.rejected[j]} for x in w[2][:t]]
        messages = conversation(w[1].context, done, "rejected") if done else []
        messages.append({"role": "user", "content": user_content(w[1].context, question) if t == 0 else question})
    return _chat(tok, messages)


def _rejected_turns(cfg: Config, backend: Any, work: list, stats: dict) -> None:
    """Rejected answers of `work`'s documents, turn by turn; a turn that passes every filter is marked kept.
    Turns that follow each other (the project preset): a document stops at its first dropped turn (later
    turns would follow a bad one); independent turns (released): each rejected answer is asked on its own,
    so a dropped turn leaves the others.

    M = num_rejected > 1: answer j of turn t follows answer j of the turns before (branch j). A draw that a
    filter drops, or that repeats (`is_copy`) an answer the turn already holds, is discarded and counted in
    `rejected_discarded`; the answers still missing are drawn again, up to `rejected_retries` more rounds;
    a turn still short of M is dropped as `too_few_rejected`. M = 1 is one draw: a dropped answer drops
    the turn under the answer's reason."""
    from longpo.data.records import user_content

    m, independent = cfg.num_rejected, PRESETS[cfg.prompts].independent_turns
    tok = backend.tokenizer
    alive = list(work)
    for t in range(cfg.num_turns):
        round_ = []
        for w in alive:  # filters that need no long answer first
            if len(w[2]) <= t:
                continue
            turn = w[2][t]
            earlier = [a for x in w[2][:t] for a in (x.chosen, *x.rejected)]
            too_long = _n_tokens(tok, user_content(turn.chunk, turn.question)) > cfg.filters.max_short_prompt_tokens
            reason = "short_prompt_too_long" if too_long else _turn_drop_reason(cfg, turn, "chosen",
                                                                                turn.chosen_truncated, earlier)
            if reason:
                stats["dropped"][reason] += 1
            else:
                round_.append(w)
        drawn: dict[int, list] = {id(w): [None] * m for w in round_}  # per answer j: (text, cut, equals chosen)
        failed: dict[int, str] = {}  # M = 1: why the turn's one answer was dropped
        for r in range(1 if m == 1 else 1 + cfg.rejected_retries):
            for j in range(m):
                asks = [w for w in round_ if drawn[id(w)][j] is None and id(w) not in failed]
                prompts = [_rejected_prompt(cfg, w, t, j, tok) for w in asks]
                for w, (answer, cut_off) in zip(asks, _generate(backend, prompts, _rejected_sampling(cfg, r, j),
                                                                "rejected", stats)):
                    turn, held = w[2][t], [a[0] for a in drawn[id(w)] if a is not None]
                    text, cut, truncated = _complete_answer(answer, cut_off, cfg.filters, "rejected", stats)
                    earlier = [a for x in w[2][:t] for a in (x.chosen, *x.rejected)]
                    reason = _turn_drop_reason(cfg, turn, "rejected", truncated, earlier, text)
                    same = is_copy(text, [turn.chosen])
                    if reason is None and same and cfg.filters.drop_chosen_equals_rejected:
                        reason = "chosen_equals_rejected"
                    if reason is None and is_copy(text, held):
                        reason = "duplicate_rejected"
                    if reason is None:
                        drawn[id(w)][j] = (text, cut, same)
                    elif m == 1:
                        failed[id(w)] = reason
                    else:
                        stats["rejected_discarded"][reason] += 1
        passed = []
        for w in round_:
            turn, answers = w[2][t], drawn[id(w)]
            if any(a is None for a in answers):
                stats["dropped"][failed.get(id(w), "too_few_rejected")] += 1
                continue
            turn.rejected, turn.rejected_cut = [a[0] for a in answers], [a[1] for a in answers]
            passed.append(w)
            turn.kept = True
            stats["pairs_kept"] += 1
            stats["rejected_kept"] += m
            stats["chosen_equals_rejected"] += sum(a[2] for a in answers)
            for branch, text in (("chosen", turn.chosen), *(("rejected", a) for a in turn.rejected)):
                n = _n_tokens(tok, text)
                stats["hist"][f"{branch}_tokens"][power_of_two_bin(n)] += 1
                stats["answer_tokens"][branch] += n
                stats["tokens"] += n
        if not independent:
            alive = passed


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


def _original_backend(cfg: Config) -> Any:
    from longpo.backends import make_backend

    return make_backend(cfg.backend, model=cfg.model, tokenizer=cfg.tokenizer,
                        **{**cfg.backend_args, **cfg.short_backend_args})


def _make_backends(cfg: Config) -> tuple[Any, Any]:
    from longpo.backends import make_backend

    if cfg.phase == "short":  # the original model alone; no long model is built in this process
        return None, _original_backend(cfg)
    rope = {k: v for k, v in (("rope_theta", cfg.rope_theta), ("max_position_embeddings",
                                                                 cfg.max_position_embeddings)) if v is not None}
    # A generator that can keep a document's KV cache from one turn to the next does (see process_group).
    extra = {"reuse_across_calls": True} if backend_spec(cfg.backend).reuse_across_calls else {}
    backend = make_backend(cfg.backend, model=cfg.model, tokenizer=cfg.tokenizer, **rope, **{**extra, **cfg.backend_args})
    if cfg.phase == "long":  # the short steps are replayed from phase=short, group by group
        return backend, None
    if not rope:
        return backend, backend
    if cfg.reference or cfg.original_for_short_steps:  # the ORIGINAL model, with its own RoPE
        return backend, _original_backend(cfg)
    return backend, None


def generate(cfg: Config, backend: Any = None, ref_backend: Any = None) -> dict:
    """Run (or resume) the job; returns the stats of everything generated so far in output_dir.

    Library use: pass ready backends (`backend` the generator, `ref_backend` the original model) or
    let them be built from the config.
    """
    from tqdm import tqdm

    from longpo.config import write_resolved_config
    from longpo.data.corpus import CorpusError
    from longpo.files import atomic_write_json, atomic_write_jsonl, atomic_write_text

    if backend is None:  # before anything is read or written: the folder, its family, the RoPE override
        check_model_folder(cfg.model, cfg.backend, rope_theta=cfg.rope_theta,
                           max_position_embeddings=cfg.max_position_embeddings)
    check_rerun(cfg, local_model=backend_spec(cfg.backend).local_model)
    out = Path(cfg.output_dir)
    write_resolved_config(cfg, out, name="resolved_config.short.yaml" if cfg.phase == "short" else "resolved_config.yaml")
    manifest_path = out / ("manifest.short.json" if cfg.phase == "short" else "manifest.json")
    manifest = _load_manifest(manifest_path, cfg)
    skipped: dict = {}
    groups = _groups(cfg, skipped)  # the corpus is read once, as generation goes (no counting pass)
    first = next(groups, None)
    if first is None and cfg.num_shards == 1:  # one shard of many may hold no document
        raise CorpusError(f"corpus {cfg.corpus}: no documents (in shard {cfg.shard_index} of {cfg.num_shards})")
    if backend is None:
        backend, ref_backend = _make_backends(cfg)
    stats = merge_stats(new_stats(), manifest["stats"])
    done = set(manifest["done_groups"])
    bar = tqdm(unit="doc", desc="generate", disable=not cfg.progress, file=sys.stderr)  # total unknown: one pass
    start, tokens = time.perf_counter(), 0  # tokens read and written by this run (documents + answers)
    try:
        for index, docs in itertools.chain([first] if first is not None else [], groups):
            if index in done:
                bar.update(len(docs))
                continue
            if cfg.phase == "short":
                manifest["shards"][str(index)] = _short_phase_group(cfg, out, index, docs, ref_backend)
                manifest["done_groups"].append(index)
                atomic_write_json(manifest_path, manifest)
                bar.update(len(docs))
                continue
            if cfg.phase == "long":
                ref_backend = _replay(cfg, out, index, backend.tokenizer)
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
        if not manifest_path.exists():  # a shard without documents still leaves its (empty) output
            atomic_write_json(manifest_path, manifest)
    finally:
        bar.close()
        for b in {id(backend): backend, id(ref_backend): ref_backend}.values():
            if b is not None and hasattr(b, "close"):
                b.close()
    if cfg.phase == "short":
        return stats_json(stats)
    stats["skipped"] = merge_stats(Counter(stats["skipped"]), skipped)
    final = stats_json(stats)
    atomic_write_json(out / "stats.json", final)
    atomic_write_text(out / "summary.txt", summary(final) + "\n")
    return final


def _short_phase_group(cfg: Config, out: Path, index: int, docs: list, original: Any) -> str:
    """phase=short: the group's question and chosen-answer calls, saved for phase=long; returns the file name."""
    from longpo.files import atomic_write_json

    recording = phases.Recording(original)
    process_group(cfg, docs, phases.NoLongModel(recording.tokenizer), recording)
    name = phases.short_file(cfg.shard_index, index)
    atomic_write_json(out / name, {"group": index, "documents": [d.id for d in docs], "calls": recording.calls})
    return name


def _replay(cfg: Config, out: Path, index: int, tokenizer: Any) -> Any:
    import json

    path = out / phases.short_file(cfg.shard_index, index)
    short_manifest = out / "manifest.short.json"
    done = json.loads(short_manifest.read_text())["done_groups"] if short_manifest.exists() else []
    if index not in done or not path.exists():
        raise InputError(f"{out}: group {index} has no phase=short output ({path.name}); run `longpo generate "
                         "phase=short` with the same config and output_dir first")
    return phases.Replay(json.loads(path.read_text())["calls"], tokenizer, str(path))


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
    """Combine the outputs of several shard jobs: records deduplicated and sorted by id, stats summed.

    Records stay in their memory-mapped tables; only (id, table, row) is held, then each record is
    copied into the merged file in id order (which does not depend on how the corpus was sharded).
    """
    import json
    import os

    from longpo.data.record_table import RecordTable
    from longpo.files import atomic_write_json

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    merged, tmp = out / "records-merged.jsonl", out / f".records-merged.jsonl.tmp.{os.getpid()}"
    tables, where, stats = [], {}, new_stats()
    for folder in inputs:
        folder_path = Path(folder)
        if not (folder_path / "manifest.json").exists():
            raise InputError(f"{folder}: no manifest.json (not a `longpo generate` output folder)")
        table = RecordTable(folder_path) if any(folder_path.glob("*.jsonl")) else None
        if table is not None:
            tables.append(table)
            for row, rid in enumerate(table.ids):
                where.setdefault(rid, (len(tables) - 1, row))
        stats_file = folder_path / "stats.json"
        part = json.loads(stats_file.read_text()) if stats_file.exists() else json.loads(
            (folder_path / "manifest.json").read_text())["stats"]
        stats = merge_stats(stats, part)
    if where:  # an empty file would not read back as records
        with open(tmp, "w", encoding="utf-8") as f:
            for rid in sorted(where):
                t, row = where[rid]
                f.write(json.dumps(tables[t][row], ensure_ascii=False) + "\n")
        os.replace(tmp, merged)
    stats["records"] = len(where)
    atomic_write_json(out / "stats.json", stats_json(stats))
    atomic_write_json(out / "manifest.json", {"merged_from": [str(p) for p in inputs], "records": len(where)})
    return stats_json(stats)


def main(cfg: Config) -> int:
    stats = generate(cfg)
    print(summary(stats))
    print(f"-> {cfg.output_dir}")
    if cfg.phase != "short" and not stats["records"]:  # the next stage would only find an empty folder
        skipped = {k: v for k, v in stats["skipped"].items() if v}
        dropped = {k: v for k, v in stats["dropped"].items() if v}
        no_question = {k: v for k, v in stats["turns_without_question"].items() if v}
        raise InputError(f"{cfg.output_dir}: no pair kept from {stats['documents']} documents (skipped {skipped}, "
                         f"dropped {dropped}, turns without a question {no_question}, unparsable question replies "
                         f"{stats['questions_unparsable']}); loosen the document length or filter keys, then rerun "
                         f"with overwrite=true")
    return 0

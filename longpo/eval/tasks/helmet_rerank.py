"""HELMET's passage re-ranking (MS MARCO) from its released files, scored by NDCG@10 as trec_eval computes it.

File as HELMET's `scripts/download_data.sh` unpacks it: data/msmarco/test_reranking_data_k1000_dep3.jsonl (test,
k = passages per query; k14 .. k600 for shorter inputs) and test_reranking_data_k10_dep3.jsonl (demos); each line
{qid, query, ctxs: [{id, text, label, (title)}]}, `label` the graded relevance.

Protocol, as princeton-nlp/HELMET `data.py` (`load_msmarco_rerank`), `utils.py` (`parse_rankings`,
`calculate_retrieval_metrics`) and configs/rerank.yaml (2 shots, 100 queries, 200 new tokens, stop at a newline,
no chat template, seed 42):
- samples: `random.sample(sorted(keys), n)` after `random.seed(seed)`, keys the `qid`s (else the queries), file
  order kept;
- demos: when the demo file holds more than twice as many rows as the sample, every sampled qid is dropped from
  it, else only the question's own; then shuffled with seed sha256(qid) mod 2**31, de-duplicated by qid, the
  first `shots`, each its passages, "Query: ..." and its gold "Ranking: 3 > 1 > 2" (passages by label, stable);
- passages "[ID: {id}] Document (Title: {title}): {text}" (no title: "[ID: {id}] Document: {text}") joined
  by blank lines;
- score: the output ("Ranking:" put back for base models) parsed by `parse_rankings` (brackets and colons
  dropped, "id" removed, the longest "n > n > ..." run of integers; an id seen again keeps its first rank)
  into scores len - i; NDCG@10 of that run against the query's labels as pytrec_eval's `ndcg_cut_10`
  (`ndcg_at_k` below, trec_eval's code written out), rounded to 5 decimals per query (HELMET scores one
  query per call), x 100, mean over queries.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from pathlib import Path

from longpo.eval.fitting import PromptFormat
from longpo.eval.tasks.helmet import (
    CATEGORY,
    MAX_NEW_TOKENS,
    HelmetPrompt,
    hf_shuffle_order,
    read_rows,
    require_fields,
)

USER = ("You are provided with a list of documents, each indicated by their ID. Rank each document based on their "
        "relevance to the question in descending order from most relelvant to least relevant texts. Include all "
        "documents in the rankings. Write your answer using the unique IDs, with the following format:\n"
        "Ranking: ID3 > ID1 > ID2\n\n{demos}{context}\n\nQuery: {question}")  # "relelvant": HELMET's spelling
SYSTEM = "Ranking:"
PASSAGE_TITLE = "[ID: {id}] Document (Title: {title}): {text}"
PASSAGE = "[ID: {id}] Document: {text}"


def parse_rankings(output: str) -> dict[str, int]:
    """utils.py `parse_rankings`: doc id -> score (len - position), from the longest run of 'n > n > ...'."""
    output = re.sub(r"[\[\]:]", "", output).lower().replace("id", "")
    longest = ""
    for m in re.finditer(r"(\d+)(?:\s*>\s*(\d+))*", output):
        if len(m.group(0)) > len(longest):
            longest = m.group(0)
    rankings = [n.strip() for n in longest.split(">") if n.strip().isdigit()] if longest else [output]
    results: dict[str, int] = {}
    for i, doc in enumerate(rankings):
        results.setdefault(doc, len(rankings) - i)
    return results


def ndcg_at_k(run: dict[str, float], qrels: dict[str, int], k: int = 10) -> float:
    """trec_eval's ndcg_cut.k (m_ndcg_cut.c, default gains), which pytrec_eval runs for HELMET:

        ranking  the run's documents by score descending, ties by document id descending (strcmp)
        DCG@k    = sum over the first k ranks i = 1..k of gain(doc_i) / log2(i + 1)
        gain     = the document's relevance in qrels; 0 for a document not in qrels
        IDCG@k   = the same sum over qrels' gains sorted descending (every judged document, retrieved or not)
        NDCG@k   = DCG@k / IDCG@k, 0 when IDCG@k = 0
    """
    ranked = sorted(run, key=lambda d: (-run[d], _desc(d)))
    dcg = sum(qrels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if qrels.get(d, 0))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def _desc(doc: str) -> tuple[int, ...]:
    """A key that sorts ids in decreasing strcmp (byte) order under an ascending sort."""
    return tuple(-b for b in doc.encode()) + (1,)


class RerankTask(HelmetPrompt):
    def __init__(self, task: str, path: str | Path, fmt: PromptFormat, demo_path: str | Path | None = None,
                 max_length: int = 131072, num_samples: int = 100, shots: int = 2, seed: int = 42):
        if task != "msmarco":
            raise ValueError(f"unknown HELMET re-rank task {task!r}; the one there is: msmarco")
        self.task, self.fmt, self.max_length, self.shots = task, fmt, max_length, shots
        self.max_new_tokens = MAX_NEW_TOKENS[task]
        self.name = f"helmet/{task}"
        self.metadata = {"suite": "helmet", "task": task, "category": CATEGORY[task], "length": max_length,
                         "metric": "NDCG@10"}
        self.user, self.system = USER, SYSTEM
        rows = read_rows(path)
        require_fields(rows, path, ("qid", "query", "ctxs"))
        if demo_path is None and shots > 0:
            raise ValueError(f"helmet {task}: shots={shots} needs its demo file (helmet.demos.{task})")
        demos = read_rows(demo_path) if shots > 0 else []
        key = "qid" if "qid" in rows[0] else "query"
        if num_samples >= 0:
            keys = sorted({r[key] for r in rows})
            picked = set(random.Random(seed).sample(keys, min(num_samples, len(keys))))
            rows = [r for r in rows if r[key] in picked]
        if len(demos) > 2 * len(rows):  # the whole sample left out of the demos at once, as data.py
            qids = {r["qid"] for r in rows}
            demos = [d for d in demos if d["qid"] not in qids]
        self.items = [self._item(r, demos) for r in rows]

    @classmethod
    def from_config(cls, task: str, path, demo_path, fmt: PromptFormat, h) -> RerankTask:
        """From `longpo eval`'s helmet.* keys (HelmetConfig)."""
        return cls(task, path, fmt, demo_path, h.max_length, h.num_samples, h.shots, h.seed)

    def _item(self, row: dict, demos: list[dict]) -> dict:
        template = PASSAGE_TITLE if "title" in row["ctxs"][0] else PASSAGE
        demo_text = ""
        if self.shots > 0:
            pool = [d for d in demos if d["qid"] != row["qid"]]
            h = int(hashlib.sha256(row["qid"].encode("utf-8")).hexdigest(), 16) % 2**31
            chosen, seen = [], set()
            for i in hf_shuffle_order(len(pool), h):  # shuffle(seed=h), drop_duplicates("qid"), select(shots)
                if pool[i]["qid"] not in seen:
                    seen.add(pool[i]["qid"])
                    chosen.append(pool[i])
            if len(chosen) < self.shots:
                raise ValueError(f"helmet {self.task}: the demo file holds {len(chosen)} distinct queries other "
                                 f"than the test ones, fewer than shots={self.shots}")
            for d in chosen[:self.shots]:
                ranking = " > ".join(c["id"] for c in sorted(d["ctxs"], key=lambda c: c["label"], reverse=True))
                demo_text += ("\n\n".join(template.format(**c) for c in d["ctxs"])
                              + f"\n\nQuery: {d['query']}\nRanking: {ranking}\n\n")
        return {"context": "\n\n".join(template.format(**c) for c in row["ctxs"]), "question": row["query"],
                "demos": demo_text, "answers": {c["id"]: int(c["label"]) for c in row["ctxs"]}, "id": row["qid"]}

    def score(self, example: dict, prediction: str) -> float:
        run = parse_rankings(self.completion(prediction))
        return 100.0 * round(ndcg_at_k(run, example["answers"], 10), 5)

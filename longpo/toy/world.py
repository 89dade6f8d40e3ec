"""A seeded toy world where a tiny model can learn lookup on short documents and fail on long ones.

A document is paragraphs of filler sentences with facts among them, "name VALUE ." (each name at
most once per document, every value one token). The chat skills of the base model:
    answer:  user "<document>\\n\\nwhat is the code of Name ?"   assistant "name VALUE ."
    ask:     user "<document>\\n\\nwrite K questions ."          assistant "1. what is the code of Ann ?\\n2. ..."

The answer restates the name right before the value, as the document has it: the lookup becomes an
induction-style copy ("name" seen before -> the token that followed it), which a two-layer model
learns in minutes; a bare "VALUE ." after the question is not learned at this scale.
Questions spell the name capitalised, a token of its own, so that the document holds the only
earlier "name": with the same token in the question, the copy mostly found the question instead.
Short documents (1-8 facts, at most two filler sentences: under 50 tokens) train the base model; long
documents (many facts, hundreds of tokens, positions it never saw) are where it fails and where
LongPO's pairs come from.
Every word is one token of a word-level tokenizer with the chat template of `longpo.toy.tiny`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from longpo.toy.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS

NAMES = ("alice bob carol dave erin frank grace heidi ivan judy karl liam mona nick olga paul quinn rosa sam "
         "tina uma victor wendy zoe").split()
VALUES = [str(i) for i in range(10, 60)]
FILLER = ("the river runs past an old mill and a green field near the quiet town where people walk slowly "
          "under tall trees while birds sing over warm stone roads").split()
NUMBERS = [str(i) for i in range(1, 9)] + [f"{i}." for i in range(1, 9)]
TEMPLATE_WORDS = "what is code of write questions question repeat text . ? , according to passage above".split()
ASK_TEMPLATE = "{chunk}\n\nwrite {k} questions ."
REPEAT = "repeat the text ."
MAX_QUESTIONS = 4
PARAGRAPH = "\n\n"
SHORT_FILLER = 2  # most filler sentences in a short (training) document


def fact(name: str, value: str) -> str:
    return f"{name} {value} ."


def title(name: str) -> str:
    return name.capitalize()


def question(name: str) -> str:
    return f"what is the code of {title(name)} ?"


def answer(name: str, value: str) -> str:
    return fact(name, value)


def answer_value(text: str, name: str) -> str | None:
    """The value an answer states right after `name`, or None."""
    words = text.split()
    for i in range(len(words) - 1):
        if words[i] == name:
            return words[i + 1]
    return None


def n_tokens(text: str) -> int:
    """Tokens of `text` under `build_tokenizer` (a word per token, a token per newline)."""
    return len(text.split()) + text.count("\n")


@dataclass
class Doc:
    text: str
    facts: list[tuple[str, str]]  # (name, value) in order of appearance


def _filler(rng: random.Random) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(rng.randint(4, 8))) + " ."


def _paragraphs(rng: random.Random, sentences: list[str]) -> str:
    paragraphs, i = [], 0
    while i < len(sentences):
        k = rng.randint(2, 4)
        paragraphs.append(" ".join(sentences[i : i + k]))
        i += k
    return PARAGRAPH.join(paragraphs)


def _doc(rng: random.Random, n_facts: int, n_filler: int) -> Doc:
    names = rng.sample(NAMES, n_facts)
    facts = [(name, rng.choice(VALUES)) for name in names]
    slots = sorted(rng.sample(range(n_facts + n_filler), n_facts))
    sentences = [_filler(rng) for _ in range(n_facts + n_filler)]
    for slot, (name, value) in zip(slots, facts):
        sentences[slot] = fact(name, value)
    return Doc(text=_paragraphs(rng, sentences), facts=facts)


def make_doc(rng: random.Random, n_facts: int, max_filler: int = 8) -> Doc:
    """A short document: n_facts facts about distinct names among 0..max_filler filler sentences."""
    return _doc(rng, n_facts, rng.randint(0, max_filler))


def make_long_doc(rng: random.Random, length: int, tokens_per_fact: int = 24) -> Doc:
    """A document of at most `length` tokens (and close to it), a fact per ~`tokens_per_fact` tokens."""
    n_facts = max(1, min(len(NAMES), length // tokens_per_fact))
    n_filler = max(0, (length - 3 * n_facts) // 7)  # a filler sentence averages 7 tokens
    while True:
        doc = _doc(rng, n_facts, n_filler)
        if n_tokens(doc.text) <= length:
            return doc
        n_filler -= 1


def short_doc(rng: random.Random, max_filler: int = SHORT_FILLER) -> Doc:
    """A document of the base model's training distribution."""
    return make_doc(rng, rng.randint(1, 8), max_filler)


def ask_reply(names: list[str]) -> str:
    return "\n".join(f"{i + 1}. {question(name)}" for i, name in enumerate(names))


def qa_messages(doc: Doc, asked: list[tuple[str, str]], with_answers: bool = True) -> list[dict]:
    """A conversation over `doc`: the first question after the document, later ones alone."""
    messages: list[dict] = []
    for i, (name, value) in enumerate(asked):
        messages.append({"role": "user", "content": f"{doc.text}\n\n{question(name)}" if i == 0 else question(name)})
        if with_answers:
            messages.append({"role": "assistant", "content": answer(name, value)})
    return messages


def ask_messages(doc: Doc, names: list[str] | None) -> list[dict]:
    """Asking for len(names) questions; the reply asks about `names` (None: no reply)."""
    k = len(names) if names else 1
    messages = [{"role": "user", "content": ASK_TEMPLATE.format(chunk=doc.text, k=k)}]
    if names:
        messages.append({"role": "assistant", "content": ask_reply(names)})
    return messages


def repeat_messages(doc: Doc) -> list[dict]:
    """Copy the document: a pretraining exercise whose every token is an induction-style lookup
    (find the current token earlier, emit what followed it), so the lookup circuit forms fast."""
    return [{"role": "user", "content": f"{doc.text}\n\n{REPEAT}"}, {"role": "assistant", "content": doc.text}]


def build_tokenizer() -> Any:
    """Word-level tokenizer over the toy vocabulary, newlines kept as tokens, with the tiny chat template."""
    words = list(dict.fromkeys(NAMES + [title(n) for n in NAMES] + VALUES + FILLER + NUMBERS + TEMPLATE_WORDS + ["\n", "[unk]"]))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[unk]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="removed"),
        pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
    ])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # words joined by single spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>",
                                   unk_token="[unk]", additional_special_tokens=["<|system|>", "<|user|>",
                                                                                 "<|assistant|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast

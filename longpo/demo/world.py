"""A seeded toy world where a tiny model can learn lookup on short documents and fail on long ones.

A document is filler sentences with facts among them, "the code of NAME is VALUE ." (each name at
most once per document). The two chat skills of the base model:

    answer:  user "<document>\\n\\nwhat is the code of NAME ?"   assistant "VALUE ."
    ask:     user "<document>\\n\\nwrite K questions ."         assistant "1. what is the code of A ?\\n2. ..."

Short documents (a few facts, tens of tokens) train the base model; long documents (many facts and
distractors, hundreds of tokens) are where it fails and where LongPO's self-generated pairs come from.
Every word is one token of a word-level tokenizer with the chat template of `longpo.tiny`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

NAMES = ("alice bob carol dave erin frank grace heidi ivan judy karl liam mona nick olga paul quinn rosa "
         "sam tina").split()
VALUES = [f"{i}" for i in range(10, 60)]
FILLER = ("the river runs past an old mill and a green field near the quiet town where people walk slowly "
          "under tall trees while birds sing over warm stone roads").split()
TEMPLATE_WORDS = ("the code of is what write questions . ? 1 2 3 4 5 6 7 8 1. 2. 3. 4. 5. 6. 7. 8. "
                  "according to passage above ,").split()
ASK_TEMPLATE = "{chunk}\n\nwrite {k} questions ."


def fact(name: str, value: str) -> str:
    return f"the code of {name} is {value} ."


def question(name: str) -> str:
    return f"what is the code of {name} ?"


@dataclass
class Doc:
    text: str
    facts: list[tuple[str, str]]  # (name, value) in order of appearance


def make_doc(rng: random.Random, n_facts: int, filler_between: tuple[int, int] = (0, 2)) -> Doc:
    """n_facts facts about distinct names, each followed by 0-2 filler sentences."""
    names = rng.sample(NAMES, n_facts)
    facts, sentences = [], []
    for name in names:
        value = rng.choice(VALUES)
        facts.append((name, value))
        sentences.append(fact(name, value))
        for _ in range(rng.randint(*filler_between)):
            sentences.append(" ".join(rng.choice(FILLER) for _ in range(rng.randint(4, 8))) + " .")
    return Doc(text=" ".join(sentences), facts=facts)


def ask_reply(facts: list[tuple[str, str]], k: int) -> str:
    return "\n".join(f"{i + 1}. {question(name)}" for i, (name, _) in enumerate(facts[:k]))


def build_tokenizer() -> Any:
    """Word-level tokenizer over the toy vocabulary, newlines kept as tokens, with the tiny chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from longpo.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS

    words = sorted(set(NAMES) | set(VALUES) | set(FILLER) | set(TEMPLATE_WORDS) | {"\n", "[unk]"})
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
    fast.chat_template = "".join(CHAT_TEMPLATE)
    return fast


def qa_messages(doc: Doc, name: str, value: str | None) -> list[dict]:
    messages = [{"role": "user", "content": f"{doc.text}\n\n{question(name)}"}]
    if value is not None:
        messages.append({"role": "assistant", "content": f"{value} ."})
    return messages


def ask_messages(doc: Doc, k: int, with_reply: bool = True) -> list[dict]:
    messages = [{"role": "user", "content": ASK_TEMPLATE.format(chunk=doc.text, k=k)}]
    if with_reply:
        messages.append({"role": "assistant", "content": ask_reply(doc.facts, k)})
    return messages

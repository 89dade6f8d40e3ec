"""Small local stand-ins for the offline data (essays, SQuAD, HotpotQA, InfiniteBench) and a scripted
backend; the prompt format of the tiny tokenizer and RULER data over the stand-ins."""

import json
import random

import pytest

from longpo.eval.fitting import PromptFormat
from longpo.eval.tasks.ruler import RulerData

_WORDS = ("river city book value number code name magic secret vault long short startup founder investor "
          "program language design taste work money idea company product users growth").split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 14))]
    return " ".join(words).capitalize() + rng.choice([".", ".", "?", "!"])


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """essays.json, squad.json, hotpotqa.json and InfiniteBench JSONL files written once per session."""
    root = tmp_path_factory.mktemp("evaldata")
    rng = random.Random(0)
    essay = " ".join(_sentence(rng) for _ in range(3000))
    (root / "essays.json").write_text(json.dumps({"text": essay}))
    paragraphs = [" ".join(_sentence(rng) for _ in range(4)) for _ in range(12)]
    squad = {"version": "v2.0", "data": [
        {"title": f"t{a}", "paragraphs": [
            {"context": paragraphs[a * 4 + p] + f" The fact is answer {a}{p}.", "qas": [
                {"question": f"What is fact {a}-{p}?", "answers": [{"text": f"answer {a}{p}"}], "is_impossible": False},
                {"question": "Unanswerable?", "answers": [], "is_impossible": True},
            ]} for p in range(4)]} for a in range(3)]}
    (root / "squad.json").write_text(json.dumps(squad))
    hotpot = [{"_id": str(i), "question": f"Which city hosts item {i}?", "answer": f"City{i}",
               "context": [[f"Title {i}-{j}", [_sentence(rng), f" Item {i} is in City{i}."]] for j in range(3)]}
              for i in range(8)]
    (root / "hotpotqa.json").write_text(json.dumps(hotpot))
    book = " ".join(_sentence(rng) for _ in range(400))
    ib = root / "infinitebench"
    ib.mkdir()
    rows = {
        "longbook_sum_eng.jsonl": [{"id": i, "context": book, "input": "", "answer": [f"A summary of book {i}."],
                                    "options": []} for i in range(3)],
        "longbook_qa_eng.jsonl": [{"id": i, "context": book, "input": f"Who is hero {i}?", "answer": [f"Hero {i}"],
                                   "options": []} for i in range(3)],
        "longbook_choice_eng.jsonl": [{"id": i, "context": book, "input": "Which option?", "answer": ["blue"],
                                       "options": ["red", "blue", "green", "gold"]} for i in range(3)],
    }
    for name, items in rows.items():
        (ib / name).write_text("".join(json.dumps(r) + "\n" for r in items))
    return root


class ScriptedBackend:
    """Answers from a function of the prompt; counts calls; can fail after `fail_after` prompts (a kill)."""

    def __init__(self, tokenizer, answer=lambda prompt: "", fail_after=None):
        self.tokenizer = tokenizer
        self.answer = answer
        self.fail_after = fail_after
        self.prompts: list[str] = []
        self.max_new_tokens: list[int] = []

    def generate(self, prompts, sampling):
        out = []
        for p in prompts:
            if self.fail_after is not None and len(self.prompts) >= self.fail_after:
                raise KeyboardInterrupt("simulated kill")
            self.prompts.append(p)
            self.max_new_tokens.append(sampling.max_new_tokens)
            out.append(self.answer(p))
        return out

    def close(self):
        pass


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tokenizer):
    """A tiny random Llama (4096 positions) saved with the tiny tokenizer, as a local checkpoint folder."""
    from longpo.toy.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("tiny_ckpt")
    build_tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=4096).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def scripted_backend():
    return ScriptedBackend


@pytest.fixture(scope="module")
def fmt(tokenizer):
    return PromptFormat(tokenizer)


@pytest.fixture(scope="module")
def data(data_dir):
    return RulerData(essays=str(data_dir / "essays.json"), squad=str(data_dir / "squad.json"),
                     hotpotqa=str(data_dir / "hotpotqa.json"))

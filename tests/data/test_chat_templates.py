"""Labels and short / long prompts under templates that render like Mistral-v0.2, Llama-3 and Qwen2.5.

The expected ids and masks are written by hand (`chat_families.pieces_by_hand`: the documented
format, no Jinja), each piece tokenised on its own: a response token is one of the assistant's
content tokens or the EOS it ends with, nothing the template writes around them.
"""

import copy

import pytest
import torch
from torch.testing import assert_close

from longpo.backends.hf import HFBackend
from longpo.data.records import (
    conversation,
    render,
    tokenize_conversation,
    tokenize_pair,
    tokenize_short,
    user_content,
)
from longpo.data.reference import reference_requests
from longpo.train.attention import use_shared_prefix_attention
from longpo.train.logps import forward_pairs
from longpo.train.packing import pack_pairs
from tests.data.chat_families import FAMILIES, build_family_tokenizer, ids_by_hand, pieces_by_hand

CHUNKS = ["The river city kept its books in a long vault.",
          "A founder named Ada moved the secret code to the north gate.",
          "Every short name in the city was written twice."]
DOCUMENT = "\n\n".join(CHUNKS)


def _record() -> dict:
    """Two turns about the middle and the last chunk: neither short prompt is a prefix of the long one."""
    return {"id": "r0", "document": DOCUMENT, "turns": [
        {"question": "According to the passage above, who moved the code?", "chunk": CHUNKS[1],
         "chosen": "Ada moved it to the north gate.", "rejected": "  The river city did, I think. "},
        {"question": "How often was a name written?", "chunk": CHUNKS[2],
         "chosen": "Twice, every short name.", "rejected": "Once."}]}


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return request.param


def test_template_renders_the_documented_format(family):
    tok = build_family_tokenizer(family)
    messages = conversation(DOCUMENT, _record()["turns"], "chosen")
    assert render(tok, messages) == "".join(t for t, _ in pieces_by_hand(family, messages))
    head = messages[:1]
    assert render(tok, head, add_generation_prompt=True) == "".join(
        t for t, _ in pieces_by_hand(family, head, add_generation_prompt=True))
    if family == "mistral":  # no system role
        with pytest.raises(Exception, match="roles must alternate"):
            render(tok, [{"role": "system", "content": "x"}] + messages)


@pytest.mark.parametrize("branch", ["chosen", "rejected"])
def test_labels_cover_exactly_the_answers_and_their_eos(family, branch):
    tok = build_family_tokenizer(family)
    messages = conversation(DOCUMENT, _record()["turns"], branch)
    ids, mask = tokenize_conversation(tok, messages)
    assert (ids, mask) == ids_by_hand(tok, pieces_by_hand(family, messages))
    bos = FAMILIES[family]["bos"]
    n_bos = ids.count(tok.convert_tokens_to_ids(bos)) if bos else 0
    assert n_bos == (1 if bos else 0), f"{family}: {n_bos} BOS tokens in one sequence"


def test_short_and_long_prompts_differ_only_in_the_context(family):
    tok = build_family_tokenizer(family)
    turn = _record()["turns"][0]
    long_ids, long_mask = tokenize_conversation(tok, conversation(DOCUMENT, [turn], "chosen"))
    short_ids, short_mask = tokenize_short(tok, turn["chunk"], turn["question"], turn["chosen"])
    head = 0
    while long_ids[head] == short_ids[head]:
        head += 1
    tail = 0
    while long_ids[-1 - tail] == short_ids[-1 - tail]:
        tail += 1
    assert tok.decode(long_ids[head : len(long_ids) - tail]) in DOCUMENT
    assert tok.decode(short_ids[head : len(short_ids) - tail]) in turn["chunk"]
    assert long_mask[len(long_ids) - tail :] == short_mask[len(short_ids) - tail :]
    assert sum(long_mask) == sum(short_mask) and not any(long_mask[: len(long_ids) - tail])
    # the template around the context is the same text: the context is all that differs
    assert render(tok, [{"role": "user", "content": user_content(DOCUMENT, "Q")}]).replace(DOCUMENT, "C") == \
        render(tok, [{"role": "user", "content": user_content(turn["chunk"], "Q")}]).replace(turn["chunk"], "C")


def _full_logps(model, ids, mask) -> torch.Tensor:
    """sum_{j: mask[j]} log p(ids[j] | ids[:j]) with one plain forward and full logits."""
    x = torch.tensor([ids])
    logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1).gather(-1, x[0, 1:, None])[:, 0]
    return logp[torch.tensor(mask[1:])].sum()


def test_pair_without_a_shared_short_prefix_trains_and_scores_exactly(family):
    """Long prompts [C_L; I] and short prompts [C_S; I] share at most the template's head.

    Policy: log pi(y | x_L) of each branch from the packed row equals a plain forward over the
    hand-tokenised long sequence. Reference: the short sequences are the hand-tokenised
    [C_S; I] -> y, and `score` on them (chosen and rejected of one short prompt share a prefill)
    equals a plain forward of each.
    """
    from longpo.toy.tiny import build_tiny_model

    tok = build_family_tokenizer(family)
    model = build_tiny_model("llama", vocab_size=len(tok), dtype=torch.float64, seed=1)
    rec = _record()
    pair = tokenize_pair(tok, rec)
    packed = copy.deepcopy(model)
    use_shared_prefix_attention(packed)
    with torch.no_grad():
        fast = forward_pairs(packed, pack_pairs([pair], "responses", pad_to_multiple_of=16))
        for branch, got in (("chosen", fast.policy.chosen[0]), ("rejected", fast.policy.rejected[0])):
            ids, mask = ids_by_hand(tok, pieces_by_hand(family, conversation(DOCUMENT, rec["turns"], branch)))
            assert pair.prefix + getattr(pair, branch) == ids
            assert_close(got, _full_logps(model, ids, mask), rtol=1e-10, atol=1e-9)

    slots, sequences, masks = reference_requests(tok, [rec])
    backend = HFBackend(model, tok, min_shared_prefix=4)
    scores = backend.score(sequences, masks)
    long_ids = pair.prefix + pair.chosen
    for (_, t, field, _), ids, mask, score in zip(slots, sequences, masks, scores):
        turn = rec["turns"][t]
        answer = turn[field.split("_")[1]]
        messages = [{"role": "user", "content": user_content(turn["chunk"], turn["question"])},
                    {"role": "assistant", "content": answer}]
        assert (ids, mask) == ids_by_hand(tok, pieces_by_hand(family, messages))
        shared = next(i for i, (a, b) in enumerate(zip(ids, long_ids)) if a != b)
        assert turn["chunk"][:12] not in tok.decode(ids[:shared]), "short and long prompts share context tokens"
        with torch.no_grad():
            assert_close(torch.tensor(score, dtype=torch.float64), _full_logps(model, ids, mask), rtol=1e-9, atol=1e-8)

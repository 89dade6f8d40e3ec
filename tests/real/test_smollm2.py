"""SmolLM2-135M-Instruct's real tokenizer and ChatML template (default system prompt, `<|im_end|>\\n`).

Labels, short / long prompts and prompt fitting are checked against the template written out by
hand; generation and scoring against each other on the real weights.
"""

import pytest
import torch
from torch.testing import assert_close

from longpo.backends.hf import HFBackend
from longpo.data.records import conversation, render, tokenize_conversation, tokenize_pair, tokenize_short
from longpo.eval.fitting import PromptFormat
from longpo.eval.tasks.infinitebench import InfiniteBenchTask
from longpo.eval.tasks.ruler import RulerData, RulerTask
from tests.data.chat_families import ids_by_hand, pieces_by_hand
from tests.eval.conftest import data_dir  # noqa: F401  (the local RULER / InfiniteBench stand-ins)

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
HEAD = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
CHUNKS = ["Elinor was the eldest daughter, and her judgment was strong.",
          "Marianne was eager in everything; her sorrows, her joys, could have no moderation.",
          "Margaret, the other sister, was a good-humoured, well-disposed girl."]
DOCUMENT = "\n\n".join(CHUNKS)
TURNS = [{"question": "According to the passage above, how is Marianne described?", "chunk": CHUNKS[1],
          "chosen": "Marianne is eager in everything.", "rejected": "She is the eldest daughter."},
         {"question": "Who is good-humoured?", "chunk": CHUNKS[2], "chosen": "Margaret.",
          "rejected": "Elinor is, I believe, good-humoured and well-disposed."}]


def test_template_is_chatml_with_smollm_system_prompt(smol_tokenizer):
    messages = conversation(DOCUMENT, TURNS, "chosen")
    assert render(smol_tokenizer, messages).startswith(HEAD)
    assert render(smol_tokenizer, messages) == "".join(t for t, _ in pieces_by_hand("qwen2.5", messages, system=SYSTEM))
    assert smol_tokenizer.eos_token == "<|im_end|>" and smol_tokenizer.pad_token is not None


@pytest.mark.parametrize("branch", ["chosen", "rejected"])
def test_labels_cover_exactly_the_assistant_tokens(smol_tokenizer, branch):
    messages = conversation(DOCUMENT, TURNS, branch)
    ids, mask = tokenize_conversation(smol_tokenizer, messages)
    assert (ids, mask) == ids_by_hand(smol_tokenizer, pieces_by_hand("qwen2.5", messages, system=SYSTEM))
    runs = "".join("1" if m else "0" for m in mask).split("0")
    assert len([r for r in runs if r]) == len(TURNS), "one contiguous label run per assistant turn"
    answers = [smol_tokenizer.decode([t for t, m in zip(ids, mask) if m])]
    assert answers == ["".join(t[branch] + "<|im_end|>" for t in TURNS)]


def test_pair_prefix_and_short_prompt_differ_only_in_the_context(smol_tokenizer):
    record = {"id": "r0", "document": DOCUMENT, "turns": TURNS}
    pair = tokenize_pair(smol_tokenizer, record)
    assert smol_tokenizer.decode(pair.prefix) == HEAD + DOCUMENT + "\n\n" + TURNS[0]["question"] + \
        "<|im_end|>\n<|im_start|>assistant\n"
    turn = TURNS[0]
    long_ids, long_mask = tokenize_conversation(smol_tokenizer, conversation(DOCUMENT, [turn], "chosen"))
    short_ids, short_mask = tokenize_short(smol_tokenizer, turn["chunk"], turn["question"], turn["chosen"])
    head = len(smol_tokenizer(HEAD, add_special_tokens=False)["input_ids"])
    tail = len(long_ids) - len(smol_tokenizer(HEAD + DOCUMENT, add_special_tokens=False)["input_ids"])
    assert long_ids[:head] == short_ids[:head] and long_ids[-tail:] == short_ids[-tail:]
    assert long_mask[-tail:] == short_mask[-tail:] and not any(long_mask[:-tail]) and not any(short_mask[:-tail])
    assert smol_tokenizer.decode(long_ids[head:-tail]) == DOCUMENT
    assert smol_tokenizer.decode(short_ids[head:-tail]) == turn["chunk"]


def test_ruler_and_infinitebench_fit_the_real_template(smol_tokenizer, data_dir):  # noqa: F811
    fmt = PromptFormat(smol_tokenizer)
    data = RulerData(essays=str(data_dir / "essays.json"), squad=str(data_dir / "squad.json"),
                     hotpotqa=str(data_dir / "hotpotqa.json"))
    for name in ("niah_single_2", "vt"):
        task = RulerTask(name, 1024, fmt, num_samples=2, data=data)
        ex = task.get_example(0)
        n = len(smol_tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"])
        assert n == ex["prompt_tokens"] and 0.9 * 1024 < n + task.max_new_tokens <= 1024, (name, n)
        assert ex["prompt"].startswith(HEAD) and ex["prompt"].count("<|im_start|>") == 3
        user, answer_prefix = ex["prompt"][len(HEAD):].split("<|im_end|>\n<|im_start|>assistant\n")
        assert "<|im_" not in user and "<|im_" not in answer_prefix
        # RULER's template keeps the prefix's leading space after the generation prompt (official protocol)
        assert answer_prefix.startswith(" ") and not answer_prefix.startswith("  "), answer_prefix
        assert all(a in user for a in ex["answers"])
    task = InfiniteBenchTask("en_qa", data_dir / "infinitebench" / "longbook_qa_eng.jsonl", fmt, max_length=1024,
                             truncation="fit")  # prompt + answer within the budget (official: the prompt alone)
    ex = task.get_example(0)
    assert ex["truncated"] and ex["prompt_tokens"] + task.max_new_tokens <= 1024
    assert ex["prompt_tokens"] + task.max_new_tokens > 1000, "the book is cut to the budget, not far below it"
    assert ex["prompt"].startswith(HEAD + "Read the book below") and ex["prompt"].endswith(
        "Be very concise.<|im_end|>\n<|im_start|>assistant\n")
    book = task.rows[0]["context"]
    assert book[:200] in ex["prompt"] and book[-200:] in ex["prompt"]


def test_greedy_generation_logprob_equals_score(smollm2_dir, smol_tokenizer):
    """log pi(y | x) from `score` on the record's short sequence = sum_t log softmax(logits_t)[y_t] that
    greedy `generate` saw at each step (raw logits, before any logits processor)."""
    torch.manual_seed(0)
    backend = HFBackend(str(smollm2_dir), smol_tokenizer, dtype="float32", device="cpu")
    question = "What is Marianne like? Answer in one short sentence."
    prompt = render(smol_tokenizer, [{"role": "user", "content": f"{CHUNKS[1]}\n\n{question}"}], add_generation_prompt=True)
    ids = torch.tensor([smol_tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                                     do_sample=False, temperature=None, top_p=None, top_k=None,
                                     eos_token_id=smol_tokenizer.eos_token_id, pad_token_id=smol_tokenizer.pad_token_id,
                                     output_logits=True, return_dict_in_generate=True)
    new = out.sequences[0, ids.shape[1]:].tolist()
    assert new[-1] == smol_tokenizer.eos_token_id, "the answer should end within 40 tokens"
    seen = sum(float(torch.log_softmax(logits[0].double(), -1)[t]) for logits, t in zip(out.logits, new))
    answer = smol_tokenizer.decode(new, skip_special_tokens=True).strip()
    seq, mask = tokenize_short(smol_tokenizer, CHUNKS[1], question, answer)
    assert [t for t, m in zip(seq, mask) if m] == new, "the stored answer re-tokenises to what was generated"
    assert seq[: ids.shape[1]] == ids[0].tolist()
    (score,) = backend.score([seq], [mask])
    print(f"score {score:.6f} generate {seen:.6f} over {len(new)} tokens")
    assert_close(torch.tensor(score, dtype=torch.float64), torch.tensor(seen, dtype=torch.float64), atol=2e-3 * len(new), rtol=1e-4)


def test_converted_folder_is_plain_safetensors(smollm2_dir):
    import json

    from longpo.convert_gguf import file_sha256, smollm2_gguf

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert config["rope_parameters"]["rope_theta"] == 100000.0 and config["tie_word_embeddings"]
    source = json.loads((smollm2_dir / "converted_from.json").read_text())
    assert source["sha256"] == file_sha256(smollm2_gguf()) and source["sha256"][:16] in smollm2_dir.name
    assert (smollm2_dir / "chat_template.jinja").is_file() or "chat_template" in (
        smollm2_dir / "tokenizer_config.json").read_text()

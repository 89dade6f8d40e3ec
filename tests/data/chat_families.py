"""Hand-written tokenizers whose chat templates render like three real instruct families.

Each is a byte-level BPE trained on local text (well under a second) with the family's special
tokens and a chat template that renders what the family's own template renders:

- mistral: Mistral-Instruct-v0.2: BOS inside the template, `[INST] ... [/INST]` as plain text,
  the answer then EOS `</s>` with nothing between; no system role (the template raises).
- llama3: Llama-3-Instruct: `<|begin_of_text|>`, header tokens around the role, contents trimmed,
  `<|eot_id|>` ends every message (and is the EOS of the instruct tokenizer).
- qwen2.5: Qwen2.5-Instruct: no BOS, a default system prompt when none is given, ChatML
  `<|im_start|>` / `<|im_end|>` with a newline after every `<|im_end|>`.

`render_by_hand` writes the same text without Jinja, from the family's documented format.
"""

from __future__ import annotations

from functools import cache

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\n" + QWEN_SYSTEM + "<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

FAMILIES = {
    "mistral": {"template": MISTRAL_TEMPLATE, "special": ["<unk>", "<s>", "</s>"],
                "bos": "<s>", "eos": "</s>", "pad": None},
    "llama3": {"template": LLAMA3_TEMPLATE,
               "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>"],
               "bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "pad": None},
    "qwen2.5": {"template": QWEN_TEMPLATE, "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>"},
}


def _corpus() -> list[str]:
    from longpo.toy.tiny import _corpus as tiny_corpus

    # [INST] and the headers are in the training text so that BPE learns merges next to them.
    return tiny_corpus() + ["[INST] What is the value? [/INST]The value is 42.", "user assistant system"] * 50


@cache
def build_family_tokenizer(family: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=spec["special"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    kwargs = {k: spec[name] for k, name in (("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "pad"))
              if spec[name]}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    fast.chat_template = spec["template"]
    return fast


def pieces_by_hand(family: str, messages: list[dict], add_generation_prompt: bool = False,
                   system: str = QWEN_SYSTEM) -> list[tuple[str, bool]]:
    """The family's documented format written out without Jinja, as (text, is_generated_answer) pieces.

    An answer piece is the assistant content and the EOS the model generates after it; what the
    template writes after the EOS (ChatML's newline) belongs to the next piece. `system` is the
    default system prompt of the ChatML families (Qwen2.5's; SmolLM2 has its own).
    """
    pieces: list[tuple[str, bool]] = []
    if family == "mistral":
        head = "<s>"
        for m in messages:
            if m["role"] == "user":
                pieces.append((head + f"[INST] {m['content']} [/INST]", False))
                head = ""
            else:
                pieces.append((m["content"] + "</s>", True))
        return pieces
    if family == "llama3":
        text = "<|begin_of_text|>"
        for m in messages:
            text += f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
            if m["role"] == "assistant":
                pieces += [(text, False), (m["content"].strip() + "<|eot_id|>", True)]
                text = ""
            else:
                text += m["content"].strip() + "<|eot_id|>"
        text += "<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else ""
        return pieces + ([(text, False)] if text else [])
    text = f"<|im_start|>system\n{system}<|im_end|>\n"  # ChatML with a default system prompt
    for m in messages:
        text += f"<|im_start|>{m['role']}\n"
        if m["role"] == "assistant":
            pieces += [(text, False), (m["content"] + "<|im_end|>", True)]
            text = "\n"
        else:
            text += m["content"] + "<|im_end|>\n"
    text += "<|im_start|>assistant\n" if add_generation_prompt else ""
    return pieces + ([(text, False)] if text else [])


def ids_by_hand(tokenizer, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[bool]]:
    """Token ids and response mask of hand-written pieces, each tokenised on its own."""
    ids, mask = [], []
    for text, is_answer in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [is_answer] * len(piece)
    return ids, mask

"""Chat formats: a conversation, `[{"role": ..., "content": ...}, ...]`, as the token ids a chat model was tuned on.

Llama 3 (Meta's `ChatFormat.encode_dialog_prompt`), every message framed by special tokens:

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{content}<|eot_id|>
    <|start_header_id|>user<|end_header_id|>\\n\\n{content}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n          <- the generation prompt

Llama 2 (Meta's `Llama.chat_completion`), each user/assistant exchange its own BOS ... EOS sequence,
the system prompt folded into the first user message:

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST]

Contents are encoded as plain text, so a message cannot forge a header or an end of turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["chat_ids", "named_for_chat", "ROLES"]

ROLES = ("system", "user", "assistant")
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


# How chat-tuned downloads are named: llama-2-7b-chat (Meta), Llama-2-7b-chat-hf, Llama-3.1-8B-Instruct.
CHAT_NAME = re.compile(r"chat|instruct", re.IGNORECASE)


def named_for_chat(name: str) -> bool:
    "Whether a checkpoint's file or folder name says it was tuned for chat (the files need not say so)."
    return bool(CHAT_NAME.search(name))


def chat_ids(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
    "The ids of `messages` in `tokenizer.chat_format`; see the module's docstring."
    messages = _checked(messages)
    if tokenizer.chat_format == "llama3":
        return llama3_ids(tokenizer, messages, add_generation_prompt)
    return llama2_ids(tokenizer, messages, add_generation_prompt)


def _checked(messages) -> list[dict]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise ValueError(f"message {i} must be a dict with 'role' one of {', '.join(ROLES)} and a "
                             f"string 'content', got {m!r:.120}")
    if any(m["role"] == "system" for m in messages[1:]):
        raise ValueError("only the first message may have the role 'system'")
    return list(messages)


def llama3_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    special = tokenizer.special_tokens

    def header(role: str) -> list[int]:
        return [special["<|start_header_id|>"], *tokenizer.encode(role), special["<|end_header_id|>"],
                *tokenizer.encode("\n\n")]

    ids = [tokenizer.bos_id]
    for m in messages:
        ids += header(m["role"]) + tokenizer.encode(m["content"]) + [special["<|eot_id|>"]]
    if add_generation_prompt:
        ids += header("assistant")
    return ids


def llama2_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    if messages[0]["role"] == "system":
        if len(messages) < 2:
            raise ValueError("a Llama 2 conversation needs a user message after the system prompt")
        first = messages[1]["content"]
        messages = [{"role": messages[1]["role"], "content": B_SYS + messages[0]["content"] + E_SYS + first}] \
            + messages[2:]
    for i, m in enumerate(messages):
        if m["role"] != ("user", "assistant")[i % 2]:
            raise ValueError("a Llama 2 conversation alternates user and assistant messages, starting with user "
                             f"(after an optional system prompt); message {i} is {m['role']!r}")
    if add_generation_prompt and messages[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message for the assistant to reply to")
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    ids: list[int] = []
    for prompt, answer in zip(messages[::2], messages[1::2]):
        text = f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} "
        ids += [bos, *tokenizer.encode(text), eos]
    if messages[-1]["role"] == "user":
        ids += [bos, *tokenizer.encode(f"{B_INST} {messages[-1]['content'].strip()} {E_INST}")]
    return ids

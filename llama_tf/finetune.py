"""Fine-tuning data: a text or a file of chat conversations as fixed-length training rows, with the weight
each target token carries in the loss.

A row is `(inputs, targets, weights)`, each `(seq_len,)`: the model reads `inputs`, learns to predict
`targets` (the inputs moved on by one token), and `weights` says which targets count (1) and which are
padding or prompt (0). Keras takes the three as `x, y, sample_weight`, and a loss with
`reduction="mean_with_sample_weight"` is then the mean over the counted tokens, as Hugging Face's
`ignore_index=-100` labels give.

- **Text** (`text_rows`): the tokens of the whole text, BOS first, cut into consecutive windows; every
  token is a target once.
- **Chat** (`chat_rows`): one row per conversation, `{"messages": [{"role": ..., "content": ...}, ...]}`
  as Hugging Face's and OpenAI's JSONL files hold them, rendered in the model's own chat format
  (`tokenizer.apply_chat_template`). Only the assistant's tokens are targets (its replies and their end
  of turn): the model learns to answer, not to write the user's side. Each reply's tokens are what the
  conversation up to and including it adds to the conversation up to its generation prompt.

`read_data` reads either kind from a file (`.jsonl`: chat; anything else: UTF-8 text), naming the line
of any malformed conversation; `weighted_loss` is the measure `python -m llama_tf.train lora` reports.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from llama_tf.chat import ROLES

__all__ = ["Rows", "text_rows", "chat_rows", "assistant_weights", "read_data", "weighted_loss"]


class Rows(NamedTuple):
    "Training rows: `inputs`, `targets` (int32) and `weights` (float32), each (n, seq_len)."

    inputs: np.ndarray
    targets: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs)

    def take(self, index) -> Rows:
        return Rows(*(a[index] for a in self))

    @property
    def tokens(self) -> int:
        "How many targets count."
        return int(self.weights.sum())


def _rows(sequences: Sequence[tuple[list[int], list[float]]], seq_len: int) -> Rows:
    "Each (ids, weights) of at most seq_len + 1 tokens as one row, padded with weight 0."
    inputs, targets, weights = (np.zeros((len(sequences), seq_len), dtype) for dtype in ("int32", "int32", "float32"))
    for row, (ids, w) in enumerate(sequences):
        n = len(ids) - 1
        inputs[row, :n], targets[row, :n], weights[row, :n] = ids[:-1], ids[1:], w[1:]
    return Rows(inputs, targets, weights)


def text_rows(tokenizer, text: str, seq_len: int) -> Rows:
    "The text's tokens (BOS first) in consecutive windows of `seq_len` targets; the last one padded."
    if not text.strip():
        raise ValueError("the text to fine-tune on is empty (or only whitespace)")
    ids = [tokenizer.bos_id, *tokenizer.encode(text)]
    starts = range(0, len(ids) - 1, seq_len)
    return _rows([(ids[s : s + seq_len + 1], [1.0] * len(ids[s : s + seq_len + 1])) for s in starts], seq_len)


def assistant_weights(tokenizer, messages: Sequence[dict]) -> tuple[list[int], list[float]]:
    "A conversation's ids in the model's chat format, and 1.0 on each token the assistant wrote, 0.0 elsewhere."
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    weights = [0.0] * len(ids)
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:k], add_generation_prompt=True) if k else []
        through = tokenizer.apply_chat_template(messages[: k + 1], add_generation_prompt=False)
        start = next((i for i, (a, b) in enumerate(zip(before, through)) if a != b), min(len(before), len(through)))
        weights[start : len(through)] = [1.0] * (len(through) - start)
    return ids, weights


def chat_rows(tokenizer, conversations: Sequence[Sequence[dict]], seq_len: int) -> tuple[Rows, int]:
    """One row per conversation, the assistant's tokens weighted 1; and how many conversations were longer
    than `seq_len` + 1 tokens (cut at the end)."""
    sequences = [assistant_weights(tokenizer, messages) for messages in conversations]
    cut = sum(len(ids) > seq_len + 1 for ids, _ in sequences)
    rows = _rows([(ids[: seq_len + 1], w[: seq_len + 1]) for ids, w in sequences], seq_len)
    if not rows.tokens:
        raise ValueError("no conversation has an assistant message within the first "
                         f"{seq_len} tokens: there is nothing to learn")
    return rows, cut


def read_data(path: str | Path) -> str | list[list[dict]]:
    """A fine-tuning file: chat conversations from JSONL (`.jsonl`, one `{"messages": [...]}` a line), else
    the UTF-8 text."""
    from llama_tf.formats.base import regular_file

    path = regular_file(Path(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    if path.suffix != ".jsonl":
        return text
    conversations = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"{path}, line {number}: not JSON ({e})") from None
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages:
            raise ValueError(f'{path}, line {number}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f"{path}, line {number}: each message needs a 'role' ({', '.join(ROLES)}) and "
                                 f"a string 'content', got {m!r:.100}")
        conversations.append(messages)
    if not conversations:
        raise ValueError(f"{path}: no conversations")
    return conversations


def weighted_loss(model, rows: Rows, batch_size: int) -> float:
    "The mean cross-entropy (nats) over the rows' counted targets."
    from keras import ops

    from llama_tf.backend import inference, to_numpy

    total = 0.0
    for start in range(0, len(rows), batch_size):
        part = rows.take(slice(start, start + batch_size))
        with inference():
            log_p = ops.log_softmax(ops.cast(model(part.inputs, training=False), "float32"), axis=-1)
            picked = ops.take_along_axis(log_p, ops.expand_dims(part.targets, -1), axis=-1)[..., 0]
            total -= float(to_numpy(ops.sum(picked * part.weights)))
    return total / rows.tokens

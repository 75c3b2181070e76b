"""How well a model predicts a text: negative log-likelihood per character, and perplexity.

Nats per character (total NLL of the text's tokens divided by its number of characters) compares models
with different tokenizers; perplexity is per token. Texts longer than the context are scored with a
sliding window: every token is predicted once, from at least `context - stride - 1` tokens before it
(the first window's tokens from fewer), each window starting with BOS as in training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llama_tf.backend import inference, to_numpy

__all__ = ["Evaluation", "evaluate", "score_ids"]


@dataclass(frozen=True)
class Evaluation:
    nll: float          # total negative log-likelihood, nats
    tokens: int
    characters: int

    @property
    def nats_per_char(self) -> float:
        return self.nll / self.characters

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    def __str__(self):
        return (f"{self.nats_per_char:.4f} nats/char ({self.bits_per_char:.4f} bits/char), "
                f"token perplexity {self.perplexity:.2f}, {self.tokens:,} tokens, {self.characters:,} characters")


def _windows(n: int, context: int, stride: int):
    "(start, end, first scored index) of each window over n tokens; each window holds <= context - 1 tokens."
    scored = 0
    while scored < n:
        end = min(context - 1, n) if scored == 0 else min(scored + stride, n)
        yield max(0, end - (context - 1)), end, scored
        scored = end


LOGITS_BYTES = 1 << 30


def score_ids(model, ids, bos_id: int, context: int, stride: int | None = None, batch_size: int = 16) -> float:
    """Total NLL (nats) of token `ids` (1-D, no BOS) under `model` (ids -> logits), BOS-first windows."""
    ids = np.asarray(ids, dtype=np.int64)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < 2:
        raise ValueError(f"context must be an integer of at least 2 tokens, got {context!r}")
    stride = stride or context // 2
    if not 0 < stride < context:
        raise ValueError(f"stride must be between 1 and context - 1 = {context - 1}, got {stride}")
    windows = list(_windows(len(ids), context, stride))
    # Rows per forward pass: at most `batch_size`, and few enough that their float32 logits stay within
    # LOGITS_BYTES (a 2048-token window of a 128k vocabulary is 1 GiB alone). `model` may be any function.
    vocab = getattr(model, "output_shape", (None,))[-1]
    rows = batch_size if vocab is None else max(1, min(batch_size, LOGITS_BYTES // (4 * vocab * min(context, len(ids) + 1))))
    total = 0.0
    for b in range(0, len(windows), rows):
        batch = windows[b : b + rows]
        width = max(end - start for start, end, _ in batch)
        inputs = np.zeros((len(batch), width), dtype=np.int32)   # padding after the text: causal, so inert
        for row, (start, end, _) in enumerate(batch):
            inputs[row, : end - start] = np.concatenate([[bos_id], ids[start : end - 1]])
        with inference():
            logits = to_numpy(model(inputs, training=False))      # (batch, width, vocab) float32
        for row, (start, end, scored) in enumerate(batch):
            positions = np.arange(scored - start, end - start)
            scores = np.asarray(logits[row, positions], dtype=np.float64)       # one row in float64 at a time
            peak = scores.max(axis=-1, keepdims=True)
            log_z = (peak + np.log(np.exp(scores - peak).sum(axis=-1, keepdims=True)))[:, 0]
            total += float(np.sum(log_z - scores[np.arange(len(positions)), ids[start + positions]]))
    return total


def evaluate(llm, text: str, context: int | None = None, stride: int | None = None, batch_size: int = 16) -> Evaluation:
    """Score `text` with a loaded `llama_tf.LLM`. `context` defaults to the model's `max_seq_len`."""
    if not text:
        raise ValueError("cannot evaluate an empty text")
    ids = np.asarray(llm.tokenizer.prompt_ids(text), np.int32)
    if llm.tokenizer.add_bos:
        ids = ids[1:]
    context = context or llm.config.max_seq_len
    if isinstance(context, (int, np.integer)) and context > llm.config.max_seq_len:
        raise ValueError(f"context {context} is longer than the model's max_seq_len {llm.config.max_seq_len}")
    nll = score_ids(llm.model, ids, llm.tokenizer.bos_id, context, stride, batch_size)
    return Evaluation(nll, len(ids), len(text))

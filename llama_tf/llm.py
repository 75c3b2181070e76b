"""`load` a checkpoint into an `LLM` (config + tokenizer + Keras model) and generate text with it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from llama_tf.checkpoint import CheckpointError, build_model, read_checkpoint
from llama_tf.config import LlamaConfig
from llama_tf.tokenizer import Tokenizer

__all__ = ["LLM", "load", "find_tokenizer", "DEFAULT_WEIGHTS"]

WEIGHTS_ENV = "LLAMA_TF_WEIGHTS"
# The model this project trains and ships (see weights/README.md); used when no checkpoint is named.
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "shakespeare"


def find_tokenizer(directory: str | Path) -> Path | None:
    """`tokenizer.model` beside the weights, or one level up (Meta's downloads keep it there)."""
    directory = Path(directory)
    for candidate in (directory / "tokenizer.model", directory.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    return None


def load(path: str | Path | None = None, *, tokenizer: str | Path | Tokenizer | None = None,
         dtype: str = "float32", max_seq_len: int | None = None, progress: bool | None = None) -> LLM:
    """Load a LLaMA checkpoint (Meta or Hugging Face layout, detected) with its tokenizer.

    `path` defaults to the `LLAMA_TF_WEIGHTS` environment variable, else the project's default model
    (`weights/shakespeare`). The tokenizer is found beside the weights unless given. Weights of any
    stored precision are cast to `dtype` (computation stays float32 where it matters: norms, RoPE,
    softmax).
    """
    if path is None:
        path = os.environ.get(WEIGHTS_ENV)
    if not path:
        if not DEFAULT_WEIGHTS.exists():
            raise FileNotFoundError(f"no checkpoint given, {WEIGHTS_ENV} is not set, and the default model is "
                                    f"missing ({DEFAULT_WEIGHTS}); pass a path or set {WEIGHTS_ENV}")
        path = DEFAULT_WEIGHTS
    checkpoint = read_checkpoint(path)
    if max_seq_len is not None:
        checkpoint = checkpoint._replace(config=checkpoint.config.replace(max_seq_len=max_seq_len))
    config = checkpoint.config

    if not isinstance(tokenizer, Tokenizer):
        tokenizer_path = tokenizer or find_tokenizer(checkpoint.directory)
        if tokenizer_path is None:
            raise FileNotFoundError(
                f"no tokenizer.model in {checkpoint.directory} or its parent; pass tokenizer=PATH to load()"
            )
        tokenizer = Tokenizer(tokenizer_path)
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size} pieces but the model only {config.vocab_size} embeddings"
        )

    return LLM(config, tokenizer, build_model(checkpoint, dtype=dtype, progress=progress))


@dataclass
class LLM:
    """A loaded model: `config`, `tokenizer` and the Keras `model` (int ids -> float32 logits)."""

    config: LlamaConfig
    tokenizer: Tokenizer
    model: keras.Model

    def generate(self, prompt: str, max_new_tokens: int = 20, temperature: float = 0.0, seed: int | None = None) -> str:
        """Continuation of `prompt`: the text that follows it, so `prompt + result` reads on.
        Greedy by default; `temperature` > 0 samples (reproducibly for a given `seed`)."""
        prompt_ids = self.tokenizer.tokenize(prompt).numpy().tolist()
        new_ids = self.generate_ids(prompt_ids, max_new_tokens, temperature, seed)
        # Decode prompt and continuation together: SentencePiece drops the leading space of a text's
        # first piece, which would glue the continuation to the prompt if decoded on its own.
        prefix = self.tokenizer.detokenize(prompt_ids)
        full = self.tokenizer.detokenize(prompt_ids + new_ids)
        return full[len(prefix):] if full.startswith(prefix) else self.tokenizer.detokenize(new_ids)

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int = 20, temperature: float = 0.0,
                     seed: int | None = None) -> list[int]:
        """Decoding on token ids: up to `max_new_tokens` new ids, stopping after EOS or when the context
        (`config.max_seq_len`) is full. Greedy at temperature 0, else sampled from softmax(logits / T).
        Re-reads the whole sequence at every step."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        rng = np.random.default_rng(seed)
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise ValueError("the prompt has no tokens (not even BOS)")
        if len(ids) > self.config.max_seq_len:
            raise ValueError(
                f"the prompt is {len(ids)} tokens, longer than the model's context of {self.config.max_seq_len}"
            )
        for _ in range(min(max_new_tokens, self.config.max_seq_len - len(ids))):
            logits = self.model(np.array([ids], dtype="int32"), training=False)  # (1, seq, vocab)
            last = np.asarray(logits[0, -1], dtype=np.float64)
            if temperature == 0:
                next_id = int(np.argmax(last))
            else:
                p = np.exp((last - last.max()) / temperature)
                next_id = int(rng.choice(len(p), p=p / p.sum()))
            ids.append(next_id)
            if next_id == self.tokenizer.eos_id:
                break
        return ids[len(prompt_ids):]

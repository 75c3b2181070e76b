"""Which tokenizer goes with a checkpoint: the one given, the one a GGUF file carries, else the file beside
the weights or one folder up (Meta's downloads keep it there)."""

from __future__ import annotations

from pathlib import Path

from llama_tf.tokenizers.tokenizer import Tokenizer

__all__ = ["TOKENIZER_FILES", "find_tokenizer", "open_tokenizer"]

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer.bin")


def find_tokenizer(directory: str | Path) -> Path | None:
    """The tokenizer beside the weights, or one level up (Meta's downloads keep it there):
    `tokenizer.model` (SentencePiece, or Llama 3's tiktoken ranks), else Hugging Face's `tokenizer.json`,
    else llama2.c's `tokenizer.bin`."""
    directory = Path(directory)
    for folder in (directory, directory.parent):
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def open_tokenizer(checkpoint, path: str | Path, tokenizer: str | Path | Tokenizer | None = None) -> Tokenizer:
    """`tokenizer` if given (a `Tokenizer` or a file), else the one a GGUF file carries, else the one beside
    the weights of `checkpoint` (a `llama_tf.formats.Checkpoint` read from `path`)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    tokenizer_path = tokenizer or (Path(path) if checkpoint.format == "gguf" else find_tokenizer(checkpoint.directory))
    if tokenizer_path is None:
        raise FileNotFoundError(f"no tokenizer.model or tokenizer.json in {checkpoint.directory} or its parent; "
                                "pass tokenizer=PATH")
    return Tokenizer(tokenizer_path)

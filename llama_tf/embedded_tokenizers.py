"""Tokenizers stored in other projects' files, run as the package's kinds: a GGUF file's vocabulary and
llama2.c's `tokenizer.bin`. `Tokenizer("model.gguf")` and `Tokenizer("tokenizer.bin")` work alone.

A GGUF `tokenizer.ggml.model` "llama" vocabulary (tokens, scores, types) becomes a SentencePiece model
and runs as `SentencePieceTokenizer`; a "gpt2" one (byte-level tokens and merges, Llama 3's pre-split)
becomes a `tokenizer.json` and runs as `HFTokenizer` (`llama_tf.formats.gguf.tokenizer_file`; ids equal
llama.cpp's on the same file). llama2.c's `tokenizer.bin` is the SentencePiece model it was exported
from, rebuilt (`llama_tf.formats.llama2c.llama2c_tokenizer_proto`).
"""

from __future__ import annotations

from pathlib import Path

from llama_tf.hf_tokenizer import HFTokenizer
from llama_tf.tokenizer import sentencepiece_kind

SentencePieceTokenizer = sentencepiece_kind()   # TensorFlow's ops where installed, else the library

__all__ = ["GGUFSentencePieceTokenizer", "GGUFBytePairTokenizer", "Llama2cTokenizer", "gguf_tokenizer_kind"]


class GGUFSentencePieceTokenizer(SentencePieceTokenizer):
    "The SentencePiece vocabulary of a GGUF file."

    def __init__(self, model: str | Path, **options):
        from llama_tf.formats.gguf import cached_tokenizer_file

        super().__init__(cached_tokenizer_file(model)[1], **options)


class GGUFBytePairTokenizer(HFTokenizer):
    "The byte-level BPE vocabulary (Llama 3's) of a GGUF file."

    def __init__(self, model: str | Path, **options):
        from llama_tf.formats.gguf import cached_tokenizer_file

        super().__init__(cached_tokenizer_file(model)[1], **options)


def gguf_tokenizer_kind(path: Path) -> type:
    from llama_tf.formats.gguf import cached_tokenizer_file

    kind, _ = cached_tokenizer_file(path)
    return GGUFSentencePieceTokenizer if kind == "sentencepiece" else GGUFBytePairTokenizer


class Llama2cTokenizer(SentencePieceTokenizer):
    "llama2.c's `tokenizer.bin`."

    def __init__(self, model: str | Path, **options):
        from llama_tf.formats.llama2c import llama2c_tokenizer_proto

        super().__init__(llama2c_tokenizer_proto(model), **options)

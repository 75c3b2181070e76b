"""The tokenizer inside a GGUF file, as one of the package's kinds: `Tokenizer("model.gguf")` works alone.

A `tokenizer.ggml.model` "llama" vocabulary (tokens, scores, types) becomes a SentencePiece model and
runs as `SentencePieceTokenizer`; a "gpt2" one (byte-level tokens and merges, Llama 3's pre-split)
becomes a `tokenizer.json` and runs as `HFTokenizer`. `llama_tf.formats.gguf.tokenizer_file` does the
conversion; ids equal llama.cpp's on the same file (tests/test_gguf.py).
"""

from __future__ import annotations

from pathlib import Path

from llama_tf.hf_tokenizer import HFTokenizer
from llama_tf.sentencepiece_tokenizer import SentencePieceTokenizer

__all__ = ["GGUFSentencePieceTokenizer", "GGUFBytePairTokenizer", "gguf_tokenizer_kind"]


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

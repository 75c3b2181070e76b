"""Tokenizers stored in other projects' files, run as the package's kinds: a GGUF file's vocabulary and
llama2.c's `tokenizer.bin`. `Tokenizer("model.gguf")` and `Tokenizer("tokenizer.bin")` work alone.

A GGUF `tokenizer.ggml.model` "llama" vocabulary (tokens, scores, types) becomes a SentencePiece model
and runs as `SentencePieceTokenizer`; a "gpt2" one (byte-level tokens and merges, Llama 3's pre-split)
becomes a `tokenizer.json` and runs as `HFTokenizer` (`llama_tf.formats.gguf.tokenizer_file`; ids equal
llama.cpp's on the same file). llama2.c's `tokenizer.bin` is the SentencePiece model it was exported
from, rebuilt (`llama_tf.formats.llama2c.llama2c_tokenizer_proto`). The other way, `gguf_vocabulary`
gives a tokenizer's vocabulary in the plain form the GGUF writer stores.
"""

from __future__ import annotations

from pathlib import Path

from llama_tf.formats.gguf import GGUFVocabulary, cached_tokenizer_file
from llama_tf.formats.llama2c import llama2c_tokenizer_proto
from llama_tf.tokenizers.hf_tokenizer import HFTokenizer
from llama_tf.tokenizers.sentencepiece_library import SentencePieceLibraryTokenizer
from llama_tf.tokenizers.tokenizer import Tokenizer, sentencepiece_kind

SentencePieceTokenizer = sentencepiece_kind()   # TensorFlow's ops where installed, else the library

__all__ = ["GGUFSentencePieceTokenizer", "GGUFBytePairTokenizer", "Llama2cTokenizer", "gguf_tokenizer_kind",
           "gguf_vocabulary"]


class GGUFSentencePieceTokenizer(SentencePieceTokenizer):
    "The SentencePiece vocabulary of a GGUF file."

    def __init__(self, model: str | Path, **options):
        super().__init__(cached_tokenizer_file(model)[1], **options)


class GGUFBytePairTokenizer(HFTokenizer):
    "The byte-level BPE vocabulary (Llama 3's) of a GGUF file."

    def __init__(self, model: str | Path, **options):
        super().__init__(cached_tokenizer_file(model)[1], **options)


def gguf_tokenizer_kind(path: Path) -> type:
    kind, _ = cached_tokenizer_file(path)
    return GGUFSentencePieceTokenizer if kind == "sentencepiece" else GGUFBytePairTokenizer


class Llama2cTokenizer(SentencePieceTokenizer):
    "llama2.c's `tokenizer.bin`."

    def __init__(self, model: str | Path, **options):
        super().__init__(llama2c_tokenizer_proto(model), **options)


def gguf_vocabulary(tokenizer: Tokenizer) -> GGUFVocabulary:
    """`tokenizer`'s vocabulary as `llama_tf.formats.gguf.write_gguf` takes it: a SentencePiece kind's model,
    or Llama 3's byte-level BPE `tokenizer.json`. Other kinds raise ValueError."""
    if isinstance(tokenizer, (SentencePieceTokenizer, SentencePieceLibraryTokenizer)):
        return GGUFVocabulary("sentencepiece", tokenizer.model_proto)
    if isinstance(tokenizer, HFTokenizer) and tokenizer.chat_format == "llama3":
        return GGUFVocabulary("bpe", tokenizer.files()["tokenizer.json"], tokenizer.bos_id, tokenizer.eos_id)
    raise ValueError(f"cannot write a {type(tokenizer).__name__}'s vocabulary into GGUF; llama_tf writes "
                     "SentencePiece models and Llama 3's tokenizer.json")

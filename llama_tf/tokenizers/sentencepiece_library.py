"""LLaMA's SentencePiece tokenizer through the `sentencepiece` library alone, for machines without
TensorFlow (a JAX or PyTorch GPU box): the ids and text of `SentencePieceTokenizer` (notebook 01, which
runs the same model as `tensorflow_text` ops), with the `Tokenizer` interface on Python lists.
`Tokenizer(path)` picks it when `tensorflow_text` cannot be imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from llama_tf.tokenizers.tokenizer import Tokenizer, TokenizerError, read_model, sentencepiece_processor, well_formed

__all__ = ["SentencePieceLibraryTokenizer"]


class SentencePieceLibraryTokenizer(Tokenizer):
    """A SentencePiece `tokenizer.model` (a path or its bytes). `sample_alpha`, for training, samples one
    of the possible segmentations on each call (BPE-dropout with that probability)."""

    def __init__(self, model: str | Path | bytes, add_bos: bool = True, add_eos: bool = False,
                 sample_alpha: float | None = None):
        proto, name = read_model(model, "tokenizer.model")
        self._sp = sentencepiece_processor(proto, name)
        self.model_proto, self.sample_alpha = proto, sample_alpha
        self.add_bos, self.add_eos = add_bos, add_eos
        self.vocab_size = self._sp.vocab_size()
        self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
        self.unk_id, self.pad_id = self._sp.unk_id(), self._sp.pad_id()

    def encode(self, text: str) -> list[int]:
        text = well_formed(text)
        if self.sample_alpha:
            return self._sp.encode(text, enable_sampling=True, alpha=self.sample_alpha, nbest_size=-1)
        return self._sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_string(self, ids):
        "The piece for an id (str), or for each id in a list."
        return self._sp.id_to_piece(ids if isinstance(ids, int) else [int(i) for i in ids])

    def files(self) -> dict[str, bytes]:
        return {"tokenizer.model": self.model_proto}

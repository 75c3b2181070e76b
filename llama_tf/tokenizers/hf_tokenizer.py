"""A Hugging Face `tokenizer.json` (what most downloads carry) through the `tokenizers` library.

Llama 3's `tokenizer.json` holds the same byte-level BPE as Meta's `tokenizer.model` and gives the
same ids; Llama 2's holds its SentencePiece BPE. BOS and EOS are found by name (`<|begin_of_text|>` /
`<s>`, `<|end_of_text|>` / `</s>`); the chat format follows from the vocabulary (header tokens: Llama 3).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from llama_tf.llama3_vocabulary import LLAMA3_PATTERN
from llama_tf.tokenizers.tiktoken_tokenizer import bytes_to_unicode
from llama_tf.tokenizers.tokenizer import Tokenizer, TokenizerError, read_model, well_formed

__all__ = ["HFTokenizer"]

_BOS, _EOS = ("<|begin_of_text|>", "<s>"), ("<|end_of_text|>", "</s>")


class HFTokenizer(Tokenizer):
    """A `tokenizer.json` (a path or its bytes) with the `Tokenizer` interface."""

    def __init__(self, model: str | Path | bytes, add_bos: bool = True, add_eos: bool = False):
        import tokenizers

        data, name = read_model(model, "tokenizer.json")
        try:
            self._tok = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
        except Exception as e:   # UnicodeDecodeError, or the library's plain Exception for bad JSON
            raise TokenizerError(f"{name}: not a Hugging Face tokenizer.json ({str(e).splitlines()[0][:200]})") from None
        # Text that looks like a special token is split like any other text; only chat templates place them.
        self._tok.encode_special_tokens = True
        self._specials = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        vocab = self._tok.get_vocab(with_added_tokens=True)
        bos = next((t for t in _BOS if t in vocab), None)
        eos = next((t for t in _EOS if t in vocab), None)
        if bos is None or eos is None:
            raise TokenizerError(f"{name}: no LLaMA begin/end-of-text tokens ({' or '.join(_BOS)}; "
                                 f"{' or '.join(_EOS)}): not a LLaMA tokenizer")
        self.bos_id, self.eos_id = vocab[bos], vocab[eos]
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.add_bos, self.add_eos = add_bos, add_eos
        self.chat_format = "llama3" if "<|start_header_id|>" in vocab else "llama2"

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    def files(self) -> dict[str, bytes]:
        return {"tokenizer.json": self._tok.to_str().encode()}

    def byte_pair_ranks(self) -> dict[bytes, int]:
        """Each token's bytes -> its id, for `BytePairOps`, which merges by id as tiktoken does: a byte-level
        BPE split by Meta's pattern (Llama 3's file, whose merges follow the ids); TokenizerError for others."""
        spec = json.loads(self._tok.to_str())
        pre = spec.get("pre_tokenizer") or {}
        steps = pre.get("pretokenizers", [pre])
        pattern = [step.get("pattern", {}).get("Regex") for step in steps if step.get("type") == "Split"]
        byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        vocab = spec["model"].get("vocab", {})
        if (spec["model"].get("type") != "BPE" or pattern != [LLAMA3_PATTERN] or spec.get("normalizer")
                or not all(char in byte_of for token in vocab for char in token)):
            raise TokenizerError("only Llama 3's byte-level BPE (Meta's pre-split pattern, no normalizer) runs "
                                 "as TensorFlow ops; this tokenizer.json is another kind")
        return {bytes(byte_of[char] for char in token): i for token, i in vocab.items()}

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"encode takes a str, got {type(text).__name__}")
        return self._tok.encode(well_formed(text), add_special_tokens=False).ids   # lone surrogates cannot cross into Rust

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        "`encode` of each text, in parallel (the library's threads)."
        if not all(isinstance(t, str) for t in texts):
            raise TokenizerError("encode_batch takes a list of str")
        return [e.ids for e in self._tok.encode_batch(well_formed(list(texts)), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if bad := [i for i in ids if not 0 <= i < self.vocab_size]:
            raise TokenizerError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._tok.decode(ids, skip_special_tokens=False)

    def id_to_string(self, ids):
        if isinstance(ids, int) or not isinstance(ids, Sequence):
            return self._piece(int(ids))
        return [self._piece(int(i)) for i in ids]

    def _piece(self, i: int) -> str:
        piece = self._tok.id_to_token(i) if 0 <= i < self.vocab_size else None
        if piece is None:
            raise TokenizerError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
        return piece

"""`Tokenizer`: one interface for every kind of LLaMA tokenizer; `Tokenizer(path)` opens the right kind.

| file | kind | engine |
|---|---|---|
| `tokenizer.model`, SentencePiece protobuf (LLaMA 1, 2) | `SentencePieceTokenizer` (notebook 01) | `tensorflow_text` ops |
| `tokenizer.model`, lines of `base64(bytes) rank` (Llama 3) | `TiktokenTokenizer` | `tiktoken` |
| `tokenizer.json` (Hugging Face downloads) | `HFTokenizer` | `tokenizers` |
| a `.gguf` file's own vocabulary | `GGUFSentencePieceTokenizer` / `GGUFBytePairTokenizer` | as above |
| llama2.c's `tokenizer.bin` | `Llama2cTokenizer` | as SentencePiece |

Every kind has `tokenize` (text -> int32 ids, a `tf.RaggedTensor` for a batch, usable in `tf.function`
and `tf.data`), `detokenize`, `encode`/`decode` and `prompt_ids` on Python lists, `id_to_string`, `vocab_size`, `bos_id`,
`eos_id`, `stop_ids` (the ids that end a reply) and `apply_chat_template` (see `llama_tf.chat`).
Text that looks like a special token (`<|eot_id|>`, `</s>`) is always encoded as plain text: only
`apply_chat_template` places special tokens.

TensorFlow is imported only for `tokenize` and for tensors given to `detokenize`: on a machine without
it (a JAX or PyTorch GPU box) the lists work, and a SentencePiece model is read by the `sentencepiece`
library itself (`SentencePieceLibraryTokenizer`, the same ids).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["Tokenizer", "TokenizerError", "tokenizer_kind", "sentencepiece_kind"]


class TokenizerError(ValueError):
    "A tokenizer file that cannot be read, or an argument a tokenizer cannot take."


def tokenizer_kind(model: str | Path | bytes) -> type[Tokenizer]:
    """The `Tokenizer` subclass that reads `model` (a path or a file's bytes), told by name and content."""
    if not isinstance(model, (str, Path, bytes, bytearray)):
        raise TokenizerError(f"a tokenizer is opened from a file's path or bytes, got {type(model).__name__}")
    if not isinstance(model, (bytes, bytearray)):
        path = _tokenizer_file(model)
        if path.suffix == ".json":
            from llama_tf.tokenizers.hf_tokenizer import HFTokenizer
            return HFTokenizer
        if path.suffix == ".gguf":
            from llama_tf.tokenizers.embedded_tokenizers import gguf_tokenizer_kind
            return gguf_tokenizer_kind(path)
        if path.suffix == ".bin":
            from llama_tf.tokenizers.embedded_tokenizers import Llama2cTokenizer
            return Llama2cTokenizer
        with open(path, "rb") as f:
            head = f.read(256)
    else:
        head = bytes(model[:256])
    from llama_tf.tokenizers.tiktoken_tokenizer import TiktokenTokenizer, looks_like_ranks
    if looks_like_ranks(head):
        return TiktokenTokenizer
    if head.lstrip().startswith(b"{"):
        from llama_tf.tokenizers.hf_tokenizer import HFTokenizer
        return HFTokenizer
    return sentencepiece_kind()


def sentencepiece_kind() -> type[Tokenizer]:
    """`SentencePieceTokenizer` (TensorFlow ops, notebook 01) where `tensorflow_text` imports and Keras runs
    on TensorFlow (or is not loaded), else `SentencePieceLibraryTokenizer` (the `sentencepiece` library
    alone, the same ids): a JAX or PyTorch process does not load TensorFlow (0.6 GiB) to tokenize."""
    keras = sys.modules.get("keras")
    backend = keras.config.backend() if keras is not None else os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "tensorflow":
        try:
            import tensorflow_text  # noqa: F401
        except ImportError:
            pass
        else:
            from llama_tf.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer
            return SentencePieceTokenizer
    from llama_tf.tokenizers.sentencepiece_library import SentencePieceLibraryTokenizer
    return SentencePieceLibraryTokenizer


class Tokenizer:
    """Text to int32 token ids and back. `Tokenizer(model, ...)` returns the kind that reads `model`
    (a path or a file's bytes, see `tokenizer_kind`); the options are those of that kind, `add_bos` for all.

    A kind implements `encode(str) -> list[int]` (no BOS) and `decode(ids) -> str`; this class turns
    them into TensorFlow ops. The SentencePiece kind overrides `tokenize`/`detokenize` with native ops.
    """

    vocab_size: int
    bos_id: int
    eos_id: int
    add_bos: bool = True
    add_eos: bool = False
    chat_format: str = "llama2"   # "llama3" for vocabularies with header tokens (see llama_tf.chat)

    def __new__(cls, model=None, *args, **kwargs):
        if cls is Tokenizer:
            cls = tokenizer_kind(model)
        return super().__new__(cls)

    # -- what each kind provides ------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        "The ids of `text` as plain text: no BOS/EOS, special-token look-alikes not special."
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        "The text of `ids`, special tokens written out (`<|eot_id|>`), as Meta's reference decodes."
        raise NotImplementedError

    def _plain_text(self, ids: Sequence[int]) -> str:
        "The text of `ids` without special tokens, as SentencePiece decodes `<s>` and `</s>` to nothing."
        special = self._special_ids
        return self.decode([i for i in ids if i not in special])

    @property
    def _special_ids(self) -> frozenset[int]:
        if "_special_id_set" not in self.__dict__:
            self._special_id_set = frozenset(self.special_tokens.values()) | {self.bos_id, self.eos_id}
        return self._special_id_set

    def id_to_string(self, ids):
        "The piece for an id (str), or for each id in a list."
        raise NotImplementedError

    @property
    def special_tokens(self) -> dict[str, int]:
        "Special tokens by their text."
        return {}

    def files(self) -> dict[str, bytes]:
        "The tokenizer as a checkpoint folder holds it (file name -> bytes), to write beside weights."
        raise NotImplementedError

    # -- built on them ----------------------------------------------------------------------------------
    @property
    def stop_ids(self) -> tuple[int, ...]:
        "Ids that end a reply: EOS, and Llama 3's end of turn `<|eot_id|>` and end of message `<|eom_id|>`."
        ends = [self.special_tokens.get(t) for t in ("<|eot_id|>", "<|eom_id|>")]
        return tuple(dict.fromkeys([self.eos_id] + [i for i in ends if i is not None]))

    def _with_specials(self, ids: list[int]) -> list[int]:
        return [self.bos_id] * self.add_bos + ids + [self.eos_id] * self.add_eos

    def prompt_ids(self, text: str) -> list[int]:
        "The ids of `text` with BOS/EOS as `add_bos`/`add_eos` say (what `tokenize` gives), as a list."
        return self._with_specials(self.encode(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        "`encode` of each text."
        return [self.encode(t) for t in texts]

    def _encode_rows(self, texts) -> tuple[np.ndarray, np.ndarray]:
        "Texts -> (int32 ids of all rows, int64 row lengths): a ragged batch's parts."
        rows = [self._with_specials(ids) for ids in self.encode_batch(texts)]
        return (np.fromiter(itertools.chain.from_iterable(rows), np.int32),
                np.fromiter(map(len, rows), np.int64, count=len(rows)))

    def tokenize(self, text):
        "str -> int32 ids (1-D); list/1-D tensor of str -> `tf.RaggedTensor` (batch, None)."
        import tensorflow as tf

        if isinstance(text, str):
            return tf.constant(self._with_specials(self.encode(text)), tf.int32)
        if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            values, lengths = self._encode_rows(text)
            return tf.RaggedTensor.from_row_lengths(tf.constant(values), tf.constant(lengths), validate=False)
        text = tf.convert_to_tensor(text, tf.string)
        if text.shape.rank == 0:
            ids = tf.numpy_function(lambda t: np.asarray(self._with_specials(self.encode(_text(t))), np.int32),
                                    [text], tf.int32, stateful=False, name="tokenize")
            ids.set_shape([None])
            return ids
        if text.shape.rank != 1:
            raise TokenizerError(f"tokenize takes a string or a 1-D batch of strings, got shape {text.shape}")

        values, lengths = tf.numpy_function(lambda batch: self._encode_rows([_text(t) for t in batch]), [text], [tf.int32, tf.int64], stateful=False,
                                            name="tokenize_batch")
        values.set_shape([None])
        lengths.set_shape([None])
        return tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)

    def detokenize(self, ids):
        """ids -> str (1-D ids) or list of str (a batch); a `tf.string` tensor inside a graph. Special tokens
        are left out, so `detokenize(tokenize(text)) == text`; `decode` writes them out."""
        if not _is_tf_tensor(ids) and _executing_eagerly():
            if isinstance(ids, np.ndarray):
                ids = ids.tolist()
            if len(ids) and not np.isscalar(ids[0]):
                return [self._plain_text(_ids(row)) for row in ids]
            return self._plain_text(_ids(ids))
        import tensorflow as tf

        if isinstance(ids, tf.RaggedTensor):
            if tf.executing_eagerly():
                return [self._plain_text(row) for row in ids.to_list()]
            values, lengths = tf.cast(ids.flat_values, tf.int32), ids.row_lengths()

            def decode_batch(flat, row_lengths):
                rows = np.split(flat, np.cumsum(row_lengths)[:-1]) if len(row_lengths) else []
                return np.asarray([self._plain_text(r.tolist()).encode() for r in rows], object)

            text = tf.numpy_function(decode_batch, [values, lengths], tf.string, stateful=False)
            text.set_shape([None])
            return text
        ids = tf.convert_to_tensor(ids)
        if tf.executing_eagerly():
            return self.detokenize(ids.numpy())
        if ids.shape.rank == 1:
            text = tf.numpy_function(lambda i: np.asarray(self._plain_text(i.tolist()).encode(), object),
                                     [tf.cast(ids, tf.int32)], tf.string, stateful=False)
            text.set_shape([])
            return text
        return self.detokenize(tf.RaggedTensor.from_tensor(ids))

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        """The ids of a conversation, `[{"role": "system"|"user"|"assistant", "content": str}, ...]`, in this
        model family's chat format (`chat_format`: Llama 3's headers or Llama 2's `[INST]`); with
        `add_generation_prompt`, ending where the assistant's next reply begins."""
        from llama_tf.chat import chat_ids
        return chat_ids(self, messages, add_generation_prompt)

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id})"


def sentencepiece_processor(proto: bytes, name: str):
    "A `sentencepiece.SentencePieceProcessor` for `proto`, or a TokenizerError saying what is wrong with it."
    import sentencepiece as spm

    try:
        processor = spm.SentencePieceProcessor(model_proto=proto)
    except RuntimeError as e:
        raise TokenizerError(f"{name}: not a SentencePiece model ({e})") from None
    if processor.vocab_size() == 0:
        raise TokenizerError(f"{name}: a SentencePiece model without pieces")
    return processor


def well_formed(text):
    """`text` (a str, or a list of them) with each lone surrogate (what Python makes of a command-line
    argument that is not UTF-8) read as U+FFFD, as Meta's reference and tiktoken read it; else as given."""
    if isinstance(text, (list, tuple)):
        return [well_formed(t) for t in text]
    if not isinstance(text, str):
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def read_model(model: str | Path | bytes, default_name: str) -> tuple[bytes, str]:
    "A tokenizer file's bytes and a name for error messages, from its path or from the bytes themselves."
    if isinstance(model, (bytes, bytearray)):
        return bytes(model), default_name
    path = _tokenizer_file(model)
    return path.read_bytes(), str(path)


def _tokenizer_file(model) -> Path:
    "The path of a tokenizer file that exists and is a regular file (a pipe would block the read)."
    path = Path(model)
    if path.exists() and not path.is_file():
        raise TokenizerError(f"{path}: not a regular file")
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return path


def _text(value) -> str:
    "A `tf.string` element (bytes) as text; bytes that are not UTF-8 become U+FFFD, as tiktoken does."
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _is_tf_tensor(value) -> bool:
    return type(value).__module__.split(".")[0] == "tensorflow"


def _executing_eagerly() -> bool:
    "Outside a `tf.function` (always, where TensorFlow was never imported)."
    tf = sys.modules.get("tensorflow")
    return tf is None or tf.executing_eagerly()


def _ids(ids) -> list[int]:
    return [int(i) for i in ids]


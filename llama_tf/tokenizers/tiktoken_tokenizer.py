"""Llama 3's tokenizer: byte-level BPE over `tiktoken` ranks, with Meta's pre-split regex and 256 special tokens.

Meta's `tokenizer.model` for Llama 3 is text, one `base64(token bytes) rank` line per token (128,000 of
them); the rank is both the id and the merge priority. Special tokens follow from id 128000 in the order
of Meta's reference tokenizer (`llama_models.llama3.tokenizer`), which this one reproduces id for id,
including its chunking of very long inputs. Notebook 11 builds the same encoder by hand.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

from llama_tf.llama3_vocabulary import LLAMA3_PATTERN, LLAMA3_SPECIAL_TOKENS
from llama_tf.tokenizers.tokenizer import Tokenizer, TokenizerError, read_model

__all__ = ["TiktokenTokenizer", "LLAMA3_PATTERN", "LLAMA3_SPECIAL_TOKENS", "looks_like_ranks", "bytes_to_unicode"]

# Meta's limits: tiktoken encodes at most 400k characters at once, and runs of more than 25k
# (non-)whitespace characters are cut (tiktoken's BPE is quadratic in the length of one piece).
MAX_ENCODE_CHARS = 400_000
MAX_RUN_CHARS = 25_000

_RANK_LINE = re.compile(rb"^[A-Za-z0-9+/=]+ \d+$")


def looks_like_ranks(head: bytes) -> bool:
    "Whether a file starting with `head` is a tiktoken ranks file (`base64 rank` lines)."
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    return bool(_RANK_LINE.match(first))


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (space -> "Ġ", newline -> "Ċ"), as `tokenizer.json` spells
    byte-level pieces; `id_to_string` uses it so that both Llama 3 tokenizer files show the same pieces."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def read_ranks(data: bytes, name: str) -> dict[bytes, int]:
    "The `bytes -> rank` table of a ranks file, refusing any malformed line by its number."
    ranks: dict[bytes, int] = {}
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise TokenizerError(f"{name}: not a tiktoken ranks file (it is not ASCII text)") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
            if len(parts) != 2 or rank < 0 or not token:
                raise ValueError
        except (ValueError, IndexError, binascii.Error):
            raise TokenizerError(f"{name}: line {number} is not `base64(bytes) rank`: {line[:60]!r}") from None
        if token in ranks:
            raise TokenizerError(f"{name}: line {number} repeats a token already ranked {ranks[token]}")
        ranks[token] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{name}: the ranks are not 0..{len(ranks) - 1}, each once")
    if any(bytes([b]) not in ranks for b in range(256)):
        raise TokenizerError(f"{name}: not every single byte has a rank, so some text could not be encoded")
    return ranks


class TiktokenTokenizer(Tokenizer):
    """Llama 3's `tokenizer.model` (a path or its bytes) through `tiktoken`: ids equal Meta's reference."""

    chat_format = "llama3"

    def __init__(self, model: str | Path | bytes, add_bos: bool = True, add_eos: bool = False):
        import tiktoken

        data, name = read_model(model, "tokenizer.model")
        ranks = read_ranks(data, name)
        self._data = data
        self._specials = {token: len(ranks) + i for i, token in enumerate(LLAMA3_SPECIAL_TOKENS)}
        self._encoding = tiktoken.Encoding(name=Path(name).name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                                           special_tokens=self._specials)
        self._pieces = {rank: token for token, rank in ranks.items()}
        self.add_bos, self.add_eos = add_bos, add_eos
        self.vocab_size = len(ranks) + len(LLAMA3_SPECIAL_TOKENS)
        self.bos_id, self.eos_id = self._specials["<|begin_of_text|>"], self._specials["<|end_of_text|>"]
        self.pad_id = self._specials["<|finetune_right_pad_id|>"]

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    def files(self) -> dict[str, bytes]:
        return {"tokenizer.model": self._data}

    def byte_pair_ranks(self) -> dict[bytes, int]:
        "Each token's bytes -> its id, which is also its merge priority (`BytePairOps` encodes with it)."
        return {token: rank for rank, token in self._pieces.items()}

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"encode takes a str, got {type(text).__name__}")
        # `encode_ordinary`: every special-token look-alike is plain text (Meta: allowed_special=set(),
        # disallowed_special=()).
        if len(text) <= MAX_RUN_CHARS:
            return self._encoding.encode_ordinary(text)
        return [i for start in range(0, len(text), MAX_ENCODE_CHARS)
                for piece in _runs_of_at_most(text[start: start + MAX_ENCODE_CHARS], MAX_RUN_CHARS)
                for i in self._encoding.encode_ordinary(piece)]

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if bad := [i for i in ids if not 0 <= i < self.vocab_size]:
            raise TokenizerError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._encoding.decode(ids)

    def id_to_string(self, ids):
        if isinstance(ids, int) or not isinstance(ids, Sequence):
            return self._piece(int(ids))
        return [self._piece(int(i)) for i in ids]

    def _piece(self, i: int) -> str:
        if i in self._pieces:
            return "".join(bytes_to_unicode()[b] for b in self._pieces[i])
        if i >= len(self._pieces) and i < self.vocab_size:
            return LLAMA3_SPECIAL_TOKENS[i - len(self._pieces)]
        raise TokenizerError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")


def _runs_of_at_most(text: str, limit: int) -> Iterator[str]:
    "`text` cut so that no piece holds more than `limit` consecutive whitespace or non-whitespace characters (Meta's rule)."
    if not _long_run(limit).search(text):   # the usual case, found in C
        yield text
        return
    run, is_space, start = 0, text[:1].isspace(), 0
    for i, char in enumerate(text):
        if char.isspace() != is_space:
            run, is_space = 1, not is_space
        else:
            run += 1
            if run > limit:
                yield text[start:i]
                start, run = i, 1
    yield text[start:]


@cache
def _long_run(limit: int) -> re.Pattern:
    return re.compile(rf"\s{{{limit + 1}}}|\S{{{limit + 1}}}")   # `\s` is `str.isspace`

"""Llama 3's byte-level BPE as TensorFlow ops, for a graph that tokenizes without Python (a SavedModel).

`BytePairOps(ranks, special_tokens, bos_id, ...)` encodes as tiktoken does with Meta's pre-split regex
(`LLAMA3_PATTERN`): the text is split into pieces; a piece that is a token is that token; any other starts
as its bytes and merges, again and again, the adjacent pair whose joined bytes are the lowest-ranked token
(the leftmost of equals) until no adjacent pair is a token. `detokenize` joins the tokens' bytes, special
tokens left out (as `Tokenizer.detokenize`), and reads them as UTF-8, U+FFFD for what is not.
`BytePairOps.of(tokenizer)` builds it from a `TiktokenTokenizer` or a Llama 3 `tokenizer.json`.

TensorFlow's regex engine (RE2) has no look-ahead, which Meta's pattern uses once: `\\s+(?!\\S)` leaves the
last whitespace character of a run to the piece after it. So the text is first cut before that character
(`segments`) and each segment is split by the pattern without the look-ahead, which gives the same
pieces. RE2's `\\s` is ASCII only: Unicode's whitespace (as tiktoken's Rust regex reads `\\s`) is spelled
out. Meta cuts runs of more than 25,000 like characters before encoding (`MAX_RUN_CHARS`); these ops do not.
"""

from __future__ import annotations

__all__ = ["BytePairOps", "WHITESPACE", "PIECE_PATTERN"]

# Unicode's White_Space characters, as tiktoken's `\s` matches them, in RE2's syntax.
WHITESPACE = r"\t-\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
_S = f"[{WHITESPACE}]"
# Meta's pattern with `\s+(?!\S)|\s+` as `\s+`: right on a segment, where no run needs its last character cut.
PIECE_PATTERN = (rf"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}{{1,3}}"
                 rf"| ?[^{WHITESPACE}\p{{L}}\p{{N}}]+[\r\n]*|{_S}*[\r\n]+|{_S}+")
_NOT_A_TOKEN = 2**62


class BytePairOps:
    """`tokenize` (strings -> ragged int32 ids, BOS first and EOS last as `add_bos`, `add_eos` say) and
    `detokenize` (ids -> strings) as TensorFlow ops, for `ranks` (token bytes -> id, the merge priority) and
    `special_tokens` (text -> id)."""

    def __init__(self, ranks: dict[bytes, int], special_tokens: dict[str, int], bos_id: int, eos_id: int,
                 stop_ids=(), add_bos: bool = True, add_eos: bool = False):
        import tensorflow as tf

        self.bos_id, self.eos_id, self.stop_ids = bos_id, eos_id, tuple(stop_ids)
        self.add_bos, self.add_eos = add_bos, add_eos
        self.vocab_size = max([*ranks.values(), *special_tokens.values()]) + 1
        tokens = list(ranks)
        self._ranks = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(tokens, tf.string), tf.constant([ranks[t] for t in tokens], tf.int64)), default_value=-1)
        pieces = [b""] * self.vocab_size   # special tokens and unused ids decode to nothing
        for token, i in ranks.items():
            pieces[i] = token
        self._pieces = tf.constant(pieces, tf.string)

    @classmethod
    def of(cls, tokenizer) -> BytePairOps:
        "The ops of a byte-level BPE tokenizer that has `byte_pair_ranks()` (Llama 3's, either file)."
        return cls(tokenizer.byte_pair_ranks(), tokenizer.special_tokens, tokenizer.bos_id, tokenizer.eos_id,
                   tokenizer.stop_ids, tokenizer.add_bos, tokenizer.add_eos)

    def trackables(self) -> list:
        "The TensorFlow objects these ops hold (the rank table): what a SavedModel must track."
        return [self._ranks]

    def tokenize(self, text):
        "A batch of strings (`tf.string` [batch]) -> `tf.RaggedTensor` (batch, None) of int32 ids."
        import tensorflow as tf

        text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")   # as `_text` reads bytes
        segments = self.segments(text)                                                   # (batch, segments)
        pieces = _split(segments.flat_values, PIECE_PATTERN)
        pieces = tf.RaggedTensor.from_row_splits(pieces, segments.row_splits).merge_dims(1, 2)
        lengths, ids = self._merge(pieces.flat_values)
        ids = tf.RaggedTensor.from_row_splits(tf.RaggedTensor.from_row_lengths(ids, lengths), pieces.row_splits)
        ids = tf.cast(ids.merge_dims(1, 2), tf.int32)
        column = lambda i: tf.fill([ids.nrows(), 1], tf.constant(i, tf.int32))  # noqa: E731
        return tf.concat([column(self.bos_id)] * self.add_bos + [ids] + [column(self.eos_id)] * self.add_eos, axis=1)

    def segments(self, text):
        """Each string cut before the last character of every whitespace run that is longer than one
        character, followed by something else, and not ended by a newline: where Meta's `\\s+(?!\\S)` ends."""
        import tensorflow as tf

        runs = _split(text, f"{_S}+")   # whitespace runs and what lies between them
        parts = runs.flat_values
        chars = tf.strings.length(parts, unit="UTF8_CHAR")
        last = tf.strings.substr(parts, tf.maximum(chars - 1, 0), tf.ones_like(chars), unit="UTF8_CHAR")
        followed = tf.range(tf.size(parts, tf.int64)) + 1 < tf.gather(runs.row_splits[1:], runs.value_rowids())
        cut = (tf.strings.regex_full_match(parts, f"{_S}+") & (chars > 1) & followed
               & ~tf.strings.regex_full_match(last, r"[\r\n]"))
        head = tf.where(cut, tf.strings.substr(parts, tf.zeros_like(chars), chars - 1, unit="UTF8_CHAR"), parts)
        entries = tf.reshape(tf.stack([head, tf.where(cut, last, "")], axis=1), [-1])        # head, tail, ...
        first_in_row = tf.range(tf.size(parts, tf.int64)) == tf.gather(runs.row_splits, runs.value_rowids())
        starts = tf.reshape(tf.stack([first_in_row, cut], axis=1), [-1])                     # a segment begins
        segment = tf.cumsum(tf.cast(starts, tf.int64)) - 1
        count = tf.reduce_sum(tf.cast(starts, tf.int64))
        joined = tf.strings.unsorted_segment_join(entries, segment, count)
        rows = tf.boolean_mask(tf.repeat(runs.value_rowids(), 2), starts)
        return tf.RaggedTensor.from_value_rowids(joined, rows, nrows=runs.nrows())

    def _merge(self, pieces):
        """Each piece's tokens by BPE: (tokens per piece, the tokens' ids). A round merges one pair in every
        piece still merging; a piece that has no pair left to merge leaves the round's working set."""
        import tensorflow as tf

        whole = self._ranks.lookup(pieces) >= 0                                 # a piece that is a token stays whole
        one = tf.RaggedTensor.from_row_lengths(pieces, tf.ones_like(pieces, tf.int64))
        split = tf.strings.bytes_split(pieces)
        rows = tf.concat([tf.ragged.boolean_mask(one, one.with_flat_values(whole)),
                          tf.ragged.boolean_mask(split, split.with_flat_values(~tf.gather(whole, split.value_rowids())))],
                         axis=1)
        done = [tf.TensorArray(dtype, size=0, dynamic_size=True, infer_shape=False, element_shape=[None])
                for dtype in (tf.string, tf.int64, tf.int64)]                  # symbols, lengths, piece numbers

        def one_round(rows, number, done, round_):
            pairs = tf.strings.join([rows[:, :-1].flat_values, rows[:, 1:].flat_values])
            pairs = rows[:, 1:].with_flat_values(self._ranks.lookup(pairs))
            rank = tf.where(pairs.flat_values < 0, tf.constant(_NOT_A_TOKEN, tf.int64), pairs.flat_values)
            owner, n = pairs.value_rowids(), rows.nrows()
            best = tf.math.unsorted_segment_min(rank, owner, n)
            position = tf.range(tf.size(rank, tf.int64)) - tf.gather(pairs.row_splits, owner)
            first = tf.math.unsorted_segment_min(tf.where(rank == tf.gather(best, owner), position, _NOT_A_TOKEN), owner, n)
            merging = best < _NOT_A_TOKEN
            finished = [tf.ragged.boolean_mask(rows, ~merging).flat_values, tf.boolean_mask(rows.row_lengths(), ~merging),
                        tf.boolean_mask(number, ~merging)]
            done = [array.write(round_, value) for array, value in zip(done, finished)]
            rows, first = tf.ragged.boolean_mask(rows, merging), tf.boolean_mask(first, merging)
            symbols, owner = rows.flat_values, rows.value_rowids()
            index, at = tf.range(tf.size(symbols, tf.int64)) - tf.gather(rows.row_splits, owner), tf.gather(first, owner)
            following = tf.concat([symbols[1:], [""]], axis=0)[: tf.size(symbols)]
            joined = tf.where(index == at, tf.strings.join([symbols, following]), symbols)
            keep = index != at + 1
            rows = tf.RaggedTensor.from_value_rowids(tf.boolean_mask(joined, keep), tf.boolean_mask(owner, keep),
                                                     nrows=rows.nrows())
            return rows, tf.boolean_mask(number, merging), done, round_ + 1

        state = (rows, tf.range(rows.nrows()), done, 0)
        going = lambda rows, number, done, round_: (round_ == 0) | (rows.nrows() > 0)   # noqa: E731  (once at least: a TensorArray concatenates only what was written)
        _, _, done, _ = tf.while_loop(going, one_round, state)
        symbols, lengths, number = (array.concat() for array in done)
        tokens = tf.gather(tf.RaggedTensor.from_row_lengths(symbols, lengths), tf.argsort(number))
        return tokens.row_lengths(), self._ranks.lookup(tokens.flat_values)

    def detokenize(self, ids):
        "ids (`tf.RaggedTensor` or a tensor, (batch, None)) -> their text (`tf.string` [batch]), special tokens left out."
        import tensorflow as tf

        ids = ids if isinstance(ids, tf.RaggedTensor) else tf.RaggedTensor.from_tensor(ids)
        text = tf.strings.reduce_join(tf.gather(self._pieces, ids), axis=-1)
        return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)



def _split(text, pattern: str):
    """`text` (`tf.string` [n]) cut into the matches of `pattern` and what lies between them, a ragged
    (n, None). `tensorflow_text.regex_split` reads its input as C strings, which end at a NUL byte: it runs
    on a copy whose NULs are U+0001 (in the same class as NUL in every pattern here), and the pieces are
    cut from `text` itself at the offsets it finds."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    safe = tf.strings.regex_replace(text, r"\x00", "\x01")
    _, begin, end = tf_text.regex_split_with_offsets(safe, pattern, pattern)
    owner = begin.value_rowids()
    return begin.with_flat_values(tf.strings.substr(tf.gather(text, owner), begin.flat_values,
                                                    end.flat_values - begin.flat_values))

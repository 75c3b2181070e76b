"""Text generation: the compiled prefill/decode step, sampling, and text that streams as tokens arrive.

`Decoder` runs the prompt through the model once and then one token per step on a key/value cache, in
one step compiled the way the Keras backend wants (`compiled_step`: a `tf.function` on TensorFlow, a
`jax.jit` on JAX, eager PyTorch without autograd); `Sampler` (`llama_tf.sampling`, notebook 08) picks
each token (greedy, temperature, top-k, top-p, seeded); `TextStream` turns ids into text as they
arrive, holding back incomplete UTF-8 and possible stop strings.
`LLM.generate` (in `llama_tf.llm`) puts these together; notebook 07 explains the cache they run on.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import keras
import numpy as np

from llama_tf import kernels
from llama_tf.backend import inference, to_numpy
from llama_tf.model import call_with_cache, new_cache
from llama_tf.layers.projection import projections
from llama_tf.sampling import Sampler, is_int

__all__ = ["Decoder", "TextStream", "compiled_step"]

CACHE_BLOCK = 64  # cache lengths are rounded up to a multiple of this (fewer distinct shapes)
GREEDY_STEPS = 16  # greedy decode steps per compiled call at most (JAX, TensorFlow's XLA)
XLA_MAX_PARAMETERS = 500_000_000  # TensorFlow: XLA decode steps for float32 models below this (Decoder)


def compiled_step(model: keras.Model):
    """`step(ids, cache, index, start) -> (logits, cache)`: `call_with_cache` compiled for the backend;
    `cache` None is the prefill's empty cache (made inside the compiled function on JAX).

    - TensorFlow: one `tf.function` with free batch, sequence and cache lengths, traced once, for the
      prefill and decode steps; a batch of one token traced apart; both inside `kernels.graph_step()`, so
      that one token's products (and the prompt's last position's) are llama_tf's compiled ops where they
      are built (notebook 12); decode steps on
      a cache held in `tf.Variable`s (`_in_place`) run under XLA instead, compiled once per batch size
      and cache capacity.
    - JAX: `jax.jit` of a pure function of the weights, compiled once per shape: the prefill's, and the
      decode step's for each cache length (which grows in blocks, so a few). The weights go in as
      arguments, not as constants baked into the program, and the cache's buffers are donated, so
      `slice_update` writes the new slots in place.
    - PyTorch: eager, without autograd."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        blocks = model.blocks
        attention = blocks[0].attention
        kv = tf.TensorSpec((None, attention.n_kv_heads, None, attention.head_dim), attention.compute_dtype)
        signature = [tf.TensorSpec((None, None), tf.int32), [(kv, kv)] * len(blocks),
                     tf.TensorSpec((), tf.int32), tf.TensorSpec((None,), tf.int32)]
        def traced(ids, cache, index, start):
            with kernels.graph_step():   # rows the ops take (a prompt's last position) go to them
                return call_with_cache(model, ids, cache, index, start)
        traced = tf.function(traced, input_signature=signature)

        def one_token(ids, cache, index, start):
            with kernels.graph_step():
                return call_with_cache(model, ids, cache, index, start)
        one_token = tf.function(one_token, input_signature=[tf.TensorSpec((1, 1), tf.int32), *signature[1:3],
                                                            tf.TensorSpec((1,), tf.int32)])
        in_place = tf.function(functools.partial(_step_in_place, model), jit_compile=True)

        def step(ids, cache, index, start):
            if cache is not None and isinstance(cache[0][0], tf.Variable):
                return in_place(ids, cache, index, start), cache
            if cache is not None and ids.shape == (1, 1) and kernels.tensorflow_ops() is not None:
                return one_token(ids, cache, index, start)
            return traced(ids, new_cache(model, len(ids), 0) if cache is None else cache, index, start)
        step.in_place, step.traced = in_place, traced   # for looking at their compilations
        return step
    if backend == "jax":
        def step(ids, cache, index, start):
            return call_with_cache(model, ids, new_cache(model, ids.shape[0], 0) if cache is None else cache,
                                   index, start)
        return jit_with_weights(model, step, donated=1)
    if backend == "torch":
        def eager(ids, cache, index, start):
            tensor = keras.ops.convert_to_tensor
            cache = new_cache(model, len(ids), 0) if cache is None else cache
            with inference():
                return call_with_cache(model, tensor(ids), cache, tensor(index), tensor(start))
        return eager
    raise ValueError(f"llama_tf decodes on the tensorflow, jax and torch backends, not {backend!r}")


def _step_in_place(model: keras.Model, ids, cache: list, index, start):
    """`call_with_cache` on a cache held in variables (TensorFlow): the fixed-length cache is read,
    its new slots written and assigned back; traced inside `kernels.xla_step()`, so that with the kernels
    built the products and the one-token attention are llama_tf's, and the attention writes the new slot
    into the variable's own buffer (XLA aliases it). Returns the logits. (Without the kernels the
    assignment is not in place: a step's time grows with the cache's capacity, on the 134M shape on
    2 cores 23 ms a token at 128 slots and 46 at 2,048.)"""
    with kernels.xla_step():   # products by llama_tf's kernels, as XLA custom calls, where they are built
        logits, updated = call_with_cache(model, ids, [(k.value(), v.value()) for k, v in cache], index, start)
    for (key_variable, value_variable), (keys, values) in zip(cache, updated):
        key_variable.assign(keys)
        value_variable.assign(values)
    return logits


def compiled_greedy_steps(model: keras.Model):
    """`steps(ids, cache, index, start, n) -> (tokens (GREEDY_STEPS, batch), cache)`: n ≤ GREEDY_STEPS
    greedy decode steps in one compiled loop, each feeding the token the last one picked, so the host
    waits once per n tokens instead of once per token; the first n rows of `tokens` are the picks. n is
    an argument of the compiled loop, not a constant: a generation's last call computes only the tokens
    it needs, without compiling again. On JAX a `lax.fori_loop`; on TensorFlow a `tf.while_loop` that
    XLA compiles, on a cache held in variables (`_step_in_place`). None on PyTorch."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        looped = tf.function(functools.partial(_greedy_in_place, model), jit_compile=True)
        return lambda ids, cache, index, start, n: (looped(ids, cache, index, start, np.int32(n)), cache)
    if keras.backend.backend() != "jax":
        return None
    import jax

    def steps(ids, cache, index, start, n):
        def body(i, carry):
            ids, cache, tokens = carry
            logits, cache = call_with_cache(model, ids, cache, index + i, start)
            picked = jax.numpy.argmax(logits, axis=-1).astype("int32")
            return picked[:, None], cache, tokens.at[i].set(picked)

        tokens = jax.numpy.zeros((GREEDY_STEPS, ids.shape[0]), "int32")
        _, cache, tokens = jax.lax.fori_loop(0, n, body, (ids, cache, tokens))
        return tokens, cache
    compiled = jit_with_weights(model, steps, donated=1)
    return lambda ids, cache, index, start, n: compiled(ids, cache, index, start, np.int32(n))


def _greedy_in_place(model: keras.Model, ids, cache: list, index, start, n):
    "`n` greedy `_step_in_place` steps in a `tf.while_loop`: the tokens picked, (GREEDY_STEPS, batch)."
    import tensorflow as tf

    def body(i, ids, tokens):
        picked = tf.argmax(_step_in_place(model, ids, cache, index + i, start), axis=-1, output_type=tf.int32)
        return i + 1, picked[:, None], tf.tensor_scatter_nd_update(tokens, [[i]], picked[None])

    tokens = tf.zeros((GREEDY_STEPS, ids.shape[0]), tf.int32)
    _, _, tokens = tf.while_loop(lambda i, *_: i < n, body, (tf.constant(0), ids, tokens))
    return tokens


def jit_with_weights(model: keras.Model, fn, donated: int):
    """`jax.jit` of `fn(*args)`, which calls `model`, with the model's weights passed in as arguments
    (bound by a `keras.StatelessScope`) rather than baked into the program as constants. `fn`'s
    argument number `donated` gives its buffers to the result."""
    import jax

    variables = model.variables

    def pure(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(*args)

    jitted = jax.jit(pure, donate_argnums=donated + 1)
    return lambda *args: jitted([v.value for v in variables], *args)


class Decoder:
    """Generates token ids for a batch of prompts with a key/value cache: one compiled step
    (`compiled_step`) runs both the prefill (every prompt, left-padded to the longest) and each
    one-token decode step."""

    def __init__(self, model: keras.Model, max_seq_len: int, xla: bool | None = None):
        """`xla` (TensorFlow): decode steps compiled by XLA on a cache held in variables, once per batch
        size and cache length, instead of in the graph step (traced once for every shape, and once for a
        batch of one token, whose products go to llama_tf's compiled ops where they are built: notebook
        12). With llama_tf's kernels built, XLA's step calls them too, as custom calls (products and
        one-token attention), and greedy decoding runs GREEDY_STEPS tokens per call in one XLA loop: None
        (the default) is then XLA at every size and precision. Without them XLA's CPU products are slower
        than the graph's, and None uses XLA only for float32 models below XLA_MAX_PARAMETERS and for
        float32 models with quantised weights, which the graph would dequantise every step."""
        self.model, self.max_seq_len = model, max_seq_len
        # TensorFlow's short prompts: cache variables that no generation holds, by (batch, slots), for the
        # next one (making them anew cost a 134M model's first token a quarter of its time)
        self._free_caches: dict[tuple[int, int], list] = {}
        tensorflow = keras.backend.backend() == "tensorflow"
        quantized = any(layer.format.quantized for layer in projections(model))
        if xla is None and tensorflow:
            xla = kernels.tensorflow_ops() is not None or model.blocks[0].attention.compute_dtype == "float32" and (
                quantized or model.count_params() < XLA_MAX_PARAMETERS)
        self.in_place = bool(xla) and tensorflow
        self.step = compiled_step(model)
        self.greedy_steps = compiled_greedy_steps(model)
        # JAX compiles once per prompt width: widths are rounded up (more left padding, which no row sees),
        # to a multiple of CACHE_BLOCK, and a short prompt to 8, 16 or 32 tokens, which XLA's step takes
        # (on TensorFlow, on the variables' cache: no graph's per-op overhead), its products by the kernels
        # where they multiply several rows at once (llama.cpp's 4- to 6-bit blocks), else by XLA. Not
        # bfloat16 on TensorFlow, whose graph multiplies bfloat16 faster than XLA's CPU product does.
        self.width_multiple = CACHE_BLOCK if keras.backend.backend() == "jax" else 1
        bfloat16 = model.blocks[0].attention.compute_dtype == "bfloat16"
        compiled = keras.backend.backend() == "jax" or (
            self.in_place and kernels.tensorflow_ops() is not None and not bfloat16)
        self.short_widths = [8, 16, 32] if compiled else []

    def __call__(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampler: Sampler,
                 stop_ids: Sequence[int] = (), vocab_size: int | None = None) -> Iterator[np.ndarray]:
        """Checks the prompts (now, not when iteration starts), then returns an iterator that yields
        the next token of every row, step by step, as a (batch,) array; a row that has finished (it
        produced one of `stop_ids`, or its context is full) yields -1 from then on. Ends when every
        row has finished or after `max_new_tokens` steps. `vocab_size`: only ids below it are picked (the
        ids a tokenizer can write out, where the model's embedding is padded past its vocabulary)."""
        if not is_int(max_new_tokens) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
        lengths = np.array([len(p) for p in prompts])
        if len(prompts) == 0 or lengths.min() == 0:
            raise ValueError("every prompt needs at least one token (BOS counts)")
        vocab = self.model.output_shape[-1]
        for row, prompt in enumerate(prompts):
            bad = [t for t in prompt if not is_int(t) or not 0 <= t < vocab]
            if bad:
                where = "the prompt" if len(prompts) == 1 else f"prompt {row}"
                raise ValueError(f"{where} holds token id {bad[0]!r}, outside the vocabulary (0..{vocab - 1})")
        if lengths.max() > self.max_seq_len:
            which = "the prompt" if len(prompts) == 1 else f"prompt {int(lengths.argmax())}"
            raise ValueError(f"{which} is {lengths.max()} tokens, longer than the model's context of "
                             f"{self.max_seq_len}")
        budget = np.minimum(min(max_new_tokens, self.max_seq_len), self.max_seq_len - lengths)   # per row
        within = vocab_size is not None and vocab_size < vocab
        return self._steps(prompts, lengths, budget, sampler, stop_ids, vocab_size if within else None)

    def _steps(self, prompts, lengths, budget, sampler, stop_ids, vocab_size) -> Iterator[np.ndarray]:
        if budget.max() == 0:
            return
        longest = int(lengths.max())
        width = next((w for w in self.short_widths if longest <= w), -(-longest // self.width_multiple) * self.width_multiple)
        start = (width - lengths).astype("int32")                          # left padding of each row
        ids = np.zeros((len(prompts), width), "int32")
        for row, prompt in enumerate(prompts):
            ids[row, start[row]:] = prompt
        slots = width + int(budget.max())                                   # prompts, then the new tokens
        # Prefill into an empty cache, which comes back holding the prompts' keys and values; only then
        # does each layer's cache get room for new tokens, one layer at a time. (Zeros of the full
        # length from the start would be alive twice during the prefill: the empty ones and the written.)
        # The room grows as tokens come (doubling, in blocks), so memory follows the tokens actually
        # generated, not `max_new_tokens` or the context length.
        in_place, held = self.in_place, None
        if in_place and width in self.short_widths:   # TensorFlow: a short prompt in XLA's step, on variables
            capacity = _in_place_slots(min(slots, width + 4 * CACHE_BLOCK))
            # Reused as they are: the prompt writes its slots, each step its own, and attention reads a
            # row's slots from its start to the newest, never a slot left by an earlier generation.
            key = (len(prompts), capacity)
            held = self._free_caches.pop(key, None) or _variables(new_cache(self.model, *key))
            logits, cache = self.step(ids, list(held), np.int32(0), start)
        else:
            logits, cache = self.step(ids, None, np.int32(0), start)
            capacity = _grow(cache, width, min(slots, width + 4 * CACHE_BLOCK), in_place)
        try:
            yield from self._tokens(logits, cache, capacity, width, slots, budget, sampler, stop_ids, vocab_size, start)
        finally:   # the generation ended, was closed or was dropped: its first variables are free again
            if held is not None:
                self._free_caches[key] = held

    def _tokens(self, logits, cache, capacity, width, slots, budget, sampler, stop_ids, vocab_size, start):
        in_place = self.in_place
        # Greedy (JAX, TensorFlow's XLA): up to GREEDY_STEPS tokens per compiled call (tokens past a stop are
        # computed, not yielded).
        looped = self.greedy_steps is not None and (in_place or keras.backend.backend() == "jax")
        chunk = GREEDY_STEPS if looped and sampler.temperature == 0 and not vocab_size else 1
        if vocab_size:
            sampler = functools.partial(_pick_within, sampler, vocab_size)
        finished, step = budget == 0, 0
        tokens = sampler(logits)[None]                 # (steps, batch): picked, not yet yielded
        while True:
            for picked in tokens:
                next_ids = np.where(finished, -1, picked)
                yield next_ids
                step += 1
                finished |= np.isin(next_ids, stop_ids) | (step >= budget)
                if finished.all():
                    return
            slot = width + step - 1                    # where the last token yielded goes
            if slot + chunk > capacity:
                capacity = _grow(cache, capacity, max(slot + chunk, min(slots, 2 * capacity)), in_place)
            fed = np.maximum(next_ids, 0)[:, None]     # finished rows feed a dummy 0
            if chunk == 1:
                logits, cache = self.step(fed, cache, np.int32(slot), start)
                tokens = sampler(logits)[None]
            else:   # no more steps than the longest row still needs
                steps = min(chunk, int((budget - step)[~finished].max()))
                tokens, cache = self.greedy_steps(fed, cache, np.int32(slot), start, steps)
                tokens = to_numpy(tokens)[:steps]


def _pick_within(sampler: Sampler, vocab_size: int, logits):
    "The sampler's choice among the first `vocab_size` ids."
    return sampler(logits[:, :vocab_size])


def _grow(cache: list, length: int, wanted: int, in_place: bool = False) -> int:
    """Pad every layer's keys and values (batch, kv_heads, length, head_dim) to at least `wanted` slots,
    in whole blocks; `in_place` (TensorFlow): to a power of two (each length is an XLA compilation),
    held in variables that the decode step assigns."""
    if in_place:
        target = _in_place_slots(wanted)
        cache[:] = _variables(_pad(cache, target - length))
        return target
    target = -(-wanted // CACHE_BLOCK) * CACHE_BLOCK
    cache[:] = (_pad_jax if keras.backend.backend() == "jax" else _pad)(cache, target - length)
    return target


def _in_place_slots(wanted: int) -> int:
    "Slots of a cache in variables for `wanted`: a power of two (each length is an XLA compilation)."
    return max(2 * CACHE_BLOCK, 1 << (wanted - 1).bit_length())


def _variables(cache: list) -> list:
    "A cache's keys and values as TensorFlow variables, which the decode step assigns in place."
    import tensorflow as tf

    return [(tf.Variable(keys, trainable=False), tf.Variable(values, trainable=False)) for keys, values in cache]


def _pad(cache: list, slots: int) -> list:
    room = [(0, 0), (0, 0), (0, slots), (0, 0)]
    return [(keras.ops.pad(keys, room), keras.ops.pad(values, room)) for keys, values in cache]


@functools.cache
def _compiled_pad():
    "`_pad` as one compiled call: op by op, JAX took 17 ms to pad a 16-layer cache on a GPU."
    import jax

    return jax.jit(_pad, static_argnums=1)


def _pad_jax(cache: list, slots: int) -> list:
    return _compiled_pad()(cache, slots)


class TextStream:
    """The text of a continuation, growing as its token ids arrive. `push(id)` (or `extend(ids)`)
    returns the new text that is final: it holds back an incomplete UTF-8 character (byte-fallback pieces arrive one byte
    at a time) and any tail that may be the start of a `stop` string. Once a stop string appears,
    the text ends before it and `stopped` is set. `flush()` returns what was held back at the end."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int], stop: Sequence[str] = ()):
        self.tokenizer, self.prompt_ids, self.stop = tokenizer, list(prompt_ids), list(stop)
        # Decode behind the prompt: SentencePiece drops the leading space of a text's first piece,
        # which would glue the continuation to the prompt if decoded on its own.
        self._prefix = tokenizer.detokenize(self.prompt_ids)
        self.ids: list[int] = []
        self.text = ""          # everything decoded so far, cut at a stop string
        self.emitted = 0        # characters of `text` already returned
        self.stopped = False

    def push(self, token_id: int) -> str:
        return self.extend([token_id])

    def extend(self, token_ids: Sequence[int]) -> str:
        self.ids += [int(t) for t in token_ids]
        full = self.tokenizer.detokenize(self.prompt_ids + self.ids)
        self.text = full[len(self._prefix):] if full.startswith(self._prefix) else self.tokenizer.detokenize(self.ids)
        cuts = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if cuts:
            self.text, self.stopped = self.text[: min(cuts)], True
            return self.flush()
        held = len(self.text) - len(self.text.rstrip("\ufffd"))
        for s in self.stop:     # the longest tail that a stop string begins with
            held = max([held] + [n for n in range(1, len(s)) if self.text.endswith(s[:n])])
        return self._emit(len(self.text) - held)

    def flush(self) -> str:
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        piece = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece

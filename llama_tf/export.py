"""Shipping a model: a TensorFlow SavedModel that takes strings and returns text, with the tokenizer and the
decode loop inside the graph.

`saved_model(llm, path)` writes a SavedModel whose `serving_default` signature takes `prompt` (a batch of
strings, `tf.string [None]`) and `max_new_tokens` (`tf.int32` scalar) and returns `{"text": tf.string
[None]}`: the greedy continuation of each prompt, what `llm.generate(prompts, max_new_tokens)` returns.
Everything runs in the graph: SentencePiece tokenizing (`tensorflow_text`), left padding, the prefill,
a `tf.while_loop` of one-token steps on a cache with room for the new tokens, stop tokens, detokenizing.
The folder loads with `tensorflow` and `tensorflow_text` alone (no Keras, no llama_tf), in Python,
TensorFlow Serving (`path` ending in a version number, `NAME/1`) or TensorFlow's C++ and Java APIs.
A second signature, `sample`, also takes `temperature` and `top_p` (`tf.float32` scalars) and `seed`
(`tf.int64` scalar): each token is drawn from softmax(logits / temperature) cut to the nucleus `top_p`
(`llama_tf.sampling`'s rule, `pick_in_graph`), by TensorFlow's stateless random ops, so that a seed gives
the same text on every call; temperature 0 is greedy. (Its draws are not `llm.generate`'s, which uses
NumPy's generator.)
Needs the TensorFlow backend. SentencePiece tokenizers run as `tensorflow_text`'s op; Llama 3's byte-level
BPE (`tokenizer.model` or `tokenizer.json`) as `BytePairOps`: regex split, bytes, merges by rank. Written
atomically as a whole (`staged_folder`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
from tqdm.auto import tqdm

from llama_tf.formats.staging import staged_folder
from llama_tf.model import call_with_cache, new_cache

__all__ = ["saved_model", "generate_in_graph", "pick_in_graph", "save_quietly", "require_tensorflow", "graph_tokenizer",
           "ExportSteps"]


def pick_in_graph(logits, temperature=None, top_p=None, seed=None, step=0):
    """The next token of each row of logits (batch, vocab), as TensorFlow ops: the most likely one, or with a
    `temperature` (> 0) a draw from softmax(logits / temperature) restricted to the nucleus `top_p` (the
    tokens whose more likely tokens hold at most `top_p`, as `sampling.ranked_probabilities`), by stateless
    random ops keyed on (`seed`, `step`). Temperature 0 is greedy."""
    import tensorflow as tf

    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)
    if temperature is None:
        return greedy
    order = tf.argsort(logits, axis=-1, direction="DESCENDING", stable=True)     # most likely first
    ranked = tf.gather(logits, order, batch_dims=1) / tf.maximum(temperature, 1e-6)
    probs = tf.nn.softmax(ranked - ranked[:, :1], axis=-1)
    probs = tf.where(tf.cumsum(probs, axis=-1, exclusive=True) > tf.maximum(top_p, 0.0), 0.0, probs)   # the first stays
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
    drawn = tf.random.stateless_categorical(tf.math.log(probs), 1, key, dtype=tf.int32)[:, 0]
    return tf.where(temperature > 0, tf.gather(order, drawn, batch_dims=1), greedy)


def generate_in_graph(model: keras.Model, tokenizer, max_seq_len: int, prompt, max_new_tokens,
                      temperature=None, top_p=None, seed=None):
    """Continuations of a batch of strings, as TensorFlow ops (see the module's docstring): greedy, or drawn
    by `pick_in_graph` with a temperature."""
    import tensorflow as tf

    ids = tf.cast(tokenizer.tokenize(prompt), tf.int32)                 # ragged (batch, None), BOS first
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    width, batch = tf.reduce_max(lengths), tf.shape(lengths)[0]
    start = width - lengths                                             # each row's left padding
    columns = tf.range(width)[None, :] - start[:, None]
    padded = tf.where(columns >= 0, tf.gather(ids.to_tensor(0), tf.maximum(columns, 0), batch_dims=1), 0)
    budget = tf.maximum(tf.minimum(max_new_tokens, max_seq_len - width), 0)

    logits, cache = call_with_cache(model, padded, new_cache(model, batch, 0), tf.constant(0), start)
    room = [(0, 0), (0, 0), (0, budget), (0, 0)]                        # the new tokens' slots
    cache = [(tf.pad(keys, room), tf.pad(values, room)) for keys, values in cache]
    stop_ids = tf.constant(list(tokenizer.stop_ids), tf.int32)

    def step(i, logits, cache, finished, tokens):
        picked = pick_in_graph(logits[:, : tokenizer.vocab_size], temperature, top_p, seed, i)
        picked = tf.where(finished, -1, picked)                         # -1: the row had finished
        finished |= tf.reduce_any(picked[:, None] == stop_ids[None, :], axis=1)
        logits, cache = call_with_cache(model, tf.maximum(picked, 0)[:, None], cache, width + i, start)
        return i + 1, logits, cache, finished, tokens.write(i, picked)

    def going(i, logits, cache, finished, tokens):
        return (i < budget) & ~tf.reduce_all(finished)

    state = (0, logits, cache, tf.zeros([batch], tf.bool), tf.TensorArray(tf.int32, size=budget))
    tokens = tf.while_loop(going, step, state)[-1]
    new = tf.RaggedTensor.from_tensor(tf.transpose(tokens.stack()), padding=-1)   # (batch, new tokens)
    # Decoded behind the prompt, as `TextStream` does: SentencePiece drops a text's leading space.
    prefix, whole = tokenizer.detokenize(ids), tokenizer.detokenize(tf.concat([ids, new], axis=1))
    skip = tf.strings.length(prefix)
    return tf.strings.substr(whole, skip, tf.strings.length(whole) - skip)


def require_tensorflow(artifact: str) -> None:
    "ValueError unless Keras runs on TensorFlow, which writes `artifact` (a SavedModel, a LiteRT file)."
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"{artifact} is written from the TensorFlow backend (KERAS_BACKEND=tensorflow), "
                         f"not {keras.backend.backend()}")


class ExportSteps(tqdm):
    """A progress bar over an export's steps (tracing each signature, converting, writing), each named as it
    starts by `step(name)`; shown where `progress` says (None: where stderr is a terminal)."""

    def __init__(self, total: int, progress: bool | None):
        super().__init__(total=total, desc="exporting", unit="step", disable=not (sys.stderr.isatty() if progress is None else progress))
        self._started = False

    def step(self, name: str) -> None:
        "The step before ends; `name` begins."
        if self._started:
            self.update()
        self._started = True
        self.set_postfix_str(name)

    def __exit__(self, *exc):
        if exc[0] is None and self._started:
            self.update()
        return super().__exit__(*exc)


def save_quietly(module, path, signatures: dict) -> None:
    "`tf.saved_model.save`, without its INFO line (`Assets written to: …`) on the Python logger."
    import tensorflow as tf

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("WARNING")
    try:
        tf.saved_model.save(module, str(path), signatures=signatures)
    finally:
        logger.setLevel(level)


def graph_tokenizer(tokenizer):
    """`tokenizer` as TensorFlow ops (`tokenize`, `detokenize`, `trackables`): a SentencePiece kind is, Llama 3's
    byte-level BPE becomes `BytePairOps`; ValueError for any other."""
    if hasattr(tokenizer, "trackables"):
        return tokenizer
    if hasattr(tokenizer, "byte_pair_ranks"):
        from llama_tf.tokenizers.byte_pair_ops import BytePairOps
        return BytePairOps.of(tokenizer)
    raise ValueError(f"a SavedModel holds its tokenizer as TensorFlow ops: SentencePiece and Llama 3's byte-level "
                     f"BPE can, {type(tokenizer).__name__} cannot")


def saved_model(llm, path: str | Path, progress: bool | None = None) -> Path:
    """`llm` as a SavedModel folder at `path` (see the module's docstring); returns the path. `progress`:
    a bar over the steps (None: where stderr is a terminal)."""
    require_tensorflow("a SavedModel")
    tokenizer = graph_tokenizer(llm.tokenizer)
    import tensorflow as tf

    module = tf.Module()
    module.variables_ = list(llm.model.variables)        # tracked: saved with the graph
    module.tokenizer_ = tokenizer.trackables()

    text, budget = tf.TensorSpec([None], tf.string, name="prompt"), tf.TensorSpec([], tf.int32, name="max_new_tokens")

    @tf.function(input_signature=[text, budget])
    def serve(prompt, max_new_tokens):
        return {"text": generate_in_graph(llm.model, tokenizer, llm.config.max_seq_len, prompt, max_new_tokens)}

    @tf.function(input_signature=[text, budget, tf.TensorSpec([], tf.float32, name="temperature"),
                                  tf.TensorSpec([], tf.float32, name="top_p"), tf.TensorSpec([], tf.int64, name="seed")])
    def sample(prompt, max_new_tokens, temperature, top_p, seed):
        return {"text": generate_in_graph(llm.model, tokenizer, llm.config.max_seq_len, prompt, max_new_tokens,
                                          temperature, top_p, seed)}

    module.serve, module.sample = serve, sample
    path = Path(path)
    with ExportSteps(3, progress) as steps, staged_folder(path) as stage:
        steps.step("tracing serving_default")
        signatures = {"serving_default": serve.get_concrete_function()}
        steps.step("tracing sample")
        signatures["sample"] = sample.get_concrete_function()
        steps.step("writing")
        save_quietly(module, stage, signatures)
    return path

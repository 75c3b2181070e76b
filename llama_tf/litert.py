"""Shipping a model to phones and small devices: a LiteRT (formerly TensorFlow Lite) file with `prefill` and
`decode` signatures over a key/value cache that the caller holds, and a greedy loop over them.

`litert(llm, path)` writes a `.tflite` flatbuffer for a batch of one with room for `max_seq_len` tokens:

- `prefill(tokens)`: the prompt's ids, int32 [1, n], BOS first -> `logits`, float32 [1, vocab], of its last
  position, and the cache: `keys_i` and `values_i` for every block i, float32
  [1, n_kv_heads, max_seq_len, head_dim], slots 0 … n-1 written;
- `decode(token, position, keys_0, values_0, …)`: the next id, int32 [1, 1], written to slot `position`,
  and the cache -> the same outputs.

Both signatures are one function (`token` may hold several ids too), so the file stores the weights once.
`quantize="int8"` stores the matrices as dynamic-range int8 (`tf.lite.Optimize.DEFAULT`: int8 weights with a
scale per output channel, activations float32): under a third of the bytes (the embedding table, read by a
gather, stays float32). The tokenizer stays outside (LiteRT has no SentencePiece ops): `generate_litert`
runs the greedy loop with llama_tf's tokenizer and gives `llm.generate`'s text. Needs the TensorFlow
backend for writing and `ai_edge_litert` for running; written atomically (`staged_file`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from llama_tf.export import require_tensorflow, save_quietly
from llama_tf.formats.staging import staged_file
from llama_tf.model import call_with_cache

__all__ = ["litert", "generate_litert", "QUANTIZE"]

QUANTIZE = (None, "int8")


def _cache_names(n_layers: int) -> list[str]:
    return [f"{kind}_{i}" for i in range(n_layers) for kind in ("keys", "values")]


def _signatures(llm):
    "The `prefill` and `decode` tf.functions, and the module that holds the weights they read."
    import tensorflow as tf

    model = llm.model
    attention = model.blocks[0].attention
    shape = (1, attention.n_kv_heads, llm.config.max_seq_len, attention.head_dim)
    names = _cache_names(len(model.blocks))

    def step(tokens, position, flat):
        pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        logits, cache = call_with_cache(model, tokens, pairs, position, tf.zeros([1], tf.int32))
        return {"logits": logits, **dict(zip(names, [t for pair in cache for t in pair]))}

    @tf.function(input_signature=[tf.TensorSpec([1, None], tf.int32, name="tokens")])
    def prefill(tokens):
        return step(tokens, tf.constant(0), [tf.zeros(shape) for _ in names])

    @tf.function(input_signature=[tf.TensorSpec([1, None], tf.int32, name="token"),
                                  tf.TensorSpec([], tf.int32, name="position")]
                 + [tf.TensorSpec(shape, tf.float32, name=name) for name in names])
    def decode(token, position, *flat):
        return step(token, position, list(flat))

    module = tf.Module()
    module.variables_ = [v.value for v in model.variables]   # the tf.Variables: the converter freezes them
    module.prefill, module.decode = prefill, decode
    return module


def litert(llm, path: str | Path, quantize: str | None = None) -> Path:
    "`llm` as a LiteRT file at `path` (see the module's docstring); returns the path."
    require_tensorflow("a LiteRT file")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if any(v.dtype != "float32" for v in llm.model.variables):
        raise ValueError("a LiteRT file is converted from float32 weights: load the model with dtype='float32' "
                         "(quantize='int8' then makes its weights 8-bit)")
    import tensorflow as tf

    module = _signatures(llm)
    with tempfile.TemporaryDirectory() as scratch:   # the converter reads a SavedModel
        save_quietly(module, scratch, {"prefill": module.prefill.get_concrete_function(),
                                       "decode": module.decode.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch, signature_keys=["prefill", "decode"])
        if quantize == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    path = Path(path)
    with staged_file(path) as stage:
        stage.write_bytes(flatbuffer)
    return path


def generate_litert(model: str | Path | bytes, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """The greedy continuation of `prompt` by a file `litert` wrote (a path, or its bytes), run by
    `ai_edge_litert`'s interpreter: `LLM.generate(prompt, max_new_tokens)`'s text for the same weights."""
    from ai_edge_litert.interpreter import Interpreter

    from llama_tf.generation import TextStream

    interpreter = Interpreter(model_content=model) if isinstance(model, bytes) else Interpreter(model_path=str(model))
    prefill, decode = interpreter.get_signature_runner("prefill"), interpreter.get_signature_runner("decode")
    capacity = int(decode.get_input_details()["keys_0"]["shape"][2])   # the cache's slots
    ids = tokenizer.prompt_ids(prompt)
    if len(ids) >= capacity:
        raise ValueError(f"the prompt is {len(ids)} tokens; the file has room for {capacity} in all")
    out = prefill(tokens=np.array([ids], "int32"))
    stream, position = TextStream(tokenizer, ids), len(ids)
    for _ in range(min(max_new_tokens, capacity - len(ids))):
        token = int(np.argmax(out["logits"][0, : tokenizer.vocab_size]))
        if token in tokenizer.stop_ids:
            break
        stream.push(token)
        cache = {name: value for name, value in out.items() if name != "logits"}
        out = decode(token=np.array([[token]], "int32"), position=np.array(position, "int32"), **cache)
        position += 1
    return stream.text

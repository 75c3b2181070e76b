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

`litert_lm(llm, path)` writes a `.litertlm` bundle that Google's LiteRT-LM runtime runs as it is
(`litert-lm run model.litertlm --no-template --top-k 1 --prompt "ROMEO:"`, or its Python API): the model in
the runtime's own convention (signatures `prefill_<n>` and `decode`; inputs `tokens`, `input_pos` and
`kv_cache_k_i` / `kv_cache_v_i`, [1, n_kv_heads, max_seq_len, head_dim], which the runtime holds and
passes back; `decode` returns `logits` [1, 1, vocab]), the tokenizer (a SentencePiece model, or a
`tokenizer.json`) and an `LlmMetadata` record (BOS, the stop tokens, the context length). The runtime pads
a prefill to `prefill_len` tokens with id 0 at position 0; the prefill writes into a cache with room for the
padding behind the last slot, so padded entries never land on a slot in use. Built by `litert-lm-builder`
(`pip install "llama_tf[litert]"`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from llama_tf.export import ExportSteps, require_tensorflow, save_quietly
from llama_tf.formats.staging import staged_file
from llama_tf.model import call_with_cache

__all__ = ["litert", "litert_lm", "generate_litert", "QUANTIZE"]

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


def _check(llm, quantize) -> None:
    require_tensorflow("a LiteRT file")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if any(v.dtype != "float32" for v in llm.model.variables):
        raise ValueError("a LiteRT file is converted from float32 weights: load the model with dtype='float32' "
                         "(quantize='int8' then makes its weights 8-bit)")


def _flatbuffer(module, functions: dict, quantize: str | None, steps) -> bytes:
    "The LiteRT flatbuffer of `functions` (signature name -> tf.function of `module`), by TensorFlow's converter."
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as scratch:   # the converter reads a SavedModel
        steps.step("tracing " + " and ".join(functions))
        save_quietly(module, scratch, {name: f.get_concrete_function() for name, f in functions.items()})
        steps.step("converting" + " to int8" * (quantize == "int8"))
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch, signature_keys=list(functions))
        if quantize == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()


def litert(llm, path: str | Path, quantize: str | None = None, progress: bool | None = None) -> Path:
    """`llm` as a LiteRT file at `path` (see the module's docstring); returns the path. `progress`: a bar
    over the steps (None: where stderr is a terminal)."""
    _check(llm, quantize)
    module = _signatures(llm)
    path = Path(path)
    with ExportSteps(3, progress) as steps:
        flatbuffer = _flatbuffer(module, {"prefill": module.prefill, "decode": module.decode}, quantize, steps)
        steps.step("writing")
        with staged_file(path) as stage:
            stage.write_bytes(flatbuffer)
    return path


def _runtime_signatures(llm, prefill_len: int):
    "`prefill_<n>` and `decode` in LiteRT-LM's convention (see the module's docstring), and their module."
    import tensorflow as tf

    model, capacity = llm.model, llm.config.max_seq_len
    attention = model.blocks[0].attention
    names = [f"kv_cache_{kind}_{i}" for i in range(len(model.blocks)) for kind in ("k", "v")]
    cache = [tf.TensorSpec((1, attention.n_kv_heads, capacity, attention.head_dim), tf.float32, name=n) for n in names]

    def step(tokens, input_pos, flat):
        room = [(0, 0), (0, 0), (0, tokens.shape[1] - 1), (0, 0)]   # the padding's slots, behind the last
        pairs = [(tf.pad(flat[i], room), tf.pad(flat[i + 1], room)) for i in range(0, len(flat), 2)]
        logits, pairs = call_with_cache(model, tokens, pairs, input_pos[0], tf.zeros([1], tf.int32))
        return logits, dict(zip(names, [t[:, :, :capacity] for pair in pairs for t in pair]))

    @tf.function(input_signature=[tf.TensorSpec([1, prefill_len], tf.int32, name="tokens"),
                                  tf.TensorSpec([prefill_len], tf.int32, name="input_pos"), *cache])
    def prefill(tokens, input_pos, *flat):
        return step(tokens, input_pos, list(flat))[1]

    @tf.function(input_signature=[tf.TensorSpec([1, 1], tf.int32, name="tokens"),
                                  tf.TensorSpec([1], tf.int32, name="input_pos"), *cache])
    def decode(tokens, input_pos, *flat):
        logits, updated = step(tokens, input_pos, list(flat))
        return {"logits": logits[:, None, :], **updated}

    module = tf.Module()
    module.variables_ = [v.value for v in model.variables]
    module.prefill, module.decode = prefill, decode
    return module


def _metadata(tokenizer, capacity: int) -> bytes:
    "LiteRT-LM's `LlmMetadata`: the start token, the stop tokens, the context length; a generic model."
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    metadata = llm_metadata_pb2.LlmMetadata(max_num_tokens=capacity)
    if tokenizer.add_bos:
        metadata.start_token.token_ids.ids.append(tokenizer.bos_id)
    for stop in tokenizer.stop_ids:
        metadata.stop_tokens.add().token_ids.ids.append(stop)
    metadata.llm_model_type.generic_model.SetInParent()
    return metadata.SerializeToString()


def litert_lm(llm, path: str | Path, quantize: str | None = None, prefill_len: int = 32,
              progress: bool | None = None) -> Path:
    """`llm` as a LiteRT-LM bundle at `path` (see the module's docstring), prefilling `prefill_len` tokens a
    call; returns the path."""
    _check(llm, quantize)
    from llama_tf.tokenizers.tiktoken_tokenizer import TiktokenTokenizer

    files = llm.tokenizer.files()
    if isinstance(llm.tokenizer, TiktokenTokenizer) or not {"tokenizer.model", "tokenizer.json"} & set(files):
        raise ValueError(f"a LiteRT-LM bundle holds a SentencePiece model or a tokenizer.json, not a "
                         f"{type(llm.tokenizer).__name__}'s files (load Llama 3 with its tokenizer.json)")
    if not 1 <= prefill_len <= llm.config.max_seq_len:
        raise ValueError(f"prefill_len must be 1..{llm.config.max_seq_len}, got {prefill_len}")
    try:
        from litert_lm_builder import litertlm_builder
    except ImportError:
        raise ValueError('a LiteRT-LM bundle is built by litert-lm-builder: pip install "llama_tf[litert]"') from None
    module = _runtime_signatures(llm, prefill_len)
    path = Path(path)
    with ExportSteps(3, progress) as steps, tempfile.TemporaryDirectory() as scratch:
        parts = {"model.tflite": _flatbuffer(module, {f"prefill_{prefill_len}": module.prefill, "decode": module.decode},
                                             quantize, steps),
                 "metadata.pb": _metadata(llm.tokenizer, llm.config.max_seq_len), **files}
        for name, data in parts.items():
            Path(scratch, name).write_bytes(data)
        steps.step("writing")
        builder = litertlm_builder.LitertLmFileBuilder()
        builder.add_tflite_model(str(Path(scratch, "model.tflite")), litertlm_builder.TfLiteModelType.PREFILL_DECODE)
        if "tokenizer.json" in files:
            builder.add_hf_tokenizer(str(Path(scratch, "tokenizer.json")))
        else:
            builder.add_sentencepiece_tokenizer(str(Path(scratch, "tokenizer.model")))
        builder.add_llm_metadata(str(Path(scratch, "metadata.pb")))
        with staged_file(path) as stage, open(stage, "wb") as stream:
            builder.build(stream)
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

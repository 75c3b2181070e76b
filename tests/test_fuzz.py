"""Property-based fuzzing (hypothesis, bounded: a few seconds) of every header parser: Hugging Face's
config.json and safetensors index, Meta's params.json, GGUF metadata. Whatever the values, reading a
checkpoint and checking it against its files ends in a checkpoint or in llama_tf's own errors
(`CheckpointError`, a `ValueError`; `FileNotFoundError` for a named file that is absent), never in
another exception. (llama2.c headers: tests/test_llama2c.py.)"""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from llama_tf.formats import read_checkpoint, validate
from conftest import require
from reference import hf_model, write_hf, write_meta

ALLOWED = (ValueError, FileNotFoundError)      # CheckpointError and TokenizerError are ValueErrors
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)
CONFIG_KEYS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
               "vocab_size", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "head_dim",
               "max_position_embeddings", "tie_word_embeddings", "model_type", "attention_bias"]
PARAMS_KEYS = ["dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
               "norm_eps", "rope_theta", "use_scaled_rope", "rope_scaling_factor", "max_seq_len"]


def read_and_check(path):
    try:
        validate(read_checkpoint(path))
    except ALLOWED:
        pass


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny_tokenizer_proto):
    return write_hf(hf_model(num_key_value_heads=2), tmp_path_factory.mktemp("fuzz") / "hf", tiny_tokenizer_proto)


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory, tiny_tokenizer_proto):
    require("torch")
    return write_meta(hf_model(num_key_value_heads=2), tmp_path_factory.mktemp("fuzz") / "meta", tiny_tokenizer_proto)


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), json_values, min_size=1, max_size=3))
@example(changes={"rope_parameters": [0]})       # found by hand before this test existed: AttributeError
@example(changes={"rope_theta": 10**400})        # OverflowError
def test_config_json(hf_dir, changes):
    original = (hf_dir / "config.json").read_text()
    try:
        (hf_dir / "config.json").write_text(json.dumps({**json.loads(original), **changes}))
        read_and_check(hf_dir)
    finally:
        (hf_dir / "config.json").write_text(original)


@SETTINGS
@given(index=json_values)
def test_safetensors_index(hf_dir, index):
    try:
        (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index))
        read_and_check(hf_dir)
    finally:
        (hf_dir / "model.safetensors.index.json").unlink()


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(PARAMS_KEYS), json_values, min_size=1, max_size=3))
@example(changes={"multiple_of": 0})             # ZeroDivisionError
def test_params_json(meta_dir, changes):
    original = (meta_dir / "params.json").read_text()
    try:
        (meta_dir / "params.json").write_text(json.dumps({**json.loads(original), **changes}))
        read_and_check(meta_dir)
    finally:
        (meta_dir / "params.json").write_text(original)


gguf_values = st.one_of(st.integers(-2**31, 2**31 - 1), st.floats(width=32, allow_nan=False), st.text(max_size=8))
GGUF_KEYS = ["llama.embedding_length", "llama.block_count", "llama.feed_forward_length", "llama.attention.head_count",
             "llama.attention.head_count_kv", "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base",
             "llama.context_length", "llama.rope.scaling.type", "llama.rope.scaling.factor", "general.architecture"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metadata=st.dictionaries(st.sampled_from(GGUF_KEYS), gguf_values, max_size=6))
def test_gguf_metadata(tmp_path_factory, metadata):
    gguf = require("gguf")
    path = tmp_path_factory.mktemp("gguf") / "m.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    for key, value in metadata.items():
        if key == "general.architecture":
            continue                                   # the writer sets it
        (writer.add_string if isinstance(value, str) else writer.add_float32 if isinstance(value, float)
         else writer.add_int32)(key, value)
    writer.add_tensor("token_embd.weight", np.zeros((8, 16), "float32"))
    writer.add_tensor("output_norm.weight", np.ones(16, "float32"))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    read_and_check(path)


# -- files that hold a tokenizer ----------------------------------------------------------------------------
# Opening one and using it ends in a tokenizer or in llama_tf's errors (TokenizerError, CheckpointError: both
# ValueErrors), quickly: the deadline bounds each example.
TOKENIZER_SETTINGS = settings(max_examples=60, deadline=20_000,
                              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def open_and_use(model):
    import llama_tf

    try:
        tok = llama_tf.Tokenizer(model)
        tok.decode(tok.encode("Hello, wörld 123 <s>"))
    except ALLOWED:
        pass


gguf_vocabulary_values = st.one_of(
    st.integers(-5, 300), st.text(max_size=6),
    st.lists(st.text(max_size=4), max_size=12), st.lists(st.integers(-3, 300), max_size=12),
    st.lists(st.floats(width=32, allow_nan=False), max_size=12))
GGUF_VOCABULARY_KEYS = ["model", "pre", "tokens", "token_type", "scores", "merges", "bos_token_id",
                        "eos_token_id", "unknown_token_id", "padding_token_id"]


@TOKENIZER_SETTINGS
@given(fields=st.dictionaries(st.sampled_from(GGUF_VOCABULARY_KEYS), gguf_vocabulary_values, max_size=6),
       model=st.sampled_from(["llama", "gpt2"]))
@example(fields={"merges": ["a b c"]}, model="gpt2")                      # once a ValueError from unpacking
@example(fields={"tokens": [1, 2, 3]}, model="llama")                     # once a TypeError
@example(fields={"bos_token_id": 300}, model="llama")                     # once an IndexError
def test_gguf_vocabulary(tmp_path_factory, fields, model):
    gguf = require("gguf")
    path = tmp_path_factory.mktemp("vocab") / "v.gguf"
    fields = {"model": model, "pre": "llama-bpe", "tokens": ["<unk>", "<s>", "</s>", "a", "b", "ab"],
              "merges": ["a b"], **fields}
    writer = gguf.GGUFWriter(path, "llama")
    for key, value in fields.items():
        if isinstance(value, list) and not value:
            continue                                   # GGUF cannot store an empty array's item type
        add = (writer.add_array if isinstance(value, list) else writer.add_string if isinstance(value, str)
               else writer.add_int32)
        add(f"tokenizer.ggml.{key}", value)
    writer.add_tensor("token_embd.weight", np.zeros((6, 4), "float32"))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    open_and_use(path)


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory, tiny_tokenizer_proto):
    "A whole GGUF file (a tiny model and its SentencePiece vocabulary) as bytes."
    from llama_tf.convert import convert

    directory = write_hf(hf_model(num_key_value_heads=2), tmp_path_factory.mktemp("fuzz") / "hf", tiny_tokenizer_proto)
    return convert(directory, directory.parent / "m.gguf").read_bytes()


@TOKENIZER_SETTINGS
@given(at=st.integers(0, 4095), value=st.sampled_from([0, 1, 255, 2**31, 2**32 - 1, 2**62, 2**64 - 1]),
       width=st.sampled_from([1, 4, 8]))
@example(at=0, value=2**62, width=8)
def test_gguf_header_bytes(tmp_path_factory, gguf_bytes, at, value, width):
    "A length, count, type or offset in the header overwritten: a checkpoint and tokenizer, or an error."
    import struct

    data = bytearray(gguf_bytes)
    start = min(at, len(data) - width)
    data[start: start + width] = struct.pack({1: "<B", 4: "<I", 8: "<Q"}[width], value % 2 ** (8 * width))
    path = tmp_path_factory.mktemp("header") / "m.gguf"
    path.write_bytes(data)
    read_and_check(path)
    open_and_use(path)


@pytest.fixture(scope="module")
def tokenizer_json(llama3_tokenizer_json):
    return json.loads(llama3_tokenizer_json.read_text())


@TOKENIZER_SETTINGS
@given(where=st.sampled_from(["model", "pre_tokenizer", "decoder", "added_tokens", "normalizer", "post_processor"]),
       value=json_values)
def test_tokenizer_json(tmp_path_factory, tokenizer_json, where, value):
    path = tmp_path_factory.mktemp("json") / "tokenizer.json"
    path.write_text(json.dumps({**tokenizer_json, where: value}))
    open_and_use(path)


@TOKENIZER_SETTINGS
@given(lines=st.lists(st.tuples(st.binary(max_size=6), st.integers(-2, 2**40)), max_size=20),
       junk=st.text(max_size=20))
def test_tiktoken_ranks(tmp_path_factory, lines, junk):
    "A tiktoken `tokenizer.model` (base64 token, rank per line), made up."
    import base64

    path = tmp_path_factory.mktemp("tiktoken") / "tokenizer.model"
    path.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in lines) + junk)
    open_and_use(path)


@TOKENIZER_SETTINGS
@given(at=st.integers(0, 10**6), value=st.integers(0, 255), cut=st.booleans())
def test_sentencepiece_proto(tiny_tokenizer_proto, at, value, cut):
    "A SentencePiece model with one byte changed, or cut short there."
    data = bytearray(tiny_tokenizer_proto)
    at %= len(data)
    if cut:
        del data[at:]
    else:
        data[at] = value
    open_and_use(bytes(data))

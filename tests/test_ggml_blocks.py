"""llama.cpp's 4- to 6-bit blocks (Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K; notebook 15): the bytes
`quantize_blocks` writes are llama.cpp's (the `gguf` package's for the 32-weight types, and a Q4_K that
`gguf` dequantises to within about half a step of every weight); the backend's dequantisation equals
`gguf`'s bit for bit; a `Projection` in each format computes with its blocks; `LLM.quantize` and GGUF
files in these types (ours, and llama.cpp's own Q4_K_M, Q5_K_M, Q6_K, Q4_0 and Q5_1) load held as stored
(`dtype="gguf"`): the blocks in memory are the file's bytes (the embedding table's too, unless it is tied)
and the logits those of the dequantised model.

Tolerances: dequantisation exact; a prompt through the blocks against the same model loaded dequantised
to float32, 1e-5 of the logits' scale (float32 products in another order)."""

import keras
import numpy as np
import pytest

import llama_tf
from llama_tf.formats import read_checkpoint
from llama_tf.ggml_blocks import BLOCK_TYPES, quantize_blocks, row_bytes, scale_fields
from llama_tf.layers.projection import Projection, dequantize_blocks, projections
from llama_tf.loading import model_state
from conftest import require
from reference import hf_model, max_relative_error, random_blocks, write_hf, write_gguf, write_quantised_gguf

# rows of 256 and 512 weights: every matrix is whole Q4_K super-blocks
SHAPE = dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=2, intermediate_size=512,
             num_hidden_layers=2, vocab_size=384)


@pytest.fixture(scope="module")
def directory(tmp_path_factory, tiny_tokenizer_proto):
    return write_hf(hf_model(**SHAPE), tmp_path_factory.mktemp("hf") / "hf", tiny_tokenizer_proto)


@pytest.fixture(scope="module")
def token_ids():
    return np.random.default_rng(0).integers(3, 384, size=(1, 24))


def ggml(name):
    return require("gguf").GGMLQuantizationType(BLOCK_TYPES[name].ggml)


@pytest.mark.parametrize("name", ["q4_0", "q5_0", "q5_1"])
def test_32_weight_blocks_are_the_gguf_packages(name):
    gguf = require("gguf")
    w = np.random.default_rng(0).standard_normal((5, 96)).astype("float32")
    blocks = quantize_blocks(w, BLOCK_TYPES[name])
    assert blocks.dtype == np.uint8 and blocks.shape == (5, row_bytes(BLOCK_TYPES[name], 96))
    np.testing.assert_array_equal(blocks, gguf.quants.quantize(w, ggml(name)))


def test_q4_k_blocks_dequantise_within_half_a_step():
    """Each weight within 0.6 of its sub-block's step (range / 15), the step itself rounded to 6 bits of a
    float16; the weights' RMS error under a tenth of their spread; rows of a single super-block and of several,
    with an offset row (all weights positive) and a zero row."""
    gguf = require("gguf")
    w = np.random.default_rng(1).standard_normal((6, 512)).astype("float32") * 0.02
    w[1] += 0.05
    w[2] = 0
    restored = gguf.quants.dequantize(quantize_blocks(w, BLOCK_TYPES["q4_k"]), gguf.GGMLQuantizationType.Q4_K)
    sub = w.reshape(6, -1, 32)
    step = (np.maximum(sub.max(-1), 0) - np.minimum(sub.min(-1), 0)) / 15
    assert np.all(np.abs(restored - w).reshape(6, -1, 32).max(-1) <= 0.6 * step + 1e-12)
    assert np.sqrt(np.mean((restored - w) ** 2)) < 0.1 * w.std()
    np.testing.assert_array_equal(restored[2], 0)


def test_widths_and_types_quantize_blocks_cannot_write_are_refused():
    w = np.zeros((2, 96), "float32")
    with pytest.raises(ValueError, match="q4_k stores rows in blocks of 256 weights; these rows have 96"):
        quantize_blocks(w, BLOCK_TYPES["q4_k"])
    with pytest.raises(ValueError, match="q6_k blocks are read from GGUF files only"):
        quantize_blocks(np.zeros((2, 256), "float32"), BLOCK_TYPES["q6_k"])


@pytest.mark.parametrize("name", list(BLOCK_TYPES))
def test_the_backend_dequantises_as_gguf_does(name):
    "Random bytes in each type (every bit pattern is a block), dequantised by backend operations: gguf's floats exactly."
    gguf = require("gguf")
    block_type = BLOCK_TYPES[name]
    raw = random_blocks(block_type, 3, 4 * block_type.weights, np.random.default_rng(2))
    ours = keras.ops.convert_to_numpy(dequantize_blocks(keras.ops.convert_to_tensor(raw), block_type))
    np.testing.assert_array_equal(ours, gguf.quants.dequantize(raw, ggml(name)))
    assert scale_fields(raw, block_type).shape == ({"q6_k": 1, "q4_0": 1, "q5_0": 1}.get(name, 2), 3 * 4)


@pytest.mark.parametrize("name", ["q4_0", "q5_0", "q5_1", "q4_k"])
def test_a_layer_computes_with_its_blocks(name):
    x = np.random.default_rng(3).standard_normal((2, 3, 256)).astype("float32")
    layer = Projection(40, name="wq")
    layer(x)
    layer.to_format(name)
    assert layer.weights_format == name and [v.name for v in layer.weights] == ["blocks"]
    assert not layer.trainable_weights and layer.in_features == 256 and layer.format.quantized
    weights = keras.ops.convert_to_numpy(layer.format.matrix(layer))                       # (out, in)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), x @ weights.T, rtol=1e-5, atol=1e-5)
    assert Projection.from_config(layer.get_config()).weights_format == name
    layer.to_format("float")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.kernel).T, weights)
    narrow = Projection(8, name="w2")
    narrow.build((1, 96))
    with pytest.raises(ValueError, match="layer 'w2': q4_k needs an input width that is a multiple of 256, got 96"):
        narrow.to_format("q4_k")


def test_quantize_falls_back_as_llama_cpp_does(token_ids, tmp_path_factory, tiny_tokenizer_proto):
    """`LLM.quantize("q4_k")` on a model whose projections take 128 inputs: those get Q5_0, the w2 with 256
    inputs Q4_K; the logits move as 4 and 5 bits move a random model's (measured 0.18 of their scale; the
    tests of llama.cpp's own Q4_K_M files allow 0.25)."""
    narrow = write_hf(hf_model(**{**SHAPE, "hidden_size": 128, "intermediate_size": 256}),
                      tmp_path_factory.mktemp("narrow") / "hf", tiny_tokenizer_proto)
    llm = llama_tf.load(narrow).quantize("q4_k")
    formats = {layer.name: layer.weights_format for layer in projections(llm.model)}
    assert {f for name, f in formats.items() if name == "w2"} == {"q4_k"}
    assert {f for name, f in formats.items() if name != "w2"} == {"q5_0"}
    assert max_relative_error(np.asarray(llm.model(token_ids)), np.asarray(llama_tf.load(narrow).model(token_ids))) <= 0.25


def test_a_gguf_in_q4_k_loads_as_stored(directory, tmp_path, token_ids):
    """Written by llama_tf in Q4_K and loaded with dtype="gguf": every projection holds the file's bytes; a
    prompt's logits equal those of the model dequantised on reading; saved, the weights are the file's
    dequantised tensors; llama.cpp reads the file too."""
    path = write_gguf(directory, tmp_path / "model-q4_k.gguf", "Q4_K")
    checkpoint = read_checkpoint(path)
    llm = llama_tf.load(path, dtype="gguf")
    assert {layer.weights_format for layer in projections(llm.model)} == {"q4_k"}
    wq = llm.model.blocks[0].attention.wq
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(wq.blocks),
                                  checkpoint.tensors["layers.0.attention.wq.weight"].load_blocks())
    dequantised = llama_tf.load(path)
    assert max_relative_error(np.asarray(llm.model(token_ids)), np.asarray(dequantised.model(token_ids))) <= 1e-5
    np.testing.assert_array_equal(model_state(llm.model)["layers.1.feed_forward.w2.weight"],
                                  checkpoint.tensors["layers.1.feed_forward.w2.weight"].load())
    embedding = llm.model.tok_embeddings   # the table too: its blocks held, a lookup's rows dequantised
    assert embedding.block_type.name == "q4_k"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(embedding.embeddings),
                                  checkpoint.tensors["tok_embeddings.weight"].load_blocks())
    table = checkpoint.tensors["tok_embeddings.weight"].load()
    np.testing.assert_array_equal(model_state(llm.model)["tok_embeddings.weight"], table)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(embedding(token_ids)), table[token_ids])
    prompt = np.random.default_rng(1).integers(3, 384, size=40).tolist()   # past the short widths: a traced prefill
    assert llm.generate_ids(prompt, 1, stop_ids=()) == dequantised.generate_ids(prompt, 1, stop_ids=())
    llama_cpp = require("llama_cpp")
    assert llama_cpp.Llama(str(path), verbose=False, n_ctx=64, n_threads=2).n_vocab() == 384


def test_a_tied_table_stays_in_floats(tmp_path, tiny_tokenizer_proto, token_ids):
    """A tied table is also the output projection: it is read into float32, and the logits are those of
    the model dequantised on reading."""
    tied = write_hf(hf_model(**SHAPE, tie_word_embeddings=True), tmp_path / "hf", tiny_tokenizer_proto)
    path = write_gguf(tied, tmp_path / "tied-q4_k.gguf", "Q4_K")
    llm = llama_tf.load(path, dtype="gguf")
    assert llm.model.output_projection is None and llm.model.tok_embeddings.embeddings.dtype == "float32"
    assert max_relative_error(np.asarray(llm.model(token_ids)), np.asarray(llama_tf.load(path).model(token_ids))) <= 1e-5


def test_dtype_gguf_is_for_gguf_files(directory):
    with pytest.raises(ValueError, match="dtype='gguf' keeps a GGUF file's tensors in their stored types; this "
                                         "checkpoint is 'hf'"):
        llama_tf.load(directory, dtype="gguf")


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q5_K_M", "Q6_K", "Q4_0", "Q5_1", "Q8_0"])
def test_llama_cpp_files_load_as_stored(directory, tmp_path, token_ids, ftype):
    """llama.cpp's own quantiser writes the file (Q4_K_M mixes Q4_K and Q6_K); with dtype="gguf" each
    projection holds its tensor in the file's type, bytes unchanged, and a prompt's logits equal those of
    the same file dequantised to float32."""
    gguf = require("gguf")
    path = write_quantised_gguf(write_gguf(directory, tmp_path / "f32.gguf", "F32"), tmp_path / f"{ftype}.gguf", ftype)
    stored = {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(path).tensors}
    llm = llama_tf.load(path, dtype="gguf")
    held = {layer.weights_format for layer in projections(llm.model)}
    assert held == {stored["blk.0.attn_q.weight"], stored["blk.1.ffn_down.weight"], stored.get("output.weight", "q8_0")} - {"f32"}
    assert llm.model.blocks[0].attention.wq.weights_format == stored["blk.0.attn_q.weight"]
    in_blocks = stored["token_embd.weight"] in BLOCK_TYPES   # Q8_0 and float tables are held in float32
    assert llm.model.tok_embeddings.embeddings.dtype == ("uint8" if in_blocks else "float32")
    if ftype != "Q8_0":
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(llm.model.blocks[0].attention.wq.blocks),
                                      read_checkpoint(path).tensors["layers.0.attention.wq.weight"].load_blocks())
    dequantised = llama_tf.load(path)
    assert max_relative_error(np.asarray(llm.model(token_ids)), np.asarray(dequantised.model(token_ids))) <= 1e-5


def test_the_shipped_model_at_q4_k_m_scores_as_llama_cpp_does(tmp_path):
    """The quality bar: the shipped model, converted to GGUF and quantised to Q4_K_M by llama.cpp itself,
    held as stored, scores the held-out text within 3 % of float32's nats/char and within 0.5 % of
    llama.cpp's own score of the same file on the same tokens and windows (its logits from llama-cpp-python)."""
    llama_cpp = require("llama_cpp")
    from llama_tf.convert import convert
    from llama_tf.evaluation import evaluate, score_ids
    from llama_tf.llm import DEFAULT_WEIGHTS
    from llama_tf.train import split_text
    from conftest import shared_path

    text = split_text(shared_path("data/tinyshakespeare.txt").read_text(), held_out=0.1, valid=0.05)["heldout"][:4_000]
    path = write_quantised_gguf(convert(DEFAULT_WEIGHTS, tmp_path / "f32.gguf"), tmp_path / "q4_k_m.gguf", "Q4_K_M")
    llm = llama_tf.load(path, dtype="gguf")
    assert all(layer.format.quantized for layer in projections(llm.model))
    ours = evaluate(llm, text)
    full = evaluate(llama_tf.load(), text)
    cpp = llama_cpp.Llama(str(path), logits_all=True, verbose=False, n_ctx=llm.config.max_seq_len, n_threads=2)

    def theirs(inputs, training=False):
        rows = []
        for row in np.asarray(inputs):
            cpp.reset()
            cpp.eval(row.tolist())
            rows.append(np.array(cpp.scores[: len(row)], "float32"))
        return np.stack(rows)

    ids = np.asarray(llm.tokenizer.prompt_ids(text))[1:]
    their_nats = score_ids(theirs, ids, llm.tokenizer.bos_id, llm.config.max_seq_len) / len(text)
    assert abs(ours.nats_per_char - full.nats_per_char) <= 0.03 * full.nats_per_char
    assert abs(ours.nats_per_char - their_nats) <= 0.005 * their_nats

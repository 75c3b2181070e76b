"""GGUF: random LLaMA weights written by `llama_tf.formats.gguf.write_gguf` (and quantised by llama.cpp
itself) load back to the same model, run like llama.cpp (`llama-cpp-python`) on the same file, and carry
a tokenizer whose ids equal llama.cpp's.

Tolerances, max |Δlogits| ÷ max |logits|: our GGUF load against our load of the Hugging Face checkpoint it
came from, 1e-6 in F32 (1e-4 against transformers, as everywhere); against llama.cpp on the same file, 2e-3 in F32 (llama.cpp's own kernels; it agrees with
transformers to about 4e-4) and, where llama.cpp also rounds the activations it multiplies (F16, BF16,
Q8_0, K-quants), the size of that rounding.
"""

import shutil
import struct
import time

import numpy as np
import pytest

import llama_tf
from llama_tf.formats import CheckpointError, read_checkpoint
from conftest import require
from reference import hf_logits, hf_model, max_relative_error, write_hf, write_gguf, write_quantised_gguf

TOLERANCE = {"F32": 2e-3, "F16": 5e-3, "BF16": 2e-2, "Q8_0": 6e-2}
SHAPE = dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=2, intermediate_size=512,
             num_hidden_layers=2, vocab_size=384)


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def hf(request, tmp_path_factory, tiny_tokenizer_proto):
    model = hf_model(tie_word_embeddings=request.param, **SHAPE)
    return model, write_hf(model, tmp_path_factory.mktemp("hf") / "hf", tiny_tokenizer_proto)


@pytest.fixture(scope="module")
def token_ids():
    return np.random.default_rng(0).integers(3, 384, size=(1, 40))


def llama_cpp_logits(path, ids):
    llama_cpp = require("llama_cpp")
    model = llama_cpp.Llama(str(path), logits_all=True, verbose=False, n_ctx=128, n_threads=2)
    model.eval(ids[0].tolist())
    return np.array(model.scores[: ids.shape[1]])[None]


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "Q8_0"])
def test_written_gguf_runs_like_llama_cpp(hf, tmp_path, token_ids, dtype):
    model, directory = hf
    path = write_gguf(directory, tmp_path / "model.gguf", dtype)
    llm = llama_tf.load(path)
    assert llm.config == read_checkpoint(directory).config.replace(max_seq_len=llm.config.max_seq_len)
    ours = np.asarray(llm.model(token_ids))
    if dtype == "F32":   # the same model as from the Hugging Face files, so transformers' logits
        assert max_relative_error(ours, np.asarray(llama_tf.load(directory).model(token_ids))) <= 1e-6
        assert max_relative_error(ours, hf_logits(model, token_ids)) <= 1e-4
    assert max_relative_error(ours, llama_cpp_logits(path, token_ids)) <= TOLERANCE[dtype]


def test_greedy_continuation_equals_llama_cpp(hf, tmp_path, token_ids):
    llama_cpp = require("llama_cpp")
    _, directory = hf
    path = write_gguf(directory, tmp_path / "model.gguf", "F32")
    prompt = token_ids[0, :16].tolist()
    theirs = llama_cpp.Llama(str(path), verbose=False, n_ctx=128, n_threads=2)
    expected = []
    for token in theirs.generate(prompt, temp=0.0, top_k=1):
        expected.append(token)
        if len(expected) == 24:
            break
    assert llama_tf.load(path).generate_ids(prompt, 24, stop_ids=()) == expected


def test_q8_0_weights_are_within_a_quantisation_step(hf, tmp_path):
    """Q8_0 keeps 32-value blocks as int8 times one float16 scale, max|block| / 127: each weight within half a
    step, plus the scale's own rounding (127 steps × 2⁻¹¹): 0.57 of a step."""
    _, directory = hf
    original = read_checkpoint(directory).tensors["layers.0.feed_forward.w1.weight"].load()
    loaded = read_checkpoint(write_gguf(directory, tmp_path / "q8.gguf", "Q8_0")).tensors[
        "layers.0.feed_forward.w1.weight"].load()
    step = np.abs(original.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(loaded - original).reshape(-1, 32) <= 0.57 * step + 1e-7)
    assert not np.array_equal(loaded, original)


@pytest.mark.parametrize("ftype, tolerance", [("Q4_K_M", 0.25), ("Q5_K_M", 0.15), ("Q6_K", 0.08), ("Q4_0", 0.25),
                                             ("Q8_0", 0.06)])
def test_llama_cpp_quantised_files(hf, tmp_path, token_ids, ftype, tolerance):
    "K-quants, which the gguf package cannot write: llama.cpp quantises our F32 file, llama_tf reads the result."
    _, directory = hf
    target = write_quantised_gguf(write_gguf(directory, tmp_path / "f32.gguf", "F32"), tmp_path / f"{ftype}.gguf", ftype)
    stored = {t.tensor_type.name for t in require("gguf").GGUFReader(target).tensors}
    assert stored - {"F32"}, stored
    ours = np.asarray(llama_tf.load(target).model(token_ids))
    assert max_relative_error(ours, llama_cpp_logits(target, token_ids)) <= tolerance


def test_the_tokenizer_comes_from_the_file(hf, tmp_path, tiny_tokenizer_proto):
    _, directory = hf
    (tmp_path / "alone").mkdir()
    path = write_gguf(directory, tmp_path / "alone" / "model.gguf", "F32")
    llama_cpp = require("llama_cpp")
    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    tok = llama_tf.Tokenizer(path)
    reference = llama_tf.Tokenizer(tiny_tokenizer_proto)
    assert type(tok).__name__ == "GGUFSentencePieceTokenizer"
    for text in ["Beautiful is better than ugly.", "  two spaces", "1234 🦙 日本", "", "\n\n"]:
        assert tok.encode(text) == reference.encode(text) == vocab.tokenize(text.encode(), add_bos=False, special=False)
    assert llama_tf.load(path).tokenizer.encode("Flat") == reference.encode("Flat")   # nothing beside the file


def test_llama3_vocabulary_and_rope_scaling(tmp_path, llama3_tokenizer_json, meta_llama3_tokenizer):
    "A Llama-3-shaped GGUF: byte-level BPE vocabulary (ids equal llama.cpp's and Meta's) and rescaled RoPE."
    llama_cpp = require("llama_cpp")
    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    model = hf_model(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1,
                     vocab_size=128_256, tie_word_embeddings=True, rope_parameters={**scaling, "rope_theta": 500000.0})
    directory = write_hf(model, tmp_path / "hf", b"")
    (directory / "tokenizer.model").unlink()
    shutil.copy(llama3_tokenizer_json, directory / "tokenizer.json")
    path = write_gguf(directory, tmp_path / "llama3.gguf", "F32")
    llm = llama_tf.load(path)
    assert llm.config.rope_scaling == scaling
    assert type(llm.tokenizer).__name__ == "GGUFBytePairTokenizer" and llm.tokenizer.chat_format == "llama3"
    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for text in ["Hello world!  It's 2024: 1234567", "don't DON'T", "日本語 🦙\t\n\n x", "<|eot_id|> as text"]:
        ids = llm.tokenizer.encode(text)
        assert ids == vocab.tokenize(text.encode(), add_bos=False, special=False)
        assert ids == meta_llama3_tokenizer.encode(text, bos=False, eos=False)
    ids = np.random.default_rng(1).integers(3, 128_256, size=(1, 24))
    assert max_relative_error(np.asarray(llm.model(ids)), hf_logits(model, ids)) <= 1e-4


def test_bad_gguf_files(hf, tmp_path):
    _, directory = hf
    good = write_gguf(directory, tmp_path / "good.gguf", "F32")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        llama_tf.load(truncated)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a readable GGUF file"):
        read_checkpoint(junk)
    with pytest.raises(ValueError, match="llama_tf writes F32, F16, BF16, Q8_0"):
        write_gguf(directory, tmp_path / "x.gguf", "Q2_K")
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "x.gguf.partial").exists()


def test_other_architectures_and_types_are_refused_by_name(tmp_path):
    gguf = require("gguf")
    writer = gguf.GGUFWriter(tmp_path / "gpt2.gguf", "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), "float32"))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(CheckpointError, match="GGUF architecture 'gpt2'; llama_tf reads 'llama'"):
        read_checkpoint(tmp_path / "gpt2.gguf")
    writer = gguf.GGUFWriter(tmp_path / "q4_1.gguf", "llama")
    raw = np.zeros((8, 32 // 32 * 20), np.uint8)     # Q4_1: 32 values in 20 bytes
    writer.add_tensor("token_embd.weight", raw, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(CheckpointError, match="stored as Q4_1; llama_tf reads F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q5_1, Q4_K"):
        read_checkpoint(tmp_path / "q4_1.gguf")


def test_a_length_field_the_file_cannot_hold_is_refused_at_once(hf, tmp_path):
    "An array count of 2^62 in a small file: refused before the reader walks it (it took 80 s and 5 GiB)."
    _, directory = hf
    data = bytearray(write_gguf(directory, tmp_path / "good.gguf", "F32").read_bytes())
    key = b"tokenizer.ggml.tokens"
    at = data.index(key) + len(key) + 4 + 4       # past the key, its value type (array) and the item type
    data[at: at + 8] = struct.pack("<Q", 2**62)
    (tmp_path / "huge_count.gguf").write_bytes(data)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="claims 4,611,686,018,427,387,904 items, more than the file can hold"):
        read_checkpoint(tmp_path / "huge_count.gguf")
    assert time.perf_counter() - start < 5


def vocabulary_file(path, model="gpt2", tokens=("a", "b", "ab"), **fields):
    "A GGUF file holding only a tokenizer: `tokenizer.ggml.*` fields as given."
    gguf = require("gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_array("tokenizer.ggml.tokens", list(tokens))
    for key, value in fields.items():
        (writer.add_array if isinstance(value, list) else writer.add_uint32)(f"tokenizer.ggml.{key}", value)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 4), "float32"))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    return path


@pytest.mark.parametrize("fields, message", [
    (dict(merges=["a b c"]), "tokenizer.ggml.merges is malformed"),
    (dict(merges=["x y"]), "the GGUF BPE vocabulary cannot be built"),
    (dict(merges=["a b"], bos_token_id=99), "tokenizer.ggml.bos_token_id is malformed"),
    (dict(merges=["a b"], token_type=[1, 1]), "tokenizer.ggml.token_type is malformed"),
    (dict(tokens=[1, 2, 3], merges=["a b"]), "tokenizer.ggml.tokens is malformed"),
    (dict(model="llama", scores=[0.0]), "tokenizer.ggml.scores is malformed"),
])
def test_a_malformed_vocabulary_is_named(tmp_path, fields, message):
    "Each once ended in a TypeError, IndexError or a bare Exception from inside the tokenizer's set-up."
    with pytest.raises(CheckpointError, match=message):
        llama_tf.Tokenizer(vocabulary_file(tmp_path / "v.gguf", **fields))

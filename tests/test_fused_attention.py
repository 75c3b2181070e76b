"""`attention_impl="fused"`: prompts through the backend's fused kernel (`ops.dot_product_attention`),
against the reference path and against transformers. On CPU every backend runs its XLA or eager form of
the kernel; on a JAX GPU the same call is cuDNN's flash attention (benchmarks/gpu_decode.py).

Tolerances (float32): attention outputs within 1e-5 absolute (values of order 1); logits within 1e-4 of
their scale, as in test_parity.
"""

import numpy as np
import pytest

import llama_tf
from llama_tf.layers.attention import rope_angles
from reference import hf_logits, hf_model, max_relative_error, write_hf

TOLERANCE = 1e-4


def pair(kv_heads, seed=0):
    "A reference layer and a fused one with the same weights."
    reference = llama_tf.Attention(dim=64, n_heads=4, n_kv_heads=kv_heads, name="reference")
    fused = llama_tf.Attention(dim=64, n_heads=4, n_kv_heads=kv_heads, attention_impl="fused", name="fused")
    reference.build((None, None, 64))
    fused.build((None, None, 64))
    fused.set_weights(reference.get_weights())
    return reference, fused


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_fused_prompt_equals_reference(kv_heads):
    reference, fused = pair(kv_heads)
    x = np.random.default_rng(kv_heads).normal(size=(2, 37, 64)).astype("float32")
    np.testing.assert_allclose(fused(x), reference(x), atol=1e-5)


def test_fused_prefill_of_left_padded_rows_then_a_decode_step():
    "A prefill into an empty cache (row 1 padded by 5 slots), then one token at slot 20 of a 24-slot cache."
    reference, fused = pair(2)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 20, 64)).astype("float32")
    start = np.array([0, 5], "int32")
    empty = (np.zeros((2, 2, 0, 16), "float32"),) * 2
    angles = rope_angles(np.arange(20)[None] - start[:, None], 16)
    outputs = [layer(x, cache=empty, cache_index=0, angles=angles, start=start) for layer in (reference, fused)]
    (y_reference, cache), (y_fused, fused_cache) = outputs
    np.testing.assert_allclose(np.asarray(y_fused)[1, 5:], np.asarray(y_reference)[1, 5:], atol=1e-5)
    np.testing.assert_allclose(np.asarray(y_fused)[0], np.asarray(y_reference)[0], atol=1e-5)
    room = [(0, 0), (0, 0), (0, 4), (0, 0)]
    grown = [tuple(np.pad(np.asarray(t), room) for t in c) for c in (cache, fused_cache)]
    token = rng.normal(size=(2, 1, 64)).astype("float32")
    angles = rope_angles(np.array([[20], [15]]), 16)
    steps = [layer(token, cache=c, cache_index=20, angles=angles, start=start)[0]
             for layer, c in zip((reference, fused), grown)]
    np.testing.assert_allclose(steps[1], steps[0], atol=1e-5)


@pytest.fixture(scope="module")
def case(tmp_path_factory, tiny_tokenizer_proto):
    model = hf_model(num_key_value_heads=2, num_hidden_layers=3)
    return model, write_hf(model, tmp_path_factory.mktemp("fused"), tiny_tokenizer_proto)


def test_fused_model_logits_match_transformers(case):
    model, directory = case
    ids = np.random.default_rng(3).integers(3, 384, size=(2, 70))
    llm = llama_tf.load(directory, attention_impl="fused")
    error = max_relative_error(llm.model(ids), hf_logits(model, ids))
    print(f"fused vs transformers: max relative logit error {error:.1e}")
    assert error <= TOLERANCE


def test_fused_generation_equals_the_reference_path(case):
    _, directory = case
    reference = llama_tf.load(directory, max_seq_len=128)
    fused = llama_tf.load(directory, max_seq_len=128, attention_impl="fused")
    prompts = [np.random.default_rng(4).integers(3, 384, n).tolist() for n in (50, 23)]
    assert fused.generate_ids(prompts, 16, stop_ids=()) == reference.generate_ids(prompts, 16, stop_ids=())

"""Tiled attention (notebook 10) against the reference path: one layer, the whole model, and cached decoding.

Tolerances (float32): attention outputs within 1e-5 absolute (values of order 1); logits within 1e-4 of
their scale, as in test_parity.
"""

import numpy as np
import pytest

import llama_tf
from llama_tf.layers.attention import causal_mask, visible_keys
from llama_tf.layers.tiled_attention import tiled_attention
from reference import hf_model, max_relative_error, write_hf

TOLERANCE = 1e-4


# One query over one key: Keras warns that a softmax over one element is always 1, which is the point.
@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1:UserWarning")
@pytest.mark.parametrize("seq, block", [(1, 4), (37, 8), (64, 16), (100, 128)])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_tiled_equals_reference_attention(seq, block, kv_heads):
    rng = np.random.default_rng(seq)
    layer = llama_tf.Attention(dim=64, n_heads=4, n_kv_heads=kv_heads, name="reference")
    q = rng.normal(size=(2, seq, 4, 16)).astype("float32")
    k, v = rng.normal(size=(2, 2, kv_heads, seq, 16)).astype("float32")
    reference = layer.attend(q, k, v, causal_mask(seq))
    np.testing.assert_allclose(tiled_attention(q, k, v, block_size=block), reference, atol=1e-5)


def test_tiled_attention_over_a_left_padded_cache():
    "Queries at slots 12.. of a 40-slot cache, rows padded on the left by 0 and 5 slots."
    rng = np.random.default_rng(1)
    layer = llama_tf.Attention(dim=64, n_heads=4, n_kv_heads=2, name="reference")
    q = rng.normal(size=(2, 20, 4, 16)).astype("float32")
    k, v = rng.normal(size=(2, 2, 2, 40, 16)).astype("float32")
    start = np.array([0, 5], "int32")
    mask = visible_keys(12 + np.arange(20), np.arange(40), start)
    reference = layer.attend(q, k, v, mask)
    np.testing.assert_allclose(tiled_attention(q, k, v, 12, start, block_size=8), reference, atol=1e-5)


def test_extreme_scores_stay_finite():
    "Large magnitudes would overflow a plain exp; the running maximum keeps every tile finite."
    rng = np.random.default_rng(2)
    layer = llama_tf.Attention(dim=64, n_heads=4, name="reference")
    q = 300 * rng.normal(size=(1, 50, 4, 16)).astype("float32")
    k, v = rng.normal(size=(2, 1, 4, 50, 16)).astype("float32")
    tiled = np.asarray(tiled_attention(q, k, v, block_size=8))
    assert np.isfinite(tiled).all()
    np.testing.assert_allclose(tiled, layer.attend(q, k, v, causal_mask(50)), atol=1e-5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer_proto):
    model = hf_model(num_key_value_heads=2, num_hidden_layers=3)
    return write_hf(model, tmp_path_factory.mktemp("tiled"), tiny_tokenizer_proto)


def test_full_model_logits_equal_the_reference_path(checkpoint):
    reference = llama_tf.load(checkpoint)
    tiled = llama_tf.load(checkpoint, attention_impl="tiled", block_size=16)
    ids = np.random.default_rng(3).integers(3, 384, size=(2, 70))
    error = max_relative_error(tiled.model(ids), reference.model(ids))
    print(f"tiled vs reference: max relative logit error {error:.1e}")
    assert error <= TOLERANCE


def test_cached_generation_is_unaffected(checkpoint):
    "The prompt (longer than a block) is prefilled tile by tile; decode steps are one token each."
    reference = llama_tf.load(checkpoint, max_seq_len=128)
    tiled = llama_tf.load(checkpoint, max_seq_len=128, attention_impl="tiled", block_size=16)
    prompts = [np.random.default_rng(4).integers(3, 384, n).tolist() for n in (50, 23)]
    assert tiled.generate_ids(prompts, 16, stop_ids=()) == reference.generate_ids(prompts, 16, stop_ids=())


def test_unknown_attention_impl_is_refused():
    with pytest.raises(ValueError, match="attention_impl must be one of reference, tiled, fused, got 'flash'"):
        llama_tf.Attention(dim=64, n_heads=4, attention_impl="flash")

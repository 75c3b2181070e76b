"""Scaled RoPE (Llama 3.1/3.2's "llama3" frequencies, and "linear") against Hugging Face `LlamaForCausalLM`
on small random Llama-3-shaped models: GQA 4:1, θ = 500000, a 128,256-entry vocabulary, tied and untied.

The original context is 64 positions and the sequences run past it, where scaling changes the result;
head_dim 16 puts one frequency pair in each band of the llama3 rule (kept, blended, divided).
Tolerance (float32): max |Δlogits| <= 1e-4 × max |logits of the reference|.
"""

import numpy as np
import pytest

import llama_tf
from llama_tf.config import LlamaConfig, META_LLAMA3_SCALING
from conftest import require
from reference import hf_logits, hf_model, max_relative_error, write_hf

TOLERANCE = 1e-4
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
LINEAR = {"rope_type": "linear", "factor": 4.0}
SHAPE = dict(hidden_size=128, num_attention_heads=8, num_key_value_heads=2, intermediate_size=256,
             vocab_size=128_256, max_position_embeddings=256)
CASES = {
    "llama3-untied": (LLAMA3, False),
    "llama3-tied": (LLAMA3, True),
    "linear-untied": (LINEAR, False),
}


@pytest.fixture(scope="module")
def token_ids():
    return np.random.default_rng(0).integers(3, 128_256, size=(2, 100))     # past the original 64


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory, tiny_tokenizer_proto):
    scaling, tied = CASES[request.param]
    model = hf_model(**SHAPE, tie_word_embeddings=tied, rope_parameters={**scaling, "rope_theta": 500000.0})
    directory = write_hf(model, tmp_path_factory.mktemp(request.param) / "hf", tiny_tokenizer_proto)
    return scaling, model, directory


def test_the_scaling_is_read_from_config_json(case):
    scaling, _, directory = case
    assert llama_tf.load(directory).config.rope_scaling == scaling


def test_logits_match_transformers_past_the_original_context(case, token_ids):
    _, model, directory = case
    llm = llama_tf.load(directory)
    theirs = hf_logits(model, token_ids)
    assert max_relative_error(llm.model(token_ids), theirs) <= TOLERANCE
    # The test can fail: plain RoPE on the same weights departs from the reference past the original context.
    plain = llama_tf.load(directory)
    plain_model = llama_tf.build_llama(llm.config.replace(rope_scaling=None))
    plain_model.set_weights(plain.model.get_weights())
    assert max_relative_error(plain_model(token_ids)[:, 64:], theirs[:, 64:]) > 100 * TOLERANCE


def test_tiled_attention_with_scaling(case, token_ids):
    _, model, directory = case
    llm = llama_tf.load(directory, attention_impl="tiled", block_size=16)
    assert max_relative_error(llm.model(token_ids), hf_logits(model, token_ids)) <= TOLERANCE


def test_cached_greedy_generation_matches_transformers(case, token_ids):
    "A 70-token prompt, 24 new tokens through the key/value cache: the same ids as HF `generate`."
    torch = require("torch")
    _, model, directory = case
    llm = llama_tf.load(directory)
    prompt = token_ids[0, :70].tolist()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=24, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert llm.generate_ids(prompt, 24, stop_ids=()) == out[0, len(prompt):].tolist()


def test_written_checkpoints_keep_the_scaling(case, token_ids, tmp_path):
    "save_hf_checkpoint writes the scaling where transformers reads it: the same logits again."
    transformers = require("transformers")
    scaling, model, directory = case
    llm = llama_tf.load(directory)
    out = llama_tf.loading.save_hf_checkpoint(llm.model, llm.config, tmp_path / "written")
    reloaded = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    assert llama_tf.load(out, tokenizer=llm.tokenizer).config.rope_scaling == scaling
    assert max_relative_error(llm.model(token_ids), hf_logits(reloaded, token_ids)) <= TOLERANCE


def test_meta_params_use_scaled_rope():
    "Meta's params.json says only `use_scaled_rope`: Meta's reference constants (factor 8), or its own factor."
    params = {"dim": 64, "n_layers": 1, "n_heads": 4, "vocab_size": 128_256, "rope_theta": 500000.0}
    assert LlamaConfig.from_meta_params(params).rope_scaling is None
    assert LlamaConfig.from_meta_params({**params, "use_scaled_rope": True}).rope_scaling == META_LLAMA3_SCALING
    scaled = LlamaConfig.from_meta_params({**params, "use_scaled_rope": True, "rope_scaling_factor": 32})
    assert scaled.rope_scaling == {**META_LLAMA3_SCALING, "factor": 32.0}


def test_frequencies_follow_meta_apply_scaling():
    "rope_frequencies against a transcription of Meta's `apply_scaling` (llama-models, llama3/model.py), float64."
    theta, head_dim = 500000.0, 128
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * np.pi / freqs
    factor, low, high, context = 8.0, 1.0, 4.0, 8192
    new = np.where(wavelen > context / low, freqs / factor, freqs)
    smooth = (context / wavelen - low) / (high - low)
    expected = np.where((wavelen >= context / high) & (wavelen <= context / low), (1 - smooth) * new / factor + smooth * new, new)
    ours = np.asarray(llama_tf.rope.rope_frequencies(head_dim, theta, META_LLAMA3_SCALING))
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    assert (ours < freqs * (1 - 1e-3)).sum() > 0 and (np.isclose(ours, freqs, rtol=1e-6)).sum() > 0

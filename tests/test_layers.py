"""Each layer against its Hugging Face counterpart (same weights, float32), and every layer and the model
through a `.keras` save/load round trip."""

import numpy as np
import pytest

import keras
import llama_tf
from llama_tf.formats.hf import unpermute_rope_rows
from conftest import require
from reference import max_relative_error

TOLERANCE = 1e-4
DIM, HIDDEN, SEQ = 64, 172, 12


@pytest.fixture(scope="module")
def hf():
    torch = require("torch")
    transformers = require("transformers")
    from transformers.models.llama import modeling_llama

    def config(n_kv_heads=2, rope_theta=10000.0):
        cfg = transformers.LlamaConfig(hidden_size=DIM, intermediate_size=HIDDEN, num_attention_heads=4,
                                       num_key_value_heads=n_kv_heads, rms_norm_eps=1e-5, rope_theta=rope_theta)
        cfg._attn_implementation = "eager"
        return cfg

    return torch, modeling_llama, config


def randomise(torch_module, seed=0):
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for p in torch_module.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 0.1) + (1.0 if p.ndim == 1 else 0.0))
    return torch_module.eval()


def x_input(seed=1):
    return np.random.default_rng(seed).normal(size=(2, SEQ, DIM)).astype("float32")


def run_torch(module, x, *args, **kwargs):
    import torch

    with torch.no_grad():
        out = module(torch.from_numpy(x), *args, **kwargs)
    return (out[0] if isinstance(out, tuple) else out).numpy()


def hf_rope_and_mask(hf_config):
    import torch
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    positions = torch.arange(SEQ)[None]
    cos_sin = LlamaRotaryEmbedding(hf_config)(torch.zeros(1, SEQ, DIM), positions)
    mask = torch.full((SEQ, SEQ), float("-inf")).triu(1)[None, None]
    return cos_sin, mask, positions


def copy_attention(ours, theirs, n_heads, n_kv_heads):
    "HF q/k rows are in rotate-half order: undo it, as the checkpoint loader does."
    w = {k: v.numpy() for k, v in theirs.state_dict().items()}
    ours.wq.kernel.assign(unpermute_rope_rows(w["q_proj.weight"], n_heads).T)
    ours.wk.kernel.assign(unpermute_rope_rows(w["k_proj.weight"], n_kv_heads).T)
    ours.wv.kernel.assign(w["v_proj.weight"].T)
    ours.wo.kernel.assign(w["o_proj.weight"].T)


def copy_feed_forward(ours, theirs):
    w = {k: v.numpy() for k, v in theirs.state_dict().items()}
    ours.w1.kernel.assign(w["gate_proj.weight"].T)
    ours.w3.kernel.assign(w["up_proj.weight"].T)
    ours.w2.kernel.assign(w["down_proj.weight"].T)


def test_rms_norm_matches_transformers(hf):
    _, modeling, _ = hf
    theirs = randomise(modeling.LlamaRMSNorm(DIM, eps=1e-5))
    ours = llama_tf.RMSNorm(eps=1e-5)
    x = x_input() * 50.0
    ours.build(x.shape)
    ours.weight.assign(theirs.weight.detach().numpy())
    assert max_relative_error(ours(x), run_torch(theirs, x)) <= TOLERANCE


def test_feed_forward_matches_transformers(hf):
    _, modeling, config = hf
    theirs = randomise(modeling.LlamaMLP(config()))
    ours = llama_tf.FeedForward(DIM, HIDDEN)
    x = x_input()
    ours.build(x.shape)
    copy_feed_forward(ours, theirs)
    assert max_relative_error(ours(x), run_torch(theirs, x)) <= TOLERANCE


@pytest.mark.parametrize("n_kv_heads, rope_theta", [(4, 10000.0), (2, 10000.0), (1, 500000.0)],
                         ids=["multi-head", "grouped-query", "multi-query-theta-500k"])
def test_attention_matches_transformers(hf, n_kv_heads, rope_theta):
    _, modeling, config = hf
    cfg = config(n_kv_heads, rope_theta)
    theirs = randomise(modeling.LlamaAttention(cfg, layer_idx=0))
    ours = llama_tf.Attention(DIM, 4, n_kv_heads, rope_theta)
    x = x_input()
    ours.build(x.shape)
    copy_attention(ours, theirs, 4, n_kv_heads)
    cos_sin, mask, _ = hf_rope_and_mask(cfg)
    assert max_relative_error(ours(x), run_torch(theirs, x, position_embeddings=cos_sin, attention_mask=mask)) <= TOLERANCE


def test_transformer_block_matches_transformers(hf):
    _, modeling, config = hf
    cfg = config()
    theirs = randomise(modeling.LlamaDecoderLayer(cfg, layer_idx=0))
    ours = llama_tf.TransformerBlock(DIM, 4, 2, HIDDEN, norm_eps=1e-5)
    x = x_input()
    ours.build(x.shape)
    copy_attention(ours.attention, theirs.self_attn, 4, 2)
    copy_feed_forward(ours.feed_forward, theirs.mlp)
    ours.attention_norm.weight.assign(theirs.input_layernorm.weight.detach().numpy())
    ours.ffn_norm.weight.assign(theirs.post_attention_layernorm.weight.detach().numpy())
    cos_sin, mask, positions = hf_rope_and_mask(cfg)
    expected = run_torch(theirs, x, attention_mask=mask, position_ids=positions, position_embeddings=cos_sin)
    assert max_relative_error(ours(x), expected) <= TOLERANCE


def test_rope_is_a_complex_rotation_of_adjacent_pairs():
    "Independent of any framework: pair (x[2i], x[2i+1]) at position m times exp(i·m·theta^(-2i/d))."
    x = np.random.default_rng(0).normal(size=(1, 7, 2, 8)).astype("float32")
    ours = np.asarray(llama_tf.apply_rope(x, llama_tf.rope_angles(np.arange(7), 8, 100.0)))
    freqs = 100.0 ** (-np.arange(0, 8, 2) / 8)
    rotated = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * np.arange(7)[None, :, None, None] * freqs)
    np.testing.assert_allclose(ours[..., 0::2], rotated.real, atol=1e-5)
    np.testing.assert_allclose(ours[..., 1::2], rotated.imag, atol=1e-5)


@pytest.mark.parametrize("dim, multiple_of, multiplier, expected",
                         [(4096, 256, None, 11008), (5120, 256, None, 13824), (8192, 4096, 1.3, 28672),
                          (4096, 1024, 1.3, 14336), (2048, 256, None, 5632)])
def test_ffn_hidden_dim_reproduces_published_models(dim, multiple_of, multiplier, expected):
    assert llama_tf.ffn_hidden_dim(dim, multiple_of, multiplier) == expected


# --- .keras round trips -------------------------------------------------------------------------------

def round_trip(model, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    return keras.saving.load_model(path)


LAYERS = {
    "rms_norm": lambda: llama_tf.RMSNorm(eps=1e-6, name="layer"),
    "feed_forward": lambda: llama_tf.FeedForward(DIM, HIDDEN, name="layer"),
    "attention": lambda: llama_tf.Attention(DIM, 4, 2, rope_theta=5e5, name="layer"),
    "attention-llama3-rope": lambda: llama_tf.Attention(DIM, 4, 2, rope_theta=5e5, name="layer", rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 4}),
    "transformer_block": lambda: llama_tf.TransformerBlock(DIM, 4, 2, HIDDEN, 1e-6, 5e5, name="layer"),
}


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
def test_layer_survives_keras_round_trip(make, tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(None, DIM))
    layer = make()
    model = keras.Model(inputs, layer(inputs))
    for variable in model.weights:  # non-trivial gains too
        variable.assign(np.random.default_rng(0).normal(size=variable.shape).astype("float32") * 0.2 + 1.0)
    restored = round_trip(model, tmp_path)
    x = x_input()
    assert type(restored.get_layer("layer")) is type(layer)
    assert restored.get_layer("layer").get_config() == layer.get_config()
    np.testing.assert_array_equal(restored(x), model(x))


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_model_survives_keras_round_trip(tie, tmp_path):
    keras.utils.set_random_seed(0)
    config = llama_tf.LlamaConfig(dim=DIM, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300,
                                  multiple_of=32, tie_embeddings=tie, rope_theta=5e5)
    model = llama_tf.build_llama(config)
    restored = round_trip(model, tmp_path)
    ids = np.random.default_rng(0).integers(0, 300, size=(2, 9))
    assert [w.path for w in restored.weights] == [w.path for w in model.weights]
    np.testing.assert_array_equal(restored(ids), model(ids))
    # the parts come back as named attributes, the same layers the graph runs
    assert type(restored) is llama_tf.Llama and restored.config == config
    assert [b.name for b in restored.blocks] == ["layers_0", "layers_1"]
    assert restored.tok_embeddings is restored.get_layer("tok_embeddings") and restored.norm is restored.get_layer("norm")
    assert (restored.output_projection is None) == tie
    if not tie:
        assert restored.output_projection is restored.get_layer("output")


def test_model_is_causal():
    keras.utils.set_random_seed(0)
    config = llama_tf.LlamaConfig(dim=DIM, n_layers=2, n_heads=4, vocab_size=300, multiple_of=32)
    model = llama_tf.build_llama(config)
    ids = np.random.default_rng(0).integers(0, 300, size=(1, 10))
    changed = ids.copy()
    changed[0, 6:] = (changed[0, 6:] + 1) % 300
    np.testing.assert_allclose(model(changed)[:, :6], model(ids)[:, :6], atol=1e-6)
    assert not np.allclose(model(changed)[:, 6:], model(ids)[:, 6:])


@pytest.mark.parametrize("n_kv_heads, tie", [(4, False), (2, True), (1, False)])
def test_config_counts_the_model_parameters(n_kv_heads, tie):
    config = llama_tf.LlamaConfig(dim=DIM, n_layers=3, n_heads=4, n_kv_heads=n_kv_heads, vocab_size=300,
                                  hidden_dim=HIDDEN, tie_embeddings=tie)
    assert config.num_parameters == llama_tf.build_llama(config).count_params()


@pytest.mark.parametrize("changes, message", [
    (dict(dim=65), "not divisible by n_heads"),
    (dict(n_kv_heads=3), "not a multiple of n_kv_heads"),
    (dict(n_layers=0), "n_layers must be a positive integer"),
    (dict(dim=36, n_heads=12), "head_dim=3 must be even"),
    (dict(norm_eps=0.0), "must be positive"),
])
def test_config_rejects_inconsistent_shapes(changes, message):
    settings = dict(dim=DIM, n_layers=2, n_heads=4, vocab_size=300)
    with pytest.raises(ValueError, match=message):
        llama_tf.LlamaConfig(**{**settings, **changes})

"""Logits and greedy text against Hugging Face `LlamaForCausalLM` (PyTorch, CPU) on the same random weights,
read from Hugging Face's layout and from Meta's (one and two shards).

Tolerance (float32): max |Δlogits| <= 1e-4 × max |logits of the reference|.
"""

import numpy as np
import pytest

import llama_tf
import llama_tf.loading
from conftest import require
from reference import half_copy, hf_logits, hf_model, max_relative_error, stored_dtypes, write_hf, write_meta

TOLERANCE = 1e-4

CONFIGS = {
    "multi-head": dict(num_key_value_heads=4),
    "grouped-query": dict(num_key_value_heads=2),
    "tied-embeddings": dict(num_key_value_heads=2, tie_word_embeddings=True),
    "rope-theta-500k": dict(num_key_value_heads=2, rope_theta=500000.0, num_hidden_layers=3),
}


@pytest.fixture(scope="module")
def token_ids():
    return np.random.default_rng(0).integers(3, 384, size=(2, 40))


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request, tmp_path_factory, tiny_tokenizer_proto):
    "One reference model per configuration, written in Hugging Face's layout."
    model = hf_model(**CONFIGS[request.param])
    directory = write_hf(model, tmp_path_factory.mktemp(request.param) / "hf", tiny_tokenizer_proto)
    return request.param, model, directory


def test_logits_match_transformers(case, token_ids):
    name, model, directory = case
    llm = llama_tf.load(directory)
    error = max_relative_error(llm.model(token_ids), hf_logits(model, token_ids))
    print(f"{name}: max relative logit error {error:.2e}")
    assert error <= TOLERANCE


def test_greedy_continuation_matches_transformers(case, tiny_tokenizer_proto):
    torch = require("torch")
    _, model, directory = case
    llm = llama_tf.load(directory)
    prompt = llm.tokenizer.tokenize("Beautiful is better than").numpy().tolist()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=24, do_sample=False, pad_token_id=0, eos_token_id=2)
    theirs = out[0, len(prompt):].tolist()
    assert llm.generate_ids(prompt, max_new_tokens=24) == theirs


@pytest.mark.parametrize("n_shards, embedding_axis", [(1, 1), (2, 1), (2, 0)],
                         ids=["one-shard", "two-shards", "two-shards-vocab-split"])
def test_meta_layout_gives_the_same_logits(case, token_ids, tmp_path, tiny_tokenizer_proto, n_shards, embedding_axis):
    _, model, hf_directory = case
    meta_directory = write_meta(model, tmp_path / "meta" / "7B", tiny_tokenizer_proto, n_shards, embedding_axis)
    from_meta = llama_tf.load(meta_directory)
    from_hf = llama_tf.load(hf_directory)
    # params.json states hidden_dim through multiple_of (4 here); the resulting shapes must agree.
    assert from_meta.config.replace(max_seq_len=256, multiple_of=256) == from_hf.config
    assert max_relative_error(from_meta.model(token_ids), hf_logits(model, token_ids)) <= TOLERANCE
    np.testing.assert_allclose(from_meta.model(token_ids), from_hf.model(token_ids), rtol=0, atol=1e-5)


def test_sharded_safetensors_with_index(tmp_path, token_ids, tiny_tokenizer_proto):
    model = hf_model(num_key_value_heads=2)
    directory = write_hf(model, tmp_path / "hf", tiny_tokenizer_proto, max_shard_size="60KB")
    assert (directory / "model.safetensors.index.json").is_file()
    assert len(list(directory.glob("model-*-of-*.safetensors"))) > 1
    llm = llama_tf.load(directory)
    assert max_relative_error(llm.model(token_ids), hf_logits(model, token_ids)) <= TOLERANCE


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["hf", "meta"])
def test_half_precision_files_compute_in_float32(tmp_path, token_ids, tiny_tokenizer_proto, dtype, layout):
    "Weights stored in 16 bits are widened exactly; the reference runs those same values in float32."
    model = hf_model(num_key_value_heads=2, round_to=dtype)
    write = write_hf if layout == "hf" else write_meta
    directory = write(half_copy(model, dtype), tmp_path / layout, tiny_tokenizer_proto)
    assert stored_dtypes(directory) == {dtype}
    llm = llama_tf.load(directory)
    assert llm.model.get_layer("tok_embeddings").embeddings.dtype == "float32"
    assert max_relative_error(llm.model(token_ids), hf_logits(model, token_ids)) <= TOLERANCE


def test_single_weights_file_path(case, token_ids):
    "A path to the weights file itself also works (its config is read from the same folder)."
    _, model, directory = case
    llm = llama_tf.load(directory / "model.safetensors")
    assert max_relative_error(llm.model(token_ids), hf_logits(model, token_ids)) <= TOLERANCE


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_written_checkpoint_loads_in_transformers(case, token_ids, tmp_path, dtype):
    "save_hf_checkpoint writes what transformers itself reads, with the same logits."
    transformers = require("transformers")
    torch = require("torch")
    _, _, directory = case
    llm = llama_tf.load(directory)
    written = llama_tf.loading.save_hf_checkpoint(llm.model, llm.config, tmp_path / "written", dtype=dtype,
                                                     tokenizer_model=llm.tokenizer.model_proto)
    reference = transformers.LlamaForCausalLM.from_pretrained(written, dtype=torch.float32).eval()
    tolerance = TOLERANCE if dtype == "float32" else 2e-2  # bfloat16 keeps 8 bits of mantissa
    assert max_relative_error(llm.model(token_ids), hf_logits(reference, token_ids)) <= tolerance
    reloaded = llama_tf.load(written)
    assert reloaded.config == llm.config
    assert max_relative_error(reloaded.model(token_ids), hf_logits(reference, token_ids)) <= TOLERANCE


def test_interrupted_save_leaves_no_files(case, tmp_path, monkeypatch):
    import safetensors.numpy

    _, _, directory = case
    llm = llama_tf.load(directory)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        llama_tf.loading.save_hf_checkpoint(llm.model, llm.config, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []          # neither the folder nor its staging copy


def test_attention_maps_match_transformers(case, token_ids):
    """`Attention.attention_map` (notebook 07's heat maps) equals the weights HF's eager attention returns,
    layer by layer, within 1e-5 (weights lie in [0, 1])."""
    torch = require("torch")
    _, model, directory = case
    llm = llama_tf.load(directory)
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        theirs = model(torch.tensor(token_ids), output_attentions=True).attentions   # per layer (batch, heads, q, k)
    h = llm.model.get_layer("tok_embeddings")(token_ids)
    for i, reference in enumerate(theirs):
        block = llm.model.get_layer(f"layers_{i}")
        ours = np.asarray(block.attention.attention_map(block.attention_norm(h)))
        np.testing.assert_allclose(ours, reference.numpy(), atol=1e-5, err_msg=f"layer {i}")
        h = block(h)

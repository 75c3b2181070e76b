"""Several devices through Keras' distribution API (`llama_tf.distribution`), on two CPU devices that
JAX fakes (`XLA_FLAGS=--xla_force_host_platform_device_count=2`): weights split by the layout, logits and
greedy text equal to one device's, and a data-parallel training run with the losses of one device.

The checks need JAX started with two devices, so `test_on_two_cpu_devices` runs this file again in a
process that has them; in that process the checks run and it skips itself.

Tolerances (float32): sharded logits within 1e-5 of their scale of the unsharded ones (only the order
of the sums differs), and within 1e-4 of transformers' (as in test_parity); training losses within 1e-4.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import llama_tf
from conftest import ROOT, shared_path
from reference import hf_logits, hf_model, max_relative_error, write_hf


def _two_devices() -> bool:
    if keras.backend.backend() != "jax":
        return False
    import jax

    return len(jax.devices()) >= 2


ON_TWO_DEVICES = _two_devices()
needs_two = pytest.mark.skipif(not ON_TWO_DEVICES, reason="runs in the two-device process of test_on_two_cpu_devices")


@pytest.mark.skipif(ON_TWO_DEVICES, reason="this is the two-device process")
def test_on_two_cpu_devices():
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout.splitlines()[-1]


@pytest.fixture(scope="module")
def case(tmp_path_factory, tiny_tokenizer_proto):
    model = hf_model(num_key_value_heads=2, num_hidden_layers=2)
    return model, write_hf(model, tmp_path_factory.mktemp("mesh"), tiny_tokenizer_proto)


EXPECTED = {  # the variables of one block, and where the model axis splits them
    "tok_embeddings/embeddings": ("model", None),
    "layers_0/attention_norm/weight": (None,),
    "layers_0/attention/wq/kernel": (None, "model"), "layers_0/attention/wk/kernel": (None, "model"),
    "layers_0/attention/wv/kernel": (None, "model"), "layers_0/attention/wo/kernel": ("model", None),
    "layers_0/feed_forward/w1/kernel": (None, "model"), "layers_0/feed_forward/w3/kernel": (None, "model"),
    "layers_0/feed_forward/w2/kernel": ("model", None), "norm/weight": (None,),
}


@needs_two
def test_the_layout_splits_each_matrix_as_documented(case):
    _, directory = case
    llm = llama_tf.load(directory, mesh=llama_tf.device_mesh(model=2))
    variables = {v.path: v.value for v in llm.model.variables}
    for path, axes in EXPECTED.items():
        value = variables[path]
        assert tuple(value.sharding.spec) + (None,) * (value.ndim - len(value.sharding.spec)) == axes, path
        shard = tuple(n // 2 if a == "model" else n for n, a in zip(value.shape, axes))
        assert [s.data.shape for s in value.addressable_shards] == [shard, shard], path


@needs_two
def test_sharded_logits_equal_one_device_and_transformers(case):
    model, directory = case
    ids = np.random.default_rng(0).integers(3, 384, size=(2, 40))
    whole = llama_tf.load(directory).model(ids)
    split = llama_tf.load(directory, mesh=llama_tf.device_mesh(model=2)).model(ids)
    assert max_relative_error(split, whole) <= 1e-5
    assert max_relative_error(split, hf_logits(model, ids)) <= 1e-4


@needs_two
def test_tied_embeddings_split_by_vocabulary(tmp_path, tiny_tokenizer_proto):
    "With the output projection tied to the embedding (Llama 3.2), the vocabulary-split table serves both."
    model = hf_model(num_key_value_heads=2, num_hidden_layers=1, tie_word_embeddings=True)
    directory = write_hf(model, tmp_path / "tied", tiny_tokenizer_proto)
    ids = np.random.default_rng(2).integers(3, 384, size=(2, 24))
    split = llama_tf.load(directory, mesh=llama_tf.device_mesh(model=2))
    table = split.model.get_layer("tok_embeddings").embeddings.value
    assert tuple(table.sharding.spec) == ("model", None)
    assert max_relative_error(split.model(ids), hf_logits(model, ids)) <= 1e-4


@needs_two
def test_sharded_greedy_generation_equals_one_device(case):
    _, directory = case
    prompts = [np.random.default_rng(1).integers(3, 384, n).tolist() for n in (30, 12)]
    whole = llama_tf.load(directory, max_seq_len=96)
    split = llama_tf.load(directory, max_seq_len=96, mesh=llama_tf.device_mesh(model=2))
    assert split.generate_ids(prompts, 20, stop_ids=()) == whole.generate_ids(prompts, 20, stop_ids=())


@needs_two
def test_a_mesh_of_batch_and_model_axes():
    mesh = llama_tf.device_mesh(model=1)
    assert mesh.shape == (2, 1) and mesh.axis_names == ["batch", "model"]
    with pytest.raises(ValueError, match="model must be a whole divisor of the 2 devices, got 3"):
        llama_tf.device_mesh(model=3)


@needs_two
def test_a_model_that_does_not_split_evenly_is_refused(case):
    _, directory = case
    config = llama_tf.LlamaConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=1, vocab_size=385, hidden_dim=128)
    with pytest.raises(ValueError, match="cannot split this model over 2 devices: n_kv_heads 1, vocab_size 385 "
                                         "are not divisible by 2"):
        llama_tf.model_parallel(llama_tf.device_mesh(model=2), config)


@needs_two
@pytest.mark.training
def test_data_parallel_fit_has_the_losses_of_one_device(tmp_path):
    "`fit --data-parallel` over 2 devices against plain `fit`: same data, same global batch of 8, no dropout."
    from llama_tf.train import main

    (tmp_path / "text.txt").write_text(shared_path("data/tinyshakespeare.txt").read_text()[:100_000])
    data = tmp_path / "data"
    assert main(["prepare", "--text", str(tmp_path / "text.txt"), "--out", str(data), "--vocab-size", "400",
                 "--sampled-epochs", "1"]) == 0
    fit = ["fit", "--data", str(data), "--dim", "32", "--n-layers", "1", "--n-heads", "2", "--hidden-dim", "64",
           "--seq-len", "32", "--batch-size", "8", "--steps", "6", "--eval-every", "2", "--warmup-steps", "2",
           "--dropout", "0", "--verbose", "0"]
    assert main([*fit, "--out", str(tmp_path / "one")]) == 0
    assert main([*fit, "--out", str(tmp_path / "two"), "--data-parallel"]) == 0
    one, two = (json.loads((tmp_path / name / "history.json").read_text()) for name in ("one", "two"))
    np.testing.assert_allclose([h["loss"] for h in two], [h["loss"] for h in one], rtol=1e-4)


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="the JAX backend distributes")
def test_other_backends_are_told_to_use_jax():
    with pytest.raises(ValueError, match="runs on the JAX backend; set KERAS_BACKEND=jax"):
        llama_tf.device_mesh()

"""How `build_model` fills the variables: every tensor copied once (transposed on the way where Keras
keeps it transposed), in any stored precision, and the largest tensors first."""

import ml_dtypes
import numpy as np
import pytest

from llama_tf.formats import read_checkpoint
from llama_tf.loading import backend_tensor, build_model
from reference import hf_model, write_hf


@pytest.mark.parametrize("dtype", ["float32", "float16", ml_dtypes.bfloat16])
@pytest.mark.parametrize("shape", [(300, 517), (1, 5), (256, 256), (7,)])
def test_backend_tensor_copies_and_transposes_exactly(dtype, shape):
    array = np.random.default_rng(0).normal(size=shape).astype(dtype)
    transposed = len(shape) == 2
    tensor = np.asarray(backend_tensor(array, transpose=transposed))
    assert tensor.dtype == array.dtype
    np.testing.assert_array_equal(tensor, array.T if transposed else array)


def test_backend_tensor_owns_its_data():
    "The NumPy array it was made from can change (or go) without changing the tensor."
    array = np.arange(12, dtype="float32").reshape(3, 4)
    tensor = backend_tensor(array)
    array[:] = -1
    np.testing.assert_array_equal(np.asarray(tensor), np.arange(12, dtype="float32").reshape(3, 4))


def test_the_largest_tensors_are_read_first(tmp_path, tiny_tokenizer_proto, monkeypatch):
    directory = write_hf(hf_model(vocab_size=384, hidden_size=64, intermediate_size=172), tmp_path / "hf",
                         tiny_tokenizer_proto)
    checkpoint = read_checkpoint(directory)
    order = []
    tensors = {name: ref._replace(load=lambda ref=ref, name=name: (order.append(name), ref.load())[1])
               for name, ref in checkpoint.tensors.items()}
    model = build_model(checkpoint._replace(tensors=tensors))
    sizes = [np.prod(checkpoint.tensors[name].load().shape) for name in order]
    assert sizes == sorted(sizes, reverse=True) and order[0] in ("tok_embeddings.weight", "output.weight")
    assert len(order) == len(checkpoint.tensors)
    np.testing.assert_array_equal(np.asarray(model.get_layer("tok_embeddings").embeddings),
                                  checkpoint.tensors["tok_embeddings.weight"].load())

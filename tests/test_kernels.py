"""The compiled kernels (llama_tf/kernels): built on this machine; the matrix-vector products, through
jax.ffi, as TensorFlow ops and as custom calls in a function TensorFlow's XLA compiles, equal to the plain product within float32 rounding for every layout,
weight type and odd size (the 4- to 6-bit blocks: of x rounded to int8 as llama.cpp rounds it), and
differentiable on JAX; the one-token attention (JAX, TensorFlow's XLA) equal to softmax attention
computed in float64, writing its slot of the cache and nothing else; replaced by the framework's products
with a one-line warning where they cannot be built."""

import numpy as np
import pytest

from conftest import require
from reference import in_xla_step, random_blocks

jax = require("jax")
jnp = jax.numpy

from llama_tf import kernels  # noqa: E402
from llama_tf.ggml_blocks import BLOCK_TYPES  # noqa: E402
from llama_tf.layers.projection import dequantize_q8_0, quantize_q8_0  # noqa: E402

EPS = {"float32": 2.0**-24, "bfloat16": 2.0**-8}   # unit roundoff of the output's type
SIZES = [(1, 1, 1), (1, 7, 5), (1, 15, 17), (3, 16, 16), (1, 33, 65), (2, 100, 130), (1, 768, 2048), (1, 2051, 771)]


@pytest.fixture(scope="module", autouse=True)
def built():
    assert kernels.available(), "the kernels could not be built on this machine"


def bound(x, w, dtype):
    """|error| allowed per output: float32 sums of k products (k·u·Σ|x w|), then one rounding to the
    output's type."""
    magnitude = np.abs(x) @ np.abs(w)
    return x.shape[1] * 2.0**-24 * magnitude + EPS[dtype] * np.abs(x @ w) + 1e-30


FRAMEWORKS = ["jax", "tensorflow", "tensorflow_xla"]


def tensor(framework: str, value, dtype: str):
    """`value` as a JAX array, or a TensorFlow tensor (for llama_tf's TensorFlow library, built here), of
    `dtype`."""
    if framework == "jax":
        return jnp.asarray(value, dtype)
    tf = require("tensorflow")
    assert kernels.tensorflow_ops() is not None, "the TensorFlow ops could not be built on this machine"
    return tf.cast(tf.constant(value), dtype)


def run(framework: str, function, *args):
    """`function(*args)`; for "tensorflow_xla" traced inside `kernels.xla_step()` in a function that
    TensorFlow's XLA compiles, so that the kernels are custom calls in XLA's program."""
    return (in_xla_step(function) if framework == "tensorflow_xla" else function)(*args)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("out_in", [False, True], ids=["in_out", "out_in"])
@pytest.mark.parametrize("m, k, n", SIZES)
def test_matvec_equals_the_plain_product(m, k, n, dtype, out_in, framework):
    rng = np.random.default_rng(k * n + m)
    stored = rng.standard_normal((k, n))
    x, w = tensor(framework, rng.standard_normal((m, k)), dtype), tensor(framework, stored.T if out_in else stored, dtype)
    exact_x, exact_w = np.asarray(x, "float64"), np.asarray(w, "float64")   # the operands as stored
    exact_w = exact_w.T if out_in else exact_w
    got = run(framework, lambda x, w: kernels.matvec(x, w, out_in), x, w)
    assert got.shape == (m, n) and got.dtype == x.dtype
    error = np.abs(np.asarray(got, "float64") - exact_x @ exact_w)
    assert np.all(error <= bound(exact_x, exact_w, dtype))


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("m, k, n", [(1, 32, 1), (1, 64, 7), (2, 96, 33), (1, 800, 131), (1, 2048, 5632), (1, 8224, 9)])
def test_q8_0_matvec_equals_the_dequantised_product(m, k, n, dtype, framework):
    rng = np.random.default_rng(k + n)
    q, scales = quantize_q8_0(rng.standard_normal((n, k)))
    x = tensor(framework, rng.standard_normal((m, k)), dtype)
    weights = np.asarray(dequantize_q8_0(q, scales), "float64").T          # (k, n)
    got = run(framework, kernels.matvec_q8_0, x, tensor(framework, q, "int8"), tensor(framework, scales, "float16"))
    assert got.shape == (m, n) and got.dtype == x.dtype
    exact_x = np.asarray(x, "float64")
    # x is rounded to int16 per block of 32: each value within 2⁻¹⁶ of its block's largest |x|
    block_top = np.repeat(np.abs(exact_x).reshape(m, -1, 32).max(axis=2), 32, axis=1)
    allowed = bound(exact_x, weights, dtype) + 2.0**-16 * block_top @ np.abs(weights)
    assert np.all(np.abs(np.asarray(got, "float64") - exact_x @ weights) <= allowed)


def rounded_as_llama_cpp(x: np.ndarray, group: int) -> np.ndarray:
    """x (m, k) rounded to int8 with a scale d = max|x| / 127 per `group` values (Q8_0: 32; Q8_K: 256), in
    float32 arithmetic as the kernel rounds (x · (1 / d), to nearest even), as float64."""
    blocks = x.astype("float32").reshape(x.shape[0], -1, group)
    d = np.abs(blocks).max(axis=2, keepdims=True) / np.float32(127)
    inverse = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype("float32")
    return (np.rint(blocks * inverse).astype("float64") * d).reshape(x.shape)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(BLOCK_TYPES))
@pytest.mark.parametrize("m, blocks, n", [(1, 1, 1), (1, 3, 5), (2, 4, 33), (3, 9, 17), (32, 2, 19), (1, 8, 2051)])
def test_block_matvec_equals_the_product_of_x_rounded_as_llama_cpp(m, blocks, n, name, dtype, framework):
    """Each type against `gguf`'s dequantisation of the same bytes, multiplied in float64 by x rounded to
    int8 as llama.cpp rounds it (per 32 values for 32-weight blocks, per 256 for the k-quants): within
    float32's rounding of the sums and one rounding to the output's type."""
    gguf = require("gguf")
    block_type = BLOCK_TYPES[name]
    rng = np.random.default_rng(blocks * n + m)
    k = blocks * block_type.weights
    raw = random_blocks(block_type, n, k, rng)
    weights = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(block_type.ggml)).astype("float64").T   # (k, n)
    x = tensor(framework, rng.standard_normal((m, k)), dtype)
    got = run(framework, lambda x, w: kernels.matvec_blocks(x, w, block_type.ggml), x, tensor(framework, raw, "uint8"))
    assert got.shape == (m, n) and got.dtype == x.dtype
    rounded = rounded_as_llama_cpp(np.asarray(x, "float64"), block_type.weights)
    error = np.abs(np.asarray(got, "float64") - rounded @ weights)
    assert np.all(error <= bound(rounded, weights, dtype))
    exact = np.asarray(x, "float64") @ weights   # and the rounding of x is all that separates it from the exact product
    assert np.abs(np.asarray(got, "float64") - exact).max() <= 0.01 * (np.abs(np.asarray(x, "float64")) @ np.abs(weights)).max()


def test_under_jit_and_differentiable():
    rng = np.random.default_rng(0)
    x, w = jnp.asarray(rng.standard_normal((1, 40)), "float32"), jnp.asarray(rng.standard_normal((40, 24)), "float32")
    np.testing.assert_allclose(jax.jit(kernels.matvec)(x, w), x @ w, rtol=1e-5, atol=1e-5)

    def loss(product):
        return lambda x, w: (product(x, w) ** 2).sum()
    ours = jax.grad(loss(kernels.matvec), argnums=(0, 1))(x, w)
    plain = jax.grad(loss(jnp.matmul), argnums=(0, 1))(x, w)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_shapes_that_disagree_are_refused(framework):
    x = tensor(framework, np.ones((1, 64)), "float32")

    def done(function, *args):
        result = run(framework, function, x, *args)
        return jax.block_until_ready(result) if framework == "jax" else np.asarray(result)
    with pytest.raises(Exception, match="inner sizes differ"):
        done(kernels.matvec, tensor(framework, np.ones((32, 8)), "float32"))
    with pytest.raises(Exception, match="shapes disagree"):
        done(kernels.matvec_q8_0, tensor(framework, np.ones((8, 64)), "int8"), tensor(framework, np.ones((8, 3)), "float16"))
    blocks = tensor(framework, np.zeros((8, 36)), "uint8")                  # 64 weights a row in Q4_0's 18 bytes a block
    for ggml_type, why in [(8, "unknown block type"), (BLOCK_TYPES["q4_k"].ggml, "not a whole number of the type's blocks"),
                           (BLOCK_TYPES["q5_0"].ggml, "do not hold k weights")]:
        with pytest.raises(Exception, match=why):
            done(lambda x, w: kernels.matvec_blocks(x, w, ggml_type), blocks)


def attention_in_float64(q, keys, values, index, start):
    """q (batch, 1, heads, dim) over slots min(start, index)..index of keys, values (batch, kv_heads, slots,
    dim), in float64: (batch, 1, heads, dim)."""
    q, keys, values = (np.asarray(a, "float64") for a in (q, keys, values))
    batch, _, heads, dim = q.shape
    repeats = heads // keys.shape[1]
    out = np.zeros_like(q)
    for row in range(batch):
        seen = slice(min(start[row], index), index + 1)
        for head in range(heads):
            k, v = keys[row, head // repeats, seen], values[row, head // repeats, seen]
            scores = k @ q[row, 0, head] / np.sqrt(dim)
            weights = np.exp(scores - scores.max())
            out[row, 0, head] = weights @ v / weights.sum()
    return out


@pytest.mark.parametrize("framework", ["jax", "tensorflow_xla"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("batch, heads, kv_heads, dim, slots, index", [
    (1, 4, 4, 64, 16, 0), (1, 8, 2, 64, 128, 77), (2, 6, 3, 20, 9, 8), (3, 32, 4, 64, 300, 299)])
def test_attend_one_equals_attention_in_float64(batch, heads, kv_heads, dim, slots, index, dtype, framework):
    rng = np.random.default_rng(slots + index)
    q = tensor(framework, rng.standard_normal((batch, 1, heads, dim)), dtype)
    k, v = (tensor(framework, rng.standard_normal((batch, kv_heads, 1, dim)), dtype) for _ in range(2))
    keys, values = (tensor(framework, rng.standard_normal((batch, kv_heads, slots, dim)), dtype) for _ in range(2))
    start = np.array([0, index // 2, index + 1][:batch], "int32")    # a row that starts after index sees its own slot
    before = [np.asarray(a, "float64") for a in (keys, values)]
    attend = jax.jit(kernels.attend_one, donate_argnums=(3, 4)) if framework == "jax" else kernels.attend_one
    out, new_keys, new_values = run(framework, attend, q, k, v, keys, values, np.int32(index), start)
    expected_keys, expected_values = (a.copy() for a in before)
    expected_keys[:, :, index], expected_values[:, :, index] = np.asarray(k, "float64")[:, :, 0], np.asarray(v, "float64")[:, :, 0]
    np.testing.assert_array_equal(np.asarray(new_keys, "float64"), expected_keys)      # its slot, and only it
    np.testing.assert_array_equal(np.asarray(new_values, "float64"), expected_values)
    expected = attention_in_float64(q, expected_keys, expected_values, index, start)
    assert out.shape == q.shape and out.dtype == q.dtype
    tolerance = 1e-5 if dtype == "float32" else 2.0**-7                 # float32 sums; one rounding to bfloat16
    np.testing.assert_allclose(np.asarray(out, "float64"), expected, rtol=tolerance, atol=tolerance * np.abs(expected).max())


def test_attention_shapes_that_disagree_are_refused():
    q, kv, cache = jnp.ones((1, 1, 6, 8)), jnp.ones((1, 4, 1, 8)), jnp.ones((1, 4, 5, 8))
    with pytest.raises(Exception, match="shapes disagree"):                     # 6 heads over 4 key/value heads
        jax.block_until_ready(kernels.attend_one(q, kv, kv, cache, cache, 0))
    with pytest.raises(Exception, match="index outside the cache"):
        jax.block_until_ready(kernels.attend_one(jnp.ones((1, 1, 8, 8)), kv, kv, cache, cache, 5))


def test_without_a_compiler_the_products_stay_on_xla(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(kernels.KernelBuildError, match=r"CXX=/nonexistent/c\+\+ is not a program"):
        kernels.build()
    monkeypatch.setattr(kernels, "build", lambda: (_ for _ in ()).throw(kernels.KernelBuildError("no C++ compiler")))
    with pytest.warns(RuntimeWarning, match="one-token products stay the framework's: no C\\+\\+ compiler"):
        assert kernels.available.__wrapped__() is False
    monkeypatch.setenv(kernels.SWITCH, "0")
    assert kernels.available.__wrapped__() is False


def test_without_a_compiler_tensorflow_keeps_its_products(monkeypatch):
    require("tensorflow")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(kernels.KernelBuildError, match=r"CXX=/nonexistent/c\+\+ is not a program"):
        kernels.build_tensorflow()
    with pytest.warns(RuntimeWarning, match="one-token products stay the framework's: CXX="):
        assert kernels.tensorflow_ops.__wrapped__() is None
    monkeypatch.setenv(kernels.SWITCH, "0")
    assert kernels.tensorflow_ops.__wrapped__() is None


def test_the_portable_block_loops_equal_the_reference(tmp_path):
    """The block products without AVX-512 (CXXFLAGS=-mno-avx512f: the portable loops that AVX2 and Arm
    machines run), built into a cache of their own, pass the same checks as the vector loops."""
    import os
    import platform
    import subprocess
    import sys

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("-mno-avx512f is an x86 flag; elsewhere the portable loops are the ones the other tests check")
    env = {**os.environ, "CXXFLAGS": "-mno-avx512f", "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                           "block_matvec and jax and float32"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
    assert list(tmp_path.rglob("kernels-*.so")), "the portable build went to the temporary cache"

"""What bounds llama_tf's long prefill and batch-1 decode on a GPU: the pieces timed alone (Llama 3.2 1B
shape, bfloat16, Keras on JAX), each the best of 20 after a compiling call.

    KERAS_BACKEND=jax python benchmarks/gpu_bounds.py        # results/gpu/bounds.json holds one H100 run

- prefill: llama_tf's reference attention over 2,048 tokens (one layer) and its fused path
  (`attention_impl="fused"`, with the prefill's mask) against JAX's fused attention
  (`jax.nn.dot_product_attention`, causal, cuDNN and XLA), and one feed-forward-sized product for scale;
- decode: the tied output projection as the model computes it, the same product written plainly, and
  the time to read the embedding once at a 3.0 TB/s copy rate;
- agreement: a 2,048-token prompt's bfloat16 logits, through each attention path, against float32's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import llama_tf  # noqa: E402
from decode import SHAPES  # noqa: E402
from llama_tf.model import build_llama  # noqa: E402

COPY_RATE = 3.0e12   # bytes read + written per second, measured by gpu_decode.py


def best(f, *args, n: int = 20) -> float:
    "Milliseconds of f(*args), best of n after one call."
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(n):
        begin = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - begin)
    return 1e3 * min(times)


def main() -> dict:
    config = llama_tf.LlamaConfig(**{**SHAPES["llama3.2-1b"], "max_seq_len": 4096})
    rng, length, head_dim = np.random.default_rng(0), 2048, config.head_dim
    q = jnp.asarray(rng.standard_normal((1, length, config.n_heads, head_dim)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.standard_normal((1, config.n_kv_heads, length, head_dim)), jnp.bfloat16) for _ in "kv")
    attention = llama_tf.Attention(config.dim, config.n_heads, config.n_kv_heads, dtype="bfloat16")
    slots = jnp.arange(length)
    mask = llama_tf.visible_keys(slots, slots)
    out = {"reference attend 2048, one layer (ms)": best(jax.jit(lambda q, k, v: attention.attend(q, k, v, mask)), q, k, v)}
    fused = llama_tf.Attention(config.dim, config.n_heads, config.n_kv_heads, attention_impl="fused", dtype="bfloat16")
    padded = llama_tf.visible_keys(slots, slots, jnp.zeros((1,), "int32"))   # a prefill's mask: left padding of 0
    out["llama_tf attend_fused 2048 (cuDNN, the prefill's mask), one layer (ms)"] = best(
        jax.jit(lambda q, k, v: fused.attend_fused(q, k, v, padded)), q, k, v)
    k_seq, v_seq = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)   # (batch, seq, heads, head_dim)
    for implementation in ("cudnn", "xla"):
        fused = jax.jit(lambda q, k, v, i=implementation: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                                                        implementation=i))
        out[f"jax.nn.dot_product_attention {implementation}, one layer (ms)"] = best(fused, q, k_seq, v_seq)
    x = jnp.asarray(rng.standard_normal((1, length, config.dim)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((config.dim, config.hidden_dim)), jnp.bfloat16)
    out["one 2048x2048x8192 bf16 matmul (ms)"] = best(jax.jit(lambda x, w: x @ w), x, w)

    embedding = build_llama(config, dtype="bfloat16").tok_embeddings
    h = jnp.asarray(rng.standard_normal((1, 1, config.dim)), jnp.bfloat16)
    values = [variable.value for variable in embedding.variables]

    def project(values, h):
        with keras.StatelessScope(state_mapping=list(zip(embedding.variables, values))):
            return embedding(h, reverse=True)
    out["decode: tied output projection (ms)"] = best(jax.jit(project), values, h)
    out["decode: h @ E.T plain (ms)"] = best(jax.jit(lambda h, e: h @ e.T), h, values[0])
    out["bound: read the embedding once (ms)"] = 1e3 * values[0].size * 2 / COPY_RATE
    out.update(prefill_agreement(config))
    return out


def prefill_agreement(config, length: int = 2048) -> dict:
    """How far bfloat16 logits of one 2,048-token prompt are from float32 ones (same random weights),
    through the reference attention and through the fused one: max |Δ| ÷ max |float32 logit|, and the
    share of positions whose greedy token is float32's."""
    float32 = build_llama(config, dtype="float32")
    ids = np.random.default_rng(1).integers(3, config.vocab_size, (1, length))
    exact = np.asarray(float32.predict_on_batch(ids))[0]
    out = {}
    for impl in ("reference", "fused"):
        model = build_llama(config, dtype="bfloat16", attention_impl=impl)
        model.set_weights(float32.get_weights())
        logits = np.asarray(model.predict_on_batch(ids), "float32")[0]
        out[f"prefill {length}, bf16 {impl}: max |logit - float32| / scale"] = float(
            np.abs(logits - exact).max() / np.abs(exact).max())
        out[f"prefill {length}, bf16 {impl}: greedy tokens equal to float32's"] = float(
            (logits.argmax(-1) == exact.argmax(-1)).mean())
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))

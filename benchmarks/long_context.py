"""A long prompt on one GPU: the Llama 3.1 8B shape (random bfloat16 weights, Llama 3's rescaled RoPE)
reads a prompt of up to 131,072 tokens, what the model is made for, then decodes.

    KERAS_BACKEND=jax python benchmarks/long_context.py --tokens 131072 --json results/gpu/long_context.json

Made for a machine with a CUDA GPU and JAX. The weights are random, made in memory (one random pool
of bfloat16 values, each tensor a window of it: no 16 GB file to write and read back). llama_tf runs with
`attention_impl="fused"` (cuDNN's flash attention for the prompt) and its one-token attention path of the
`Decoder`. For each prompt length: the time to the first new token (the prefill, compilation excluded by a
first untimed run of the same length), the batch-1 decode rate after it, the peak GPU memory, and the
decode rate's bound: (weights + the key/value cache in use) bytes a token ÷ a device-to-device copy rate.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode  # noqa: E402
import gpu_decode  # noqa: E402


def random_checkpoint(config):
    """A `Checkpoint` of `config` whose tensors are random bfloat16 windows of one pool (std 0.02; the
    norms ones), made as they are loaded."""
    import ml_dtypes

    from llama_tf.formats.base import Checkpoint, TensorRef
    from llama_tf.structure import tensor_shapes

    pool = (np.random.default_rng(0).standard_normal(1 << 24, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)

    def tensor(shape, offset):
        if len(shape) == 1:
            return lambda: np.ones(shape, ml_dtypes.bfloat16)
        return lambda: np.resize(np.roll(pool, offset), shape)
    tensors = {name: TensorRef("random", tensor(shape, 7919 * i), shape)
               for i, (name, shape) in enumerate(tensor_shapes(config).items())}
    return Checkpoint(config, tensors, Path("."), "hf")


def weight_bytes(config) -> int:
    "bfloat16 bytes read per token: every tensor but the embedding table (when untied: only rows are looked up)."
    from llama_tf.structure import tensor_shapes

    return sum(2 * math.prod(shape) for name, shape in tensor_shapes(config).items()
               if name != "tok_embeddings.weight" or config.tie_embeddings)


def worker_long_prompt(shape: str, lengths: list[int], new_tokens: int, log: str, **_) -> dict:
    "Each length's figures, also appended to `log` as they come (a length that runs out of memory ends the process)."
    import os

    os.environ["KERAS_BACKEND"] = "jax"
    import jax

    from llama_tf.config import LlamaConfig
    from llama_tf.generation import Decoder
    from llama_tf.loading import build_model
    from llama_tf.sampling import Sampler

    config = LlamaConfig(**{**decode.SHAPES[shape], "max_seq_len": max(lengths) + new_tokens})
    model = build_model(random_checkpoint(config), dtype="bfloat16", progress=False, attention_impl="fused")
    decoder = Decoder(model, max_seq_len=config.max_seq_len)
    rows = []
    for length in lengths:
        prompt = [[1] + np.random.default_rng(length).integers(3, config.vocab_size, length - 1).tolist()]

        def run(n):
            "Seconds to the first token, seconds to the last, the tokens."
            begin, tokens = time.perf_counter(), []
            for step in decoder(prompt, n, Sampler(), stop_ids=()):
                tokens.append(int(step[0]))
                first = first if len(tokens) > 1 else time.perf_counter() - begin
            return first, time.perf_counter() - begin, tokens
        run(2)                                    # compilation of this length
        first, full, tokens = run(new_tokens)
        cache = 2 * config.n_layers * config.n_kv_heads * config.head_dim * 2 * (length + new_tokens // 2)
        stats = jax.devices()[0].memory_stats() or {}
        rows.append({"tokens": length, "first_token_s": first, "prefill": length / first,
                     "decode_b1": (new_tokens - 1) / (full - first), "cache_bytes_per_token": cache,
                     "peak_gpu_bytes": stats.get("peak_bytes_in_use"), "first_tokens": tokens[:8]})
        with open(log, "a") as out:
            out.write(json.dumps(rows[-1]) + "\n")
    return {"rows": rows}


TASKS = {"long_prompt": worker_long_prompt, "bandwidth": gpu_decode.worker_bandwidth}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="llama3.1-8b")
    p.add_argument("--tokens", default="32768,131072", help="prompt lengths, comma-separated")
    p.add_argument("--new-tokens", type=int, default=33)
    p.add_argument("--timeout", type=float, default=1800)
    decode.add_common_options(p)
    args = p.parse_args(argv)
    if decode.run_worker(args, TASKS):
        return 0
    workdir = args.workdir or Path(__import__("tempfile").mkdtemp(prefix="llama_tf_long_"))
    device = decode.run_task("bandwidth", script=__file__)
    from llama_tf.config import LlamaConfig

    weights = weight_bytes(LlamaConfig(**decode.SHAPES[args.shape]))
    log = workdir / "long_context_rows.jsonl"
    log.unlink(missing_ok=True)
    result = decode.run_task("long_prompt", args.timeout, script=__file__, shape=args.shape, log=log,
                             lengths=[int(n) for n in args.tokens.split(",")], new_tokens=args.new_tokens)
    if "rows" not in result:   # the lengths that finished before the error
        result["rows"] = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for row in result["rows"]:
        per_token = weights + row["cache_bytes_per_token"]
        bound = device.get("copy_rate", float("nan")) / per_token   # no GPU: no copy rate
        print(f"{row['tokens']:,} tokens: first token {row['first_token_s']:.2f} s ({row['prefill']:,.0f} tok/s), "
              f"decode {row['decode_b1']:.1f} tok/s = {row['decode_b1'] / bound:.0%} of its bound ({bound:.0f}: "
              f"{per_token / 1e9:.1f} GB a token), peak GPU memory {(row['peak_gpu_bytes'] or 0) / 2**30:.1f} GiB")
    if "error" in result:
        print("error:", result["error"])
    if args.json:
        args.json.write_text(json.dumps({**device, "shape": args.shape, "weights": weights, **result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A long prompt on one GPU: the Llama 3.1 8B shape (random bfloat16 weights, Llama 3's rescaled RoPE)
reads a prompt of up to 131,072 tokens, what the model is made for, then decodes.

    KERAS_BACKEND=jax python benchmarks/long_context.py --tokens 131072 --json results/gpu/long_context.json

Made for a machine with a CUDA GPU, JAX and PyTorch (the weights are made by transformers, as in
`gpu_decode.py`). llama_tf runs with `attention_impl="fused"` (cuDNN's flash attention for the prompt) and
the kernels' one-token attention path of the `Decoder`. For each prompt length: the time to the first new
token (the prefill, compilation excluded by a first untimed run of the same length), the batch-1 decode
rate after it, the peak GPU memory, and the decode rate's bound: (weights + the key/value cache in use)
bytes a token ÷ a device-to-device copy rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode  # noqa: E402
import gpu_decode  # noqa: E402


def worker_long_prompt(model_dir: Path, lengths: list[int], new_tokens: int, log: str, **_) -> dict:
    "Each length's figures, also appended to `log` as they come (a length that runs out of memory ends the process)."
    import os

    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import numpy as np

    from llama_tf.formats import read_checkpoint
    from llama_tf.generation import Decoder
    from llama_tf.loading import build_model
    from llama_tf.sampling import Sampler

    checkpoint = read_checkpoint(model_dir)
    checkpoint = checkpoint._replace(config=checkpoint.config.replace(max_seq_len=max(lengths) + new_tokens))
    model = build_model(checkpoint, dtype="bfloat16", progress=False, attention_impl="fused")
    decoder = Decoder(model, max_seq_len=checkpoint.config.max_seq_len)
    config = checkpoint.config
    rows = []
    for length in lengths:
        prompt = [[1] + np.random.default_rng(length).integers(3, config.vocab_size, length - 1).tolist()]

        def run(n):
            begin = time.perf_counter()
            tokens = [int(step[0]) for step in decoder(prompt, n, Sampler(), stop_ids=())]
            return time.perf_counter() - begin, tokens
        run(2)                                    # compilation of this length
        first, _ = run(1)
        full, tokens = run(new_tokens)
        cache = 2 * config.n_layers * config.n_kv_heads * config.head_dim * 2 * (length + new_tokens // 2)
        stats = jax.devices()[0].memory_stats() or {}
        rows.append({"tokens": length, "first_token_s": first, "prefill": length / first,
                     "decode_b1": (new_tokens - 1) / (full - first), "cache_bytes_per_token": cache,
                     "peak_gpu_bytes": stats.get("peak_bytes_in_use"), "first_tokens": tokens[:8]})
        with open(log, "a") as out:
            out.write(json.dumps(rows[-1]) + "\n")
    return {"rows": rows}


TASKS = {"long_prompt": worker_long_prompt, "make_weights": gpu_decode.make_weights,
         "bandwidth": gpu_decode.worker_bandwidth}


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
    model_dir = workdir / args.shape
    if not (model_dir / "config.json").exists():
        decode.run_task("make_weights", script=__file__, model_dir=model_dir, shape=args.shape)
    weights = gpu_decode.weight_bytes(model_dir)
    log = workdir / "long_context_rows.jsonl"
    log.unlink(missing_ok=True)
    result = decode.run_task("long_prompt", args.timeout, script=__file__, model_dir=model_dir, log=log,
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

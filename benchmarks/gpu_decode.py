"""Generation on one GPU: llama_tf (Keras on JAX) against Hugging Face transformers and keras-hub.

    python benchmarks/gpu_decode.py --json results/gpu_decode.json     # on a machine with a CUDA GPU

Made for a GPU machine with JAX and PyTorch and no TensorFlow (llama_tf's JAX path needs none);
Keras, keras-hub and their small dependencies can travel as wheels. Random weights in bfloat16, made
by transformers (seeded) for each shape; every peer runs in its own process, greedy, on the same prompts:

- prefill: prompt tokens/s at batch 1, for prompts of 128 and 2,048 tokens (time to the first token);
- decode: new tokens/s at batch 1, 8 and 64 after each prompt, without the prefill
  ((n - 1) new tokens × batch ÷ (time for n new tokens − time for 1));
- batch-1 decode as a fraction of the HBM bound: the weights' bytes read per token ÷ the rate of a
  measured device-to-device copy (bytes read + written per second).

Peers: transformers eager (its dynamic cache), transformers with its static cache and
`torch.compile`, keras-hub's `LlamaCausalLM` on JAX (XLA, the whole generation in one loop), and a
gpt-fast-style PyTorch decoder (`gpt_fast_decoder.py`: static cache, fused projections, the one-token
step compiled with CUDA graphs). The first 8 greedy tokens after the first prompt are compared between
peers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode  # noqa: E402
from decode import SHAPES, keras_hub_causal_lm, keras_hub_generate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GPU_SHAPES = ["tinyllama-1.1b", "llama3.2-1b"]
PEERS = ["llama_tf", "gpt_fast", "transformers", "transformers_compiled", "keras_hub"]   # also: llama_tf_reference
PROMPTS, BATCHES = (128, 2048), (1, 8, 64)


def _prompts(vocab: int, batch: int, length: int) -> list[list[int]]:
    rng = np.random.default_rng(length)
    return [[1] + rng.integers(3, vocab, length - 1).tolist() for _ in range(batch)]


def measure(generate, vocab: int, new_tokens: int, prompts=PROMPTS, batches=BATCHES, repeats: int = 3) -> dict:
    """`generate(prompts, n)` makes n new tokens for every prompt and returns the first row's (on the
    host, so the GPU has finished). Each shape runs once untimed first (compilation), then best of
    `repeats`."""
    def best(prompts, n):
        generate(prompts, n)
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            generate(prompts, n)
            times.append(time.perf_counter() - begin)
        return min(times)

    result = {"tokens": [int(t) for t in generate(_prompts(vocab, 1, PROMPTS[0]), 8)]}
    for length in prompts:
        first = best(_prompts(vocab, 1, length), 1)
        result[f"prefill_{length}"] = length / first
        for batch in batches:
            prompts = _prompts(vocab, batch, length)
            one = first if batch == 1 else best(prompts, 1)
            result[f"decode_{length}_b{batch}"] = batch * (new_tokens - 1) / (best(prompts, new_tokens) - one)
    return result


# ---------------------------------------------------------------------------------------------------
# Workers: each runs in its own process and prints one JSON line.

def worker_llama_tf(model_dir: Path, new_tokens: int, attention_impl: str = "fused", **_) -> dict:
    "llama_tf on JAX, prompts through cuDNN's fused attention (`llama_tf_reference`: the reference path)."
    os.environ["KERAS_BACKEND"] = "jax"
    from llama_tf.formats import read_checkpoint
    from llama_tf.generation import Decoder
    from llama_tf.sampling import Sampler
    from llama_tf.loading import build_model

    checkpoint = read_checkpoint(model_dir)
    model = build_model(checkpoint, dtype="bfloat16", progress=False, attention_impl=attention_impl)
    decoder = Decoder(model, max_seq_len=4096)

    def generate(prompts, n):
        return [int(step[0]) for step in decoder(prompts, n, Sampler(), stop_ids=())]
    return measure(generate, checkpoint.config.vocab_size, new_tokens)


def worker_transformers(model_dir: Path, new_tokens: int, compiled: bool = False, **_) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
    # With its static cache, generate() compiles the forward pass itself (torch.compile, CUDA graphs).
    options = dict(cache_implementation="static") if compiled else {}

    def generate(prompts, n):
        ids = torch.tensor(prompts, device="cuda")
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=0, **options)
        return out[0, ids.shape[1]:].tolist()
    # torch.compile compiles again for every new shape (minutes each): batch 1 and 8 only.
    return measure(generate, model.config.vocab_size, new_tokens, batches=(1, 8) if compiled else BATCHES)


def worker_gpt_fast(model_dir: Path, new_tokens: int, **_) -> dict:
    "The gpt-fast-style decoder: the cache sized for the longest prompt and generation, so each batch compiles once."
    import gpt_fast_decoder

    model = gpt_fast_decoder.load(model_dir)
    generate = gpt_fast_decoder.Generator(model, slots=-(-(max(PROMPTS) + new_tokens) // 128) * 128)
    # CUDA graphs are captured per batch size (about a minute each): batch 1 and 8 only.
    return measure(generate, model.vocab, new_tokens, batches=(1, 8))


def worker_keras_hub(model_dir: Path, new_tokens: int, **_) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    hf = json.loads((model_dir / "config.json").read_text())
    causal_lm = keras_hub_causal_lm(model_dir, "bfloat16")
    # XLA compiles the whole generation again for every batch and length (tens of seconds each): the
    # 128-token prompt at batch 1 and 8 only.
    return measure(lambda prompts, n: keras_hub_generate(causal_lm, prompts, n), hf["vocab_size"], new_tokens,
                   prompts=PROMPTS[:1], batches=(1, 8))


def worker_bandwidth(**_) -> dict:
    "Bytes read + written per second by a 4 GiB device-to-device copy (PyTorch), best of 20."
    import torch

    source = torch.empty(2**31, dtype=torch.bfloat16, device="cuda")
    target = torch.empty_like(source)
    times = []
    for _ in range(21):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target.copy_(source)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return {"copy_rate": 2 * source.numel() * 2 / min(times[1:]), "device": torch.cuda.get_device_name()}


def make_weights(model_dir: Path, shape: str, **_) -> dict:
    "Random bfloat16 weights of `shape` in Hugging Face's layout (transformers, seeded), one file."
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama_tf.config import LlamaConfig as Config
    from llama_tf.formats.hf import hf_config

    torch.manual_seed(0)
    config = LlamaConfig(**hf_config(Config(**{**SHAPES[shape], "max_seq_len": 4096})), initializer_range=0.05)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(model_dir, max_shard_size="20GB")
    return {}


TASKS = {"llama_tf": worker_llama_tf, "transformers": worker_transformers,
         "transformers_compiled": lambda **kw: worker_transformers(compiled=True, **kw),
         "keras_hub": worker_keras_hub, "gpt_fast": worker_gpt_fast,
         "llama_tf_reference": lambda **kw: worker_llama_tf(attention_impl="reference", **kw),
         "bandwidth": worker_bandwidth, "make_weights": make_weights}


def run_task(task: str, timeout: float | None = None, **kwargs) -> dict:
    return decode.run_task(task, timeout, script=__file__, **kwargs)


def weight_bytes(model_dir: Path) -> int:
    "Bytes of weights read per generated token: all but the embedding rows not looked up (when untied)."
    from safetensors import safe_open

    total = 0
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(file, "np") as f:
            tied = "lm_head.weight" not in f.keys()
            for name in f.keys():
                if name != "model.embed_tokens.weight" or tied:
                    total += int(np.prod(f.get_slice(name).get_shape())) * 2
    return total


def report(rows: list[dict], copy_rate: float) -> str:
    keys = [f"prefill_{n}" for n in PROMPTS] + [f"decode_{n}_b{b}" for n in PROMPTS for b in BATCHES]
    lines = ["| shape | peer | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['shape']} | {row['peer']} | error: {row['error'][:120]} |")
            continue
        ours = next((r for r in rows if r["shape"] == row["shape"] and r["peer"] == "llama_tf" and "error" not in r), {})

        def cell(key):
            if key not in row:
                return "—"
            ratio = f" ({ours[key] / row[key]:.2f}×)" if key in ours and row["peer"] != "llama_tf" else ""
            return f"{row[key]:,.0f}{ratio}"
        lines.append(f"| {row['shape']} | {row['peer']} | " + " | ".join(cell(k) for k in keys) + " |")
    lines += ["", "(×): llama_tf's figure ÷ the peer's. Tokens/s.", ""]
    for row in rows:
        if "tokens" in row and row["peer"] != "llama_tf":
            ours = next((r for r in rows if r["shape"] == row["shape"] and r["peer"] == "llama_tf"), {})
            same = ours.get("tokens") == row["tokens"]
            lines.append(f"- {row['shape']} {row['peer']}: first 8 greedy tokens "
                         f"{'equal llama_tf' + chr(39) + 's' if same else 'differ: ' + str(row['tokens']) + ' vs ' + str(ours.get('tokens'))}")
    lines.append(f"- device-to-device copy: {copy_rate / 1e12:.2f} TB/s (read + written)")
    for row in rows:
        if "decode_128_b1" in row:
            bound = copy_rate / row["per_token"]
            lines.append(f"- {row['shape']} {row['peer']}: batch-1 decode after 128 tokens at "
                         f"{row['decode_128_b1'] / bound:.0%} of the HBM bound ({bound:,.0f} tok/s for "
                         f"{row['per_token'] / 1e9:.2f} GB a token)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(GPU_SHAPES))
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--new-tokens", type=int, default=33)
    p.add_argument("--timeout", type=float, default=540, help="seconds allowed to each peer")
    decode.add_common_options(p)
    args = p.parse_args(argv)
    if decode.run_worker(args, TASKS):
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llama_tf_gpu_"))
    device = run_task("bandwidth")
    print(json.dumps(device), flush=True)
    rows = []
    for shape in args.shapes.split(","):
        model_dir = workdir / shape
        if not (model_dir / "config.json").exists():
            made = run_task("make_weights", model_dir=model_dir, shape=shape)
            if "error" in made:
                print(json.dumps({"shape": shape, **made}), flush=True)
                continue
        for peer in args.peers.split(","):
            result = run_task(peer, timeout=args.timeout, model_dir=model_dir, new_tokens=args.new_tokens)
            row = {"shape": shape, "peer": peer, "per_token": weight_bytes(model_dir), **result}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:   # after every row, so that a run cut short keeps what it measured
                args.json.write_text(json.dumps({**device, "rows": rows}, indent=1))
    print()
    print(report(rows, device.get("copy_rate", float("nan"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LoRA fine-tuning speed and memory: llama_tf (Keras: JAX on a GPU, any backend on a CPU) against PEFT +
Hugging Face transformers (PyTorch), the same shapes and settings, in the same run.

    python benchmarks/finetune.py --device gpu --json results/gpu/finetune.json   # a CUDA machine, JAX + PyTorch
    python benchmarks/finetune.py --device cpu --json results/finetune_cpu.json   # this machine: 2 cores

Random weights of each shape in Hugging Face's layout (transformers, seeded; `gpu_decode.make_weights`),
random token ids, every peer in its own process. One step: the forward pass over a batch of
sequences, the cross-entropy of every next token, the adapters' gradients, an AdamW update. LoRA of
rank 16, alpha 32, on all seven projections (q, k, v, o, gate, up, down), the base frozen; the adapters
float32 on both sides (PEFT's `autocast_adapter_dtype`). Neither side recomputes activations
(no gradient checkpointing). Tokens/s = batch × sequence ÷ the median step time after warm-up steps
(compilation); memory: the GPU's peak bytes in use (JAX's allocator statistics, PyTorch's
`max_memory_allocated`), on a CPU the process's peak RSS.

Peers: `llama_tf` (the base in the run's dtype, the step compiled by XLA: `jit_compile=True`, as
`python -m llama_tf.train lora` compiles it), `llama_tf_jax` (on a CPU: the JAX backend, where the run's
is TensorFlow), `llama_tf_no_xla` (TensorFlow with Keras' default `jit_compile="auto"`, which is off on a
machine without a GPU), `llama_tf_q8_0` (the base held as Q8_0 blocks, float32 compute), `peft`
(transformers eager, SDPA attention), `peft_compiled` (the same model under `torch.compile`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode  # noqa: E402

RANK, ALPHA = 16, 32
TARGETS_HF = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RUNS = {   # device -> the shapes, each with its batch, sequence length, steps and peers
    "gpu": [dict(shape="llama3.2-1b", batch=4, seq=2048, dtype="bfloat16", warmup=3, steps=10,
                 peers=["llama_tf", "peft", "peft_compiled"]),
            dict(shape="llama3.1-8b", batch=1, seq=2048, dtype="bfloat16", warmup=3, steps=6,
                 peers=["llama_tf", "llama_tf_q8_0", "peft"])],
    "cpu": [dict(shape="llama3.2-1b", batch=1, seq=128, dtype="float32", warmup=2, steps=3,
                 peers=["llama_tf", "llama_tf_jax", "llama_tf_no_xla", "peft"])],
}


def _ids(vocab: int, batch: int, seq: int) -> np.ndarray:
    return np.random.default_rng(0).integers(3, vocab, (batch, seq + 1)).astype("int32")


def _timed(step, warmup: int, steps: int) -> dict:
    "Runs `step()` (which returns once the device has finished) warmup + steps times; the timed steps' median."
    losses, times = [], []
    for i in range(warmup + steps):
        begin = time.perf_counter()
        losses.append(step())
        if i >= warmup:
            times.append(time.perf_counter() - begin)
    return {"step_seconds": statistics.median(times), "losses": [round(x, 4) for x in losses]}


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_llama_tf(model_dir: Path, batch: int, seq: int, dtype: str, warmup: int, steps: int, device: str,
                    q8_0: bool = False, jit_compile=True, **_) -> dict:
    import keras

    from llama_tf.formats import read_checkpoint
    from llama_tf.loading import build_model
    from llama_tf.lora import enable_lora

    checkpoint = read_checkpoint(model_dir)
    model = build_model(checkpoint, dtype="q8_0" if q8_0 else dtype, progress=False,
                        attention_impl="fused" if device == "gpu" else "reference")
    enable_lora(model, RANK, ALPHA)
    model.compile(keras.optimizers.AdamW(1e-4, weight_decay=0.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
    ids = _ids(checkpoint.config.vocab_size, batch, seq)
    x, y = ids[:, :-1], ids[:, 1:]
    result = _timed(lambda: float(model.train_on_batch(x, y)), warmup, steps)
    result["trainable"] = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    result["backend"] = keras.backend.backend()
    if device == "gpu":
        import jax

        result["peak_bytes"] = jax.devices()[0].memory_stats()["peak_bytes_in_use"]
    else:
        result["peak_bytes"] = _peak_rss()
    return result


def worker_peft(model_dir: Path, batch: int, seq: int, dtype: str, warmup: int, steps: int, device: str,
                compiled: bool = False, **_) -> dict:
    import peft
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), attn_implementation="sdpa")
    model = peft.get_peft_model(model, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS_HF,
                                                       lora_dropout=0.0, task_type="CAUSAL_LM"))
    target = "cuda" if device == "gpu" else "cpu"
    model.to(target).train()
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    ids = torch.tensor(_ids(model.config.vocab_size, batch, seq), dtype=torch.long, device=target)

    def step():
        loss = forward(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss   # transformers shifts the labels itself
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)          # .item(): waits for the GPU

    if device == "gpu":
        torch.cuda.reset_peak_memory_stats()
    result = _timed(step, warmup, steps)
    result["trainable"] = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
    result["peak_bytes"] = torch.cuda.max_memory_allocated() if device == "gpu" else _peak_rss()
    result["threads"] = torch.get_num_threads()
    return result


def make_weights(model_dir: Path, shape: str, **_) -> dict:
    import gpu_decode

    return gpu_decode.make_weights(model_dir, shape)


TASKS = {"llama_tf": worker_llama_tf, "llama_tf_no_xla": lambda **kw: worker_llama_tf(jit_compile="auto", **kw),
         "llama_tf_jax": worker_llama_tf, "llama_tf_q8_0": lambda **kw: worker_llama_tf(q8_0=True, **kw),
         "peft": worker_peft, "peft_compiled": lambda **kw: worker_peft(compiled=True, **kw),
         "make_weights": make_weights}


def run_task(task: str, timeout: float | None, backend: str, **kwargs) -> dict:
    decode.TASK_ENV.update({name: {"KERAS_BACKEND": backend} for name in ("llama_tf", "llama_tf_q8_0", "llama_tf_no_xla")}
                           | {"make_weights": {"KERAS_BACKEND": "jax"}, "llama_tf_jax": {"KERAS_BACKEND": "jax"}})
    return decode.run_task(task, timeout, script=__file__, **kwargs)


def report(device: str, rows: list[dict]) -> str:
    lines = ["| shape | batch × seq | peer | tokens/s | step s | peak GB | trainable |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        head = f"| {row['shape']} | {row['batch']} × {row['seq']} | {row['peer']} |"
        if "error" in row:
            lines.append(f"{head} error: {row['error'][:150]} | | | |")
            continue
        ours = next((r for r in rows if r["shape"] == row["shape"] and r["peer"] == "llama_tf" and "error" not in r), None)
        ratio = f" ({ours['tokens_per_s'] / row['tokens_per_s']:.2f}×)" if ours and row is not ours else ""
        lines.append(f"{head} {row['tokens_per_s']:,.0f}{ratio} | {row['step_seconds']:.3f} | "
                     f"{row['peak_bytes'] / 1e9:.1f} | {row['trainable']:,} |")
    lines += ["", "(×): llama_tf's tokens/s ÷ the peer's, same run. Peak: "
              + ("GPU bytes in use." if device == "gpu" else "process RSS (weights included).")]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=sorted(RUNS), help="which runs: gpu or cpu (required)")
    p.add_argument("--shapes", help="comma-separated subset of the device's shapes")
    p.add_argument("--peers", help=f"comma-separated, in place of the run's own: any of {', '.join(t for t in TASKS if t != 'make_weights')}")
    p.add_argument("--backend", default=None, help="llama_tf's Keras backend (default: jax on a GPU, tensorflow on a CPU)")
    p.add_argument("--timeout", type=float, default=540, help="seconds allowed to each peer")
    decode.add_common_options(p)
    args = p.parse_args(argv)
    if decode.run_worker(args, TASKS):
        return 0
    if not args.device:
        p.error("--device is required")

    backend = args.backend or ("jax" if args.device == "gpu" else "tensorflow")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llama_tf_finetune_"))
    rows = []
    for run in RUNS[args.device]:
        if args.shapes and run["shape"] not in args.shapes.split(","):
            continue
        model_dir = workdir / run["shape"]
        if not (model_dir / "config.json").exists():
            made = run_task("make_weights", None, backend, model_dir=model_dir, shape=run["shape"])
            if "error" in made:
                print(json.dumps({"shape": run["shape"], **made}), flush=True)
                continue
        settings = {k: run[k] for k in ("batch", "seq", "dtype", "warmup", "steps")}
        for peer in args.peers.split(",") if args.peers else run["peers"]:
            result = run_task(peer, args.timeout, backend, model_dir=model_dir, device=args.device, **settings)
            row = {"shape": run["shape"], "peer": peer, **settings, **result}
            if "step_seconds" in row:
                row["tokens_per_s"] = row["batch"] * row["seq"] / row["step_seconds"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:   # after every row, so that a run cut short keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({"device": args.device, "backend": backend, "rows": rows}, indent=1))
    print()
    print(report(args.device, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

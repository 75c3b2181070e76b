"""Several GPUs of one host: a Llama-3.1-8B-shaped model split by `llama_tf.distribution`'s layout.

    KERAS_BACKEND=jax python benchmarks/multi_gpu.py --json results/gpu/multi_gpu.json

On every device JAX sees (a mesh of one where there is one GPU: the same sharded code, unsplit),
random bfloat16 weights of the 8B shape (seeded), built twice: on the first device alone, and split over
the mesh with the weights copied from the first. Reported:

- logits agreement: a 128-token prompt through both, max |Δ| ÷ the logit scale and the share of
  positions with the same greedy token (bfloat16 tolerance: the splits sum in another order);
- weights per GPU (the bytes of each device's shards) and the memory in use on each with the split
  model alone;
- prefill and decode tokens/s of the split model (`gpu_decode.measure`, fused attention, greedy);
- a data-parallel training step of the default model's shape, global batch 64: its loss against one
  device's on the same batch and weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import llama_tf  # noqa: E402
from decode import SHAPES  # noqa: E402
from gpu_decode import measure  # noqa: E402
from llama_tf.generation import Decoder  # noqa: E402
from llama_tf.sampling import Sampler  # noqa: E402
from llama_tf.distribution import place  # noqa: E402
from llama_tf.model import build_llama  # noqa: E402


def split_copy(model, config, mesh, **options):
    "`model`'s weights in a new model built under `model_parallel(mesh)`: each copied device to device."
    with llama_tf.model_parallel(mesh, config).scope(), keras.StatelessScope():
        split = build_llama(config, dtype="bfloat16", **options)
        for target, source in zip(split.variables, model.variables):
            target._initializer = lambda shape, dtype, layout=None, source=source: place(source.value, layout)
    for variable in split.variables:   # the initializers hold the first model's arrays
        variable._initializer = None
    return split


def per_device_bytes(model) -> dict:
    used = {}
    for variable in model.variables:
        for shard in variable.value.addressable_shards:
            used[str(shard.device)] = used.get(str(shard.device), 0) + shard.data.nbytes
    return used


def agreement(config, mesh) -> tuple[dict, object]:
    keras.utils.set_random_seed(0)
    whole = build_llama(config, dtype="bfloat16", attention_impl="fused")
    split = split_copy(whole, config, mesh, attention_impl="fused")
    ids = np.random.default_rng(0).integers(3, config.vocab_size, (1, 128))
    a = np.asarray(whole.predict_on_batch(ids), "float32")[0]
    b = np.asarray(split.predict_on_batch(ids), "float32")[0]
    out = {"logits max |split - one device| / scale": float(np.abs(a - b).max() / np.abs(a).max()),
           "greedy tokens equal to one device's": float((a.argmax(-1) == b.argmax(-1)).mean())}
    return out, split


def data_parallel_step() -> dict:
    "One AdamW step of the default model's shape on a global batch of 64 windows of 256 tokens."
    config = llama_tf.LlamaConfig(dim=384, n_layers=6, n_heads=6, vocab_size=4096, hidden_dim=1024, max_seq_len=256)
    ids = np.random.default_rng(0).integers(3, config.vocab_size, (64, 256)).astype("int32")
    losses, weights = {}, None
    for name, distribution in (("one device", None), ("data parallel", llama_tf.data_parallel())):
        keras.distribution.set_distribution(distribution)
        model = build_llama(config)
        if weights is None:
            weights = model.get_weights()
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses[name] = [float(model.train_on_batch(ids[:, :-1], ids[:, 1:])) for _ in range(3)]
    keras.distribution.set_distribution(None)
    return {"data-parallel losses (3 steps)": losses["data parallel"], "one-device losses": losses["one device"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="llama3.1-8b", choices=sorted(SHAPES))
    p.add_argument("--new-tokens", type=int, default=33)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    devices = jax.devices()
    result = {"devices": [d.device_kind for d in devices], "shape": args.shape}
    config = llama_tf.LlamaConfig(**{**SHAPES[args.shape], "max_seq_len": 4096})
    mesh = llama_tf.device_mesh(model=len(devices))
    result["mesh"] = dict(zip(mesh.axis_names, mesh.shape))
    figures, split = agreement(config, mesh)
    gc.collect()   # the one-device model
    result.update(figures)
    result["weights per device (GB)"] = {d: b / 1e9 for d, b in per_device_bytes(split).items()}
    result["memory in use per device, the split model alone (GB)"] = {
        str(d): d.memory_stats()["bytes_in_use"] / 1e9 for d in devices if d.memory_stats()}
    print(json.dumps(result), flush=True)
    decoder = Decoder(split, max_seq_len=config.max_seq_len)

    def generate(prompts, n):
        return [int(step[0]) for step in decoder(prompts, n, Sampler(), stop_ids=())]
    result.update(measure(generate, config.vocab_size, args.new_tokens, batches=(1, 8)))
    print(json.dumps(result), flush=True)
    result.update(data_parallel_step())
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

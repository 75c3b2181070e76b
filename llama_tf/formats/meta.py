"""Meta's layout: `params.json` + `consolidated.00.pth` … `consolidated.NN.pth` (model-parallel shards),
read into a `Checkpoint`.

`.pth` files are opened with `torch.load(weights_only=True, mmap=True)`: a file that would need to run
pickled code is refused. Shards are joined along the axis Meta's model parallelism split each tensor
by, when the tensor is read.
"""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import numpy as np

from llama_tf.config import LlamaConfig
from llama_tf.formats.base import IGNORED, Checkpoint, CheckpointError, TensorRef, read_config, read_json, regular_file
from llama_tf.structure import SPLIT_INPUTS

__all__ = ["read_meta"]


def _torch_load(file: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{file}: reading Meta .pth checkpoints needs PyTorch (pip install 'llama_tf[torch]')"
        ) from None
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1]
        raise CheckpointError(
            f"{file}: refused to load: it holds pickled Python objects other than tensors, which could run "
            f"code (torch.load(weights_only=True) said: {reason})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from None


def _shard_axis(name: str, shard_shape: tuple, dim: int) -> int | None:
    """Axis along which Meta's model parallelism split `name` (None: replicated in every shard).
    Column-parallel layers (wq, wk, wv, w1, w3, output) split their output rows; row-parallel ones (wo,
    w2) their input columns. The embedding splits features (Llama 2) or vocabulary rows (Llama 3)."""
    if len(shard_shape) == 1:
        return None  # norms
    if name == "tok_embeddings.weight":
        return 0 if shard_shape[1] == dim else 1
    if name.endswith(tuple(f"{kind}.weight" for kind in SPLIT_INPUTS)):
        return 1
    return 0


def _merge_shards(parts: list, axis: int | None) -> np.ndarray:
    import torch

    merged = parts[0] if axis is None else torch.cat(parts, dim=axis)
    return merged.to(torch.float32).numpy()


def read_meta(path: Path) -> Checkpoint:
    "A Meta checkpoint: a folder with `params.json`, or one `.pth` file in such a folder."
    directory = path if path.is_dir() else path.parent
    params_file = directory / "params.json"
    params = read_json(params_file)
    shards = [regular_file(f) for f in ([path] if path.is_file() else sorted(directory.glob("consolidated.*.pth")))]
    if not shards:
        raise CheckpointError(f"{directory}: params.json but no consolidated.*.pth weights")
    states = [_torch_load(f) for f in shards]
    names = set(states[0])
    for shard, state in zip(shards[1:], states[1:]):
        if set(state) != names:
            odd = sorted(names.symmetric_difference(state))[:3]
            raise CheckpointError(f"{shard}: holds different tensors from {shards[0].name}: {odd}")
    if "tok_embeddings.weight" not in names:
        raise CheckpointError(f"{shards[0]}: no tensor 'tok_embeddings.weight'")
    dim = params.get("dim")
    tensors = {}
    for name in sorted(names):
        if IGNORED.search(name):
            continue
        parts = [state[name] for state in states]
        axis = _shard_axis(name, tuple(parts[0].shape), dim) if len(parts) > 1 else None
        for shard, part in zip(shards[1:], parts[1:]):
            same = [n for k, n in enumerate(part.shape) if k != axis]
            if len(part.shape) != len(parts[0].shape) or same != [n for k, n in enumerate(parts[0].shape) if k != axis]:
                raise CheckpointError(f"{shard}: {name} has shape {tuple(part.shape)}, which does not fit "
                                      f"{shards[0].name}'s {tuple(parts[0].shape)} (split along axis {axis})")
        source = f"{name} in {shards[0].name}" + (f" … {shards[-1].name}" if len(shards) > 1 else "")
        shape = list(parts[0].shape)
        if axis is not None:
            shape[axis] = sum(int(p.shape[axis]) for p in parts)
        tensors[name] = TensorRef(source, partial(_merge_shards, parts, axis), tuple(shape))
    embedding_shapes = [tuple(s["tok_embeddings.weight"].shape) for s in states]
    rows_split = len(states) > 1 and _shard_axis("tok_embeddings.weight", embedding_shapes[0], dim) == 0
    embedding_rows = sum(s[0] for s in embedding_shapes) if rows_split else embedding_shapes[0][0]
    params = {"tie_embeddings": "output.weight" not in names, **params}
    config = read_config(lambda: LlamaConfig.from_meta_params(params, vocab_size=embedding_rows), params_file)
    return Checkpoint(config, tensors, directory, "meta")

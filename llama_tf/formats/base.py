"""The one form every checkpoint format is read into, and the checks on it.

A `Checkpoint` is a `LlamaConfig` and, under Meta's tensor names (`layers.0.attention.wq.weight`, …),
lazy loaders of NumPy arrays in Meta's (PyTorch, `(out, in)`) orientation with the q/k rows in Meta's
adjacent-pair RoPE order. `validate` checks the configuration against the tensors' shapes before any
model is built. Nothing here knows Keras.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from llama_tf.config import LlamaConfig
from llama_tf.structure import tensor_shapes

__all__ = ["CheckpointError", "Checkpoint", "TensorRef", "tensor_shapes", "validate"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, incomplete, or inconsistent with its config."""


class TensorRef(NamedTuple):
    source: str                      # where the tensor comes from, for error messages
    load: Callable[[], np.ndarray]   # reads it (Meta orientation and RoPE layout)
    shape: tuple | None = None       # its shape, when the file says it without reading the data
    load_q8_0: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None   # a Q8_0 tensor's blocks as stored
    block_type: str | None = None    # a tensor stored in one of `llama_tf.ggml_blocks.BLOCK_TYPES`: its name
    load_blocks: Callable[[], np.ndarray] | None = None   # ... and its blocks as stored, uint8 (rows, row bytes)


class Checkpoint(NamedTuple):
    config: LlamaConfig
    tensors: dict[str, TensorRef]    # Meta tensor name -> reference
    directory: Path
    format: str                      # "hf", "meta", "gguf" or "llama2c"
    chat_template: bool = False      # whether the files carry a chat template (a model tuned for chat)


# Tensors some checkpoints carry that the model recomputes instead.
IGNORED = re.compile(r"(^|\.)(rope\.freqs|rotary_emb\.inv_freq)$")


def regular_file(file: Path) -> Path:
    "`file`, refused unless it is a regular file: reading a pipe or a device blocks, or never ends."
    if file.exists() and not file.is_file():
        kind = "a directory" if file.is_dir() else "a pipe, socket or device"
        raise CheckpointError(f"{file}: not a regular file ({kind})")
    return file


def read_array(file: Path, offset: int, count: int, dtype) -> np.ndarray:
    "`count` values of `dtype` at byte `offset`; a file that ends sooner (it shrank since it was indexed) is refused."
    with open(file, "rb") as f:
        f.seek(offset)
        values = np.fromfile(f, dtype=dtype, count=count)
    if values.size != count:
        raise CheckpointError(f"{file}: the file ends inside a tensor (truncated, or changed since it was read?)")
    return values


def read_json(file: Path) -> dict:
    "A JSON object from `file`; anything else (a list, deep nesting, a FIFO, bad UTF-8) is a CheckpointError."
    if not regular_file(file).is_file():
        raise FileNotFoundError(f"{file.name} not found beside the weights in {file.parent}")
    try:
        value = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{file}: JSON nested too deeply to be a configuration") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{file}: expected a JSON object, found a {type(value).__name__}")
    return value


def read_config(make: Callable[[], LlamaConfig], file: Path) -> LlamaConfig:
    try:
        return make()
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:   # ArithmeticError: overflow, division by 0
        raise CheckpointError(f"{file}: {e if not isinstance(e, KeyError) else f'missing key {e}'}") from None



def validate(checkpoint: Checkpoint) -> None:
    """The files hold exactly the tensors their configuration describes, with its shapes (where the file
    states them): checked before a model is built, so that a configuration claiming a million layers or
    a 10¹² feed-forward width fails at once, naming the disagreement, instead of allocating."""
    config, tensors = checkpoint.config, checkpoint.tensors
    layers = {int(name.split(".")[1]) for name in tensors if name.startswith("layers.") and
              name.split(".")[1].isdigit()}
    if len(layers) != config.n_layers or (layers and max(layers) != config.n_layers - 1):
        raise CheckpointError(f"{checkpoint.directory}: the configuration says {config.n_layers} layers, the "
                              f"files hold {len(layers)}")
    expected = tensor_shapes(config)
    check_names(expected, tensors)
    for name, shape in expected.items():
        ref = tensors[name]
        if ref.shape is not None and tuple(ref.shape) != shape:
            raise shape_error(name, ref, tuple(ref.shape), shape, config)


def check_names(expected: Mapping, tensors: Mapping[str, TensorRef]) -> None:
    "Every tensor in `expected` is in `tensors`, and no other."
    missing = [name for name in expected if name not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint has no tensor {missing[0]!r}{more}")
    unused = sorted(set(tensors) - set(expected))
    if unused:
        raise CheckpointError(f"checkpoint has tensors a model with this config does not use: {unused[:3]}")


def shape_error(name: str, ref: TensorRef, shape: tuple, expected: tuple, config: LlamaConfig) -> CheckpointError:
    return CheckpointError(
        f"tensor {name!r} ({ref.source}) has shape {shape}, but the config "
        f"(dim={config.dim}, n_heads={config.n_heads}, n_kv_heads={config.n_kv_heads}, "
        f"hidden_dim={config.hidden_dim}, vocab_size={config.vocab_size}) expects {expected}")

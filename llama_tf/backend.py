"""What differs between the Keras backends outside the layers: running a model for inference only.

`inference()` is a context in which a forward pass records nothing for gradients (PyTorch's
`torch.no_grad`; TensorFlow and JAX record nothing unless asked), and `to_numpy` brings a result back.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np

__all__ = ["inference", "to_numpy"]


def inference():
    "A context for forward passes whose results are only read."
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def to_numpy(tensor) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(tensor))

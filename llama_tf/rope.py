"""RoPE's frequencies in NumPy: θ_i = theta^(-2i / head_dim) for each feature pair, and their rescaling for
long contexts (Llama 3.1 and 3.2; notebook 11).

`Attention` (notebook 05) turns them into rotation angles; the GGUF reader and writer use them to read
and write Llama 3's rescaling, which llama.cpp stores as a `rope_freqs` tensor of divisors. A leaf:
NumPy alone, no Keras."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["rope_frequencies"]


def rope_frequencies(head_dim: int, theta: float = 10000.0, scaling: dict | None = None) -> np.ndarray:
    """θ_i = theta^(-2i / head_dim) for each feature pair: (head_dim // 2,), float32 (computed in float64).
    `scaling` (a `LlamaConfig.rope_scaling`) stretches them for longer contexts: "linear" divides every
    frequency by `factor`; "llama3" (Llama 3.1 and 3.2) divides the slow ones (wavelength above
    original_max_position_embeddings / low_freq_factor) by `factor`, keeps the fast ones (below
    original_max_position_embeddings / high_freq_factor) and blends smoothly in between."""
    inv_freq = 1.0 / np.power(float(theta), np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling:
        inv_freq = _rescaled(inv_freq, scaling)
    return inv_freq.astype(np.float32)


def _rescaled(inv_freq: np.ndarray, scaling: dict) -> np.ndarray:
    factor = scaling["factor"]
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    context, low, high = (scaling[k] for k in ("original_max_position_embeddings", "low_freq_factor", "high_freq_factor"))
    wavelength = 2 * math.pi / inv_freq
    smooth = (context / wavelength - low) / (high - low)                 # 0 at the slow edge, 1 at the fast one
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return np.where(wavelength < context / high, inv_freq,
                    np.where(wavelength > context / low, inv_freq / factor, blended))

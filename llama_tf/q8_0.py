"""llama.cpp's Q8_0 blocks in NumPy: the codec that the GGUF reader and the `Projection` layer share.

A block is 32 consecutive weights of a row: a float16 scale d = max |w| / 127, then round(w / d) as
int8, 34 bytes in all. `quantize_q8_0` rounds with the `gguf` package (so the bytes equal llama.cpp's)
and `split_q8_0` turns GGUF's bytes into int8 weights (out, in) and float16 scales (out, in // 32), the
two arrays a Q8_0 `Projection` holds (notebook 12). A leaf: NumPy and `gguf`, no Keras."""

from __future__ import annotations

import numpy as np

__all__ = ["Q8_0_BLOCK", "quantize_q8_0", "split_q8_0"]

Q8_0_BLOCK = 32                    # weights per scale
_BLOCK_BYTES = 2 + Q8_0_BLOCK      # the float16 scale, then the int8 weights


def quantize_q8_0(w) -> tuple[np.ndarray, np.ndarray]:
    """w (out, in) float, in a multiple of 32 -> (int8 (out, in), float16 scales (out, in // 32)): each
    block of 32 weights of a row becomes round(w / d) with d = max |w| / 127 (llama.cpp's Q8_0, by
    `gguf.quants`)."""
    import gguf

    w = np.asarray(w, "float32")
    rows, cols = w.shape
    if cols % Q8_0_BLOCK:
        raise ValueError(f"Q8_0 stores rows in blocks of {Q8_0_BLOCK} weights; these rows have {cols}")
    return split_q8_0(gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0), rows, cols)


def split_q8_0(blocks: np.ndarray, rows: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """GGUF's Q8_0 bytes (34 per block of 32 weights: a float16 scale, then the int8 weights) ->
    (int8 (rows, columns), float16 scales (rows, columns // 32))."""
    n_blocks = columns // Q8_0_BLOCK
    blocks = np.asarray(blocks, np.uint8).reshape(rows, n_blocks, _BLOCK_BYTES)
    scales = np.ascontiguousarray(blocks[..., :2]).view(np.float16).reshape(rows, n_blocks)
    return np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(rows, columns), scales

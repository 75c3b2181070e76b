"""Checkpoint formats, one module each, every one read into the same `Checkpoint` (`formats.base`): a
`LlamaConfig` and lazily loaded tensors under Meta's names. No format module knows Keras; building the
model from a `Checkpoint` is `llama_tf.loading`'s job.

| module | files | read | written |
| --- | --- | --- | --- |
| `hf` | `config.json` + `*.safetensors` (+ index) | yes | yes (atomic folder) |
| `meta` | `params.json` + `consolidated.NN.pth` | yes | |
| `gguf` | one `.gguf` file (llama.cpp) | yes | yes (F32, F16, BF16, Q8_0) |
| `llama2c` | one llama2.c `.bin` file | yes | |

`read_checkpoint(path)` tells them apart by the files present.
"""

from __future__ import annotations

from pathlib import Path

from llama_tf.formats.base import Checkpoint, CheckpointError, TensorRef, regular_file, tensor_shapes, validate

__all__ = ["read_checkpoint", "Checkpoint", "CheckpointError", "TensorRef", "tensor_shapes", "validate"]


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Detect the format of `path` (a directory or one weights file) and index its tensors."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_dir():
        regular_file(path)
    if path.suffix == ".safetensors" or (path.is_dir() and (path / "config.json").exists()):
        from llama_tf.formats.hf import read_hf
        return read_hf(path)
    if path.suffix in (".pth", ".pt") or (path.is_dir() and (path / "params.json").exists()):
        from llama_tf.formats.meta import read_meta
        return read_meta(path)
    if path.suffix == ".gguf":
        from llama_tf.formats.gguf import read_gguf
        return read_gguf(path)
    if path.suffix == ".bin" and path.is_file():
        from llama_tf.formats.llama2c import looks_like_llama2c, read_llama2c
        if looks_like_llama2c(path):
            return read_llama2c(path)
        raise CheckpointError(f"{path}: not a llama2.c checkpoint; a PyTorch pytorch_model.bin (pickle) is never "
                              "read: convert it to safetensors")
    raise CheckpointError(
        f"{path}: not a LLaMA checkpoint llama_tf can read; expected a directory with Meta's params.json + "
        "consolidated.*.pth, Hugging Face's config.json + *.safetensors, a .gguf file or a llama2.c .bin file"
    )

"""`convert`: any checkpoint llama_tf reads, written as Hugging Face safetensors or as a GGUF file.

`python -m llama_tf convert SRC DST [--to hf|gguf] [--dtype float32|float16|bfloat16|q8_0|q4_k|…]` calls it.
The tensors go through one at a time (Hugging Face: one 5 GB shard at a time), never a whole model in
float32; the tokenizer goes along (`tokenizer.model` / `tokenizer.json` beside the safetensors, or
the vocabulary inside the GGUF file). A model trained with `llama_tf.train` and converted to GGUF runs
in llama.cpp.
"""

from __future__ import annotations

from pathlib import Path

from llama_tf.formats import read_checkpoint
from llama_tf.formats.hf import write_hf
from llama_tf.tokenizers.embedded_tokenizers import gguf_vocabulary
from llama_tf.tokenizers.search import open_tokenizer

__all__ = ["convert", "FORMATS", "DTYPES"]

FORMATS = ("hf", "gguf")
DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q5_0": "Q5_0",
          "q5_1": "Q5_1", "q4_k": "Q4_K"}   # name -> GGUF type
FLOATS = ("float32", "float16", "bfloat16")   # what Hugging Face's safetensors hold


def convert(source: str | Path, destination: str | Path, to: str | None = None, dtype: str = "float32",
            tokenizer: str | Path | None = None) -> Path:
    """Write the checkpoint at `source` to `destination` in format `to` ("hf": a folder; "gguf": a file;
    default: "gguf" for a destination ending in .gguf, else "hf"), its matrices in `dtype` (float32,
    float16, bfloat16; GGUF also q8_0, q4_0, q5_0, q5_1 and q4_k, which falls back to q5_0 for a matrix
    whose rows are not whole super-blocks of 256, as llama.cpp does). Returns `destination`."""
    destination = Path(destination)
    to = to or ("gguf" if destination.suffix == ".gguf" else "hf")
    if to not in FORMATS:
        raise ValueError(f"cannot convert to {to!r}; formats: {', '.join(FORMATS)}")
    if dtype not in DTYPES or (to == "hf" and dtype not in FLOATS):
        allowed = list(DTYPES) if to == "gguf" else FLOATS
        raise ValueError(f"dtype {dtype!r} for {to}: one of {', '.join(allowed)}")
    checkpoint = read_checkpoint(source)
    tokenizer = open_tokenizer(checkpoint, source, tokenizer)   # it goes along
    tensors = {name: ref.load for name, ref in checkpoint.tensors.items()}
    if to == "gguf":
        from llama_tf.formats.gguf import write_gguf

        return write_gguf(destination, checkpoint.config, tensors, gguf_vocabulary(tokenizer), DTYPES[dtype])
    return write_hf(destination, checkpoint.config, tensors, dtype, tokenizer.files())

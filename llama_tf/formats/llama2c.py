"""llama2.c's `.bin` checkpoints (Karpathy's `export.py`): the TinyStories models and anything exported with it.

Three layouts, told apart by the first bytes:

- version 0 (legacy): seven int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
  max_seq_len), a negative vocab_size meaning a separate classifier; float32 weights grouped by kind
  across layers (embedding, attention norms, wq, wk, wv, wo, ffn norms, w1, w2, w3, final norm), then
  the RoPE tables (skipped: recomputed) and the classifier if not shared;
- version 1: the magic "ak42", a version int, the same seven ints, a shared-classifier byte, zero
  padding to 256 bytes; float32 norms first, then the embedding and the matrices;
- version 2: as 1 plus a group size; norms float32, every matrix int8 in groups with one float32 scale
  each (Q8_0), all the scales after all the int8 values.

q/k rows are in Meta's interleaved RoPE order (llama2.c's run.c rotates adjacent pairs). The file's size
must be exactly what its header implies; nothing is read beyond a tensor's bytes. The tokenizer is
`tokenizer.model` or llama2.c's `tokenizer.bin` beside the file (`llama2c_tokenizer_proto`).
"""

from __future__ import annotations

import math
import struct
from functools import partial
from pathlib import Path

import numpy as np

from llama_tf.formats.base import Checkpoint, CheckpointError, TensorRef, read_array
from llama_tf.config import LlamaConfig
from llama_tf.structure import BLOCK_PROJECTIONS, block_shapes

__all__ = ["read_llama2c", "looks_like_llama2c", "llama2c_tokenizer_proto", "MAGIC"]

MAGIC = 0x616B3432                     # "ak42" as a little-endian uint32
_LEGACY_HEADER = struct.Struct("<7i")
_MATRICES = tuple(f"{sub}.{proj}" for sub, projections in BLOCK_PROJECTIONS.items() for proj in projections)


def looks_like_llama2c(path: Path) -> bool:
    "Whether `path` starts with a llama2.c header: the ak42 magic, or seven ints that add up to its size."
    try:
        return _header(path) is not None
    except CheckpointError:
        return True          # a llama2.c header that is wrong: let the reader say what is wrong
    except OSError:
        return False


def _header(path: Path):
    "(version, seven ints, shared classifier, group size, weights offset) or None if not llama2.c."
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(256)
    if len(head) >= 8 and struct.unpack("<I", head[:4])[0] == MAGIC:
        version = struct.unpack("<i", head[4:8])[0]
        if version not in (1, 2):
            raise CheckpointError(f"{path}: llama2.c file version {version}; llama_tf reads versions 0, 1 and 2")
        if len(head) < 256:
            raise CheckpointError(f"{path}: the llama2.c header is cut short (truncated?)")
        ints = _LEGACY_HEADER.unpack(head[8:36])
        shared = bool(head[36])
        group = struct.unpack("<i", head[37:41])[0] if version == 2 else None
        return version, ints, shared, group, 256
    if len(head) < _LEGACY_HEADER.size:
        return None
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = _LEGACY_HEADER.unpack(head[: _LEGACY_HEADER.size])
    if min(dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq) <= 0 or dim % n_heads:
        return None
    header = (0, (dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq), vocab > 0, None, _LEGACY_HEADER.size)
    return header if _expected_size(*header) == size else None


def _layout(version: int, ints, shared: bool) -> list[tuple[str, tuple[int, ...]]]:
    "(Meta tensor name, shape) in the order the file stores them; '' marks the RoPE tables to skip."
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = ints
    head_dim = dim // n_heads
    shapes = block_shapes(dim, hidden, n_kv * head_dim)

    def per_layer(kind):
        return [(f"layers.{i}.{kind}.weight", shapes[kind]) for i in range(n_layers)]

    embedding = [("tok_embeddings.weight", (vocab, dim))]
    matrices = [t for kind in _MATRICES for t in per_layer(kind)]
    classifier = [] if shared else [("output.weight", (vocab, dim))]
    if version == 0:
        return (embedding + per_layer("attention_norm") + matrices[: 4 * n_layers] + per_layer("ffn_norm")
                + matrices[4 * n_layers:] + [("norm.weight", (dim,)), ("", (2, seq, head_dim // 2))] + classifier)
    norms = per_layer("attention_norm") + per_layer("ffn_norm") + [("norm.weight", (dim,))]
    return norms + embedding + matrices + classifier


def _expected_size(version, ints, shared, group, offset) -> int:
    "The file size a header implies, by arithmetic alone (a header may claim a billion layers)."
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = ints
    kv = n_kv * (dim // n_heads)
    matrices = vocab * dim * (1 if shared else 2) + n_layers * (2 * dim * dim + 2 * kv * dim + 3 * hidden * dim)
    norms = n_layers * 2 * dim + dim
    if version == 2:
        return offset + 4 * norms + matrices + 4 * (matrices // group)
    rope_tables = seq * (dim // n_heads) if version == 0 else 0
    return offset + 4 * (norms + matrices + rope_tables)


def _read_float32(path: Path, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    return read_array(path, offset, math.prod(shape), "<f4").reshape(shape)


def _read_q80(path: Path, offset: int, scale_offset: int, shape: tuple[int, ...], group: int) -> np.ndarray:
    n = math.prod(shape)
    values = read_array(path, offset, n, np.int8).astype(np.float32)
    scales = read_array(path, scale_offset, n // group, "<f4")
    return (values.reshape(-1, group) * scales[:, None]).reshape(shape)


def read_llama2c(path: Path) -> Checkpoint:
    "The configuration and lazily read tensors (under Meta's names) of a llama2.c `.bin` file."
    header = _header(path)
    if header is None:
        raise CheckpointError(f"{path}: not a llama2.c checkpoint (no ak42 magic, and a legacy header would "
                              "not match the file's size)")
    version, ints, shared, group, offset = header
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = ints
    try:
        config = LlamaConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, vocab_size=vocab,
                             hidden_dim=hidden, max_seq_len=seq, tie_embeddings=shared)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if version == 2 and (group is None or group <= 0 or dim % group or hidden % group):
        raise CheckpointError(f"{path}: quantisation group size {group} does not divide every matrix row")
    if (size := path.stat().st_size) != (expected := _expected_size(version, ints, shared, group, offset)):
        raise CheckpointError(f"{path}: {size:,} bytes, but its header (version {version}, dim {dim}, {n_layers} "
                              f"layers, vocabulary {vocab}) means {expected:,} (truncated, or not this model)")
    layout = _layout(version, ints, shared)   # bounded now: the file holds every tensor it lists
    tensors = {}
    if version == 2:
        position = offset
        for name, shape in layout:                     # the float32 norms first
            if len(shape) == 1:
                tensors[name] = TensorRef(f"{name} in {path.name}", partial(_read_float32, path, position, shape),
                                          shape)
                position += 4 * shape[0]
        matrices = [(n, s) for n, s in layout if len(s) > 1]
        scale_position = position + sum(int(np.prod(s)) for _, s in matrices)
        for name, shape in matrices:
            n = int(np.prod(shape))
            tensors[name] = TensorRef(f"{name} in {path.name}",
                                      partial(_read_q80, path, position, scale_position, shape, group), shape)
            position, scale_position = position + n, scale_position + 4 * (n // group)
    else:
        position = offset
        for name, shape in layout:
            if name:
                tensors[name] = TensorRef(f"{name} in {path.name}", partial(_read_float32, path, position, shape),
                                          shape)
            position += 4 * int(np.prod(shape))
    return Checkpoint(config, tensors, path.parent, "llama2c")


def llama2c_tokenizer_proto(path: Path) -> bytes:
    """llama2.c's `tokenizer.bin` (max token length, then per token: float32 score, int32 length, UTF-8
    bytes with "▁" written as a space and BOS/EOS as "\\n<s>\\n" / "\\n</s>\\n") as the SentencePiece model
    it was exported from: LLaMA's conventions (<unk>, <s>, </s> at 0-2, byte fallback, dummy prefix)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    data = Path(path).read_bytes()
    pieces, position = [], 4
    try:
        while position < len(data):
            score, length = struct.unpack_from("<fi", data, position)
            if length < 0 or position + 8 + length > len(data):
                raise CheckpointError(f"{path}: token {len(pieces)} runs past the end of the file")
            text = data[position + 8: position + 8 + length].decode("utf-8")
            pieces.append((text, score))
            position += 8 + length
    except (struct.error, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a llama2.c tokenizer.bin ({e})") from None
    if len(pieces) < 3:
        raise CheckpointError(f"{path}: not a llama2.c tokenizer.bin (fewer than 3 tokens)")
    proto = pb.ModelProto()
    for i, (text, score) in enumerate(pieces):
        piece = {0: "<unk>", 1: "<s>", 2: "</s>"}.get(i, text.replace(" ", "▁"))
        kind = (pb.ModelProto.SentencePiece.UNKNOWN if i == 0 else pb.ModelProto.SentencePiece.CONTROL if i < 3
                else pb.ModelProto.SentencePiece.BYTE if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")
                else pb.ModelProto.SentencePiece.NORMAL)
        proto.pieces.add(piece=piece, score=score, type=kind)
    spec = proto.trainer_spec
    spec.model_type, spec.byte_fallback = pb.TrainerSpec.BPE, True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    normalizer = proto.normalizer_spec
    normalizer.name, normalizer.add_dummy_prefix = "identity", True
    normalizer.remove_extra_whitespaces, normalizer.escape_whitespaces = False, True
    return proto.SerializeToString()

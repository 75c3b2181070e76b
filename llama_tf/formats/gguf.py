"""GGUF, llama.cpp's format: a `llama`-architecture file read into a `Checkpoint` through the `gguf` package.

The configuration comes from the metadata (`llama.embedding_length`, `llama.block_count`, …, RoPE θ
and scaling); the tensors are memory-mapped and dequantised one at a time when the model asks for
them (F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K), so the whole model is never in float32
at once; or, for `llama_tf.load(..., dtype="gguf")`, read as stored (Q8_0 and the 4- to 6-bit blocks).
llama.cpp keeps q/k rows in Meta's interleaved RoPE order, so they need no permutation. Llama 3.1's
rescaled RoPE is stored as a `rope_freqs` tensor of per-pair divisors; it is read back as the llama3
rule it came from. `tokenizer_file` rebuilds the tokenizer the file carries
(`llama_tf.tokenizers.embedded_tokenizers` runs it), and `write_gguf` writes a model (F32, F16, BF16,
Q8_0, Q4_0, Q5_0, Q5_1 or Q4_K) that llama.cpp runs, its vocabulary given as plain data (`GGUFVocabulary`). No Keras, layer or
tokenizer class is imported here.
"""

from __future__ import annotations

import functools
import json
import math
import mmap
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from llama_tf.formats.base import Checkpoint, CheckpointError, TensorRef, read_array, tensor_shapes
from llama_tf.formats.gguf_header import check_gguf_header
from llama_tf.formats.staging import staged_file
from llama_tf.config import LlamaConfig
from llama_tf.ggml_blocks import BLOCK_TYPES, quantize_blocks, stored_type
from llama_tf.llama3_vocabulary import LLAMA3_PATTERN
from llama_tf.q8_0 import split_q8_0
from llama_tf.rope import rope_frequencies

__all__ = ["read_gguf", "write_gguf", "GGUFVocabulary", "SUPPORTED_TYPES", "WRITE_TYPES"]

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
_TOP = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output"}
_LAYER = {"attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
          "attn_output": "attention.wo", "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2",
          "ffn_up": "feed_forward.w3", "attn_norm": "attention_norm", "ffn_norm": "ffn_norm"}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def open_gguf(path: Path):
    """A `gguf.GGUFReader` on `path` (memory-mapped), or a CheckpointError naming the file. The last one
    opened is kept while the file is unchanged: loading reads the header for the model, then for the
    tokenizer."""
    stat = Path(path).stat()
    return _open(Path(path).resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _open(path: Path, modified: int, size: int):
    """The reader slices its `np.memmap` once per metadata value, and a memmap slice costs several times a
    plain array's: a Llama 3 vocabulary (128,256 tokens and 280,000 merges) took 8.4 s to index. Here
    the reader works on a plain array view of the same mapping: 2.6 s, the same fields and tensors."""
    try:
        import gguf
    except ImportError:
        raise CheckpointError(f"{path}: reading GGUF files needs the gguf package (pip install gguf)") from None

    class Reader(gguf.GGUFReader):
        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, mapping):
            self._data = np.asarray(mapping)   # an ndarray over the memmap's buffer, no copy

    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                check_gguf_header(data, path)   # before the reader trusts a length field
    try:
        return Reader(path)
    except Exception as e:   # the reader raises ValueError, struct errors, IndexError on truncated files
        raise CheckpointError(f"{path}: not a readable GGUF file (truncated or corrupt?): {e}") from None


def metadata(reader, key: str, default=None):
    "The value of a metadata field (a number, string or list), or `default`."
    field = reader.fields.get(key)
    if field is None:
        return default
    try:
        return field.contents()
    except (UnicodeDecodeError, ValueError, IndexError) as e:
        raise CheckpointError(f"GGUF metadata {key!r} cannot be read: {e}") from None


def _meta_name(name: str) -> str | None:
    if name.removesuffix(".weight") in _TOP and name.endswith(".weight"):
        return _TOP[name.removesuffix(".weight")] + ".weight"
    match = _LAYER_NAME.fullmatch(name)
    if match and match[2] in _LAYER:
        return f"layers.{match[1]}.{_LAYER[match[2]]}.weight"
    return None


def _llama3_scaling(divisors: np.ndarray, head_dim: int, theta: float) -> dict:
    """The llama3 rule behind a `rope_freqs` tensor: factor = the largest divisor, and the standard band
    edges (low 1, high 4, original context 8192) must reproduce every divisor."""
    factor = float(divisors.max())
    candidate = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192}
    expected = np.asarray(rope_frequencies(head_dim, theta)) / np.asarray(rope_frequencies(head_dim, theta, candidate))
    if factor <= 1 or not np.allclose(expected, divisors, rtol=1e-4):
        raise CheckpointError("rope_freqs holds RoPE divisors that are not Llama 3's rule with the usual band "
                              "edges (low 1, high 4, original context 8192); llama_tf cannot represent them")
    return candidate


def _load_tensor(path: Path, offset: int, n_bytes: int, kind, shape: tuple[int, ...]) -> np.ndarray:
    """One tensor as float32 (F16 stays float16), (rows, columns), read from its bytes in the file: no
    mapping outlives the call, so the file's pages do not stay resident beside the loaded weights."""
    import gguf

    raw = read_array(path, offset, n_bytes, np.uint8)
    if kind == gguf.GGMLQuantizationType.F32:
        return raw.view(np.float32).reshape(shape)
    if kind == gguf.GGMLQuantizationType.F16:
        return raw.view(np.float16).reshape(shape)
    rows = raw.reshape(shape[0], -1)
    out = np.empty((shape[0], math.prod(shape[1:])), np.float32)
    for i in range(0, shape[0], 1024):   # a thousand rows at a time: gguf's temporaries stay small
        out[i: i + 1024] = gguf.quants.dequantize(rows[i: i + 1024], kind)
    return out.reshape(shape)


def _load_q8_0(path: Path, offset: int, n_bytes: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    "A Q8_0 tensor (rows, columns) as stored: int8 weights (rows, columns) and float16 scales (rows, columns // 32)."
    raw = read_array(path, offset, n_bytes, np.uint8)
    return split_q8_0(raw, *shape)


def _load_blocks(path: Path, offset: int, n_bytes: int, rows: int) -> np.ndarray:
    "A tensor in 4- to 6-bit blocks as stored: uint8 (rows, bytes of a row)."
    return read_array(path, offset, n_bytes, np.uint8).reshape(rows, -1)


def read_gguf(path: Path) -> Checkpoint:
    "The configuration and lazily dequantised tensors (under Meta's names) of a llama GGUF file."
    import gguf

    reader = open_gguf(path)   # memory-mapped while the header is read; the loaders read bytes themselves
    architecture = metadata(reader, "general.architecture")
    if architecture != "llama":
        raise CheckpointError(f"{path}: GGUF architecture {architecture!r}; llama_tf reads 'llama'")
    supported = {getattr(gguf.GGMLQuantizationType, t) for t in SUPPORTED_TYPES}
    tensors, unknown, divisors, vocab_rows = {}, [], None, None
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":
            divisors = np.asarray(tensor.data, "float32")
            continue
        meta_name = _meta_name(tensor.name)
        if meta_name is None:
            unknown.append(tensor.name)
            continue
        if tensor.tensor_type not in supported:
            raise CheckpointError(f"{path}: tensor {tensor.name} is stored as {tensor.tensor_type.name}; llama_tf "
                                  f"reads {', '.join(SUPPORTED_TYPES)}")
        if meta_name in tensors:
            raise CheckpointError(f"{path}: tensor {tensor.name} appears twice")
        if meta_name == "tok_embeddings.weight":
            vocab_rows = int(tensor.shape[-1])
        shape = tuple(int(n) for n in reversed(tensor.shape))             # GGML lists the fastest axis first
        where = (path, int(tensor.data_offset), int(tensor.n_bytes))
        q8_0 = partial(_load_q8_0, *where, shape) if tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0 else None
        block_type = tensor.tensor_type.name.lower() if tensor.tensor_type.name.lower() in BLOCK_TYPES else None
        blocks = partial(_load_blocks, *where, shape[0]) if block_type and len(shape) == 2 else None
        tensors[meta_name] = TensorRef(f"{tensor.name} in {path.name}",
                                       partial(_load_tensor, *where, tensor.tensor_type, shape), shape, q8_0,
                                       block_type, blocks)
    if unknown:
        raise CheckpointError(f"{path}: tensors that are not part of a LLaMA model: {unknown[:3]}")
    if vocab_rows is None:
        raise CheckpointError(f"{path}: no tensor 'token_embd.weight'")

    def number(key, default=None):
        value = metadata(reader, f"llama.{key}", default)
        if value is None:
            raise CheckpointError(f"{path}: GGUF metadata has no 'llama.{key}'")
        if isinstance(value, float):   # stored as float32: its shortest decimal (1e-05, not 9.9999997e-06)
            value = float(str(np.float32(value)))
        return value

    try:
        dim, n_heads = int(number("embedding_length")), int(number("attention.head_count"))
        if dim <= 0 or n_heads <= 0:   # checked before dim // n_heads (LlamaConfig checks the rest)
            raise CheckpointError(f"{path}: llama.embedding_length and llama.attention.head_count must be "
                                  f"positive, got {dim} and {n_heads}")
        theta = float(number("rope.freq_base", 10000.0))
        scaling = None
        if divisors is not None:
            scaling = _llama3_scaling(divisors, dim // n_heads, theta)
        elif metadata(reader, "llama.rope.scaling.type") == "linear":
            scaling = {"rope_type": "linear", "factor": float(number("rope.scaling.factor"))}
        elif metadata(reader, "llama.rope.scaling.type") not in (None, "none"):
            raise CheckpointError(f"{path}: RoPE scaling {metadata(reader, 'llama.rope.scaling.type')!r} is not "
                                  "supported; llama_tf implements 'linear' and Llama 3's")
        config = LlamaConfig(
            dim=dim, n_layers=int(number("block_count")), n_heads=n_heads,
            n_kv_heads=int(number("attention.head_count_kv", n_heads)), vocab_size=vocab_rows,
            hidden_dim=int(number("feed_forward_length")),
            norm_eps=float(number("attention.layer_norm_rms_epsilon", 1e-5)), rope_theta=theta,
            max_seq_len=int(number("context_length", 2048)), tie_embeddings="output.weight" not in tensors,
            rope_scaling=scaling)
    except (TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    if not math.isfinite(config.rope_theta):
        raise CheckpointError(f"{path}: rope.freq_base is not finite")
    chat_template = bool(metadata(reader, "tokenizer.chat_template"))
    return Checkpoint(config, tensors, path.parent, "gguf", chat_template)


# ---------------------------------------------------------------------------------------------------
# The tokenizer inside the file

_PRE_PATTERNS = {"llama-bpe": LLAMA3_PATTERN, "llama3": LLAMA3_PATTERN}


@functools.lru_cache(maxsize=2)
def _tokenizer_file(path: Path, modified: int) -> tuple[str, bytes]:
    return tokenizer_file(path)


def cached_tokenizer_file(path: Path) -> tuple[str, bytes]:
    "`tokenizer_file`, read once per version of the file (a large vocabulary takes seconds to parse)."
    return _tokenizer_file(Path(path).resolve(), Path(path).stat().st_mtime_ns)


def tokenizer_file(path: Path) -> tuple[str, bytes]:
    """The tokenizer a GGUF file carries, as the file the matching `Tokenizer` kind reads:
    ("sentencepiece", a ModelProto) for `tokenizer.ggml.model` "llama", ("json", a tokenizer.json) for
    "gpt2" (byte-level BPE: tokens and merges, Llama 3's pre-split for pre "llama-bpe")."""
    reader = open_gguf(path)
    model = metadata(reader, "tokenizer.ggml.model")
    tokens = metadata(reader, "tokenizer.ggml.tokens")
    if model is None or not tokens:
        raise CheckpointError(f"{path}: the GGUF file carries no tokenizer (tokenizer.ggml.model/tokens)")
    n = len(tokens) if isinstance(tokens, list) else 0

    def field(key, valid, default=None):
        value = metadata(reader, f"tokenizer.ggml.{key}", default)
        if value is None or valid(value):
            return value
        raise CheckpointError(f"{path}: GGUF metadata tokenizer.ggml.{key} is malformed: {str(value)[:80]!r}")

    field("tokens", lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v))
    types = field("token_type", lambda v: isinstance(v, list) and len(v) == n
                  and all(is_int(t) and 1 <= t <= 6 for t in v), [1] * n)           # SentencePiece's piece types
    special = {key: field(f"{key}_token_id", lambda v: is_int(v) and 0 <= v < n)
               for key in ("bos", "eos", "unknown", "padding")}
    if model == "llama":
        return "sentencepiece", _sentencepiece_proto(reader, tokens, types, special)
    if model == "gpt2":
        return "json", _tokenizer_json(path, reader, tokens, types)
    raise CheckpointError(f"{path}: tokenizer model {model!r}; llama_tf reads 'llama' (SentencePiece) and 'gpt2' (BPE)")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sentencepiece_proto(reader, tokens, types, special) -> bytes:
    from sentencepiece import sentencepiece_model_pb2 as pb

    scores = metadata(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    if not isinstance(scores, list) or len(scores) != len(tokens) or \
            not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in scores):
        raise CheckpointError("GGUF metadata tokenizer.ggml.scores is malformed: not a number per token")
    proto = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):
        proto.pieces.add(piece=piece, score=float(score), type=int(kind))   # GGUF's types are SentencePiece's
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.byte_fallback = any(int(t) == 6 for t in types)
    spec.unk_id = special["unknown"] if special["unknown"] is not None else 0
    spec.bos_id = special["bos"] if special["bos"] is not None else -1
    spec.eos_id = special["eos"] if special["eos"] is not None else -1
    spec.pad_id = special["padding"] if special["padding"] is not None else -1
    for name, i in (("unk_piece", spec.unk_id), ("bos_piece", spec.bos_id), ("eos_piece", spec.eos_id),
                    ("pad_piece", spec.pad_id)):
        if i >= 0:
            setattr(spec, name, tokens[i])
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = bool(metadata(reader, "tokenizer.ggml.add_space_prefix", True))
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()


def _tokenizer_json(path, reader, tokens, types) -> bytes:
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    pre = metadata(reader, "tokenizer.ggml.pre", "default")
    if pre not in _PRE_PATTERNS:
        raise CheckpointError(f"{path}: BPE pre-tokenizer {pre!r} is not supported; llama_tf knows "
                              f"{', '.join(_PRE_PATTERNS)} (Llama 3's)")
    merges = metadata(reader, "tokenizer.ggml.merges") or []
    if not isinstance(merges, list) or not all(isinstance(m, str) and m.count(" ") == 1 for m in merges):
        raise CheckpointError(f"{path}: GGUF metadata tokenizer.ggml.merges is malformed: not a list of 'a b' pairs")
    control = {i for i, kind in enumerate(types) if int(kind) in (3, 4)}       # CONTROL, USER_DEFINED
    vocab = {t: i for i, t in enumerate(tokens) if i not in control}
    try:
        tok = tokenizers.Tokenizer(models.BPE(vocab, [tuple(m.split(" ")) for m in merges], ignore_merges=True))
    except Exception as e:   # tokenizers raises a bare Exception: a merge of tokens not in the vocabulary
        raise CheckpointError(f"{path}: the GGUF BPE vocabulary cannot be built: {e}") from None
    pattern = _PRE_PATTERNS[pre]
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([tokenizers.AddedToken(tokens[i], special=True, normalized=False) for i in sorted(control)])
    if any(tok.token_to_id(tokens[i]) != i for i in control):
        raise CheckpointError(f"{path}: the special tokens are not the last ids of the vocabulary; llama_tf "
                              "cannot rebuild this BPE vocabulary")
    return tok.to_str().encode()


# ---------------------------------------------------------------------------------------------------
# Writing

WRITE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "Q5_1", "Q4_K")
_FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0",
               "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1", "Q4_K": "MOSTLY_Q4_K_S"}


@dataclass(frozen=True)
class GGUFVocabulary:
    """A vocabulary as `write_gguf` stores it, in plain data: `kind` "sentencepiece" (`data` a SentencePiece
    ModelProto's bytes, which hold BOS and EOS) or "bpe" (`data` a byte-level BPE `tokenizer.json`, Llama 3's,
    with `bos_id` and `eos_id`). `llama_tf.tokenizers.embedded_tokenizers.gguf_vocabulary` makes one from a tokenizer."""
    kind: str
    data: bytes
    bos_id: int | None = None
    eos_id: int | None = None


def write_gguf(path: str | Path, config: LlamaConfig, tensors: dict, vocabulary: GGUFVocabulary,
               dtype: str = "F32") -> Path:
    """A llama GGUF file at `path`: `config` as metadata, `tensors` (Meta names -> functions returning
    NumPy arrays in Meta's orientation and RoPE layout) in llama.cpp's names, matrices stored as `dtype`
    (F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q5_1 or Q4_K, a matrix whose rows are not whole Q4_K super-blocks in
    llama.cpp's fallback, Q5_0; norms stay F32), Llama 3 rescaling as `rope_freqs`, and the `vocabulary`.
    Streamed one tensor at a time into this writer's own stage beside `path` (`staged_file`), renamed
    when complete: an interrupted write leaves the old file, two writers leave one's whole file."""
    import gguf
    import ml_dtypes

    path = Path(path)
    if dtype not in WRITE_TYPES:
        raise ValueError(f"GGUF tensor type {dtype!r}: llama_tf writes {', '.join(WRITE_TYPES)}")
    names = {meta: gguf_name for gguf_name, meta in _TOP.items()}
    layer_names = {meta: gguf_name for gguf_name, meta in _LAYER.items()}

    def target(name: str) -> str:
        parts = name.removesuffix(".weight").split(".")
        if parts[0] == "layers":
            return f"blk.{parts[1]}.{layer_names['.'.join(parts[2:])]}.weight"
        return f"{names[parts[0]]}.weight"

    shapes = tensor_shapes(config)

    plan = []   # (gguf name, shape, stored type, load)
    if config.rope_scaling and config.rope_scaling["rope_type"] == "llama3":
        divisors = (np.asarray(rope_frequencies(config.head_dim, config.rope_theta))
                    / np.asarray(rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)))
        plan.append(("rope_freqs.weight", divisors.shape, gguf.GGMLQuantizationType.F32,
                     lambda d=divisors.astype("float32"): d))
    for name, load in tensors.items():
        shape = shapes[name]
        stored = getattr(gguf.GGMLQuantizationType, stored_type(dtype.lower(), shape[-1]).upper())
        plan.append((target(name), shape, stored if len(shape) == 2 else gguf.GGMLQuantizationType.F32, load))

    def encoded(array: np.ndarray, stored) -> np.ndarray:
        array = np.ascontiguousarray(array, dtype="float32")
        if stored == gguf.GGMLQuantizationType.F32:
            return array
        if stored == gguf.GGMLQuantizationType.F16:
            return array.astype(np.float16)
        if stored == gguf.GGMLQuantizationType.BF16:
            return array.astype(ml_dtypes.bfloat16).view(np.uint16)
        if stored.name.lower() in BLOCK_TYPES:
            return quantize_blocks(array, BLOCK_TYPES[stored.name.lower()])
        return gguf.quants.quantize(array, stored)

    with staged_file(path, CheckpointError) as stage:
        writer = gguf.GGUFWriter(stage, "llama")
        try:
            writer.add_context_length(config.max_seq_len)
            writer.add_embedding_length(config.dim)
            writer.add_block_count(config.n_layers)
            writer.add_feed_forward_length(config.hidden_dim)
            writer.add_rope_dimension_count(config.head_dim)
            writer.add_head_count(config.n_heads)
            writer.add_head_count_kv(config.n_kv_heads)
            writer.add_layer_norm_rms_eps(config.norm_eps)
            writer.add_rope_freq_base(config.rope_theta)
            writer.add_vocab_size(config.vocab_size)
            if config.rope_scaling and config.rope_scaling["rope_type"] == "linear":
                writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
                writer.add_rope_scaling_factor(config.rope_scaling["factor"])
            writer.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[dtype]))
            _write_vocabulary(writer, vocabulary)
            for name, shape, stored, _ in plan:
                n_bytes = int(np.prod(gguf.quants.quant_shape_to_byte_shape(shape, stored)))
                writer.add_tensor_info(name, shape, np.dtype(np.float32), n_bytes, raw_dtype=stored)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for name, shape, stored, load in plan:
                writer.write_tensor_data(encoded(load(), stored))
        finally:
            writer.close()
    return path


def _write_vocabulary(writer, vocabulary: GGUFVocabulary) -> None:
    import gguf

    if vocabulary.kind == "sentencepiece":
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb

        sp = spm.SentencePieceProcessor(model_proto=vocabulary.data)
        proto = pb.ModelProto.FromString(vocabulary.data)
        n = sp.vocab_size()
        writer.add_tokenizer_model("llama")
        writer.add_token_list([sp.id_to_piece(i) for i in range(n)])
        writer.add_token_scores([sp.get_score(i) for i in range(n)])
        writer.add_token_types([int(proto.pieces[i].type) for i in range(n)])
        writer.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
        for key, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id())):
            if i >= 0:
                getattr(writer, f"add_{key}_token_id")(i)
        return
    if vocabulary.kind == "bpe":
        spec = json.loads(vocabulary.data)
        pieces = {i: token for token, i in spec["model"]["vocab"].items()}
        pieces.update({added["id"]: added["content"] for added in spec.get("added_tokens", [])})
        if sorted(pieces) != list(range(len(pieces))):
            raise ValueError("the tokenizer.json's ids are not 0..n-1, each once; GGUF stores a token per id")
        specials = {added["id"] for added in spec.get("added_tokens", []) if added.get("special")}
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("llama-bpe")
        writer.add_token_list([pieces[i] for i in range(len(pieces))])
        writer.add_token_types([gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL
                                for i in range(len(pieces))])
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
        writer.add_bos_token_id(vocabulary.bos_id)
        writer.add_eos_token_id(vocabulary.eos_id)
        return
    raise ValueError(f"GGUF vocabulary kind {vocabulary.kind!r}: llama_tf writes 'sentencepiece' and 'bpe'")

"""Reading LLaMA checkpoints into a model built by `build_llama`.

Two layouts are read, detected from the files present:

- Meta's: `params.json` + `consolidated.00.pth` … `consolidated.NN.pth` (model-parallel shards);
- Hugging Face's: `config.json` + `model.safetensors`, or `model-0000X-of-0000Y.safetensors` shards with
  `model.safetensors.index.json`.

Both are read into one form: a `LlamaConfig` and, under Meta's tensor names
(`layers.0.attention.wq.weight`, …), lazy loaders of NumPy arrays in Meta's (PyTorch, `(out, in)`)
orientation, with the q/k rows in Meta's adjacent-pair RoPE order. `assign_weights` copies them into
the model one tensor at a time. `.pth` files are read with `torch.load(weights_only=True)`: a file that
would need to run pickled code is refused. `save_hf_checkpoint` writes a model in Hugging Face's layout.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import keras
import numpy as np
from tqdm.auto import tqdm

from llama_tf.config import LlamaConfig

__all__ = ["CheckpointError", "Checkpoint", "TensorRef", "read_checkpoint", "model_variables",
           "model_state", "assign_weights", "build_model", "write_hf", "save_hf_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, incomplete, or inconsistent with its config."""


class TensorRef(NamedTuple):
    source: str                      # where the tensor comes from, for error messages
    load: Callable[[], np.ndarray]   # reads it (Meta orientation and RoPE layout)
    shape: tuple | None = None       # its shape, when the file says it without reading the data


class Checkpoint(NamedTuple):
    config: LlamaConfig
    tensors: dict[str, TensorRef]    # Meta tensor name -> reference
    directory: Path
    format: str                      # "meta" or "hf"


# Tensors some checkpoints carry that the model recomputes instead.
_IGNORED = re.compile(r"(^|\.)(rope\.freqs|rotary_emb\.inv_freq)$")


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Detect the layout of `path` (a directory or one weights file) and index its tensors."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    directory = path if path.is_dir() else path.parent
    if path.suffix == ".safetensors" or (path.is_dir() and (path / "config.json").exists()):
        return _read_hf(path, directory)
    if path.suffix in (".pth", ".pt") or (path.is_dir() and (path / "params.json").exists()):
        return _read_meta(path, directory)
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


def _read_json(file: Path) -> dict:
    "A JSON object from `file`; anything else (a list, deep nesting, a FIFO, bad UTF-8) is a CheckpointError."
    if file.exists() and not file.is_file():
        raise CheckpointError(f"{file}: not a regular file")
    if not file.is_file():
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


def _config(make: Callable[[], LlamaConfig], file: Path) -> LlamaConfig:
    try:
        return make()
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:   # ArithmeticError: overflow, division by 0
        raise CheckpointError(f"{file}: {e if not isinstance(e, KeyError) else f'missing key {e}'}") from None


# ---------------------------------------------------------------------------------------------------
# Hugging Face: config.json + safetensors

_HF_TOP = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
           "lm_head.weight": "output.weight"}
_HF_LAYER = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
             "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
             "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
             "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
             "post_attention_layernorm": "ffn_norm"}
_HF_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")


def _hf_to_meta_name(name: str) -> str | None:
    if name in _HF_TOP:
        return _HF_TOP[name]
    match = _HF_LAYER_NAME.fullmatch(name)
    if match and match[2] in _HF_LAYER:
        return f"layers.{match[1]}.{_HF_LAYER[match[2]]}.weight"
    return None


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face stores each head's q/k rows as [all even features, all odd features] for its
    "rotate-half" RoPE; Meta interleaves them as adjacent pairs. (out, in) HF order -> Meta order."""
    out_dim, in_dim = w.shape
    return w.reshape(n_heads, 2, out_dim // n_heads // 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    "Meta's adjacent-pair q/k rows -> Hugging Face's rotate-half order (inverse of `unpermute_rope_rows`)."
    out_dim, in_dim = w.shape
    return w.reshape(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)


def _rope_heads(name: str, config: LlamaConfig) -> int | None:
    "Heads of the q/k projection `name` (Meta name), whose rows the two RoPE layouts order differently."
    if name.endswith("attention.wq.weight"):
        return config.n_heads
    if name.endswith("attention.wk.weight"):
        return config.n_kv_heads
    return None


_SAFETENSORS_DTYPES = ("F32", "F16", "BF16", "F64")


def _safetensors_keys(file: Path) -> dict[str, tuple]:
    "Tensor names and shapes in a safetensors file, from its header; a dtype llama_tf cannot read is refused by name."
    from safetensors import safe_open

    try:
        with safe_open(file, framework="numpy") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}
            for name, part in slices.items():
                if part.get_dtype() not in _SAFETENSORS_DTYPES:
                    raise CheckpointError(f"{file}: tensor {name} is stored as {part.get_dtype()}; llama_tf reads "
                                          f"{', '.join(_SAFETENSORS_DTYPES)}")
            return {name: tuple(part.get_shape()) for name, part in slices.items()}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError, or OSError
        raise CheckpointError(f"{file}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def _load_safetensor(file: Path, name: str, transform: Callable | None) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(file, framework="numpy") as f:
        array = f.get_tensor(name)
    return transform(array) if transform else array


def _read_hf(path: Path, directory: Path) -> Checkpoint:
    config = _config(lambda: LlamaConfig.from_hf_config(_read_json(directory / "config.json")),
                     directory / "config.json")
    index = directory / "model.safetensors.index.json"
    if path.is_file():
        files = [path]
    elif index.is_file():
        weight_map = _read_json(index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: no weight_map of tensor names to file names")
        files = sorted({directory / f for f in weight_map.values()})
        for f in files:
            if f.resolve().parent != directory.resolve():
                raise CheckpointError(f"{index} lists {os.path.relpath(f, directory)}, which is not a file in "
                                      f"{directory}: an index may only name files beside it")
            if not f.is_file():
                raise FileNotFoundError(f"{f.name}, listed in {index.name}, not found in {directory}")
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: config.json but no *.safetensors weights")

    tensors, unknown = {}, []
    for file in files:
        for hf_name, shape in _safetensors_keys(file).items():
            meta_name = _hf_to_meta_name(hf_name)
            if meta_name is None:
                unknown.append(hf_name)
                continue
            if meta_name in tensors:
                raise CheckpointError(f"{directory}: tensor {hf_name} is stored twice ({tensors[meta_name].source}, "
                                      f"and in {file.name})")
            heads = _rope_heads(meta_name, config)
            transform = partial(unpermute_rope_rows, n_heads=heads) if heads else None
            tensors[meta_name] = TensorRef(f"{hf_name} in {file.name}",
                                           partial(_load_safetensor, file, hf_name, transform), shape)
    unknown = [n for n in unknown if not _IGNORED.search(n)]
    if unknown:
        raise CheckpointError(f"{directory}: tensors that are not part of a LLaMA model: {unknown[:3]}")
    if config.tie_embeddings:
        tensors.pop("output.weight", None)  # some writers store the tied matrix twice
    return Checkpoint(config, tensors, directory, "hf")


# ---------------------------------------------------------------------------------------------------
# Meta: params.json + consolidated.NN.pth

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
    if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
        return 1
    return 0


def _merge_shards(parts: list, axis: int | None) -> np.ndarray:
    import torch

    merged = parts[0] if axis is None else torch.cat(parts, dim=axis)
    return merged.to(torch.float32).numpy()


def _read_meta(path: Path, directory: Path) -> Checkpoint:
    params_file = directory / "params.json"
    params = _read_json(params_file)
    shards = [path] if path.is_file() else sorted(directory.glob("consolidated.*.pth"))
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
        if _IGNORED.search(name):
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
    config = _config(lambda: LlamaConfig.from_meta_params(params, vocab_size=embedding_rows), params_file)
    return Checkpoint(config, tensors, directory, "meta")


# ---------------------------------------------------------------------------------------------------
# Checkpoint tensors <-> Keras variables

def tensor_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    "Every tensor a model of `config` has, under Meta's names, with its shape in Meta's (out, in) orientation."
    kv = config.n_kv_heads * config.head_dim
    per_layer = {"attention.wq": (config.dim, config.dim), "attention.wk": (kv, config.dim),
                 "attention.wv": (kv, config.dim), "attention.wo": (config.dim, config.dim),
                 "feed_forward.w1": (config.hidden_dim, config.dim), "feed_forward.w2": (config.dim, config.hidden_dim),
                 "feed_forward.w3": (config.hidden_dim, config.dim), "attention_norm": (config.dim,),
                 "ffn_norm": (config.dim,)}
    shapes = {"tok_embeddings.weight": (config.vocab_size, config.dim), "norm.weight": (config.dim,)}
    if not config.tie_embeddings:
        shapes["output.weight"] = (config.vocab_size, config.dim)
    for i in range(config.n_layers):
        shapes.update({f"layers.{i}.{kind}.weight": shape for kind, shape in per_layer.items()})
    return shapes


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
    _check_names(expected, tensors)
    for name, shape in expected.items():
        ref = tensors[name]
        if ref.shape is not None and tuple(ref.shape) != shape:
            raise _shape_error(name, ref, tuple(ref.shape), shape, config)


def _check_names(expected: Mapping, tensors: Mapping[str, TensorRef]) -> None:
    "Every tensor in `expected` is in `tensors`, and no other."
    missing = [name for name in expected if name not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint has no tensor {missing[0]!r}{more}")
    unused = sorted(set(tensors) - set(expected))
    if unused:
        raise CheckpointError(f"checkpoint has tensors a model with this config does not use: {unused[:3]}")


def _shape_error(name: str, ref: TensorRef, shape: tuple, expected: tuple, config: LlamaConfig) -> CheckpointError:
    return CheckpointError(
        f"tensor {name!r} ({ref.source}) has shape {shape}, but the config "
        f"(dim={config.dim}, n_heads={config.n_heads}, n_kv_heads={config.n_kv_heads}, "
        f"hidden_dim={config.hidden_dim}, vocab_size={config.vocab_size}) expects {expected}")


def model_variables(model, config: LlamaConfig) -> dict:
    """Meta tensor name -> (Keras variable, whether the file stores it transposed).
    A Keras `Dense` kernel is `(in, out)`, the transpose of PyTorch's `Linear.weight`."""
    table = {"tok_embeddings.weight": (model.get_layer("tok_embeddings").embeddings, False),
             "norm.weight": (model.get_layer("norm").weight, False)}
    if not config.tie_embeddings:
        table["output.weight"] = (model.get_layer("output").kernel, True)
    for i in range(config.n_layers):
        block = model.get_layer(f"layers.{i}")
        for sub, owner in (("attention", block.attention), ("feed_forward", block.feed_forward)):
            for proj in ("wq", "wk", "wv", "wo") if sub == "attention" else ("w1", "w2", "w3"):
                table[f"layers.{i}.{sub}.{proj}.weight"] = (getattr(owner, proj).kernel, True)
        table[f"layers.{i}.attention_norm.weight"] = (block.attention_norm.weight, False)
        table[f"layers.{i}.ffn_norm.weight"] = (block.ffn_norm.weight, False)
    return table


def model_state(model, config: LlamaConfig) -> dict[str, np.ndarray]:
    """The model's weights under Meta's names and in Meta's orientation (what `consolidated.00.pth` holds)."""
    return {name: np.asarray(var).T if transposed else np.asarray(var)
            for name, (var, transposed) in model_variables(model, config).items()}


_EXPONENT = {2: (np.uint16, 0x7C00), 4: (np.uint32, 0x7F800000), 8: (np.uint64, 0x7FF0000000000000)}


def _has_non_finite(array: np.ndarray) -> bool:
    """Whether a float array holds NaN or ±inf: an exponent of all ones, tested on the raw bits in chunks
    (no full-size temporary; 5 GB/s)."""
    if array.dtype.kind not in "fV" or array.dtype.itemsize not in _EXPONENT:
        return False
    words, mask = _EXPONENT[array.dtype.itemsize]
    if array.dtype.itemsize == 2 and array.dtype != np.float16:   # bfloat16: float32's exponent bits
        mask = 0x7F80
    flat = np.ascontiguousarray(array).view(words).reshape(-1)
    return any(((flat[i: i + (1 << 24)] & mask) == mask).any() for i in range(0, flat.size, 1 << 24))


def backend_tensor(array: np.ndarray, transpose: bool = False):
    """`array` (transposed, if asked) as a tensor of the Keras backend, its data copied once.

    On TensorFlow, `convert_to_tensor` copies a NumPy array twice and its allocator keeps the scratch
    (converting 1 GiB left 2 GiB more resident), and its transposes left 6% of their output resident
    on top (measured). Here the data goes, transposed on the way, into a 64-byte-aligned NumPy buffer,
    which TensorFlow takes over through DLPack without a copy: it becomes the variable's storage."""
    if keras.backend.backend() != "tensorflow":
        tensor = keras.ops.convert_to_tensor(array)
        return keras.ops.transpose(tensor) if transpose else tensor
    import tensorflow as tf

    words = np.dtype(f"u{array.dtype.itemsize}")   # copied as raw words: NumPy copies bfloat16 slowly
    shape = array.shape[::-1] if transpose else array.shape
    buffer = np.empty(array.nbytes + 64, np.uint8)
    start = -buffer.ctypes.data % 64
    out = buffer[start: start + array.nbytes].view(words).reshape(shape)
    source = array.view(words)
    if transpose:
        _transpose_into(out, source)
    else:
        np.copyto(out, source)
    tensor = tf.experimental.dlpack.from_dlpack(out.__dlpack__())
    return tf.bitcast(tensor, tf.as_dtype(array.dtype)) if array.dtype != words else tensor


def _transpose_into(out: np.ndarray, matrix: np.ndarray, tile: int = 256):
    "out[:] = matrix.T, tile by tile: about twice as fast as NumPy's one strided pass over a large matrix."
    rows, cols = matrix.shape
    for i in range(0, rows, tile):
        for j in range(0, cols, tile):
            out[j: j + tile, i: i + tile] = matrix[i: i + tile, j: j + tile].T


def _checked_loaders(model, config: LlamaConfig, tensors: Mapping[str, TensorRef]) -> dict:
    """Meta tensor name -> (Keras variable, a function reading the tensor in the variable's orientation).
    Every tensor the model needs must be present, and no other; each shape is checked when it is read."""
    table = model_variables(model, config)
    _check_names(table, tensors)

    def load(name, variable, transposed):
        ref = tensors[name]
        array = ref.load()
        expected = tuple(variable.shape)[::-1] if transposed else tuple(variable.shape)
        if tuple(array.shape) != expected:
            raise _shape_error(name, ref, tuple(array.shape), expected, config)
        if _has_non_finite(array):
            raise CheckpointError(f"tensor {name!r} ({ref.source}) holds NaN or infinite values")
        # The NumPy array goes as soon as the tensor holds its data; a cast to another precision happens
        # last, on the backend (NumPy casts bfloat16 element by element).
        tensor = backend_tensor(array, transpose=transposed)
        del array
        return keras.ops.cast(tensor, variable.dtype)

    return {name: (variable, partial(load, name, variable, transposed))
            for name, (variable, transposed) in table.items()}


def _progress(config: LlamaConfig, total: int, progress: bool | None):
    if progress is None:
        progress = config.num_parameters > 200_000_000
    return tqdm(total=total, desc="loading weights", unit="tensor", disable=not progress)


def assign_weights(model, config: LlamaConfig, tensors: Mapping[str, TensorRef], progress: bool | None = None):
    """Copy checkpoint tensors into a built model, checking that every tensor is present with its config's shape."""
    loaders = _checked_loaders(model, config, tensors)
    with _progress(config, len(loaders), progress) as bar:
        for variable, load in loaders.values():
            variable.assign(load())
            bar.update()


def build_model(checkpoint: Checkpoint, dtype: str = "float32", progress: bool | None = None, **options):
    """The checkpoint's model with its weights, `build_llama(checkpoint.config, dtype, **options)`
    (options: `attention_impl`, `block_size`) initialised from the file.

    The model is built inside Keras' `StatelessScope`, which creates the variables without computing
    their random initial values; each is then initialised straight from its checkpoint tensor, one at a
    time, largest first. Memory holds one copy of the weights plus the transient copies of one tensor
    (random initialisation first would leave its scratch memory behind: about a third more for float32),
    and no time goes into random numbers."""
    from keras.src.backend.common import global_state

    from llama_tf.model import build_llama

    config = checkpoint.config
    validate(checkpoint)
    bar = None
    try:
        with keras.StatelessScope():   # variables created in here are initialised when it exits
            model = build_llama(config, dtype=dtype, **options)
            loaders = _checked_loaders(model, config, checkpoint.tensors)
            bar = _progress(config, len(loaders), progress)
            for variable, load in loaders.values():
                variable._initializer = lambda shape, dtype, load=load: (load(), bar.update())[0]
            # Keras initialises them at the scope's exit, in this list's order: largest first, so that a
            # tensor's transient copies (file -> tensor -> transposed) come while little else is held.
            # Last are the per-layer tensors, the largest of which is a few percent of an embedding.
            pending = global_state.get_global_attribute("uninitialized_variables")
            pending.sort(key=lambda v: -math.prod(v.shape))
    except Exception:
        # Keras keeps the variables of a failed scope in a list it would initialise at the next exit.
        global_state.set_global_attribute("uninitialized_variables", [])
        raise
    finally:
        if bar is not None:
            bar.close()
    return model


# ---------------------------------------------------------------------------------------------------
# Writing: Hugging Face layout

_HF_NAME = {meta: hf for hf, meta in _HF_TOP.items()}
_HF_LAYER_OF = {meta: hf for hf, meta in _HF_LAYER.items()}


def _meta_to_hf_name(name: str) -> str:
    if name in _HF_NAME:
        return _HF_NAME[name]
    _, i, module = name.removesuffix(".weight").split(".", 2)   # layers, 3, attention.wq
    return f"model.layers.{i}.{_HF_LAYER_OF[module]}.weight"


def hf_config(config: LlamaConfig, dtype: str = "float32") -> dict:
    "A Hugging Face `config.json` for `LlamaForCausalLM` describing `config`."
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": config.dim, "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads, "head_dim": config.head_dim,
        "vocab_size": config.vocab_size, "rms_norm_eps": config.norm_eps,
        # transformers < 5 reads rope_theta and rope_scaling, >= 5 rope_parameters
        "rope_theta": config.rope_theta, "rope_scaling": config.rope_scaling,
        "rope_parameters": {"rope_type": "default", **(config.rope_scaling or {}), "rope_theta": config.rope_theta},
        "max_position_embeddings": config.max_seq_len, "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": dtype,
    }


SHARD_BYTES = 5 * 10**9   # transformers' default max_shard_size, "5GB"
# Files that make up a checkpoint: replaced together. Anything else in the folder (logs, plots) is kept.
_CHECKPOINT_FILE = re.compile(r"config\.json|params\.json|generation_config\.json|.*\.safetensors|"
                              r"model\.safetensors\.index\.json|consolidated\.\d+\.pth|tokenizer\.(model|json|bin)|"
                              r"tokenizer_config\.json|special_tokens_map\.json")


def write_hf(directory: str | Path, config: LlamaConfig, tensors: Mapping[str, Callable[[], np.ndarray]],
             dtype: str = "float32", files: Mapping[str, bytes] | None = None) -> Path:
    """Hugging Face's layout from tensors under Meta's names (loaders of arrays in Meta's orientation and
    RoPE order): `config.json`, `model.safetensors` or 5 GB shards with their index, and `files` (the
    tokenizer). Tensors are loaded one shard at a time.

    Atomic as a whole: everything is written into a new folder beside `directory`, which then takes its
    place in one step (an atomic exchange on Linux), so a kill at any moment leaves the old checkpoint
    or the new one, never a mix, and never an old index beside new weights. Files in `directory` that
    are not part of a checkpoint (a training log, plots) are carried over."""
    import ml_dtypes
    from safetensors.numpy import save_file

    np_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}.get(dtype)
    if np_dtype is None:
        raise ValueError(f"dtype {dtype!r}: Hugging Face checkpoints are written in float32, float16 or bfloat16")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} exists and is not a folder")
    directory.parent.mkdir(parents=True, exist_ok=True)
    stage = directory.parent / f".{directory.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        shards, shard, size = [], {}, 0
        for name, load in tensors.items():
            w = load()
            if heads := _rope_heads(name, config):
                w = permute_rope_rows(w, heads)
            w = np.ascontiguousarray(w.astype(np_dtype))
            if shard and size + w.nbytes > SHARD_BYTES:
                save_file(shard, stage / f"shard-{len(shards)}", metadata={"format": "pt"})
                shards.append(list(shard))
                shard, size = {}, 0
            shard[_meta_to_hf_name(name)], size = w, size + w.nbytes
        save_file(shard, stage / f"shard-{len(shards)}", metadata={"format": "pt"})
        shards.append(list(shard))
        del shard
        n = len(shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
        for k, name in enumerate(names):
            (stage / f"shard-{k}").rename(stage / name)
        if n > 1:
            weight_map = {tensor: file for file, held in zip(names, shards) for tensor in held}
            total = sum((stage / name).stat().st_size for name in names)
            (stage / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (stage / "config.json").write_text(json.dumps(hf_config(config, dtype), indent=2) + "\n")
        for name, data in (files or {}).items():
            (stage / name).write_bytes(data)
        if directory.is_dir():
            for other in directory.iterdir():
                if not _CHECKPOINT_FILE.fullmatch(other.name) and not (stage / other.name).exists():
                    if other.is_dir():
                        shutil.copytree(other, stage / other.name, copy_function=_link_or_copy)
                    else:
                        _link_or_copy(other, stage / other.name)
        _put_in_place(stage, directory)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return directory


def _link_or_copy(source, target) -> None:
    "A hard link (the same file: a log still being appended to stays one file), else a copy."
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _put_in_place(stage: Path, directory: Path) -> None:
    "`stage` becomes `directory` in one step; the old folder, if any, is removed afterwards."
    if not directory.exists():
        os.rename(stage, directory)
        return
    if _exchange(stage, directory):        # now `stage` holds the old checkpoint
        shutil.rmtree(stage)
        return
    old = directory.parent / f".{directory.name}.old-{os.getpid()}"   # no atomic exchange: two renames
    os.rename(directory, old)
    os.rename(stage, directory)
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    "Swap two folders atomically (Linux renameat2 with RENAME_EXCHANGE); False where that is not available."
    import ctypes
    import sys

    if sys.platform != "linux":
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def save_hf_checkpoint(model, config: LlamaConfig, directory: str | Path, dtype: str = "float32",
                       tokenizer_model: bytes | None = None) -> Path:
    """Write `model` as `config.json` + `model.safetensors` (+ `tokenizer.model`), readable by
    `llama_tf.load` and by transformers' `LlamaForCausalLM.from_pretrained`; atomic as a whole, other
    files in the folder kept (see `write_hf`)."""
    state = model_state(model, config)
    files = {"tokenizer.model": tokenizer_model} if tokenizer_model is not None else {}
    return write_hf(directory, config, {name: (lambda w=w: w) for name, w in state.items()}, dtype, files)

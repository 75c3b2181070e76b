"""Loading a `Checkpoint` (any format, `llama_tf.formats`) into a Keras model built by `build_llama`,
and a model's weights back out under Meta's names.

`build_model` builds the model without random initialisation and initialises each variable straight
from its checkpoint tensor, largest first; `model_state` / `save_hf_checkpoint` go the other way. Every
tensor's shape is checked, and NaN or infinite values are reported, as it is read.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from llama_tf.config import LlamaConfig
from llama_tf.distribution import place
from llama_tf.formats.base import Checkpoint, CheckpointError, TensorRef, check_names, shape_error, validate
from llama_tf.formats.hf import write_hf
from llama_tf.keras_internals import forget_pending_variables, pending_variables, set_initializer
from llama_tf.layers.projection import Projection, projections, use_blocks
from llama_tf.ggml_blocks import BLOCK_TYPES, quantize_blocks, scale_fields
from llama_tf.q8_0 import quantize_q8_0
from llama_tf.quiet import float16_notice_dropped
from llama_tf.structure import BLOCK_NORMS, BLOCK_PROJECTIONS

__all__ = ["build_model", "model_variables", "model_projections", "stored_formats", "model_state", "backend_tensor",
           "save_hf_checkpoint"]


def model_variables(model) -> dict:
    """Meta tensor name -> (Keras variable, whether the file stores it transposed).
    A `Projection` kernel is `(in, out)`, the transpose of PyTorch's `Linear.weight`; a "float_out_in"
    weight is (out, in), as the file's; a projection that holds quantised blocks (Q8_0, or llama.cpp's 4- to
    6-bit ones) appears as the layer itself (its blocks are (out, in) too), and so does an embedding table
    held in blocks (`use_blocks`)."""
    embedding = model.tok_embeddings
    table = {"tok_embeddings.weight": (embedding, False) if embedding.widen else (embedding.embeddings, False),
             "norm.weight": (model.norm.weight, False)}
    table.update({name: _projection_weights(layer) for name, layer in model_projections(model).items()})
    for i, block in enumerate(model.blocks):
        for norm in BLOCK_NORMS:
            table[f"layers.{i}.{norm}.weight"] = (getattr(block, norm).weight, False)
    return table


def model_projections(model) -> dict[str, Projection]:
    "Meta tensor name -> the `Projection` that holds it."
    table = {} if model.output_projection is None else {"output.weight": model.output_projection}
    for i, block in enumerate(model.blocks):
        for sub, names in BLOCK_PROJECTIONS.items():
            for proj in names:
                table[f"layers.{i}.{sub}.{proj}.weight"] = getattr(getattr(block, sub), proj)
    return table


def _projection_weights(layer: Projection) -> tuple:
    if layer.weights_format == "float":
        return layer.kernel, True
    return (layer.weight, False) if layer.weights_format == "float_out_in" else (layer, False)


def model_state(model) -> dict[str, np.ndarray]:
    """The model's weights under Meta's names and in Meta's orientation (what `consolidated.00.pth` holds);
    quantised projections and an embedding table in blocks dequantised to float32."""
    def state(var, transposed):
        if isinstance(var, Projection):
            return keras.ops.convert_to_numpy(var.format.matrix(var))
        if isinstance(var, keras.layers.Layer):   # the embedding table, in blocks
            return keras.ops.convert_to_numpy(var.widen(var.embeddings))
        return np.asarray(var).T if transposed else np.asarray(var)
    return {name: state(*entry) for name, entry in model_variables(model).items()}


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


def _checked_loaders(model, tensors: Mapping[str, TensorRef]) -> dict:
    """Meta tensor name -> (Keras variable, a function reading the tensor in the variable's orientation).
    Every tensor the model needs must be present, and no other; each shape is checked when it is read."""
    table = model_variables(model)
    check_names(table, tensors)

    def read(name, expected):
        "The tensor as a NumPy array, its shape `expected` and every value finite."
        ref = tensors[name]
        array = ref.load()
        if tuple(array.shape) != expected:
            raise shape_error(name, ref, tuple(array.shape), expected, config)
        if _has_non_finite(array):
            raise CheckpointError(f"tensor {name!r} ({ref.source}) holds NaN or infinite values")
        return array

    def load(name, variable, transposed):
        array = read(name, tuple(variable.shape)[::-1] if transposed else tuple(variable.shape))
        # The NumPy array goes as soon as the tensor holds its data; a cast to another precision happens
        # last, on the backend (NumPy casts bfloat16 element by element).
        tensor = backend_tensor(array, transpose=transposed)
        del array
        return keras.ops.cast(tensor, variable.dtype)

    def as_stored(name, expected, stored, quantize, scales_of):
        """`stored()` where the file holds the tensor in the layer's format (its shape `expected`), else
        the tensor `quantize`d; either way the scales (`scales_of` the result) must be finite."""
        ref = tensors[name]
        if stored is not None:
            if ref.shape is not None and tuple(ref.shape) != expected:
                raise shape_error(name, ref, tuple(ref.shape), expected, config)
            result = stored()
        else:
            result = quantize(read(name, expected))
        if _has_non_finite(scales_of(result)):
            raise CheckpointError(f"tensor {name!r} ({ref.source}) holds NaN or infinite scales")
        return result

    def load_q8_0(name, layer):
        "The blocks as the file stores them, else the tensor quantised: (int8 (out, in), float16 scales)."
        return as_stored(name, tuple(layer.q8_weights.shape), tensors[name].load_q8_0, quantize_q8_0, lambda qs: qs[1])

    def load_blocks(name, block_type, shape):
        """The blocks as the file stores them, if it stores the tensor (of `shape`) in `block_type`, else the
        tensor quantised."""
        ref = tensors[name]
        stored = ref.load_blocks if ref.block_type == block_type.name else None
        return backend_tensor(as_stored(name, shape, stored, lambda w: quantize_blocks(w, block_type),
                                        lambda b: scale_fields(b, block_type)))

    def q8_0_pair(name, layer):
        "Loaders of the weights and of the scales: the first read keeps the (small) scales for the second."
        held = {}

        def weights():
            q, held["scales"] = load_q8_0(name, layer)
            return q
        return weights, lambda: held.pop("scales") if "scales" in held else load_q8_0(name, layer)[1]

    loaders = {}
    for name, (variable, transposed) in table.items():
        if isinstance(variable, Projection) and variable.weights_format == "q8_0":   # one tensor, two variables
            weights, scales = q8_0_pair(name, variable)
            loaders[name], loaders[f"{name} (scales)"] = (variable.q8_weights, weights), (variable.q8_scales, scales)
        elif isinstance(variable, Projection):
            shape = (variable.units, variable.in_features)
            loaders[name] = (variable.blocks, partial(load_blocks, name, BLOCK_TYPES[variable.weights_format], shape))
        elif isinstance(variable, keras.layers.Layer):   # the embedding table, in blocks
            shape = (variable.vocab_size, variable.dim)
            loaders[name] = (variable.embeddings, partial(load_blocks, name, variable.block_type, shape))
        else:
            loaders[name] = (variable, partial(load, name, variable, transposed))
    return loaders


def _progress(config: LlamaConfig, total: int, progress: bool | None):
    if progress is None:
        progress = config.num_parameters > 200_000_000
    return tqdm(total=total, desc="loading weights", unit="tensor", disable=not progress)


def build_model(checkpoint: Checkpoint, dtype: str = "float32", progress: bool | None = None, mesh=None,
                **options):
    """The checkpoint's model with its weights, `build_llama(checkpoint.config, dtype, **options)`
    (options: `attention_impl`, `block_size`) initialised from the file. With `mesh` (a Keras
    `DeviceMesh`, JAX only), the weights are split over its devices by `llama_tf.distribution`'s
    layout, each tensor going from the file straight to its shards. `dtype="q8_0"`: a float32 model
    whose projections hold Q8_0 blocks, read as stored from a Q8_0 GGUF, else quantised tensor by tensor.
    `dtype="gguf"` (a GGUF file): a float32 model whose projections hold each tensor in the file's own
    type (Q8_0, Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K blocks as stored; F32, F16, BF16 in float32); the
    embedding table too where the file stores it in blocks, unless it is tied (it is then also the output
    projection, and goes to float32).
    `dtype="bfloat16"` (without a mesh): projections hold their weights (out, in), as the file does
    ("float_out_in"), which the one-token kernel reads fastest (notebook 12).

    The model is built inside Keras' `StatelessScope`, which creates the variables without computing
    their random initial values; each is then initialised straight from its checkpoint tensor, one at a
    time, largest first. Memory holds one copy of the weights plus the transient copies of one tensor
    (random initialisation first would leave its scratch memory behind: about a third more for float32),
    and no time goes into random numbers."""
    from llama_tf.model import build_llama

    config = checkpoint.config
    validate(checkpoint)
    if keras.backend.backend() == "tensorflow":
        float16_notice_dropped()   # TensorFlow's one-time float16 notice on this CPU, before a weight needs it
    quantized = dtype in ("q8_0", "gguf")
    if quantized and mesh is not None:
        raise ValueError(f"{dtype} weights run on one CPU; load a float dtype to split a model over a mesh")
    if dtype == "gguf" and checkpoint.format != "gguf":
        raise ValueError(f"dtype='gguf' keeps a GGUF file's tensors in their stored types; this checkpoint is "
                         f"{checkpoint.format!r} (load it with a float dtype, or 'q8_0')")
    distribution = contextlib.nullcontext()
    if mesh is not None:
        from llama_tf.distribution import model_parallel

        distribution = model_parallel(mesh, config).scope()
    bar = None
    try:
        with distribution, keras.StatelessScope():   # variables created in here are initialised when it exits
            model = build_llama(config, dtype="float32" if quantized else dtype, **options)
            if dtype == "gguf":
                _use_formats(model, pending_variables(), stored_formats(model, checkpoint.tensors))
                _embedding_as_stored(model, pending_variables(), checkpoint.tensors["tok_embeddings.weight"])
            elif dtype == "q8_0" or (dtype == "bfloat16" and mesh is None):
                formats = "q8_0" if dtype == "q8_0" else "float_out_in"
                _use_formats(model, pending_variables(), {layer: formats for layer in projections(model)})
            loaders = _checked_loaders(model, checkpoint.tensors)
            bar = _progress(config, len(loaders), progress)
            for variable, load in loaders.values():
                set_initializer(variable, partial(_initial_value, load, bar))
            # Keras initialises them at the scope's exit, in this list's order: largest first, so that a
            # tensor's transient copies (file -> tensor -> transposed) come while little else is held.
            # Last are the per-layer tensors, the largest of which is a few percent of an embedding.
            pending_variables().sort(key=lambda v: -math.prod(v.shape))
    except Exception:
        # Keras keeps the variables of a failed scope in a list it would initialise at the next exit.
        forget_pending_variables()
        raise
    finally:
        if bar is not None:
            bar.close()
    return model


def stored_formats(model, tensors: Mapping[str, TensorRef]) -> dict:
    """Projection -> the weights format that holds its tensor as the file stores it: "q8_0", a block type
    (`llama_tf.ggml_blocks.BLOCK_TYPES`), else "float"."""
    return {layer: "q8_0" if tensors[name].load_q8_0 is not None else tensors[name].block_type or "float"
            for name, layer in model_projections(model).items() if name in tensors}


def _use_formats(model, pending: list, formats: dict):
    """Switch projections of a model whose variables are not yet initialised (`pending`) to their weights
    format in `formats` (layer -> name; `Projection.use_format`)."""
    changed = [layer for layer, name in formats.items() if name != layer.weights_format]
    kernels = {id(layer.kernel) for layer in changed}
    pending[:] = [variable for variable in pending if id(variable) not in kernels]   # never initialised
    for layer in changed:
        layer.use_format(formats[layer])


def _embedding_as_stored(model, pending: list, ref: TensorRef):
    """Hold the embedding table of a model whose variables are not yet initialised (`pending`) in the block
    type its file stores it in, if it does and the table is not tied (`use_blocks`)."""
    if ref.block_type is None or model.output_projection is None:
        return
    embedding = model.tok_embeddings
    pending[:] = [variable for variable in pending if variable is not embedding.embeddings]   # never initialised
    use_blocks(embedding, BLOCK_TYPES[ref.block_type])


def _initial_value(load, bar, shape, dtype, layout=None):
    """A variable's initializer: its checkpoint tensor. Under a distribution Keras passes the variable's
    `layout`, and the tensor goes from host memory to its shards on the mesh Keras has set."""
    value = load()
    bar.update()
    return place(value, layout)


def save_hf_checkpoint(model, config: LlamaConfig, directory: str | Path, dtype: str = "float32",
                       tokenizer_model: bytes | None = None) -> Path:
    """Write `model` as `config.json` + `model.safetensors` (+ `tokenizer.model`), readable by
    `llama_tf.load` and by transformers' `LlamaForCausalLM.from_pretrained`; atomic as a whole, other
    files in the folder kept (see `write_hf`)."""
    state = model_state(model)
    files = {"tokenizer.model": tokenizer_model} if tokenizer_model is not None else {}
    return write_hf(directory, config, {name: (lambda w=w: w) for name, w in state.items()}, dtype, files)

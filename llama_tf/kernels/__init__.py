"""llama_tf's compiled kernels for one-token decode steps: matrix-vector products (`matvec.h`) and
attention over the key/value cache (`attention.cc`).

`Projection` and `Attention` (notebooks 12 and 05) send a one-token call here on the JAX backend's CPU,
through `jax.ffi` (`matvec.cc`, `attention.cc`). On TensorFlow the same handlers are registered with
TensorFlow's own XLA (`tf_xla.cc`), which a step compiled with `jit_compile` reaches inside `xla_step()`
(the `Decoder`'s decode step on a cache in variables), and the products are also graph ops (`tf_ops.cc`),
which `Projection` uses inside `graph_step()` (the `Decoder`'s one-token graph step).
Each library is built on the machine that runs it, at first use (a few seconds) or ahead of time with

    python -m llama_tf.kernels

by the C++ compiler (`$CXX`, else `c++`) with `-O3 -march=native` against JAX's FFI headers, or
TensorFlow's headers and library (`tf.sysconfig`), into llama_tf's cache folder, under a name that
digests the source, the flags, the compiler, the framework's version and the CPU (a home folder shared
by different machines keeps one build per CPU). Where it cannot be built (no compiler, a failed build) a
one-line warning says so once and the products stay the framework's. `LLAMA_TF_KERNELS=0` turns the
kernels off without a warning.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

__all__ = ["KernelBuildError", "build", "available", "matvec", "matvec_q8_0", "matvec_blocks", "attend_one",
           "build_tensorflow", "tensorflow_ops", "graph_step", "in_graph_step", "xla_step", "in_xla_step",
           "stablehlo_custom_call"]

FOLDER = Path(__file__).parent
SOURCES = [FOLDER / "matvec.cc", FOLDER / "attention.cc"]            # the JAX library
HEADERS = [FOLDER / "common.h", FOLDER / "matvec.h", FOLDER / "blocks.h", FOLDER / "xla_ffi.h"]
TENSORFLOW_SOURCES = [FOLDER / "tf_ops.cc", FOLDER / "tf_xla.cc", *SOURCES]   # the ops, and the targets for TF's XLA
TARGETS = ("llama_tf_matvec", "llama_tf_matvec_q8_0", "llama_tf_matvec_blocks", "llama_tf_attend_one")
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c++17"]
SWITCH = "LLAMA_TF_KERNELS"   # "0": never build or use the kernels


class KernelBuildError(RuntimeError):
    "The kernels could not be built on this machine: no C++ compiler, or the compiler failed."


def _compiler() -> str:
    if os.environ.get("CXX"):
        found = shutil.which(os.environ["CXX"])
        if not found:
            raise KernelBuildError(f"CXX={os.environ['CXX']} is not a program this machine can run")
        return found
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not compiler:
        raise KernelBuildError("no C++ compiler found (set CXX, or install g++ or clang++)")
    return compiler


def _cpu() -> str:
    "What -march=native compiles for: the CPU's model and instruction-set flags (Linux), else its name."
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    first = text.split("\n\n")[0].splitlines()
    return "\n".join(line for line in first if line.startswith(("model name", "flags", "Features")))


def _build(name: str, sources: list[Path], flags: list[str], framework: str) -> Path:
    """The library `name`-<digest>.so built from `sources` (with HEADERS) and `flags`, from the cache
    when it is there: the digest covers the code, the flags, the compiler's version, the framework's
    version and the CPU."""
    from llama_tf.assets import cache_folder

    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    code = [path.read_text() for path in sources + HEADERS]
    flags = [*flags, *shlex.split(os.environ.get("CXXFLAGS", ""))]   # the user's, last: they win
    digest = hashlib.sha256("\0".join([*code, *FLAGS, *flags, version, framework, _cpu()]).encode())
    path = cache_folder() / "kernels" / f"{name}-{digest.hexdigest()[:16]}.so"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:   # renamed into place whole: no half-written .so
        built = Path(scratch) / path.name
        command = [compiler, *FLAGS, *map(str, sources), "-o", str(built), *flags]
        names = " and ".join(source.name for source in sources)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise KernelBuildError(f"{compiler} could not build {names}: {error}") from None
        if done.returncode:
            errors = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()
            raise KernelBuildError(f"{compiler} could not build {names}: {(errors or ['no message'])[-1].strip()}")
        os.replace(built, path)
    return path


def build() -> Path:
    """The JAX kernels' shared library for this machine: built now unless a build for it is in the cache.
    Raises `KernelBuildError` with the compiler's message when it cannot be built."""
    import jax

    return _build("kernels", SOURCES, ["-isystem", jax.ffi.include_dir()], f"jax {jax.__version__}")


def build_tensorflow() -> Path:
    """The TensorFlow library for this machine: the ops (`tf_ops.cc`) and the XLA FFI targets registered with
    TensorFlow's XLA (`tf_xla.cc` with the JAX library's sources), against TensorFlow's headers and library,
    as `build` builds the JAX one. Raises `KernelBuildError` when it cannot be built."""
    import tensorflow as tf

    flags = ["-w", *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]   # -w: TF's headers warn by the hundred
    return _build("tf-ops", TENSORFLOW_SOURCES, flags, f"tensorflow {tf.__version__}")


def _unavailable(error: Exception) -> None:
    warnings.warn(f"llama_tf: one-token products stay the framework's: {error}", RuntimeWarning, stacklevel=3)


@functools.cache
def available() -> bool:
    """Whether the kernels are built, loaded and registered with JAX's CPU backend (once per process).
    False, after a one-line warning, where they cannot be built; False without one under LLAMA_TF_KERNELS=0."""
    if os.environ.get(SWITCH) == "0":
        return False
    try:
        import jax

        library = ctypes.cdll.LoadLibrary(str(build()))
    except (KernelBuildError, OSError, ImportError) as error:
        _unavailable(error)
        return False
    for target in TARGETS:
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)), platform="cpu")
    return True


@functools.cache
def tensorflow_ops():
    """The TensorFlow ops (`llama_tf_matvec`, `llama_tf_matvec_q80`, `llama_tf_matvec_blocks`), built and loaded
    once per process, which registers the XLA targets with TensorFlow's XLA too; None, after a one-line
    warning, where they cannot be, or without one under LLAMA_TF_KERNELS=0."""
    if os.environ.get(SWITCH) == "0":
        return None
    import tensorflow as tf

    try:
        return tf.load_op_library(str(build_tensorflow()))
    except (KernelBuildError, tf.errors.NotFoundError) as error:
        _unavailable(error)
        return None


_STEP = contextvars.ContextVar("llama_tf_step", default=None)   # "graph" or "xla": what is being traced


@contextlib.contextmanager
def _tracing(step: str):
    token = _STEP.set(step)
    try:
        yield
    finally:
        _STEP.reset(token)


def graph_step():
    """While tracing a TensorFlow graph inside this, one-token products go to the TensorFlow ops, and in a
    graph traced for any batch, products whose rows turn out few when it runs (`layers.projection.kernel_or`).
    Only the `Decoder`'s graph steps enter it (its one-token step and its prompt's): a function XLA compiles
    cannot contain the ops."""
    return _tracing("graph")


def xla_step():
    """While tracing a TensorFlow function that XLA compiles (`jit_compile=True`) inside this, products
    go to the XLA targets, as custom calls (`XlaCallModule`). Only a function that XLA compiles may enter
    it: TensorFlow cannot run those calls otherwise."""
    return _tracing("xla")


def in_graph_step() -> bool:
    "Whether `graph_step()` is on and the TensorFlow ops are built."
    return _STEP.get() == "graph" and tensorflow_ops() is not None


def in_xla_step() -> bool:
    "Whether `xla_step()` is on and the TensorFlow library (with its XLA targets) is built."
    return _STEP.get() == "xla" and tensorflow_ops() is not None


def _tensorflow_tensor(x) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and tf.is_tensor(x)


def _on_tensorflow(target: str, op: str, args: list, n: int, **attributes):
    """x = args[0] (m, k) times the weights in `args[1:]` on TensorFlow, (m, n) in x's dtype: inside
    `xla_step()` the XLA target `target`, elsewhere the TensorFlow op `op`."""
    if not in_xla_step():
        return getattr(tensorflow_ops(), op)(*args, **attributes)
    x = args[0]
    return _xla_call(target, args, [((x.shape[0], n), x.dtype)], attributes)[0]


XLA_CALL_MODULE_VERSION = 9   # the serialisation that jax.export writes, which TensorFlow's XlaCallModule reads


def _xla_call(target: str, args: list, results: list, attributes: dict = {}, aliases: dict = {}) -> list:
    """The XLA FFI target `target` called on TensorFlow tensors `args` inside `xla_step()`, as a
    one-operation StableHLO module (`stablehlo_custom_call`) that TensorFlow's `XlaCallModule` runs:
    `results` are (shape, dtype), `attributes` bool or int32, `aliases` {result: argument} results written
    in their argument's buffer."""
    import tensorflow as tf
    from tensorflow.compiler.tf2xla.ops.gen_xla_ops import xla_call_module

    args = [tf.convert_to_tensor(a) for a in args]
    results = [(tuple(shape), tf.as_dtype(dtype)) for shape, dtype in results]
    text = stablehlo_custom_call(target, tuple((tuple(a.shape), a.dtype.name) for a in args),
                                 tuple((shape, dtype.name) for shape, dtype in results),
                                 tuple(attributes.items()), tuple(aliases.items()))
    return xla_call_module(args, version=XLA_CALL_MODULE_VERSION, module=_serialized(text),
                           Sout=[shape for shape, _ in results], Tout=[dtype for _, dtype in results], platforms=["CPU"])


_MLIR_TYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "int8": "i8", "uint8": "ui8", "int32": "i32"}


def stablehlo_custom_call(target: str, operands: tuple, results: tuple, attributes: tuple = (), aliases: tuple = ()) -> str:
    """The text of a StableHLO module whose `main` is one `custom_call` to the XLA FFI target `target`:
    operands and results as (shape, dtype name), attributes as (name, bool or int32), aliases as
    (result, operand) pairs whose result is written in the operand's buffer."""
    def tensor(shape, dtype):
        return f"tensor<{'x'.join(map(str, (*shape, _MLIR_TYPES[dtype])))}>"

    def attribute(value):
        return str(value).lower() if isinstance(value, bool) else f"{int(value)} : i32"

    ins, outs = ", ".join(tensor(*o) for o in operands), ", ".join(tensor(*r) for r in results)
    arguments = ", ".join(f"%arg{i}: {tensor(*o)}" for i, o in enumerate(operands))
    config = ", ".join(f"{name} = {attribute(value)}" for name, value in attributes)
    aliased = ", ".join(f"#stablehlo.output_operand_alias<output_tuple_indices = [{r}], operand_index = {o}, "
                        "operand_tuple_indices = []>" for r, o in aliases)
    several = len(results) > 1
    returned = ", ".join(f"%0#{i}" for i in range(len(results))) if several else "%0"
    return f"""module @{target} {{
  func.func public @main({arguments}) -> ({outs}) {{
    %0{f":{len(results)}" if several else ""} = stablehlo.custom_call @{target}({", ".join(f"%arg{i}" for i in range(len(operands)))})
      {{api_version = 4 : i32, backend_config = {{{config}}}, output_operand_aliases = [{aliased}]}}
      : ({ins}) -> ({outs})
    return {returned} : {outs}
  }}
}}"""


@functools.cache
def _serialized(text: str) -> bytes:
    "A StableHLO module's text as the portable artifact that XlaCallModule reads."
    from tensorflow.compiler.mlir.stablehlo import stablehlo

    return stablehlo.serialize_portable_artifact_str(text, stablehlo.get_current_version())


def matvec(x, w, out_in: bool = False):
    """x (m, k) · W on the CPU by the kernel, a JAX array (m, n) in x's dtype (float32 or bfloat16); W
    (float32 or bfloat16) is (k, n), a Dense kernel, or with `out_in` (n, k), an embedding table.
    Differentiable (the gradients are plain products). Call only where `available()`. Given a
    TensorFlow tensor x, TensorFlow's op, or inside `xla_step()` the XLA target (not differentiable),
    where `tensorflow_ops()`."""
    n = w.shape[0] if out_in else w.shape[1]
    if _tensorflow_tensor(x):
        return _on_tensorflow("llama_tf_matvec", "llama_tf_matvec", [x, w], n, out_in=bool(out_in))
    import jax


    @jax.custom_vjp
    def product(x, w):
        return jax.ffi.ffi_call("llama_tf_matvec", jax.ShapeDtypeStruct((x.shape[0], n), x.dtype))(
            x, w, out_in=bool(out_in))

    def forward(x, w):
        return product(x, w), (x, w)

    def backward(saved, grad):
        x, w = saved
        weights = w.T if out_in else w                      # (k, n)
        grad_w = x.T.astype("float32") @ grad.astype("float32")
        return (grad @ weights.T).astype(x.dtype), (grad_w.T if out_in else grad_w).astype(w.dtype)

    product.defvjp(forward, backward)
    return product(x, w)


def matvec_q8_0(x, q, scales):
    """x (m, k) · Wᵀ for W stored as Q8_0: int8 q (n, k), float16 scales (n, k // 32), each scaling 32
    consecutive weights of a row; a JAX array (m, n) in x's dtype. Call only where `available()`. Given a
    TensorFlow tensor x, TensorFlow's op, or inside `xla_step()` the XLA target, where `tensorflow_ops()`."""
    if _tensorflow_tensor(x):
        return _on_tensorflow("llama_tf_matvec_q8_0", "llama_tf_matvec_q80", [x, q, scales], q.shape[0])
    import jax

    out = jax.ShapeDtypeStruct((x.shape[0], q.shape[0]), x.dtype)
    return jax.ffi.ffi_call("llama_tf_matvec_q8_0", out)(x, q, scales)


def matvec_blocks(x, w, ggml_type: int):
    """x (m, k) · Wᵀ for W's n rows stored as llama.cpp's blocks of GGML type `ggml_type` (Q4_0 2, Q5_0 6,
    Q5_1 7, Q4_K 12, Q5_K 13, Q6_K 14; `kernels/blocks.h`): uint8 W (n, bytes of a row), as GGUF stores it;
    a JAX array (m, n) in x's dtype. Call only where `available()`. Given a TensorFlow tensor x,
    TensorFlow's op, or inside `xla_step()` the XLA target, where `tensorflow_ops()`."""
    if _tensorflow_tensor(x):
        return _on_tensorflow("llama_tf_matvec_blocks", "llama_tf_matvec_blocks", [x, w], w.shape[0],
                              ggml_type=int(ggml_type))
    import jax
    import numpy as np

    out = jax.ShapeDtypeStruct((x.shape[0], w.shape[0]), x.dtype)
    return jax.ffi.ffi_call("llama_tf_matvec_blocks", out)(x, w, ggml_type=np.int32(ggml_type))


def attend_one(q, k, v, keys, values, index, start=None):
    """One new token per row: writes k and v (batch, kv_heads, 1, head_dim) into the cache's `keys` and
    `values` (batch, kv_heads, slots, head_dim) at slot `index`, in place, and returns q's
    (batch, 1, heads, head_dim) attention over each row's slots start..index (`start` (batch,), the slot
    where a left-padded row's tokens begin; None: 0), with the updated keys and values: (out, keys,
    values). Call only where `available()`."""
    if _tensorflow_tensor(q):
        import tensorflow as tf

        start = tf.zeros((q.shape[0],), "int32") if start is None else tf.cast(start, "int32")
        return _xla_call("llama_tf_attend_one", [q, k, v, keys, values, tf.reshape(tf.cast(index, "int32"), ()), start],
                         [(q.shape, q.dtype), (keys.shape, keys.dtype), (values.shape, values.dtype)],
                         aliases={1: 3, 2: 4})
    import jax
    import jax.numpy as jnp

    start = jnp.zeros((q.shape[0],), "int32") if start is None else jnp.asarray(start, "int32")
    shapes = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(keys.shape, keys.dtype),
              jax.ShapeDtypeStruct(values.shape, values.dtype))
    call = jax.ffi.ffi_call("llama_tf_attend_one", shapes, input_output_aliases={3: 1, 4: 2})
    return call(q, k, v, keys, values, jnp.asarray(index, "int32").reshape(()), start)

"""The native libraries' start-up log lines kept out of sessions, notebooks and command lines.

TensorFlow 2.21 and SentencePiece write C++ log lines straight to file descriptor 2 (absl logs before
`InitializeLog`, whatever `TF_CPP_MIN_LOG_LEVEL` says): `Could not find cuda drivers`, a CPU-feature
notice, and `failed call to cuInit: ... CUDA error` on every machine without a GPU. A user reads those as
failures. `import llama_tf` installs `quiet_tensorflow_start`: TensorFlow's first import and device
discovery then run inside `native_logs_dropped`, which points descriptor 2 at `/dev/null` while keeping
Python's `sys.stderr` (warnings, errors, progress bars) on the terminal; native lines written after that
(a crash inside TensorFlow) show as usual. Devices are listed, not initialised, so
`tf.config.set_visible_devices` and the threading settings still work after `import llama_tf`. The
command lines drop native lines for the whole process (`silence_native_logs`). `LLAMA_TF_NATIVE_LOGS=1`
keeps every native line, for debugging.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
import threading

__all__ = ["NATIVE_LOGS_ENV", "native_logs_dropped", "quiet_tensorflow_start", "silence_native_logs",
           "float16_notice_dropped"]

NATIVE_LOGS_ENV = "LLAMA_TF_NATIVE_LOGS"


def native_logs_wanted() -> bool:
    return os.environ.get(NATIVE_LOGS_ENV, "") not in ("", "0")


def _drop_descriptor_2() -> int:
    "Points descriptor 2 at /dev/null; returns a copy of what it was. Python's stderr keeps that copy."
    sys.stderr.flush()
    terminal = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    return terminal


def _on_descriptor(stream, fd: int):
    return os.fdopen(fd, "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                     errors="backslashreplace")


def _writes_to_descriptor_2(stream) -> bool:
    "Whether `stream` is the plain process stderr (in Jupyter it is the kernel's own stream instead)."
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


# Descriptor 2 is one per process: threads inside `native_logs_dropped` share one drop, which the last to
# leave undoes (else a second thread would save /dev/null as "the terminal" and restore it).
_DROP_LOCK = threading.Lock()
_drop_depth = 0
_dropped: tuple | None = None   # (the terminal's descriptor, Python's stderr before the drop)


@contextlib.contextmanager
def native_logs_dropped():
    "Within: native writes to descriptor 2 are dropped; Python's `sys.stderr` still shows. Thread-safe."
    global _drop_depth, _dropped
    if native_logs_wanted():
        yield
        return
    with _DROP_LOCK:
        if _drop_depth == 0:
            python_stderr = sys.stderr
            terminal = _drop_descriptor_2()
            if _writes_to_descriptor_2(python_stderr):
                sys.stderr = _on_descriptor(python_stderr, os.dup(terminal))
            _dropped = (terminal, python_stderr)
        _drop_depth += 1
    try:
        yield
    finally:
        with _DROP_LOCK:
            _drop_depth -= 1
            if _drop_depth == 0:
                terminal, python_stderr = _dropped
                if sys.stderr is not python_stderr:
                    sys.stderr.close()
                    sys.stderr = python_stderr
                os.dup2(terminal, 2)
                os.close(terminal)
                _dropped = None


_float16_notice_gone = False


def float16_notice_dropped() -> None:
    """TensorFlow's oneDNN writes one line per process at its first float16 operation on a CPU without
    AVX-512 float16 instructions, at ERROR level: `oneDNN supports DT_HALF only on platforms with AVX-512.
    Falling back to the default Eigen-based implementation`. A notice, not a failure: run one such operation
    now with the line dropped (`llama_tf.load` does, before it reads weights; float16 files and Q8_0 scales
    would meet it). Initialises TensorFlow's devices: call it only where they are initialised anyway."""
    global _float16_notice_gone
    if _float16_notice_gone or native_logs_wanted() or "tensorflow" not in sys.modules:
        return
    import tensorflow as tf

    with native_logs_dropped(), tf.device("CPU:0"):
        tf.cast(tf.zeros([1], tf.float16), tf.float32)
    _float16_notice_gone = True


def silence_native_logs() -> None:
    "For the rest of the process (a command line): native writes to descriptor 2 are dropped."
    if native_logs_wanted():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr = _on_descriptor(sys.stderr, _drop_descriptor_2())


class _QuietLoader(importlib.abc.Loader):
    "TensorFlow's own loader, run inside `native_logs_dropped` with its devices discovered at once."

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowFinder)]   # once
        with native_logs_dropped():
            self.loader.exec_module(module)
            if hasattr(module, "config"):
                module.config.list_physical_devices()   # where `failed call to cuInit` is logged

    def __getattr__(self, name):   # resources and the rest, as TensorFlow's loader has them
        return getattr(self.loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: hands the import of `tensorflow` to `_QuietLoader`, which removes this finder
    when it runs (a `find_spec` that only asks whether TensorFlow is installed leaves it in place)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow_start() -> None:
    "TensorFlow's start-up lines dropped when it is first imported (once per process; a no-op after that)."
    if native_logs_wanted() or "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())

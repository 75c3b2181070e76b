"""Command lines that print only their own output: the native libraries' log lines go nowhere.

TensorFlow 2.21 and SentencePiece write C++ log lines straight to file descriptor 2 (absl logs before
`InitializeLog`, whatever `TF_CPP_MIN_LOG_LEVEL` says), among them `failed call to cuInit` on every
machine without a GPU. A user reads those as failures. `silence_native_logs` points descriptor 2 at
`/dev/null` and keeps Python's `sys.stderr` (error messages, warnings, progress bars) on the terminal.
`LLAMA_TF_NATIVE_LOGS=1` keeps the native lines, for debugging a crash inside TensorFlow.
"""

from __future__ import annotations

import os
import sys

NATIVE_LOGS_ENV = "LLAMA_TF_NATIVE_LOGS"


def silence_native_logs() -> None:
    "For the rest of the process: native writes to descriptor 2 are dropped, Python's stderr still shows."
    if os.environ.get(NATIVE_LOGS_ENV, "") not in ("", "0"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    terminal = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")

"""Native log lines (TensorFlow's and SentencePiece's, written to descriptor 2) are kept out of Python
sessions and notebooks without hiding Python's own warnings and errors (`llama_tf.quiet`)."""

import os
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from llama_tf.quiet import NATIVE_LOGS_ENV

# absl/glog lines (`I0000 00:00:...`, `E0000 ...`), absl's preamble, SentencePiece's `LOG(INFO)`.
NATIVE_LINE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl|\S+\.cc\(\d+\) LOG)", re.M)

MECHANISM = """
import os, sys
from llama_tf.quiet import native_logs_dropped
with native_logs_dropped():
    os.write(2, b"native inside\\n")
    print("python inside", file=sys.stderr)
os.write(2, b"native after\\n")
"""

USE = """
import warnings
import llama_tf
llm = llama_tf.load()
llm.generate("ROMEO:", max_new_tokens=2)
warnings.warn("a Python warning")
"""


def run_python(code: str, **env) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env, NATIVE_LOGS_ENV: env.get(NATIVE_LOGS_ENV, "")})
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_native_lines_are_dropped_inside_the_window_only():
    assert run_python(MECHANISM) == "python inside\nnative after\n"


THREADS = """
import os, threading
from llama_tf.quiet import native_logs_dropped
a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

def a():                      # enters first, leaves first
    with native_logs_dropped():
        a_in.set()
        b_in.wait()
    a_out.set()

def b():                      # enters while a is inside, leaves after it
    a_in.wait()
    with native_logs_dropped():
        b_in.set()
        a_out.wait()
        os.write(2, b"native inside\\n")
threads = [threading.Thread(target=f) for f in (a, b)]
[t.start() for t in threads]
[t.join() for t in threads]
os.write(2, b"native after\\n")
"""

RESEEDED = """
import llama_tf
import keras
tokenizer = llama_tf.load().tokenizer
first = tokenizer.encode("ROMEO: hi")
keras.utils.set_random_seed(0)       # clears TensorFlow's kernels, the SentencePiece model's owner among them
assert tokenizer.encode("ROMEO: hi") == first
"""


def test_threads_that_overlap_leave_descriptor_2_as_it_was():
    assert run_python(THREADS) == "native after\n"


def test_a_tokenizer_rebuilt_after_reseeding_logs_nothing():
    assert not NATIVE_LINE.search(run_python(RESEEDED))


def test_LLAMA_TF_NATIVE_LOGS_keeps_every_native_line():
    assert run_python(MECHANISM, **{NATIVE_LOGS_ENV: "1"}) == "native inside\npython inside\nnative after\n"


def test_tensorflow_can_still_be_configured_after_import():
    run_python("import llama_tf.model, tensorflow as tf\n"
               "tf.config.set_visible_devices([], 'GPU')\n"
               "tf.config.threading.set_intra_op_parallelism_threads(1)")


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_a_python_session_shows_python_warnings_and_no_native_lines(backend):
    "On JAX and PyTorch, TensorFlow comes later (the SentencePiece ops), after a check that it is installed."
    stderr = run_python(USE, KERAS_BACKEND=backend)
    assert "UserWarning: a Python warning" in stderr
    assert not NATIVE_LINE.search(stderr), stderr


def test_a_notebook_cell_shows_no_native_lines(tmp_path, monkeypatch):
    "In Jupyter, where ipykernel copies descriptor 2 into the cell (its default, not tests/ipython's profile)."
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))   # a fresh profile: ipykernel's defaults
    monkeypatch.delenv("PYTEST_CURRENT_TEST")          # under which ipykernel would not copy descriptor 2
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(USE)])
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()   # ipykernel's own: this Python
    streams = "".join(out.get("text", "") for out in notebook.cells[0].outputs if out.output_type == "stream")
    assert "UserWarning: a Python warning" in streams
    assert not NATIVE_LINE.search(streams), streams

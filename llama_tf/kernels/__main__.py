"""`python -m llama_tf.kernels`: build the compiled kernels for this machine now (see `llama_tf.kernels`):
the JAX library, and the TensorFlow ops where TensorFlow is installed."""

import importlib.util
import sys

from llama_tf.kernels import KernelBuildError, build, build_tensorflow

try:
    print(build())
    if importlib.util.find_spec("tensorflow"):
        print(build_tensorflow())
except KernelBuildError as error:
    sys.exit(f"error: {error}")

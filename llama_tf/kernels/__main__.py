"""`python -m llama_tf.kernels`: build the compiled kernels for this machine now (see `llama_tf.kernels`)."""

import sys

from llama_tf.kernels import KernelBuildError, build

try:
    print(build())
except KernelBuildError as error:
    sys.exit(f"error: {error}")

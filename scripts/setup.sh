#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install llama_tf with everything the notebooks and tests use.
# Idempotent: a second run only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "llama_tf needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# PyTorch (only for reading .pth checkpoints and as the reference in tests) goes first and pinned:
# left to the resolver, an unpinned torch pulls several GB of CUDA packages.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"

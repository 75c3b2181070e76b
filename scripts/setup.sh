#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install llama_tf into it.
#   bash scripts/setup.sh        the package with TensorFlow: what generating, chatting and the command lines need
#   bash scripts/setup.sh dev    everything the notebooks and tests use as well (scripts/test.sh runs this)
# Idempotent: a second run only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "llama_tf needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check)
# `editable_mode=compat` puts the repository itself on sys.path, so `import llama_tf` finds this package
# from any working directory (setuptools' default finder loses to a folder named llama_tf in the current one).
editable=(--config-settings editable_mode=compat)
if [ "${1:-}" != dev ]; then
    echo "== installing llama_tf with TensorFlow into .venv (a few minutes on a fresh machine)" >&2
    "${pip[@]}" --progress-bar on -e ".[tensorflow]" "${editable[@]}"
    exit 0
fi
# PyTorch (reading .pth checkpoints; the tests' reference) first, its CPU build: from PyTorch's CPU index,
# else (where that index cannot be reached) from the default one, pinned so that nothing pulls a CUDA build.
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    echo "== installing PyTorch's CPU build" >&2
    "${pip[@]}" --quiet --timeout 15 --retries 1 "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
        || "${pip[@]}" --quiet "torch==2.13.0"
fi
echo "== installing what the notebooks and tests use (llama-cpp-python compiles llama.cpp once: about 10 minutes)" >&2
"${pip[@]}" --quiet -e ".[dev]" "${editable[@]}"

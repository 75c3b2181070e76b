#!/usr/bin/env bash
# Open the notebooks in JupyterLab with the kernel settings their saved outputs were made with:
# TensorFlow's C++ log lines go to this terminal instead of into cells (the kernel profile in tests/ipython).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/jupyter ] || bash scripts/setup.sh dev
export IPYTHONDIR="$PWD/tests/ipython"
# Jupyter refuses to start as root unless told to (containers and CI machines often run as root).
root=()
if [ "$(id -u)" = 0 ]; then root=(--allow-root); fi
exec .venv/bin/jupyter lab notebooks "${root[@]}" "$@"

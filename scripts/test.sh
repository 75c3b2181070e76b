#!/usr/bin/env bash
# Set up (scripts/setup.sh dev) and run every test: pytest on tests/ and strict nbval on notebooks/.
# With no arguments, the notebooks are then checked again the way other machines run them: with oneDNN
# off on one core, and without ../shared (a fresh clone). Their saved outputs must hold in each.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/python -m pytest "$@"
[ $# -eq 0 ] || exit 0

# The parity tests (layers and logits against transformers, cached against uncached decoding, greedy
# text against transformers' generate) and training again on Keras' other backends; TensorFlow ran
# them above.
for backend in jax torch; do
    echo "== the parity and training tests on KERAS_BACKEND=$backend"
    KERAS_BACKEND=$backend .venv/bin/python -m pytest -q tests/test_layers.py tests/test_parity.py \
        tests/test_generation.py tests/test_fused_attention.py tests/test_train.py
done
echo "== one-token steps through the compiled kernel (KERAS_BACKEND=jax)"
KERAS_BACKEND=jax .venv/bin/python -m pytest -q tests/test_q8_0.py -k kernel_steps

# `-k ipynb` selects the notebooks' cells from the whole suite, so tests/conftest.py (kernel profile, skips)
# applies as in the run above.
nbval=(.venv/bin/python -m pytest -k ipynb -q)
# The main run had oneDNN on and every core; this one changes both at once (one pass instead of two
# keeps CI within its 30 minutes): oneDNN off, and one core where taskset exists.
one_core=()
if command -v taskset >/dev/null; then one_core=(taskset -c 0); fi
echo "== the notebooks with oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)${one_core:+ on one core (taskset -c 0)}"
TF_ENABLE_ONEDNN_OPTS=0 "${one_core[@]}" "${nbval[@]}"
echo "== the notebooks without ../shared, as on a fresh clone (notebooks that need it skip)"
no_shared=$(mktemp -d)
trap 'rm -rf "$no_shared"' EXIT
CI= LLAMA_TF_SHARED="$no_shared" XDG_CACHE_HOME="$no_shared/cache" "${nbval[@]}" -rs

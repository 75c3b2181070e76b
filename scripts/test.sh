#!/usr/bin/env bash
# Set up (scripts/setup.sh dev) and run every test: pytest on tests/ and strict nbval on notebooks/.
# With no arguments, the parity and training tests then run again on JAX and PyTorch, and the notebooks
# are checked again the way other machines run them: with oneDNN off on one core, and without ../shared
# (a fresh clone). Their saved outputs must hold in each.
#
# Most tests use one core at a time (small models, tracing, compiling), so each pass spreads its test
# files over WORKERS processes (pytest-xdist; default: the cores, at most 4), and the two notebook passes
# run side by side, one core each.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
cores=$(nproc 2>/dev/null || echo 2)
workers=${WORKERS:-$(( cores < 4 ? cores : 4 ))}
# --dist loadscope: a test module (its module-scoped fixtures) or a notebook (its cells, in order) stays
# on one worker.
parallel=(-n "$workers" --dist loadscope)
[ "$workers" -gt 1 ] || parallel=()
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
.venv/bin/python -m pytest "${parallel[@]}"

# The parity tests (layers and logits against transformers, cached against uncached decoding, greedy
# text against transformers' generate) and training again on Keras' other backends; TensorFlow ran
# them above.
for backend in jax torch; do
    echo "== the parity and training tests on KERAS_BACKEND=$backend"
    KERAS_BACKEND=$backend .venv/bin/python -m pytest -q "${parallel[@]}" tests/test_layers.py tests/test_parity.py \
        tests/test_generation.py tests/test_fused_attention.py tests/test_train.py
done
echo "== one-token steps through the compiled kernel (KERAS_BACKEND=jax)"
KERAS_BACKEND=jax .venv/bin/python -m pytest -q tests/test_q8_0.py -k kernel_steps

# `-k ipynb` selects the notebooks' cells from the whole suite, so tests/conftest.py (kernel profile, skips)
# applies as in the run above. The main run had oneDNN on and every core; the first pass here changes
# both (oneDNN off, one core); the second runs as a fresh clone does, without ../shared (notebooks that
# need it skip). They run at the same time, on a core each where taskset exists; each prints when done.
nbval=(.venv/bin/python -m pytest -k ipynb -q)
core() { if command -v taskset >/dev/null && [ "$cores" -gt 1 ]; then echo taskset -c "$1"; fi; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/no_shared"
( TF_ENABLE_ONEDNN_OPTS=0 $(core 0) "${nbval[@]}" > "$scratch/onednn_off.log" 2>&1 ) &
one_core=$!
( CI= LLAMA_TF_SHARED="$scratch/no_shared" XDG_CACHE_HOME="$scratch/no_shared/cache" $(core 1) "${nbval[@]}" -rs \
    > "$scratch/no_shared.log" 2>&1 ) &
no_shared=$!
status=0
wait "$one_core" || status=1
echo "== the notebooks with oneDNN off (TF_ENABLE_ONEDNN_OPTS=0) on one core"
cat "$scratch/onednn_off.log"
wait "$no_shared" || status=1
echo "== the notebooks without ../shared, as on a fresh clone (notebooks that need it skip)"
cat "$scratch/no_shared.log"
exit "$status"

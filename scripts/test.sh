#!/usr/bin/env bash
# Set up (scripts/setup.sh dev) and run every test. With arguments: `pytest ARGS`. Without: every pass
# below, in two streams side by side, each on a core of its own where taskset exists (most tests use one
# core at a time: small models, tracing, compiling; two unpinned TensorFlow processes would fight over
# both cores). Each pass's output is printed when its stream ends; the exit status is 1 if any failed.
#
#   stream 1: the tests on TensorFlow; the parity and training tests again on PyTorch; one-token steps
#             through the compiled kernel (JAX)
#   stream 2: the notebooks under strict nbval (oneDNN on, two threads); again with oneDNN off on one
#             thread; again without ../shared (a fresh clone: notebooks that need it skip); the parity
#             and training tests on JAX
#
# The notebooks' saved outputs must hold in each configuration: CPU, oneDNN and thread count change the
# last bits of float32 results (README, "Saved outputs hold on any CPU").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi

pytest=(.venv/bin/python -m pytest)
parity=(tests/test_layers.py tests/test_parity.py tests/test_generation.py tests/test_fused_attention.py
        tests/test_train.py tests/test_lora.py tests/test_finetune.py)
pin=0
if command -v taskset >/dev/null && [ "$(nproc)" -gt 1 ]; then pin=1; fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/no_shared"

# pass CORE NAME VAR=VALUE... -- COMMAND...: one pass on core CORE, its output appended to stream CORE's log.
pass() {
    local core=$1 name=$2 log="$scratch/stream$1.log"
    shift 2
    local env=()
    while [ "$1" != -- ]; do env+=("$1"); shift; done
    shift
    local where=()
    [ "$pin" = 0 ] || where=(taskset -c "$core")
    echo "== $name" >> "$log"
    if env "${env[@]}" "${where[@]}" "$@" >> "$log" 2>&1; then return 0; fi
    echo "== FAILED: $name" >> "$log"
    return 1
}

stream0() {
    local status=0
    pass 0 "the tests (TensorFlow)" -- "${pytest[@]}" -k "not ipynb" || status=1
    pass 0 "the parity and training tests on KERAS_BACKEND=torch" KERAS_BACKEND=torch -- \
        "${pytest[@]}" -q "${parity[@]}" || status=1
    pass 0 "one-token steps through the compiled kernel (KERAS_BACKEND=jax)" KERAS_BACKEND=jax -- \
        "${pytest[@]}" -q tests/test_q8_0.py -k kernel_steps || status=1
    return $status
}

stream1() {
    local status=0
    # `-k ipynb` selects the notebooks' cells from the whole suite, so tests/conftest.py (kernel profile,
    # skips) applies to them as to the tests.
    pass 1 "the notebooks (oneDNN on, two threads)" TF_NUM_INTRAOP_THREADS=2 -- \
        "${pytest[@]}" -k ipynb -q || status=1
    pass 1 "the notebooks with oneDNN off (TF_ENABLE_ONEDNN_OPTS=0) on one thread" TF_ENABLE_ONEDNN_OPTS=0 \
        TF_NUM_INTRAOP_THREADS=1 -- "${pytest[@]}" -k ipynb -q || status=1
    pass 1 "the notebooks without ../shared, as on a fresh clone (notebooks that need it skip)" CI= \
        LLAMA_TF_SHARED="$scratch/no_shared" XDG_CACHE_HOME="$scratch/no_shared/cache" -- \
        "${pytest[@]}" -k ipynb -q -rs || status=1
    pass 1 "the parity and training tests on KERAS_BACKEND=jax" KERAS_BACKEND=jax -- \
        "${pytest[@]}" -q "${parity[@]}" || status=1
    return $status
}

stream0 & first=$!
stream1 & second=$!
status=0
wait "$first" || status=1
cat "$scratch/stream0.log"
wait "$second" || status=1
cat "$scratch/stream1.log"
[ "$status" = 0 ] && echo "== every pass passed" || echo "== some pass FAILED (see == FAILED above)"
exit "$status"

"""Memory and time of attention, reference (the whole score matrix) against tiled (notebook 10).

    python benchmarks/attention_memory.py            # about 15 minutes on a 2-core CPU

1. One attention layer of the 134M shape (dim 768, 12 heads), causal, float32, at 1k, 4k, 16k and 32k
   tokens: peak resident memory (growth over the process before the call) and wall time, each in a
   fresh process. The reference is not run where one (heads, seq, seq) score matrix alone would pass
   `--limit-gib`.
2. The longest prompt the full 134M model (random weights) can prefill within `--limit-gib` of
   resident memory with each path: prompts of 1k, 2k, 4k, ... tokens, each in a fresh process that is
   stopped as soon as its memory passes the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

GIB = 2**30
DIM, HEADS = 768, 12


def _resident(pid: str = "self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_during(fn) -> tuple[float, int]:
    "(seconds, peak resident bytes) of fn(), sampling every millisecond."
    peak, done = [_resident()], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _resident())
            time.sleep(0.001)
    watcher = threading.Thread(target=watch)
    watcher.start()
    begin = time.perf_counter()
    fn()
    seconds = time.perf_counter() - begin
    done.set()
    watcher.join()
    return seconds, max(peak[0], _resident())


def task_layer(seq: int, impl: str) -> dict:
    import numpy as np
    import tensorflow as tf

    import llama_tf

    layer = llama_tf.Attention(DIM, HEADS, attention_impl=impl, block_size=512, name="attention")
    call = tf.function(layer, input_signature=[tf.TensorSpec((1, None, DIM))])
    call(tf.zeros((1, 520, DIM)))                   # build and compile (longer than a block: both branches)
    x = tf.constant(np.random.default_rng(0).normal(size=(1, seq, DIM)).astype("float32"))
    before = _resident()
    seconds, peak = _peak_during(lambda: call(x).numpy())
    return {"seconds": seconds, "growth": peak - before}


def task_prefill(seq: int, impl: str) -> dict:
    import numpy as np

    from llama_tf.config import LlamaConfig
    from llama_tf.generation import Decoder
    from llama_tf.sampling import Sampler
    from llama_tf.model import build_llama

    config = LlamaConfig(dim=DIM, n_layers=12, n_heads=HEADS, vocab_size=32000, hidden_dim=2048,
                         max_seq_len=seq + 1)
    model = build_llama(config, attention_impl=impl, block_size=512)
    decoder = Decoder(model, config.max_seq_len)
    list(decoder([[1, 2, 3]], 1, Sampler()))                              # compile
    prompt = np.random.default_rng(0).integers(3, 32000, seq).tolist()
    seconds, peak = _peak_during(lambda: list(decoder([prompt], 1, Sampler())))
    return {"seconds": seconds, "peak": peak}


def run(task: str, seq: int, impl: str, limit: int) -> dict:
    "Runs a task in a fresh process, stopping it if its resident memory passes `limit` bytes."
    command = [sys.executable, __file__, "--task", task, "--seq", str(seq), "--impl", impl]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, _resident(str(child.pid)))
        except (FileNotFoundError, ProcessLookupError):
            break
        if peak > limit:
            child.kill()
            child.wait()
            return {"error": f"passed {limit / GIB:.0f} GiB"}
        time.sleep(0.02)
    out, err = child.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if child.returncode or not lines:
        return {"error": (err.strip().splitlines() or ["no output"])[-1][:100]}
    return {**json.loads(lines[-1]), "process_peak": peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="1024,4096,16384,32768", help="layer benchmark sequence lengths")
    p.add_argument("--limit-gib", type=float, default=8.0)
    p.add_argument("--max-prefill", type=int, default=65536, help="longest prompt tried")
    p.add_argument("--task", help=argparse.SUPPRESS)
    p.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.task:
        print(json.dumps({"layer": task_layer, "prefill": task_prefill}[args.task](args.seq, args.impl)))
        return 0

    limit = int(args.limit_gib * GIB)
    print(f"One attention layer (dim {DIM}, {HEADS} heads, causal, float32), block 512:\n")
    print("| tokens | reference: time | reference: peak memory | tiled: time | tiled: peak memory |")
    print("|---|---|---|---|---|")
    for seq in map(int, args.lengths.split(",")):
        cells = []
        for impl in ("reference", "tiled"):
            scores = HEADS * seq * seq * 4
            if impl == "reference" and scores > limit:
                cells += ["not run", f"one score matrix alone: {scores / GIB:.0f} GiB"]
                continue
            r = run("layer", seq, impl, 2 * limit)
            cells += [f"{r['seconds']:.2f} s", f"+{r['growth'] / 2**20:,.0f} MiB"] if "error" not in r \
                else [r["error"], ""]
        print(f"| {seq:,} | " + " | ".join(cells) + " |", flush=True)

    print(f"\nLongest prompt the 134M model (float32) prefills within {args.limit_gib:.0f} GiB of resident memory:\n")
    print("| path | tokens | time | peak resident memory | next length |")
    print("|---|---|---|---|---|")
    for impl in ("reference", "tiled"):
        best, failure, seq = None, "", 1024
        while seq <= args.max_prefill:
            r = run("prefill", seq, impl, limit)
            if "error" in r:
                failure = f"{seq:,}: {r['error']}"
                break
            best = (seq, r)
            seq *= 2
        if best is None:
            print(f"| {impl} | — | | | {failure} |")
        else:
            seq, r = best
            print(f"| {impl} | {seq:,} | {r['seconds']:.1f} s | {r['peak'] / GIB:.2f} GiB | {failure or 'not tried'} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

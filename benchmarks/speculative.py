"""Speculative decoding (`llama_tf.speculative`) measured: what a round costs, how often the draft is kept,
and the speed-up that follows, against the target decoding alone.

    KERAS_BACKEND=jax python benchmarks/speculative.py --json results/gpu/speculative.json   # a CUDA machine

Random bfloat16 weights (transformers, seeded, as `gpu_decode.py` makes them): the Llama 3.1 8B shape as
the target, the Llama 3.2 1B shape as its draft (same vocabulary). Greedy, batch 1, after a 128-token
prompt, on JAX. Measured, each the median of 30 calls after a warm-up:

- `scoring_step` calls: the target's one-token step, the draft's, and the target's check of k + 1 tokens;
- one run of `speculative_steps` (128 new tokens, k = 4): tokens/s, and the share of proposals kept;
- the same 128 tokens by `Decoder` (the compiled decode loop `generate` uses), for reference.

From these, the speed-up at acceptance rate a: a round yields E(a) = (1 - a^(k+1)) / (1 - a) tokens in
k draft steps and one check, against E(a) one-token target steps. Random weights agree on almost nothing,
so the measured rate is near 0: the round's cost is the price of a rejected draft; the table also gives
the speed-up these costs allow at the rates trained pairs reach (0.6-0.8 in the papers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_decode  # noqa: E402

TARGET, DRAFT, DRAFT_TOKENS, NEW_TOKENS = "llama3.1-8b", "llama3.2-1b", 4, 128


def expected_tokens(rate: float, k: int) -> float:
    "Tokens a round yields when each proposal is kept with probability `rate`: kept ones, then one of the target's."
    return k + 1.0 if rate == 1 else (1 - rate ** (k + 1)) / (1 - rate)


def worker_measure(target_dir: Path, draft_dir: Path, **_) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    import jax

    from llama_tf.formats import read_checkpoint
    from llama_tf.generation import Decoder
    from llama_tf.loading import build_model
    from llama_tf.model import new_cache
    from llama_tf.sampling import Sampler
    from llama_tf.speculative import scoring_step, speculative_steps

    checkpoints = {name: read_checkpoint(d) for name, d in (("target", target_dir), ("draft", draft_dir))}
    models = {name: build_model(c, dtype="bfloat16", progress=False) for name, c in checkpoints.items()}
    vocab = checkpoints["target"].config.vocab_size
    prompt = [1] + np.random.default_rng(0).integers(3, vocab, 127).tolist()

    def median_call(name, n_tokens):
        step, cache = scoring_step(models[name]), new_cache(models[name], 1, 512)
        _, cache = step([prompt], cache, 0)
        times = []
        for i in range(31):
            begin = time.perf_counter()
            _, cache = step([prompt[1: 1 + n_tokens]], cache, 128 + (i % 8) * 8)   # fetched: the host has the logits
            times.append(time.perf_counter() - begin)
        return float(np.median(times[1:]))

    result = {"device": jax.devices()[0].device_kind, "draft_tokens": DRAFT_TOKENS,
              "target_step_s": median_call("target", 1), "draft_step_s": median_call("draft", 1),
              "check_s": median_call("target", DRAFT_TOKENS + 1)}
    run = lambda: [int(t[0]) for t in speculative_steps(  # noqa: E731
        models["target"], models["draft"], prompt, NEW_TOKENS, Sampler(), (), vocab, DRAFT_TOKENS, stats=stats)]
    stats = {}
    run()
    begin = time.perf_counter()
    tokens = run()
    result["speculative_tok_s"] = NEW_TOKENS / (time.perf_counter() - begin)
    result["acceptance"] = stats["accepted"] / stats["proposed"]
    decoder = Decoder(models["target"], max_seq_len=512)
    plain = [int(s[0]) for s in decoder([prompt], NEW_TOKENS, Sampler(), stop_ids=())]
    begin = time.perf_counter()
    plain = [int(s[0]) for s in decoder([prompt], NEW_TOKENS, Sampler(), stop_ids=())]
    result["decoder_tok_s"] = NEW_TOKENS / (time.perf_counter() - begin)
    result["same_tokens"] = tokens == plain
    return result


def report(r: dict) -> str:
    k = r["draft_tokens"]
    round_s = k * r["draft_step_s"] + r["check_s"]
    lines = [f"{r['device']}: target step {r['target_step_s'] * 1e3:.2f} ms, draft step {r['draft_step_s'] * 1e3:.2f} ms, "
             f"check of {k + 1} tokens {r['check_s'] * 1e3:.2f} ms; a round {round_s * 1e3:.2f} ms = "
             f"{round_s / r['target_step_s']:.2f} target steps",
             f"measured: {r['acceptance']:.0%} of proposals kept, {r['speculative_tok_s']:.0f} tok/s speculative, "
             f"{r['decoder_tok_s']:.0f} tok/s by Decoder alone; the same tokens: {r['same_tokens']}",
             "acceptance | tokens a round | speed-up over target steps of the same kind"]
    for rate in sorted({round(r["acceptance"], 2), 0.6, 0.7, 0.8, 0.9}):
        e = expected_tokens(rate, k)
        lines.append(f"{rate:10.2f} | {e:14.2f} | {e * r['target_step_s'] / round_s:.2f}x")
    return "\n".join(lines)


TASKS = {"measure": worker_measure, "make_weights": gpu_decode.make_weights}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--target", default=TARGET, choices=sorted(gpu_decode.decode.SHAPES))
    parser.add_argument("--draft", default=DRAFT, choices=sorted(gpu_decode.decode.SHAPES))
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--task-args", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.task:   # a worker process
        print(json.dumps(TASKS[args.task](**{k: Path(v) if k.endswith("_dir") else v
                                             for k, v in json.loads(args.task_args).items()})))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        dirs = {shape: Path(scratch, shape) for shape in (args.target, args.draft)}
        for shape, directory in dirs.items():
            made = gpu_decode.decode.run_task("make_weights", None, script=__file__, model_dir=directory, shape=shape)
            if "error" in made:
                raise SystemExit(f"make_weights {shape}: {made['error']}")
        result = gpu_decode.decode.run_task("measure", None, script=__file__, target_dir=dirs[args.target],
                                            draft_dir=dirs[args.draft])
    if "error" in result:
        raise SystemExit(result["error"])
    print(report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "target": args.target, "draft": args.draft,
                                         **result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

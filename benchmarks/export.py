"""The exported files against the Keras model they came from: size on disk and greedy decoding speed, batch 1,
in the same run.

    python benchmarks/export.py --json results/export_cpu.json

The shipped model (float32), TensorFlow backend. Routes: `llm.generate` (the Keras model's `Decoder`), the
SavedModel's `serving_default` signature (tokenizer and `tf.while_loop` in one graph, loaded back with
`tf.saved_model.load`), the LiteRT file (float32 and dynamic-range int8) run by `ai_edge_litert`'s
interpreter through `llama_tf.litert.generate_litert`, and the LiteRT-LM bundle run by Google's runtime
(`litert_lm.Engine`, top-k 1, its own tokenizer, prefill and decode loop). Each route continues the same prompt greedily by
`--new-tokens` tokens (the prompt is chosen to reach no stop token), once to warm up (compiling, tracing),
then `--runs` times; tokens/s = new tokens ÷ the median time, prefill included.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def timed(run, runs: int) -> float:
    "The median seconds of `runs` calls of `run`, after one call to warm up."
    run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def litert_lm_run(bundle: Path, prompt: str, n: int):
    "A call that continues `prompt` greedily by `n` tokens in LiteRT-LM's runtime and returns the text."
    import litert_lm

    engine = litert_lm.Engine(str(bundle))

    def run():
        with engine.create_session(sampler_config=litert_lm.SamplerConfig(top_k=1), max_output_tokens=n) as session:
            session.run_prefill([prompt])
            return session.run_decode().texts[0]
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the SavedModel's SentencePiece ops)

    import llama_tf
    from llama_tf.litert import generate_litert

    llm, n = llama_tf.load(), args.new_tokens
    expected = llm.generate(args.prompt, n)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        saved = llm.export(folder / "saved" / "1")
        f32 = llm.export(folder / "model.tflite", format="litert")
        int8 = llm.export(folder / "model_int8.tflite", format="litert", quantize="int8")
        bundle = llm.export(folder / "model.litertlm", format="litert_lm")
        serve = tf.saved_model.load(str(saved)).signatures["serving_default"]
        routes = {
            "keras_generate": (None, lambda: llm.generate(args.prompt, n)),
            "saved_model": (saved, lambda: serve(prompt=tf.constant([args.prompt]),
                                                 max_new_tokens=tf.constant(n))["text"].numpy()[0].decode()),
            "litert_float32": (f32, lambda: generate_litert(f32, llm.tokenizer, args.prompt, n)),
            "litert_int8": (int8, lambda: generate_litert(int8, llm.tokenizer, args.prompt, n)),
            "litert_lm": (bundle, litert_lm_run(bundle, args.prompt, n)),
        }
        for name, (path, run) in routes.items():
            text = run()
            seconds = timed(run, args.runs)
            rows.append({"route": name, "bytes": size(path) if path else None, "tokens_per_s": n / seconds,
                         "same_text_as_generate": text == expected})
    base = rows[0]["tokens_per_s"]
    print(f"{'route':<16} {'size':>9} {'tokens/s':>9} {'× Keras':>8}  same text")
    for row in rows:
        megabytes = f"{row['bytes'] / 1e6:.1f} MB" if row["bytes"] else "-"
        print(f"{row['route']:<16} {megabytes:>9} {row['tokens_per_s']:>9.1f} {row['tokens_per_s'] / base:>8.2f}  "
              f"{row['same_text_as_generate']}")
    if args.json:
        result = {"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(), "tensorflow": tf.__version__,
                  "prompt": args.prompt, "new_tokens": n, "runs": args.runs, "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

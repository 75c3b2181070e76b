"""Command line: `python -m llama_tf generate "ROMEO:"` (streams the continuation), `python -m llama_tf eval FILE`.

`--weights` defaults to $LLAMA_TF_WEIGHTS, else the project's default model (weights/shakespeare).
Errors are one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llama_tf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="continue a prompt")
    g.add_argument("prompt")
    g.add_argument("--weights", help="checkpoint folder or file (default: the shipped model)")
    g.add_argument("--max-new-tokens", type=_non_negative_int, default=100)
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
    g.add_argument("--top-k", type=_non_negative_int, default=0, help="sample from the K most likely tokens (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="sample from the nucleus of probability P (default 1)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the continuation before TEXT (may be repeated)")
    g.add_argument("--seed", type=int, help="random seed for sampling")

    e = sub.add_parser("eval", help="negative log-likelihood per character and perplexity of a text file")
    e.add_argument("file", type=Path)
    e.add_argument("--weights", help="checkpoint folder or file (default: the shipped model)")
    e.add_argument("--context", type=int, help="window length in tokens (default: the model's max_seq_len)")
    e.add_argument("--stride", type=int, help="new tokens scored per window (default: half the context)")
    e.add_argument("--max-chars", type=_non_negative_int, help="score only the first N characters")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        import llama_tf

        llm = llama_tf.load(args.weights)
        if args.command == "generate":
            pieces = llm.generate(args.prompt, args.max_new_tokens, args.temperature, args.seed, top_k=args.top_k,
                                  top_p=args.top_p, stop=args.stop, stream=True)
            print(args.prompt, end="", flush=True)
            for piece in pieces:
                print(piece, end="", flush=True)
            print()
        else:
            text = args.file.read_text(encoding="utf-8")[: args.max_chars]
            print(llama_tf.evaluate(llm, text, context=args.context, stride=args.stride))
    except (OSError, ValueError) as e:  # FileNotFoundError, CheckpointError, bad arguments
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

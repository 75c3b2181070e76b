"""Command line: `python -m llama_tf generate "ROMEO:"` (streams the continuation), `python -m llama_tf chat`
(a conversation in the terminal), `python -m llama_tf eval FILE`, `python -m llama_tf convert SRC DST`
(to Hugging Face safetensors or GGUF), `python -m llama_tf export SRC DST` (a TensorFlow SavedModel, a LiteRT file or a LiteRT-LM bundle).

`generate` and `chat` sample (temperature 0.6, top-p 0.9, as Meta's reference code) with seed 0 by
default, so the same command prints the same text; `--temperature 0` is greedy. `chat` keeps the
history, streams each reply, forgets the oldest exchanges when the context fills, and ends on Ctrl-D
or Ctrl-C at its prompt (Ctrl-C during a reply cuts the reply short). `--weights` defaults to
$LLAMA_TF_WEIGHTS, else the project's default model (weights/shakespeare). Only the command's own
output is printed (LLAMA_TF_NATIVE_LOGS=1 shows TensorFlow's log lines too); errors are one line on
stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from llama_tf.cli import ArgumentParser, number, run


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m llama_tf", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="continue a prompt")
    g.add_argument("prompt")
    g.add_argument("--weights", help="checkpoint folder or file (default: the shipped model)")
    g.add_argument("--max-new-tokens", type=number(int, 0), default=100)
    g.add_argument("--temperature", type=number(float, 0), default=0.6,
                   help="sampling temperature (default 0.6, as Meta's reference); 0: greedy")
    g.add_argument("--top-k", type=number(int, 0), default=0, help="sample from the K most likely tokens (0: all)")
    g.add_argument("--top-p", type=number(float, above=0, maximum=1), default=0.9, help="sample from the nucleus of probability P (default 0.9)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the continuation before TEXT (may be repeated)")
    g.add_argument("--seed", type=number(int, 0), default=0, help="random seed for sampling (default 0: the same text every run)")

    c = sub.add_parser("chat", help="talk with a chat model (Llama 3 Instruct, Llama 2 Chat)")
    c.add_argument("--weights", help="checkpoint folder or file (default: the shipped model)")
    c.add_argument("--system", metavar="TEXT", help="a system prompt that starts the conversation")
    c.add_argument("--max-new-tokens", type=number(int, 0),
                   help="longest reply (default: 512, or half the model's context if that is shorter)")
    c.add_argument("--temperature", type=number(float, 0), default=0.6, help="sampling temperature (default 0.6); 0: greedy")
    c.add_argument("--top-p", type=number(float, above=0, maximum=1), default=0.9, help="nucleus of probability P (default 0.9)")
    c.add_argument("--seed", type=number(int, 0), default=0, help="random seed for sampling (default 0)")

    v = sub.add_parser("convert", help="write a checkpoint as Hugging Face safetensors or as GGUF")
    v.add_argument("source", help="any checkpoint llama_tf reads (folder, .safetensors, .pth, .gguf)")
    v.add_argument("destination", help="a folder (Hugging Face) or a .gguf file")
    v.add_argument("--to", choices=["hf", "gguf"], help="default: gguf for a .gguf destination, else hf")
    v.add_argument("--dtype", default="float32",
                   choices=["float32", "float16", "bfloat16", "q8_0", "q4_0", "q5_0", "q5_1", "q4_k"],
                   help="precision of the matrices (default float32; q8_0 and the 4- and 5-bit blocks: GGUF only)")
    v.add_argument("--tokenizer", help="tokenizer file (default: the one beside SOURCE, or inside a GGUF)")

    x = sub.add_parser("export", help="write a model as a TensorFlow SavedModel that answers strings with text, "
                                      "or as a LiteRT file")
    x.add_argument("source", help="any checkpoint llama_tf reads (for a SavedModel, with a SentencePiece or Llama 3 tokenizer)")
    x.add_argument("destination", help="the SavedModel folder (TensorFlow Serving reads NAME/1), or the .tflite file")
    x.add_argument("--format", choices=["saved_model", "litert", "litert_lm"], default="saved_model",
                   help="saved_model (default): strings in, text out; litert: prefill and decode signatures; "
                        "litert_lm: a .litertlm bundle for Google's LiteRT-LM runtime")
    x.add_argument("--quantize", choices=["int8"], help="litert and litert_lm: dynamic-range int8 weights")

    e = sub.add_parser("eval", help="negative log-likelihood per character and perplexity of a text file")
    e.add_argument("file", type=Path)
    e.add_argument("--weights", help="checkpoint folder or file (default: the shipped model)")
    e.add_argument("--context", type=number(int, 2), help="window length in tokens (default: the model's max_seq_len)")
    e.add_argument("--stride", type=number(int, 1), help="new tokens scored per window (default: half the context)")
    e.add_argument("--max-chars", type=number(int, 0), help="score only the first N characters")
    for command in (g, c, e):
        command.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "q8_0", "gguf"],
                             help="precision of the matrices (default float32; gguf: a GGUF file's tensors held "
                                  "in their stored types, Q4_K_M's 4-bit blocks as they are)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return run(lambda: command(args))


def command(args) -> int | None:
    import llama_tf

    if args.command == "convert":
        from llama_tf.convert import convert

        print(convert(args.source, args.destination, args.to, args.dtype, args.tokenizer))
        return 0
    if args.command == "export":
        print(llama_tf.load(args.source, progress=True).export(args.destination, args.format, args.quantize, progress=True))
        return 0
    llm = llama_tf.load(args.weights, dtype=args.dtype)
    if args.command == "generate":
        room = llm.config.max_seq_len - len(llm.tokenizer.prompt_ids(args.prompt))
        if 0 < room < args.max_new_tokens:   # (a prompt that fills the context is refused by generate)
            print(f"note: the model's context is {llm.config.max_seq_len} tokens; at most {room} new "
                  "tokens follow this prompt", file=sys.stderr)
        pieces = llm.generate(args.prompt, args.max_new_tokens, args.temperature, args.seed, top_k=args.top_k,
                              top_p=args.top_p, stop=args.stop, stream=True)
        print(args.prompt, end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
        print()
    elif args.command == "chat":
        return chat(llm, args)
    else:
        text = args.file.read_text(encoding="utf-8")[: args.max_chars]
        print(llama_tf.evaluate(llm, text, context=args.context, stride=args.stride))


def chat(llm, args) -> int:
    "The interactive conversation of `python -m llama_tf chat`: one line in, one streamed reply out."
    from llama_tf.sampling import Sampler

    Sampler(args.temperature, 0, args.top_p, args.seed)      # bad sampling settings fail now, not at the first reply
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    if not llm.chat_tuned:
        print("note: this model does not say it was tuned for chat (no chat "
              "template in its files, no 'chat' or 'Instruct' in its name): a base model continues the "
              "conversation's text rather than answering it", file=sys.stderr)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    context = llm.config.max_seq_len
    if args.max_new_tokens is None:
        args.max_new_tokens = min(512, context // 2)
    reserve = min(args.max_new_tokens, context // 4)   # room kept for the reply
    for turn in itertools.count():
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        while len(history) > 1 and len(llm.tokenizer.apply_chat_template(system + history)) > context - reserve:
            del history[:2]                                  # the oldest user message and its reply
            print("[context full: the oldest exchange is forgotten]", file=sys.stderr)
        if (n := len(llm.tokenizer.apply_chat_template(system + history))) >= context:
            print(f"error: that message is {n} tokens with the system prompt; the context holds {context}",
                  file=sys.stderr)
            history.pop()
            continue
        reply = ""
        try:
            for piece in llm.chat(system + history, args.max_new_tokens, args.temperature, args.top_p,
                                  args.seed + turn, stream=True):
                reply += piece
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            pass
        print()
        history.append({"role": "assistant", "content": reply})


if __name__ == "__main__":
    from llama_tf.quiet import silence_native_logs

    silence_native_logs()
    sys.exit(main())

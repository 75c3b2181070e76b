"""Tokenizer throughput: llama_tf's tokenizers beside the libraries they wrap and Meta's reference, same run.

    python benchmarks/tokenizer.py [--corpus PATH] [--repeats 5]

On the Tiny Shakespeare corpus (1.1 MB; `llama_tf.assets.find("tinyshakespeare")` by default), best of
`--repeats` runs, for each Llama 3 tokenizer file and for LLaMA 2's SentencePiece model:

- whole: the corpus as one string;
- lines: its 40,000 lines as a batch (`tokenize(list)` -> `tf.RaggedTensor` for llama_tf; a loop of
  `encode_ordinary` for tiktoken, whose own batch call was slower; `encode_batch` for tokenizers).

Peers: `tiktoken` itself (`Encoding.encode_ordinary`, the same ranks and regex), Meta's reference
(`llama_models.llama3.tokenizer.Tokenizer.encode`), `tokenizers` itself on the same `tokenizer.json`,
and `sentencepiece` for LLaMA 2. Ratios are llama_tf's rate ÷ the engine it wraps. Needs the dev extra
(llama-models, transformers to convert tokenizer.json) and, for the SentencePiece row, LLaMA's tokenizer.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path


def best_rate(fn, chars: int, repeats: int) -> float:
    "Million characters per second, best of `repeats`."
    fn()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return chars / min(times) / 1e6


def main() -> None:
    import llama_tf
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
    import llama_models
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from llama_tf.tokenizers.tiktoken_tokenizer import LLAMA3_SPECIAL_TOKENS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=llama_tf.assets.find("tinyshakespeare"))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    text = args.corpus.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    n = len(text)

    ranks = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    json_path = Path(tempfile.mkdtemp()) / "tokenizer.json"
    TikTokenConverter(vocab_file=str(ranks), extra_special_tokens=LLAMA3_SPECIAL_TOKENS).converted().save(str(json_path))
    ours_tt, ours_hf = llama_tf.Tokenizer(ranks), llama_tf.Tokenizer(json_path)
    meta = MetaTokenizer(ranks)
    engine_tt, engine_hf = ours_tt._encoding, ours_hf._tok
    # Meta's reference (and so llama_tf's tokenizer.model) encodes 400,000 characters at a time: on the whole
    # corpus its ids differ from one tiktoken call at those cuts only. Line by line all agree.
    assert ours_tt.encode(text) == meta.encode(text, bos=False, eos=False)
    assert ours_hf.encode(text) == engine_tt.encode_ordinary(text)

    rows = []

    def row(name, whole, batch, engine=None):
        rates = (best_rate(whole, n, args.repeats), best_rate(batch, n, args.repeats))
        rows.append((name, *rates, engine))
        return rates

    # tiktoken's own batch call (a thread pool) is slower here than a loop: the loop is its figure.
    base_tt = row("tiktoken (engine)", lambda: engine_tt.encode_ordinary(text),
                  lambda: [engine_tt.encode_ordinary(t) for t in lines])
    row("Meta llama3 Tokenizer (reference)", lambda: meta.encode(text, bos=False, eos=False),
        lambda: [meta.encode(t, bos=True, eos=False) for t in lines], base_tt)
    row("llama_tf, tokenizer.model", lambda: ours_tt.encode(text), lambda: ours_tt.tokenize(lines), base_tt)
    base_hf = row("tokenizers (engine)", lambda: engine_hf.encode(text, add_special_tokens=False),
                  lambda: engine_hf.encode_batch(lines, add_special_tokens=False))
    row("llama_tf, tokenizer.json", lambda: ours_hf.encode(text), lambda: ours_hf.tokenize(lines), base_hf)
    if (sp_path := llama_tf.assets.find("llama-tokenizer")) is not None:
        import sentencepiece as spm
        sp, ours_sp = spm.SentencePieceProcessor(model_file=str(sp_path)), llama_tf.Tokenizer(sp_path)
        base_sp = row("sentencepiece (LLaMA 2, engine)", lambda: sp.encode(text), lambda: sp.encode(lines))
        row("llama_tf, LLaMA 2 tokenizer.model", lambda: ours_sp.tokenize(text), lambda: ours_sp.tokenize(lines), base_sp)

    print(f"{n / 1e6:.2f} M characters, {len(lines):,} lines; {platform.processor() or platform.machine()}, "
          f"best of {args.repeats}")
    print("| tokenizer | whole text, M chars/s | lines as a batch, M chars/s |\n|---|---|---|")
    for name, whole, batch, engine in rows:
        ratio = (lambda ours, theirs: f" ({ours / theirs:.2f}×)") if engine else (lambda *_: "")
        print(f"| {name} | {whole:.2f}{ratio(whole, engine[0]) if engine else ''} | "
              f"{batch:.2f}{ratio(batch, engine[1]) if engine else ''} |")


if __name__ == "__main__":
    from llama_tf.quiet import silence_native_logs

    silence_native_logs()
    main()

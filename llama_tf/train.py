"""Train a small LLaMA with Keras, the way the shipped default model was trained; fine-tune one with LoRA.

    python -m llama_tf.train prepare --text tinyshakespeare --out build/shakespeare
    python -m llama_tf.train fit --data build/shakespeare --out weights/shakespeare [hyper-parameters]
    python -m llama_tf.train plot weights/shakespeare
    python -m llama_tf.train lora --weights BASE --data FILE --out adapters/mine [hyper-parameters]

`prepare` (TensorFlow) reads a text file, or an asset by name (`tinyshakespeare`: found on this machine or
downloaded once by `llama_tf.assets`), splits the text (the last 10% is held out and never trained on), trains a
SentencePiece BPE tokenizer on the training split, and tokenizes each split in a `tf.data` pipeline with
`llama_tf.Tokenizer`. `fit` runs on any Keras 3 backend (the shipped model was trained with JAX on a GPU):
random windows of the training tokens, AdamW with warmup + cosine decay and gradient clipping, the best
checkpoint by validation loss written as safetensors (Hugging Face layout) with its tokenizer, a log and
the loss history. `plot` draws that history. `lora` fine-tunes a loaded model (any format `llama_tf.load`
reads, Q8_0 included) with low-rank adapters on a text or on chat conversations (`llama_tf.finetune`),
and writes the adapter with the best validation loss in PEFT's format. Every hyper-parameter is a
command-line option.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

from llama_tf.cli import ArgumentParser, number, run

TOKENIZER_FILE = "tokenizer.model"
BOS_ID = 1  # train_tokenizer puts <unk>, <s>, </s> at 0, 1, 2, as LLaMA's tokenizer does
SPLITS = ("train", "valid", "heldout")


# ---------------------------------------------------------------------------------------------------
# prepare

def split_text(text: str, held_out: float, valid: float) -> dict[str, str]:
    "train | valid | heldout by characters: the last `held_out` of the text, and `valid` of what precedes it."
    end_train = int(len(text) * (1 - held_out))
    end_fit = int(end_train * (1 - valid))
    return {"train": text[:end_fit], "valid": text[end_fit:end_train], "heldout": text[end_train:]}


def train_tokenizer(text: str, vocab_size: int) -> bytes:
    """SentencePiece BPE, LLaMA's options: byte fallback, digits split, <unk>/<s>/</s> = 0/1/2, no
    normalization, whitespace-only pieces. One departure: no dummy-prefix space, so a line start ("ROMEO:")
    is tokenized the same inside the corpus and at the start of a prompt. Newlines never enter a piece
    (training sees lines), so a text tokenizes the same whole or line by line."""
    import io

    import sentencepiece as spm

    if not text.strip():
        raise ValueError("the text to train the tokenizer on is empty (or only whitespace)")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(text.splitlines()), model_writer=model, vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, split_digits=True, unk_id=0, bos_id=BOS_ID, eos_id=2, pad_id=-1,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True, character_coverage=1.0, num_threads=2, minloglevel=2,
        )
    except RuntimeError as e:   # e.g. "Vocabulary size too high (100000). Please set it to a value <= 288."
        reason = str(e).split("] ")[-1].strip() or f"{len(text):,} characters may be too few for {vocab_size:,} pieces"
        raise ValueError(f"sentencepiece cannot train this tokenizer: {reason}") from None
    return model.getvalue()


def _read_json(folder: Path, name: str, writer: str):
    "A JSON file that the `writer` command leaves in `folder`."
    file = folder / name
    if not file.is_file():
        raise FileNotFoundError(f"{folder}: no {name}; expected a folder written by `{writer}`")
    try:
        return json.loads(file.read_text())
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None


def token_stream(tokenizer, text: str, lines_per_batch: int = 1024) -> np.ndarray:
    "All token ids of `text` (no BOS), tokenized line by line in a tf.data pipeline."
    import tensorflow as tf

    lines = tf.data.Dataset.from_tensor_slices(text.splitlines(keepends=True))
    ds = lines.batch(lines_per_batch).map(tokenizer.tokenize, num_parallel_calls=tf.data.AUTOTUNE)
    return np.concatenate([batch.flat_values.numpy() for batch in ds])


def text_file(text: str) -> Path:
    "`--text`: a file, or the name of a text asset of `llama_tf.assets` (fetched once) where no such file exists."
    from llama_tf import assets

    if not Path(text).exists() and text in assets.ASSETS and assets.ASSETS[text].path.endswith(".txt"):
        return assets.fetch(text)
    return Path(text)


def prepare(args):
    from llama_tf.tokenizers.tokenizer import Tokenizer

    try:
        text = text_file(args.text).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{args.text}: not UTF-8 text ({e})") from None
    splits = split_text(text, args.held_out, args.valid)
    proto = train_tokenizer(splits["train"] + splits["valid"], args.vocab_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / TOKENIZER_FILE).write_bytes(proto)
    tokenizer = Tokenizer(proto, add_bos=False)
    stats = {"text": str(args.text), "vocab_size": tokenizer.vocab_size, "held_out_fraction": args.held_out,
             "valid_fraction": args.valid, "bpe_dropout": args.bpe_dropout, "sampled_epochs": args.sampled_epochs}
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.int32
    for name, part in splits.items():
        ids = token_stream(tokenizer, part)
        stats[name] = {"characters": len(part), "tokens": int(len(ids)), "chars_per_token": len(part) / len(ids)}
        if name == "train" and args.sampled_epochs:
            # Subword regularization: the training split again and again, each time segmented differently.
            # (SentencePiece samples with its own random generator: this step is not seeded.)
            sampler = Tokenizer(proto, add_bos=False, sample_alpha=args.bpe_dropout)
            ids = np.concatenate([token_stream(sampler, part) for _ in range(args.sampled_epochs)])
            stats[name]["sampled_tokens"] = int(len(ids))
        np.save(out / f"{name}.npy", ids.astype(dtype))
    (out / "prepare.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats, indent=2))


# ---------------------------------------------------------------------------------------------------
# fit

def with_bos(targets: np.ndarray, bos_id: int) -> np.ndarray:
    "Inputs for (batch, T) target windows: BOS, then each window without its last token."
    return np.concatenate([np.full((len(targets), 1), bos_id, np.int32), targets[:, :-1]], axis=1)


def _windows_dataset(keras):
    class RandomWindows(keras.utils.PyDataset):
        """Batches of random windows of the token stream: inputs BOS + t[i : i+T-1], targets t[i : i+T]."""

        def __init__(self, ids, bos_id, seq_len, batch_size, steps, seed):
            super().__init__()
            self.ids, self.bos_id, self.seq_len = ids.astype(np.int32), bos_id, seq_len
            self.batch_size, self.steps = batch_size, steps
            self.rng = np.random.default_rng(seed)

        def __len__(self):
            return self.steps

        def __getitem__(self, index):
            starts = self.rng.integers(0, len(self.ids) - self.seq_len, size=self.batch_size)
            targets = np.stack([self.ids[s : s + self.seq_len] for s in starts])
            return with_bos(targets, self.bos_id), targets

    return RandomWindows


def fixed_windows(ids, bos_id, seq_len):
    "Consecutive non-overlapping windows, for validation: (inputs, targets), each (n, seq_len)."
    n = (len(ids) - 1) // seq_len
    targets = ids[: n * seq_len].astype(np.int32).reshape(n, seq_len)
    return with_bos(targets, bos_id), targets


class Log:
    "Prints and appends to the training log."

    def __init__(self, path: Path):
        self.file = path.open("w")

    def __call__(self, *parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def fit(args):
    import keras

    from llama_tf.loading import save_hf_checkpoint
    from llama_tf.config import LlamaConfig
    from llama_tf.evaluation import Evaluation, score_ids
    from llama_tf.model import build_llama

    data, out = Path(args.data), Path(args.out)
    stats = _read_json(data, "prepare.json", "prepare")
    tokenizer_proto = (data / TOKENIZER_FILE).read_bytes()
    ids = {name: np.load(data / f"{name}.npy") for name in SPLITS}
    valid = fixed_windows(ids["valid"], BOS_ID, args.seq_len)
    if args.data_parallel:   # every device holds the weights and takes a share of each batch
        from llama_tf.distribution import data_parallel

        distribution = data_parallel()
        devices = distribution.device_mesh.devices.size
        if args.batch_size % devices:
            raise ValueError(f"--batch-size {args.batch_size} does not split evenly over {devices} devices")
        valid = tuple(a[: len(a) // devices * devices] for a in valid)   # whole shares in the last batch too
        keras.distribution.set_distribution(distribution)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "training.log")

    keras.utils.set_random_seed(args.seed)
    config = LlamaConfig(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
                         vocab_size=stats["vocab_size"], hidden_dim=args.hidden_dim, max_seq_len=args.seq_len,
                         tie_embeddings=args.tie_embeddings, rope_theta=args.rope_theta, norm_eps=args.norm_eps)
    model = build_llama(config, dropout=args.dropout, name="llama")
    log("command:", "python -m llama_tf.train", " ".join(sys.argv[1:]))
    log("keras", keras.__version__, "backend", keras.backend.backend(), "python", platform.python_version(),
        "devices", _devices(keras))
    log("config:", json.dumps(config.to_dict()))
    log(f"parameters: {config.num_parameters:,}  training tokens: {len(ids['train']):,}  "
        f"validation tokens: {len(ids['valid']):,}")

    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=args.lr, warmup_steps=args.warmup_steps,
        decay_steps=args.steps - args.warmup_steps, alpha=args.min_lr / args.lr)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=args.weight_decay, beta_1=0.9,
                                       beta_2=args.beta2, global_clipnorm=args.clip_norm,
                                       use_ema=args.ema > 0, ema_momentum=args.ema or 0.99)
    optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) == 1])
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    RandomWindows = _windows_dataset(keras)
    train = RandomWindows(ids["train"], BOS_ID, args.seq_len, args.batch_size, args.eval_every, args.seed)
    valid_chars_per_token = stats["valid"]["chars_per_token"]

    class SaveBest(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best, self.history, self.start = math.inf, [], time.time()

        def on_epoch_end(self, epoch, logs=None):
            step = (epoch + 1) * args.eval_every
            row = {"step": step, "loss": float(logs["loss"]), "val_loss": float(logs["val_loss"]),
                   "val_nats_per_char": float(logs["val_loss"]) / valid_chars_per_token,
                   "seconds": round(time.time() - self.start, 1)}
            self.history.append(row)
            improved = row["val_loss"] < self.best
            if improved:
                self.best = row["val_loss"]
                save_hf_checkpoint(self.model, config, out, dtype=args.save_dtype, tokenizer_model=tokenizer_proto)
            log(f"step {step:>6}  loss {row['loss']:.4f}  val_loss {row['val_loss']:.4f}  "
                f"val {row['val_nats_per_char']:.4f} nats/char  {row['seconds']:>7.1f} s" + ("  saved" if improved else ""))
            (out / "history.json").write_text(json.dumps(self.history, indent=1) + "\n")

    saver = SaveBest()
    # With --ema, validation and the saved checkpoint use the moving average of the weights.
    ema = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if args.ema > 0 else []
    model.fit(train, epochs=args.steps // args.eval_every, validation_data=valid, batch_size=args.batch_size,
              callbacks=[*ema, saver], verbose=args.verbose)
    log(f"training took {time.time() - saver.start:.0f} s; best val_loss {saver.best:.4f}")
    keras.distribution.set_distribution(None)

    # The held-out split, scored once at the end with the saved (best, stored-precision) weights.
    from llama_tf.formats import read_checkpoint
    from llama_tf.loading import build_model

    final = build_model(read_checkpoint(out))
    result = Evaluation(score_ids(final, ids["heldout"], BOS_ID, args.seq_len), len(ids["heldout"]),
                        stats["heldout"]["characters"])
    log(f"held-out: {result}")


def _devices(keras) -> str:
    if keras.backend.backend() == "jax":
        import jax

        return ", ".join(d.device_kind for d in jax.devices())
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------------
# lora

def lora(args):
    import keras

    from llama_tf.lora import XLA_STEP

    from llama_tf.finetune import chat_rows, read_data, text_rows, weighted_loss
    from llama_tf.formats.staging import staged_file
    from llama_tf.llm import load

    if args.warmup_steps >= args.steps:
        raise ValueError(f"--warmup-steps {args.warmup_steps} leaves no training after it (--steps {args.steps})")
    data = read_data(text_file(args.data))
    llm = load(args.weights, dtype=args.dtype, progress=False)
    if args.seq_len > llm.config.max_seq_len:
        raise ValueError(f"--seq-len {args.seq_len} is longer than the model's context ({llm.config.max_seq_len})")
    rows, cut = (text_rows(llm.tokenizer, data, args.seq_len), 0) if isinstance(data, str) \
        else chat_rows(llm.tokenizer, data, args.seq_len)
    n_valid = round(len(rows) * args.valid)
    if args.valid and not 0 < n_valid < len(rows):
        raise ValueError(f"{len(rows)} training rows cannot spare a validation split of {args.valid} "
                         "(--valid 0 trains on all of them)")
    train, valid = rows.take(slice(0, len(rows) - n_valid)), rows.take(slice(len(rows) - n_valid, None))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "training.log")
    log("command:", "python -m llama_tf.train", " ".join(sys.argv[1:]))
    log("keras", keras.__version__, "backend", keras.backend.backend(), "devices", _devices(keras))
    kind = "text" if isinstance(data, str) else f"{len(data):,} conversations (loss on the assistant's tokens)"
    log(f"data: {args.data}: {kind}; {len(train):,} training rows ({train.tokens:,} target tokens), "
        f"{len(valid):,} validation rows ({valid.tokens:,})" + (f"; {cut:,} cut at {args.seq_len} tokens" if cut else ""))

    keras.utils.set_random_seed(args.seed)
    llm.enable_lora(args.rank, args.alpha, args.targets, args.dropout, args.rslora)
    trained = sum(int(np.prod(v.shape)) for v in llm.model.trainable_weights)
    log(f"LoRA rank {args.rank}, alpha {args.alpha} on {', '.join(args.targets)}: {trained:,} trainable parameters "
        f"({trained / llm.config.num_parameters:.2%} of {llm.config.num_parameters:,})")
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=args.lr, warmup_steps=args.warmup_steps,
        decay_steps=args.steps - args.warmup_steps, alpha=0.0)
    llm.model.compile(keras.optimizers.AdamW(learning_rate=schedule, weight_decay=args.weight_decay,
                                             global_clipnorm=args.clip_norm),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
                      jit_compile=XLA_STEP)

    class Batches(keras.utils.PyDataset):
        "`batch_size` training rows drawn at random for each step: inputs, targets and the targets' weights."

        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(args.seed)

        def __len__(self):
            return args.eval_every

        def __getitem__(self, index):
            picked = self.rng.choice(len(train), args.batch_size, replace=len(train) < args.batch_size)
            return tuple(train.take(picked))

    class Validate(keras.callbacks.Callback):
        "Every --eval-every steps: the validation loss, the history, and the adapter if it is the best so far."

        def __init__(self):
            super().__init__()
            self.history, self.start, self.best = [], time.time(), math.inf

        def record(self, step, loss=None):
            row = {"step": step, "loss": loss, "seconds": round(time.time() - self.start, 1)}
            if len(valid):
                row["val_loss"] = weighted_loss(llm.model, valid, args.batch_size)
            improved = step > 0 and row.get("val_loss", -step) < self.best
            if improved:
                self.best = row.get("val_loss", -step)
                llm.save_adapter(out)                 # a new folder in the old one's place, in one step
            self.history.append(row)
            with staged_file(out / "history.json") as stage:
                stage.write_text(json.dumps(self.history, indent=1) + "\n")
            log(f"step {step:>6}" + (f"  loss {loss:.4f}" if loss is not None else "")
                + (f"  val_loss {row['val_loss']:.4f}" if "val_loss" in row else "")
                + f"  {row['seconds']:>7.1f} s" + ("  saved" if improved else ""))

        def on_epoch_end(self, epoch, logs=None):
            self.record((epoch + 1) * args.eval_every, float(logs["loss"]))

    validate = Validate()
    validate.record(0)                                # the base model's validation loss, before any step
    epochs = math.ceil(args.steps / args.eval_every)
    llm.model.fit(Batches(), epochs=epochs, callbacks=[validate], verbose=args.verbose)
    seconds = time.time() - validate.start
    log(f"training took {seconds:.0f} s ({epochs * args.eval_every * args.batch_size * args.seq_len / seconds:,.0f} "
        f"tokens/s); the adapter with the best validation loss is in {out}")
    log(f"PEFT reads it: PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(BASE), {str(out)!r}); "
        "llama_tf: llm.load_adapter(...)")


# ---------------------------------------------------------------------------------------------------
# plot

def plot(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(args.folder)
    history = _read_json(folder, "history.json", "fit")
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [h["loss"] for h in history], label="training loss (nats/token, dropout on)")
    ax.plot(steps, [h["val_loss"] for h in history], label="validation loss (nats/token)")
    best = min(history, key=lambda h: h["val_loss"])
    ax.axvline(best["step"], color="grey", lw=0.8, ls="--", label=f"saved: step {best['step']}")
    ax.set(xlabel="step", ylabel="cross-entropy", title="Training the default model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=120)
    print(f"wrote {folder / 'loss.png'}")


# ---------------------------------------------------------------------------------------------------

def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m llama_tf.train", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("prepare", help="train the tokenizer and tokenize the splits (TensorFlow)")
    q.add_argument("--text", required=True, help="a UTF-8 text file, or 'tinyshakespeare' (llama_tf.assets)")
    q.add_argument("--out", required=True, help="folder for tokenizer.model, {train,valid,heldout}.npy")
    q.add_argument("--vocab-size", type=number(int, 1), default=2048)
    q.add_argument("--held-out", type=number(float, 0, below=1), default=0.1, help="fraction at the end, never trained on")
    q.add_argument("--valid", type=number(float, 0, below=1), default=0.05, help="fraction of the rest used for validation")
    q.add_argument("--bpe-dropout", type=number(float, 0, below=1), default=0.1, help="merge dropout when sampling segmentations")
    q.add_argument("--sampled-epochs", type=number(int, 0), default=0,
                   help="write this many sampled segmentations of the training split (0: the plain one)")
    q.set_defaults(run=prepare)

    f = sub.add_parser("fit", help="train the model (any Keras backend)")
    f.add_argument("--data", required=True, help="a folder written by prepare")
    f.add_argument("--out", required=True, help="folder for the checkpoint, training.log, history.json")
    f.add_argument("--dim", type=number(int, 1), default=384)
    f.add_argument("--n-layers", type=number(int, 1), default=6)
    f.add_argument("--n-heads", type=number(int, 1), default=6)
    f.add_argument("--n-kv-heads", type=number(int, 1), help="key/value heads (default: --n-heads)")
    f.add_argument("--hidden-dim", type=number(int, 1), default=1024)
    f.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=True)
    f.add_argument("--rope-theta", type=number(float, above=0), default=10000.0)
    f.add_argument("--norm-eps", type=number(float, above=0), default=1e-5)
    f.add_argument("--seq-len", type=number(int, 1), default=256, help="training context, also the model's max_seq_len")
    f.add_argument("--batch-size", type=number(int, 1), default=64)
    f.add_argument("--steps", type=number(int, 1), default=3000)
    f.add_argument("--eval-every", type=number(int, 1), default=100)
    f.add_argument("--lr", type=number(float, above=0), default=1e-3)
    f.add_argument("--min-lr", type=number(float, above=0), default=1e-4)
    f.add_argument("--warmup-steps", type=number(int, 0), default=100)
    f.add_argument("--weight-decay", type=number(float, 0), default=0.1)
    f.add_argument("--beta2", type=number(float, 0, below=1), default=0.99)
    f.add_argument("--clip-norm", type=number(float, above=0), default=1.0)
    f.add_argument("--dropout", type=number(float, 0, below=1), default=0.2)
    f.add_argument("--ema", type=number(float, 0, below=1), default=0.0, help="momentum of an exponential moving average of the weights (0: off)")
    f.add_argument("--save-dtype", choices=["float32", "float16", "bfloat16"], default="float16")
    f.add_argument("--seed", type=number(int, 0), default=0)
    f.add_argument("--data-parallel", action="store_true",
                   help="split each batch over every device, a copy of the weights on each (JAX backend)")
    f.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1 if sys.stdout.isatty() else 2,
                   help="Keras fit verbosity: 1 = progress bar (default in a terminal), 2 = a line per evaluation")
    f.set_defaults(run=fit)

    a = sub.add_parser("lora", help="fine-tune a model with LoRA adapters, saved in PEFT's format (any Keras backend)")
    a.add_argument("--weights", help="the base checkpoint, any format `llama_tf.load` reads (default: the shipped model)")
    a.add_argument("--data", required=True,
                   help="a UTF-8 text file, a chat JSONL file ({\"messages\": [...]} a line; the loss counts the "
                        "assistant's tokens only), or 'tinyshakespeare'")
    a.add_argument("--out", required=True, help="folder for the adapter (PEFT's format), training.log, history.json")
    a.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "q8_0"], default="float32",
                   help="the frozen base's weights (q8_0: QLoRA's idea with 8-bit blocks); the adapters are float32")
    a.add_argument("--rank", type=number(int, 1), default=8)
    a.add_argument("--alpha", type=number(float, above=0), default=16.0)
    a.add_argument("--targets", nargs="+", choices=["wq", "wk", "wv", "wo", "w1", "w2", "w3"],
                   default=["wq", "wk", "wv", "wo", "w1", "w2", "w3"], help="the projections that get adapters")
    a.add_argument("--dropout", type=number(float, 0, below=1), default=0.0, help="dropout on the adapters' input")
    a.add_argument("--rslora", action="store_true", help="scale alpha / sqrt(rank) instead of alpha / rank")
    a.add_argument("--seq-len", type=number(int, 1), default=256, help="tokens in a training row")
    a.add_argument("--batch-size", type=number(int, 1), default=8)
    a.add_argument("--steps", type=number(int, 1), default=200)
    a.add_argument("--eval-every", type=number(int, 1), default=20)
    a.add_argument("--valid", type=number(float, 0, below=1), default=0.1,
                   help="fraction of the rows (the last ones) held out for validation")
    a.add_argument("--lr", type=number(float, above=0), default=2e-4)
    a.add_argument("--warmup-steps", type=number(int, 0), default=10)
    a.add_argument("--weight-decay", type=number(float, 0), default=0.0)
    a.add_argument("--clip-norm", type=number(float, above=0), default=1.0)
    a.add_argument("--seed", type=number(int, 0), default=0)
    a.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1 if sys.stdout.isatty() else 0,
                   help="Keras fit verbosity: 1 = progress bar (default in a terminal)")
    a.set_defaults(run=lora)

    g = sub.add_parser("plot", help="draw loss.png from history.json")
    g.add_argument("folder")
    g.set_defaults(run=plot)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return run(lambda: args.run(args))


if __name__ == "__main__":
    from llama_tf.quiet import silence_native_logs

    silence_native_logs()
    sys.exit(main())

"""`load` a checkpoint into an `LLM` (config + tokenizer + Keras model) and generate text with it.

`load(path)` detects the layout (Meta's `params.json` + `consolidated.*.pth`, or Hugging Face's
`config.json` + safetensors), finds the tokenizer beside the weights (`tokenizer.model` or
`tokenizer.json`) and builds the model without random initialisation. `LLM.generate` continues a prompt
or a batch, greedy or sampled, whole or streamed; `LLM.generate_ids` does the same on token ids;
`LLM.chat` replies to a conversation in the model's chat format.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from llama_tf.formats import CheckpointError, read_checkpoint
from llama_tf.loading import build_model
from llama_tf.chat import named_for_chat
from llama_tf.config import LlamaConfig
from llama_tf.generation import Decoder, TextStream
from llama_tf.ggml_blocks import QUANTIZERS, stored_type
from llama_tf.sampling import Sampler
from llama_tf.tokenizers.search import open_tokenizer
from llama_tf.tokenizers.tokenizer import Tokenizer

__all__ = ["LLM", "load", "DEFAULT_WEIGHTS"]

WEIGHTS_ENV = "LLAMA_TF_WEIGHTS"
DTYPES = ("float32", "float16", "bfloat16", "q8_0", "gguf")
QUANTIZE_MODES = ("q8_0", *QUANTIZERS)   # what `LLM.quantize` rounds weights to
ATTENTION_IMPLS = ("reference", "tiled", "fused")
# The model this project trains and ships (weights/shakespeare, weights/README.md), used when no checkpoint
# is named: `llama_tf/default_model` links to it in a clone, and a wheel carries its files there.
DEFAULT_WEIGHTS = (Path(__file__).resolve().parent / "default_model").resolve()


def load(path: str | Path | None = None, *, tokenizer: str | Path | Tokenizer | None = None,
         dtype: str = "float32", max_seq_len: int | None = None, progress: bool | None = None,
         attention_impl: str = "reference", block_size: int = 512, mesh=None) -> LLM:
    """Load a LLaMA checkpoint (Meta or Hugging Face layout, detected) with its tokenizer.

    `path` defaults to the `LLAMA_TF_WEIGHTS` environment variable, else the project's default model
    (`weights/shakespeare`). The tokenizer is found beside the weights unless given. Weights of any
    stored precision are cast to `dtype` (computation stays float32 where it matters: norms, RoPE,
    softmax); `dtype="q8_0"` computes in float32 with every projection held as Q8_0 blocks (see
    `LLM.quantize`), those of a Q8_0 GGUF read as stored; `dtype="gguf"` (a GGUF file) keeps every projection
    in the file's own type, Q4_K_M's 4- and 6-bit blocks as they are (notebook 15). `attention_impl="tiled"`
    computes attention over prompts longer than `block_size` tokens tile by tile (notebook 10): memory grows linearly with the prompt instead of quadratically;
    `attention_impl="fused"` sends prompts to the backend's fused kernel (cuDNN's flash attention on a
    JAX GPU: twice the 2,048-token prefill there, `benchmarks/README.md`). `mesh` (JAX, a
    `llama_tf.device_mesh(...)`) splits the weights over several devices (`llama_tf.distribution`).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if attention_impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {', '.join(ATTENTION_IMPLS)}, not {attention_impl!r}")
    if path is None:
        path = os.environ.get(WEIGHTS_ENV)
    if not path:
        if not DEFAULT_WEIGHTS.exists():
            raise FileNotFoundError(f"no checkpoint given, {WEIGHTS_ENV} is not set, and the default model is "
                                    f"missing ({DEFAULT_WEIGHTS}); pass a path or set {WEIGHTS_ENV}")
        path = DEFAULT_WEIGHTS
    checkpoint = read_checkpoint(path)
    if max_seq_len is not None:
        checkpoint = checkpoint._replace(config=checkpoint.config.replace(max_seq_len=max_seq_len))
    config = checkpoint.config

    tokenizer = open_tokenizer(checkpoint, path, tokenizer)
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size} pieces but the model only {config.vocab_size} embeddings"
        )

    model = build_model(checkpoint, dtype=dtype, progress=progress, mesh=mesh, attention_impl=attention_impl,
                        block_size=block_size)
    chat_tuned = checkpoint.chat_template or named_for_chat(Path(path).resolve().name)
    return LLM(config, tokenizer, model, chat_tuned)


@dataclass
class LLM:
    """A loaded model: `config`, `tokenizer` and the Keras `model` (int ids -> float32 logits).
    `chat_tuned`: whether its files say it was tuned for chat (a chat template, or "chat"/"Instruct" in
    the name); `chat` works on any model, but only a chat-tuned one answers in turn."""

    config: LlamaConfig
    tokenizer: Tokenizer
    model: keras.Model
    chat_tuned: bool = False
    _decoder: Decoder | None = field(default=None, init=False, repr=False)

    def quantize(self, mode: str = "q8_0") -> LLM:
        """Store every projection's weights in llama.cpp's blocks, in place: "q8_0" (a float16 scale per 32
        weights, a quarter of float32's bytes), "q4_0", "q5_0", "q5_1" or "q4_k" (4 to 6 bits a weight,
        notebook 15; as llama.cpp does, a layer whose input width is not a multiple of q4_k's 256 gets
        q5_0). A one-token step reads them with llama_tf's compiled kernels (on a CPU, on JAX and in
        TensorFlow's XLA step). For inference (the blocks are not trained). Returns self."""
        from llama_tf.layers.projection import projections, weight_format

        if mode not in QUANTIZE_MODES:
            raise ValueError(f"LLM.quantize knows {', '.join(QUANTIZE_MODES)}, not {mode!r}")
        layers = projections(self.model)
        formats = {}
        for layer in layers:   # every width checked before any layer changes
            formats[layer] = stored_type(mode, layer.in_features)
            weight_format(formats[layer]).check(layer, layer.in_features)
        for layer in layers:
            layer.to_format(formats[layer])
        self._decoder = None   # its compiled steps hold the float weights
        return self

    # -- fine-tuning: low-rank adapters (`llama_tf.lora`) -----------------------------------------------
    def enable_lora(self, rank: int = 8, alpha: float = 16, targets=("wq", "wk", "wv", "wo", "w1", "w2", "w3"),
                    dropout: float = 0.0, rslora: bool = False) -> LLM:
        """Low-rank adapters on the `targets` of every block, everything else frozen: `model.trainable_weights`
        are the adapters' (float32 whatever the base's dtype), and `model.compile(...)` / `model.fit(...)`
        train them. On TensorFlow without a GPU, compile with `jit_compile=True` (`llama_tf.lora.XLA_STEP`):
        Keras leaves XLA off there by default, and a step takes about 2.8 times as long. Returns self."""
        from llama_tf.lora import enable_lora

        enable_lora(self.model, rank, alpha, targets, dropout, rslora)
        self._decoder = None   # its compiled steps were traced without the adapters
        return self

    def disable_lora(self) -> LLM:
        "Take the adapters out (the base model as loaded, trainable again). Returns self."
        from llama_tf.lora import disable_lora

        disable_lora(self.model)
        self._decoder = None
        return self

    def merge_adapter(self) -> LLM:
        "Fold the adapters into the float weights (then save or convert an ordinary checkpoint). Returns self."
        from llama_tf.lora import merge_lora

        merge_lora(self.model)
        self._decoder = None
        return self

    def save_adapter(self, path: str | Path) -> Path:
        "The adapters in PEFT's format: `peft.PeftModel.from_pretrained(LlamaForCausalLM..., path)` reads them."
        from llama_tf.lora import save_adapter

        return save_adapter(self.model, self.config, path)

    def load_adapter(self, path: str | Path) -> LLM:
        "Adapters PEFT saved for this model (a Hugging Face Llama's), in place of any. Returns self."
        from llama_tf.lora import load_adapter

        load_adapter(self.model, self.config, path)
        self._decoder = None
        return self

    def export(self, path: str | Path, format: str = "saved_model", quantize: str | None = None,
               progress: bool | None = None) -> Path:
        """The model as a file that runs without llama_tf. `format="saved_model"`: a TensorFlow SavedModel with
        its tokenizer, strings in and continuations out (`llama_tf.export`); `format="litert"`: a LiteRT file
        with `prefill` and `decode` signatures over a cache, float32 or with `quantize="int8"` 8-bit weights
        (`llama_tf.litert`); `format="litert_lm"`: a `.litertlm` bundle (model, tokenizer, metadata) that Google's
        LiteRT-LM runtime runs. `progress`: a bar over the steps (None: where stderr is a terminal). Returns the path."""
        if format == "saved_model":
            if quantize is not None:
                raise ValueError("quantize is for format='litert'; a SavedModel keeps the model's weights")
            from llama_tf.export import saved_model

            return saved_model(self, path, progress)
        if format == "litert":
            from llama_tf.litert import litert

            return litert(self, path, quantize, progress)
        if format == "litert_lm":
            from llama_tf.litert import litert_lm

            return litert_lm(self, path, quantize, progress=progress)
        raise ValueError(f"format must be 'saved_model', 'litert' or 'litert_lm', not {format!r}")

    @property
    def decoder(self) -> Decoder:
        "The compiled prefill/decode step (built on first use)."
        if self._decoder is None:
            self._decoder = Decoder(self.model, self.config.max_seq_len)
        return self._decoder

    def generate(self, prompt: str | Sequence[str], max_new_tokens: int = 20, temperature: float = 0.0,
                 seed: int | None = None, *, top_k: int = 0, top_p: float = 1.0,
                 stop: str | Sequence[str] = (), stream: bool = False, draft: LLM | None = None,
                 draft_tokens: int = 4) -> str | list[str] | Iterator[str]:
        """Continuation of `prompt`: the text that follows it, so `prompt + result` reads on.

        Greedy by default; `temperature` > 0 samples, optionally from the `top_k` most likely tokens
        and the `top_p` nucleus, reproducibly for a given `seed` (see `Sampler`). Generation ends at
        the end of text (`</s>`; for Llama 3 also its end of turn), after `max_new_tokens`, when the context is full, or at the first of the `stop`
        strings (which is left out). A list of prompts returns a list, each continuation as it would be
        alone. `stream=True` (one prompt) returns an iterator over pieces of text as they are generated.

        `draft`: a smaller model with the same tokenizer that proposes `draft_tokens` tokens at a time for
        this one to check in one call (speculative decoding, `llama_tf.speculative`): the same text greedy,
        the same distribution sampled, fewer calls of this model. Prompts then go one at a time.
        """
        stops = [stop] if isinstance(stop, str) else list(stop) if isinstance(stop, (list, tuple)) \
            else [] if stop is None else [stop]
        if not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a list of strings")
        if stream and not single:
            raise ValueError("stream=True generates one prompt at a time; pass a string")
        if draft is not None and not single:
            return [self.generate(p, max_new_tokens, temperature, seed, top_k=top_k, top_p=top_p, stop=stop,
                                  draft=draft, draft_tokens=draft_tokens) for p in prompts]
        rows = [self.tokenizer.prompt_ids(p) for p in prompts]
        sampler = Sampler(temperature, top_k, top_p, seed)
        if draft is None:
            steps = self.decoder(rows, max_new_tokens, sampler, self.tokenizer.stop_ids,
                                 self.tokenizer.vocab_size)   # text: only ids the tokenizer can write out
        else:
            steps = self._speculative(rows[0], max_new_tokens, sampler, draft, draft_tokens)
        streams = [TextStream(self.tokenizer, ids, stops) for ids in rows]
        if stream:
            return self._stream(steps, streams[0])
        if stops:   # look for them as the text grows, to end each row as soon as it has one
            for next_ids in steps:
                for text, token in zip(streams, next_ids):
                    if token >= 0 and not text.stopped:
                        text.push(token)
                if all(text.stopped for text in streams):
                    break
        else:       # the text is only needed at the end: decode each row once
            for text, ids in zip(streams, self._collect(steps, len(rows))):
                text.extend(ids)
        return streams[0].text if single else [text.text for text in streams]

    def chat(self, messages: Sequence[dict], max_new_tokens: int = 256, temperature: float = 0.6,
             top_p: float = 0.9, seed: int | None = None, *, top_k: int = 0,
             stream: bool = False) -> str | Iterator[str]:
        """The assistant's reply to `messages` (`[{"role": "system"|"user"|"assistant", "content": str}, ...]`),
        in the model's chat format (`tokenizer.apply_chat_template`). Sampled as Meta's chat examples
        do (temperature 0.6, top-p 0.9; `temperature=0` is greedy); the reply ends at the model's end of
        turn (`<|eot_id|>`, `<|eom_id|>`) or end of text, after `max_new_tokens`, or when the context is
        full. `stream=True` returns an iterator over its pieces as they are generated."""
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        stop_ids = self.tokenizer.stop_ids
        steps = self.decoder([prompt], max_new_tokens, Sampler(temperature, top_k, top_p, seed), stop_ids,
                             self.tokenizer.vocab_size)
        steps = (np.where(np.isin(ids, stop_ids), -1, ids) for ids in steps)    # the end of turn is not text
        reply = TextStream(self.tokenizer, prompt)
        if stream:
            return self._stream(steps, reply)
        reply.extend(self._collect(steps, 1)[0])
        return reply.text

    def _speculative(self, prompt_ids: list[int], max_new_tokens: int, sampler: Sampler, draft: LLM,
                     draft_tokens: int) -> Iterator[np.ndarray]:
        "`generate`'s steps with a draft model (`llama_tf.speculative`)."
        from llama_tf.speculative import speculative_steps

        if not isinstance(draft, LLM):
            raise ValueError(f"draft must be an LLM (llama_tf.load), got {type(draft).__name__}")
        if (draft.tokenizer.vocab_size, draft.tokenizer.encode("Hello, world")) != \
                (self.tokenizer.vocab_size, self.tokenizer.encode("Hello, world")):
            raise ValueError("the draft model must share this model's tokenizer (its ids mean the same tokens)")
        capacity = min(self.config.max_seq_len, draft.config.max_seq_len)
        return speculative_steps(self.model, draft.model, prompt_ids, max_new_tokens, sampler,   # it stops at capacity
                                 self.tokenizer.stop_ids, self.tokenizer.vocab_size, draft_tokens, capacity)

    @staticmethod
    def _collect(steps: Iterator, n_rows: int) -> list[list[int]]:
        "The new ids of every row, from a decoder's steps."
        new: list[list[int]] = [[] for _ in range(n_rows)]
        for next_ids in steps:
            for ids, token in zip(new, next_ids):
                if token >= 0:
                    ids.append(int(token))
        return new

    @staticmethod
    def _stream(steps: Iterator, text: TextStream) -> Iterator[str]:
        for (token,) in steps:
            if token >= 0:
                if piece := text.push(token):
                    yield piece
                if text.stopped:
                    return
        if piece := text.flush():
            yield piece

    def generate_ids(self, prompt_ids: Sequence[int] | Sequence[Sequence[int]], max_new_tokens: int = 20,
                     temperature: float = 0.0, seed: int | None = None, *, top_k: int = 0, top_p: float = 1.0,
                     stop_ids: Sequence[int] | None = None) -> list[int] | list[list[int]]:
        """Generation on token ids: up to `max_new_tokens` new ids for one prompt (a list of ids) or a
        batch (a list of lists), ending after a `stop_ids` token (default: `tokenizer.stop_ids`; `()` never stops) or
        when the context (`config.max_seq_len`) is full. Sampling as in `generate`. Any id of the model's
        embedding may come out, also those past the tokenizer's vocabulary where the embedding is padded
        (`generate` and `chat` never pick those: their text could not be written)."""
        single = len(prompt_ids) == 0 or not isinstance(prompt_ids[0], (Sequence, np.ndarray))
        rows = [[int(i) for i in ids] for ids in ([prompt_ids] if single else prompt_ids)]
        stop_ids = list(self.tokenizer.stop_ids if stop_ids is None else stop_ids)
        steps = self.decoder(rows, max_new_tokens, Sampler(temperature, top_k, top_p, seed), stop_ids)
        new = self._collect(steps, len(rows))
        return new[0] if single else new
